"""The decoder side of a causal-LM bundle: its manifest section, tokenizer, graph IO and KV cache.

The graph contract is docs/decoder.md: token inputs (batch, sequence), ``attention_mask`` over
past + new positions, ``past_key_values.{i}.key/value`` (batch, H_kv, past, D) in, ``logits`` and
``present.{i}.key/value`` = concat(past, new) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from ..backends.base import Backend, TensorSpec
from ..bundle.format import MANIFEST, manifest_value
from ..errors import BundleError

TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")


def kv_names(num_layers: int) -> list[tuple[str, str]]:
    """(past input, present output) name pairs, key then value, layer by layer."""
    return [(f"past_key_values.{i}.{kind}", f"present.{i}.{kind}")
            for i in range(num_layers) for kind in ("key", "value")]


@dataclass(frozen=True)
class DecoderSpec:
    """What generation reads from the manifest's causal-lm ``task`` section (checked at load)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None = None
    chat_template: str | None = None
    think: tuple[str, str] | None = None  # (start, end) marker texts
    graph_ops: str = "standard"            # manifest model.graph_ops: "ort-contrib" graphs update the cache in place

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "DecoderSpec":
        task = manifest_value(manifest, "task", dict)
        think = task.get("think")
        return cls(num_layers=task["num_layers"], num_kv_heads=task["num_key_value_heads"], head_dim=task["head_dim"],
                   vocab_size=task["vocab_size"], max_context=task["max_context"],
                   eos_token_ids=tuple(task["eos_token_ids"]), pad_token_id=task["pad_token_id"],
                   bos_token_id=task.get("bos_token_id"), chat_template=task.get("chat_template"),
                   think=(think["start"], think["end"]) if think else None,
                   graph_ops=(manifest.get("model") or {}).get("graph_ops", "standard"))


class DecoderTokenizer:
    """The bundle's tokenizer.json for generation: no truncation, no padding (the generator pads)."""

    def __init__(self, path: str | Path, spec: DecoderSpec):
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise BundleError(f"{path}: not a readable tokenizers file ({exc}). Fix: recompile the bundle.") from None
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = spec.max_context  # serve's metadata reads this, as for an encoder bundle
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        for name, ids in (("eos_token_ids", spec.eos_token_ids), ("pad_token_id", [spec.pad_token_id])):
            bad = [i for i in ids if self.tokenizer.id_to_token(i) is None]
            if bad:
                raise BundleError(f"{MANIFEST}: task.{name} {bad} not in the tokenizer's {size} tokens. "
                                  f"Fix: recompile the bundle.")
        self.think_ids: tuple[int, int] | None = None
        if spec.think:
            ids = tuple(self.tokenizer.token_to_id(t) for t in spec.think)
            if None in ids:
                raise BundleError(f"{MANIFEST}: task.think names {list(spec.think)}, but the tokenizer has no single "
                                  f"token for {[t for t, i in zip(spec.think, ids) if i is None]}. Fix: recompile.")
            self.think_ids = ids  # type: ignore[assignment]

    @classmethod
    def from_manifest(cls, bundle_dir: str | Path, manifest: Mapping[str, Any],
                      spec: DecoderSpec) -> "DecoderTokenizer":
        file = manifest_value(manifest, "tokenizer.file", str)
        if file not in manifest.get("files", {}):
            raise BundleError(f"{MANIFEST}: tokenizer.file {file!r} is not among the bundle's hashed files. "
                              f"Fix: recompile the bundle.")
        return cls(Path(bundle_dir) / file, spec)

    def token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.tokenizer.id_to_token(token_id)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


# ---------------------------------------------------------------- KV cache

class BufferCache:
    """Preallocated (B, H_kv, capacity, D) arrays per past input; each step copies the new
    positions out of ``present`` and feeds views of the filled part."""

    def __init__(self, names: Sequence[tuple[str, str]], batch: int, heads: int, capacity: int, head_dim: int,
                 dtype: np.dtype):
        self.names = names
        self.buffers = {past: np.zeros((batch, heads, capacity, head_dim), dtype=dtype) for past, _ in names}
        self.length = 0

    def feeds(self) -> dict[str, np.ndarray]:
        return {past: buf[:, :, :self.length] for past, buf in self.buffers.items()}

    def load(self, presents: Mapping[str, np.ndarray], length: int) -> None:
        """Start from a prefill's ``present`` tensors (``length`` positions)."""
        for past, present in self.names:
            self.buffers[past][:, :, :length] = presents[present]
        self.length = length

    def update(self, outputs: Mapping[str, np.ndarray], new: int) -> None:
        end = self.length + new
        for past, present in self.names:
            self.buffers[past][:, :, self.length:end] = outputs[present][:, :, self.length:end]
        self.length = end


class PresentCache:
    """Feeds each step's ``present`` (concat(past, new), made by the graph) back as the next past."""

    def __init__(self, names: Sequence[tuple[str, str]], batch: int, heads: int, capacity: int, head_dim: int,
                 dtype: np.dtype):
        self.names = names
        self.past = {past: np.zeros((batch, heads, 0, head_dim), dtype=dtype) for past, _ in names}
        self.length = 0

    def feeds(self) -> dict[str, np.ndarray]:
        return self.past

    def update(self, outputs: Mapping[str, np.ndarray], new: int) -> None:
        self.past = {past: outputs[present] for past, present in self.names}
        self.length += new

    def load(self, presents: Mapping[str, np.ndarray], length: int) -> None:
        self.past = {past: presents[present] for past, present in self.names}
        self.length = length

    def presents(self) -> dict[str, np.ndarray]:
        return {present: self.past[past] for past, present in self.names}


class BoundCache:
    """Decode steps of an ort-contrib graph (docs/decoder.md) through ONNX Runtime's IO binding.

    Each layer's (B, H_kv, capacity, D) buffer is bound as both its past input and its present
    output: GroupQueryAttention reads the first T positions (T = the mask's width) and writes the new
    one in place, so no step copies the cache, and token ids, positions and logits stay bound to the
    same arrays. Only the mask is bound anew per step (it grows). ``run`` returns the logits array,
    overwritten by the next step."""

    def __init__(self, session, names: Sequence[tuple[str, str]], batch: int, heads: int, capacity: int,
                 head_dim: int, dtype: np.dtype, token_dtype: np.dtype, vocab_size: int):
        import onnxruntime as ort

        self._ort, self.session, self.names, self.capacity = ort, session, names, capacity
        self.buffers = {past: np.zeros((batch, heads, capacity, head_dim), dtype=dtype) for past, _ in names}
        self.binding = session.io_binding()
        self._values = []  # the OrtValues alias the arrays above; kept alive with them
        for past, present in names:
            value = ort.OrtValue.ortvalue_from_numpy(self.buffers[past])
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)
            self._values.append(value)
        self.ids = np.zeros((batch, 1), dtype=token_dtype)
        self.positions = np.zeros((batch, 1), dtype=token_dtype)
        self.logits = np.zeros((batch, 1, vocab_size), dtype=np.float32)
        for name, array, bind in (("input_ids", self.ids, self.binding.bind_ortvalue_input),
                                  ("position_ids", self.positions, self.binding.bind_ortvalue_input),
                                  ("logits", self.logits, self.binding.bind_ortvalue_output)):
            value = ort.OrtValue.ortvalue_from_numpy(array)
            bind(name, value)
            self._values.append(value)
        self.length = 0

    def load(self, presents: Mapping[str, np.ndarray], length: int) -> None:
        for past, present in self.names:
            self.buffers[past][:, :, :length] = presents[present]
        self.length = length

    def step(self, tokens: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One decode step: ``tokens`` (B,) at ``positions`` (B, 1) over ``mask`` (B, length + 1);
        returns the (B, V) logits, a view the next step overwrites."""
        self.ids[:, 0] = tokens
        self.positions[:] = positions
        mask = np.ascontiguousarray(mask)  # a view already when batch is 1
        self.binding.bind_ortvalue_input("attention_mask", self._ort.OrtValue.ortvalue_from_numpy(mask))
        self.session.run_with_iobinding(self.binding)
        self.length += 1
        return self.logits[:, 0, :]


def bound_session(backend: Backend):
    """The onnxruntime CPU session a BoundCache can drive, or None (another backend or provider)."""
    session = getattr(backend, "session", None)
    if session is None or getattr(backend, "provider", None) != "CPUExecutionProvider":
        return None
    return session


# Feeding present back is the default: it measured faster. onnxruntime's Python binding copies a
# non-contiguous numpy view (a buffer's [:, :, :length] slice) into a fresh contiguous tensor
# before every run, and the graph's Concat copies the past again into present, so on this graph
# the buffers add a copy of the whole cache per step and save none. Decode tokens/s, median of
# interleaved runs, onnxruntime 1.32 CPU, 1 thread, x86-64 dev host shared with other jobs (noisy):
#   tiny Qwen2 of tests/runtime/test_generate.py (2 layers, 2 KV heads x 16, vocab 349), 200 new tokens:
#     batch 1: present 11134, buffers 10266;  batch 4: present 35913, buffers 32846 (all rows)
#   8 layers, hidden 512, 2 KV heads x 64, 480 new tokens (context 490):
#     batch 1: present 284, buffers 272;  batch 4: present 551, buffers 365
# Buffers pay off only with a graph that writes the new positions in place: BoundCache, for the
# ort-contrib graph, binds them through IO binding. "buffers" stays selectable (Generator(kv_cache=...)).
# "bound" (BoundCache) needs an ort-contrib graph on ONNX Runtime's CPU provider, and is then the default.
KV_CACHES = {"present": PresentCache, "buffers": BufferCache, "bound": BoundCache}


def check_decoder_io(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], spec: DecoderSpec) -> None:
    """The graph has exactly the contract's inputs and outputs for ``spec.num_layers`` layers."""
    pairs = kv_names(spec.num_layers)
    want_in = {*TOKEN_INPUTS, *(p for p, _ in pairs)}
    want_out = {"logits", *(p for _, p in pairs)}
    got_in, got_out = {s.name for s in inputs}, {s.name for s in outputs}
    if got_in != want_in or not want_out <= got_out:
        raise BundleError(f"the graph's inputs {sorted(got_in)[:8]}... / outputs {sorted(got_out)[:8]}... are not the "
                          f"KV-cache contract for {spec.num_layers} layers (docs/decoder.md; missing inputs "
                          f"{sorted(want_in - got_in)[:4]}, unexpected {sorted(got_in - want_in)[:4]}, missing outputs "
                          f"{sorted(want_out - got_out)[:4]}). Fix: re-export with edgekit.export.decoder.")
    dtypes = {s.name: s.dtype for s in inputs}
    token = {dtypes[n] for n in TOKEN_INPUTS}
    if len(token) != 1 or not token <= {"int64", "int32"}:
        raise BundleError(f"the graph's token inputs have dtypes { {n: dtypes[n] for n in TOKEN_INPUTS} }; the "
                          f"contract wants one of int64 / int32 for all three. Fix: re-export with "
                          f"edgekit.export.decoder.")


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Prefill feeds for token rows: ids and mask padded on the left, positions cumsum(mask) - 1 >= 0."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=dtype)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = row
        mask[b, width - len(row):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(dtype)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def smoke_feeds(backend: Backend, spec: DecoderSpec, ids: Sequence[int]) -> dict[str, np.ndarray]:
    """A batch-1 prefill of ``ids`` with an empty past, after checking the graph's IO (load's smoke run)."""
    check_decoder_io(backend.inputs, backend.outputs, spec)
    dtypes = {s.name: np.dtype(s.dtype) for s in backend.inputs}
    # at least one token: an empty prefill is no real call (ONNX Runtime's GroupQueryAttention refuses it)
    ids = list(ids) or [spec.bos_token_id if spec.bos_token_id is not None else spec.pad_token_id]
    feeds = left_pad([ids], spec.pad_token_id, dtypes["input_ids"])
    for past, _ in kv_names(spec.num_layers):
        feeds[past] = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), dtype=dtypes[past])
    return feeds
