"""Teacher outputs computed once per training example and reused every epoch.

Caching is valid only when the teacher's output for example ``i`` is the same whenever it is
asked for, which needs all of:

- the teacher in eval mode (no dropout) and frozen (not trained alongside the student);
- example ``i`` tokenized identically every epoch: same text, tokenizer and ``max_length``.

Data augmentation (random word swaps, back-translation, token masking, random truncation) or a
teacher in train mode make it invalid: set ``DistillConfig.cache_teacher = False`` so the teacher
runs on every batch instead. ``fill`` refuses a teacher in train mode, and ``get`` refuses a
batch whose token count for an example differs from the cached one.

What is kept: logits (float32) for every example, plus, only when those losses are on, the
hidden states of the mapped teacher layers ([N, max_length, hidden]) and the attention maps of
the mapped teacher layers ([N, heads, max_length, max_length]) at each example's real tokens.
``estimate_bytes`` gives the size up front; past ``max_memory_bytes`` the arrays are ``.npy``
memmaps under ``disk_dir``. The cache is rebuilt on each run (a resumed one too) in a fixed order
and batching, so it holds the same numbers every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from edgekit_runtime.errors import EdgekitError

from .losses import num_layers

DEFAULT_MAX_MEMORY = 2 << 30  # 2 GiB in RAM, then memmaps on disk


@dataclass
class TeacherOutputs:
    """Teacher outputs for one batch, shaped like the HF outputs the losses index into."""

    logits: torch.Tensor
    hidden_states: dict[int, torch.Tensor]  # hidden-state index -> [batch, seq, hidden]
    attentions: dict[int, torch.Tensor]  # 0-based layer -> [batch, heads, seq, seq]
    num_layers: int | None


def estimate_bytes(n_examples: int, num_labels: int, max_length: int, hidden_size: int = 0, hidden_layers: int = 0,
                   num_heads: int = 0, attention_layers: int = 0, itemsize: int = 4) -> int:
    """Bytes the cache holds: logits, per-example lengths, mapped hidden states and attention maps."""
    logits = n_examples * num_labels * 4
    lengths = n_examples * 8
    hidden = hidden_layers * n_examples * max_length * hidden_size * itemsize
    attention = attention_layers * n_examples * num_heads * max_length * max_length * itemsize
    return logits + lengths + hidden + attention


class TeacherCache:
    """Per-example teacher logits (and mapped hidden states / attention maps), filled once by ``fill``."""

    def __init__(self, n_examples: int, max_length: int, hidden_layers: Sequence[int] = (),
                 attention_layers: Sequence[int] = (), dtype: str = "float32",
                 max_memory_bytes: int = DEFAULT_MAX_MEMORY, disk_dir: str | Path | None = None):
        if dtype not in ("float32", "float16"):
            raise EdgekitError(f"teacher cache dtype {dtype!r} is not supported. Fix: use 'float32' or 'float16' "
                               "(float16 halves the hidden/attention arrays; logits stay float32).")
        self.n, self.max_length, self.dtype = n_examples, max_length, np.dtype(dtype)
        self.hidden_layers, self.attention_layers = tuple(hidden_layers), tuple(attention_layers)
        self.max_memory_bytes, self.disk_dir = max_memory_bytes, disk_dir
        self.logits: np.ndarray | None = None
        self.lengths = np.zeros(n_examples, dtype=np.int64)
        self.hidden: dict[int, np.ndarray] = {}
        self.attention: dict[int, np.ndarray] = {}
        self.num_layers: int | None = None
        self.teacher_examples = 0  # examples the teacher has been run on
        self.filled = False

    @property
    def memory_bytes(self) -> int:
        """Bytes held (0 before the first batch is stored)."""
        arrays = [self.lengths, *self.hidden.values(), *self.attention.values()]
        return sum(a.nbytes for a in arrays) + (0 if self.logits is None else self.logits.nbytes)

    def _array(self, name: str, shape: tuple[int, ...], dtype, on_disk: bool) -> np.ndarray:
        if not on_disk:
            return np.zeros(shape, dtype=dtype)
        path = Path(self.disk_dir) / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def _allocate(self, logits: torch.Tensor, outputs: Any) -> None:
        hidden_size = outputs.hidden_states[self.hidden_layers[0]].shape[-1] if self.hidden_layers else 0
        heads = outputs.attentions[self.attention_layers[0]].shape[1] if self.attention_layers else 0
        need = estimate_bytes(self.n, logits.shape[-1], self.max_length, hidden_size, len(self.hidden_layers),
                              heads, len(self.attention_layers), self.dtype.itemsize)
        on_disk = need > self.max_memory_bytes
        if on_disk and self.disk_dir is None:
            raise EdgekitError(f"the teacher cache needs {need / 2**30:.2f} GiB, over its {self.max_memory_bytes / 2**30:.2f}"
                               " GiB in-memory limit, and has no disk_dir. Fix: pass disk_dir (memmaps), use "
                               "dtype='float16', map fewer layers, or raise max_memory_bytes.")
        self.logits = np.zeros((self.n, logits.shape[-1]), dtype=np.float32)
        for layer in self.hidden_layers:
            self.hidden[layer] = self._array(f"hidden{layer}", (self.n, self.max_length, hidden_size), self.dtype, on_disk)
        for layer in self.attention_layers:
            shape = (self.n, heads, self.max_length, self.max_length)
            self.attention[layer] = self._array(f"attention{layer}", shape, self.dtype, on_disk)
        if self.hidden_layers or self.attention_layers:
            self.num_layers = num_layers(outputs)

    @torch.no_grad()
    def fill(self, teacher, adapter, tokenizer, ds, batch_size: int = 64, progress: bool = True) -> None:
        """Run the eval-mode teacher once over every example of ``ds`` (in length order) and keep its outputs."""
        if teacher.training:
            raise EdgekitError("the teacher is in train mode (dropout on), so its outputs change per call and "
                               "cannot be cached. Fix: call teacher.eval() first.")
        if len(ds) != self.n:
            raise EdgekitError(f"the cache was sized for {self.n} examples but the dataset has {len(ds)}. "
                               "Fix: build the TeacherCache with n_examples=len(train_ds).")
        order = np.argsort([len(t) for t in ds.texts], kind="stable")
        flags = {"output_hidden_states": bool(self.hidden_layers), "output_attentions": bool(self.attention_layers)}
        for start in tqdm(range(0, self.n, batch_size), desc="teacher cache", unit="batch", disable=not progress):
            idx = order[start:start + batch_size]
            batch = adapter.collate(tokenizer, [ds.texts[i] for i in idx], None, self.max_length)
            out = teacher(**adapter.model_inputs(teacher, batch), **flags)
            logits = adapter.predictions(out).float()
            if self.logits is None:
                self._allocate(logits, out)
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
            self.logits[idx] = logits.numpy()
            for b, i in enumerate(idx):
                pos = mask[b].nonzero().squeeze(1)
                n = len(pos)
                self.lengths[i] = n
                for layer, arr in self.hidden.items():
                    arr[i, :n] = out.hidden_states[layer][b, pos].float().numpy()
                for layer, arr in self.attention.items():
                    arr[i, :, :n, :n] = out.attentions[layer][b][:, pos][:, :, pos].float().numpy()
            self.teacher_examples += len(idx)
        self.filled = True

    def get(self, indices: Sequence[int], attention_mask: torch.Tensor) -> TeacherOutputs:
        """The cached outputs for dataset ``indices``, laid out on the batch's token positions (``attention_mask``)."""
        if not self.filled:
            raise EdgekitError("the teacher cache is empty. Fix: call fill(teacher, adapter, tokenizer, train_ds) first.")
        idx = np.asarray(indices, dtype=np.int64)
        batch, seq = attention_mask.shape
        positions = [attention_mask[b].nonzero().squeeze(1) for b in range(batch)]
        stale = [int(i) for i, p in zip(idx, positions) if len(p) != self.lengths[i]]
        if stale:
            raise EdgekitError(f"examples {stale[:5]} have a different token count than when the teacher was cached "
                               "(tokenization changed: augmentation, another max_length or tokenizer). Fix: keep "
                               "inputs fixed per example, or set DistillConfig.cache_teacher = False.")
        hidden, attention = {}, {}
        for layer, arr in self.hidden.items():
            out = torch.zeros(batch, seq, arr.shape[-1], dtype=torch.float32)
            for b, (i, pos) in enumerate(zip(idx, positions)):
                out[b, pos] = torch.from_numpy(np.asarray(arr[i, :len(pos)], dtype=np.float32))
            hidden[layer] = out
        for layer, arr in self.attention.items():
            out = torch.zeros(batch, arr.shape[1], seq, seq, dtype=torch.float32)
            for b, (i, pos) in enumerate(zip(idx, positions)):
                n = len(pos)
                out[b][:, pos[:, None], pos[None, :]] = torch.from_numpy(np.asarray(arr[i, :, :n, :n], dtype=np.float32))
            attention[layer] = out
        return TeacherOutputs(torch.from_numpy(self.logits[idx]), hidden, attention, self.num_layers)
