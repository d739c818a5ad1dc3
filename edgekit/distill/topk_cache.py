"""The teacher's top-k next-token logits for every training token, on disk, so the teacher can leave
memory before the student trains.

A causal LM's teacher signal is a whole vocabulary per token, far too much to keep. Worked example,
DeepSeek-R1-Distill-Qwen-1.5B as the teacher (vocab V = 151,936; 1,777,088,000 parameters), a
training set of 10,000 sequences x 512 tokens = 5,120,000 tokens:

    full fp32 logits      151,936 x 4 B = 607,744 B (593.5 KiB) per token
                          x 5,120,000 tokens = 3,111,649,280,000 B = 3.11 TB (2.83 TiB)
    top-k, k = 64         64 x (2 B float16 value + 4 B int32 index) = 384 B per token
                          x 5,120,000 tokens = 1,966,080,000 B
    + token ids           int32, 4 B per token = 20,480,000 B
    + lengths             int32, 4 B per sequence = 40,000 B
    = estimate_bytes(10_000, 512, 64, 151_936) = 1,986,600,000 B = 1.99 GB (1.85 GiB), 1,566x smaller

    teacher weights       1,777,088,000 x 2 B (fp16) = 3,554,176,000 B = 3.55 GB of RAM that the
                          student's training no longer needs once ``fill`` has run.

A vocabulary of at most 65,536 tokens (indices fit 0..65535) stores indices and token ids as
uint16: 64 x (2 + 2) + 2 = 258 B per token.

Files under ``directory`` (raw ``np.memmap`` arrays, C order, no headers, so their sizes are exactly
``estimate_bytes``; ``meta.json`` of a few hundred bytes describes them):

    values.f16     (N, max_length, k) float16  teacher logits minus the position's top-1 logit (<= 0),
                                               sorted descending: a softmax over them is the teacher
                                               renormalized on its top-k, and float16 is finest near 0
    indices.bin    (N, max_length, k) uint16 | int32   vocabulary ids of those logits
    ids.bin        (N, max_length)    same dtype       each example's real tokens, left-aligned
    lengths.i32    (N,)               int32            real tokens per example

Position ``j`` of example ``i`` holds the teacher's prediction of token ``j + 1`` from tokens
``0..j`` (the last position is kept too, so arrays stay position-aligned). The teacher runs with
position ids from the attention mask, so an example's entry does not depend on the batch's padding.
Caching is valid for a frozen teacher in eval mode on fixed token ids; ``fill`` refuses a teacher
in train mode, and ``get`` hands back the cached token ids, so the student trains on exactly them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..models.decoder import DecoderError, check_supported
from .causal import model_inputs

FILES = ("values.f16", "indices.bin", "ids.bin", "lengths.i32")
UINT16_VOCAB = 1 << 16  # ids 0..65535


def index_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocab <= 65,536), else int32."""
    return np.dtype(np.uint16 if vocab_size <= UINT16_VOCAB else np.int32)


def estimate_bytes(n_sequences: int, seq_len: int, k: int, vocab: int) -> int:
    """Bytes of the four cache files: top-k values and indices, token ids, lengths."""
    index = index_dtype(vocab).itemsize
    tokens = n_sequences * seq_len
    return tokens * k * (2 + index) + tokens * index + n_sequences * 4


class TopKCache:
    """Per-example, per-position teacher top-k (values, indices) plus token ids, as memmaps on disk."""

    def __init__(self, directory: str | Path, n_examples: int, max_length: int, k: int, vocab_size: int,
                 pad_token_id: int = 0):
        if min(n_examples, max_length, k) < 1 or k > vocab_size:
            raise DecoderError(f"TopKCache(n_examples={n_examples}, max_length={max_length}, k={k}, "
                               f"vocab_size={vocab_size}): sizes must be positive and k <= vocab_size. "
                               "Fix: pass the example count, the tokenization max_length and e.g. k=64.")
        self.dir = Path(directory)
        self.n, self.max_length, self.k, self.vocab_size = n_examples, max_length, k, vocab_size
        self.pad_token_id = pad_token_id
        self.filled = False
        self.teacher: dict = {}
        self._open("w+")
        self._write_meta()  # filled: false until fill completes, so a half-written cache never opens

    def _open(self, mode: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        idx, shape = index_dtype(self.vocab_size), (self.n, self.max_length, self.k)
        specs = {"values.f16": (np.float16, shape), "indices.bin": (idx, shape),
                 "ids.bin": (idx, shape[:2]), "lengths.i32": (np.int32, (self.n,))}
        self.values, self.indices, self.ids, self.lengths = (
            np.memmap(self.dir / name, dtype=dtype, mode=mode, shape=s) for name, (dtype, s) in specs.items())

    @classmethod
    def open(cls, directory: str | Path) -> TopKCache:
        """A filled cache from ``directory`` (read-only)."""
        path = Path(directory) / "meta.json"
        if not path.exists():
            raise DecoderError(f"{directory} holds no top-k cache (no meta.json). Fix: build one with "
                               "TopKCache(directory, ...).fill(teacher, batches).")
        meta = json.loads(path.read_text())
        if not meta["filled"]:
            raise DecoderError(f"the top-k cache in {directory} was never completely filled. Fix: fill it again.")
        cache = cls.__new__(cls)
        cache.dir, cache.filled, cache.teacher = Path(directory), True, meta["teacher"]
        cache.n, cache.max_length, cache.k = meta["n_examples"], meta["max_length"], meta["k"]
        cache.vocab_size, cache.pad_token_id = meta["vocab_size"], meta["pad_token_id"]
        cache._open("r")
        return cache

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the cache files (what ``estimate_bytes`` predicts)."""
        return sum((self.dir / name).stat().st_size for name in FILES)

    def _write_meta(self) -> None:
        meta = {"n_examples": self.n, "max_length": self.max_length, "k": self.k, "vocab_size": self.vocab_size,
                "pad_token_id": self.pad_token_id, "index_dtype": index_dtype(self.vocab_size).name,
                "filled": self.filled, "teacher": self.teacher, "files": list(FILES)}
        (self.dir / "meta.json").write_text(json.dumps(meta, indent=1))

    @torch.no_grad()
    def fill(self, teacher, batches: Iterable[Mapping[str, torch.Tensor]],
             progress: Callable[[int, int], None] | None = None, chunk_tokens: int = 1024) -> TopKCache:
        """Run the eval-mode ``teacher`` over ``batches`` ({input_ids, attention_mask}, examples 0..N-1 in
        order, either padding side) and store its top-k per real token. Keeps no reference to the teacher.

        The LM head runs on ``chunk_tokens`` real tokens at a time, so the full (B, T, V) logits never exist.
        """
        check_supported(teacher)
        if teacher.training:
            raise DecoderError("the teacher is in train mode (dropout on), so its logits change per call and cannot "
                               "be cached. Fix: call teacher.eval() first.")
        if teacher.config.vocab_size != self.vocab_size:
            raise DecoderError(f"the teacher's vocabulary has {teacher.config.vocab_size} tokens, the cache was made "
                               f"for {self.vocab_size}. Fix: pass vocab_size=teacher.config.vocab_size.")
        self.filled = False
        self._write_meta()
        self._open("r+")  # writable again if this cache was filled (and reopened read-only) before
        head, done = teacher.get_output_embeddings(), 0
        for batch in batches:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            if ids.shape[1] > self.max_length or done + len(ids) > self.n:
                raise DecoderError(f"batch of shape {tuple(ids.shape)} after {done} examples does not fit the cache's "
                                   f"{self.n} examples x {self.max_length} tokens. Fix: size the cache for the "
                                   "dataset and tokenize with the same max_length.")
            hidden = teacher.model(**model_inputs(ids, mask)).last_hidden_state
            for b in range(len(ids)):
                pos = mask[b].nonzero().squeeze(1)
                i, n = done + b, len(pos)
                self.lengths[i] = n
                self.ids[i, :n] = ids[b, pos].numpy()
                self.ids[i, n:] = self.pad_token_id
                self.values[i, n:], self.indices[i, n:] = 0, 0
                for start in range(0, n, chunk_tokens):
                    logits = head(hidden[b, pos[start:start + chunk_tokens]]).float()
                    top = logits.topk(self.k, dim=-1)
                    self.values[i, start:start + len(logits)] = (top.values - top.values[:, :1]).numpy()
                    self.indices[i, start:start + len(logits)] = top.indices.numpy()
            done += len(ids)
            if progress is not None:
                progress(done, self.n)
        if done != self.n:
            raise DecoderError(f"the batches held {done} examples but the cache was made for {self.n}. "
                               "Fix: pass every training example once, in order.")
        for arr in (self.values, self.indices, self.ids, self.lengths):
            arr.flush()
        self.filled = True
        self.teacher = {"model_type": teacher.config.model_type,
                        "name_or_path": getattr(teacher.config, "name_or_path", "") or ""}
        self._write_meta()
        self._open("r")
        return self

    def get(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A left-padded batch of examples ``indices``: input_ids, attention_mask (B, T) and the teacher's
        topk_values (float32) / topk_indices (int64), (B, T, k), T the longest example."""
        if not self.filled:
            raise DecoderError("the top-k cache is empty. Fix: call fill(teacher, batches) first.")
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= self.n:
            raise DecoderError(f"example indices {idx.tolist()[:5]} are outside the cache's 0..{self.n - 1}.")
        lengths = self.lengths[idx].astype(np.int64)
        width = int(lengths.max())
        ids = np.full((len(idx), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        values = np.zeros((len(idx), width, self.k), dtype=np.float32)
        top = np.zeros((len(idx), width, self.k), dtype=np.int64)
        for b, (i, n) in enumerate(zip(idx, lengths)):
            ids[b, width - n:] = self.ids[i, :n]
            mask[b, width - n:] = 1
            values[b, width - n:] = self.values[i, :n]
            top[b, width - n:] = self.indices[i, :n]
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "topk_values": torch.from_numpy(values), "topk_indices": torch.from_numpy(top)}
