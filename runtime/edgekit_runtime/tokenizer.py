"""Texts -> model feeds, exactly as the bundle's manifest says: its tokenizer.json, max length,
pad id and sides, and the graph's input names and dtypes. Nothing is guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from .bundle.format import manifest_value
from .errors import BundleError, InputError

# Graph input name -> the tokenizers.Encoding attribute that feeds it.
FEEDABLE = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
DTYPES = {"int64": np.int64, "int32": np.int32}
SIDES = ("left", "right")


@dataclass(frozen=True)
class EncodedBatch:
    """One batch ready to run: the feeds, which texts were cut, and the encodings themselves
    (offsets and word ids, for post-processors of token-level tasks)."""

    feeds: dict[str, np.ndarray]
    truncated: tuple[bool, ...]
    encodings: tuple[Encoding, ...]


def check_texts(texts: Iterable[str]) -> list[str]:
    """Reject what cannot be classified; errors name the index, never the text."""
    if isinstance(texts, (str, bytes)):
        raise InputError("texts is a single string, expected a list of strings. Fix: pass [text].")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text {i} is a {type(text).__name__}, expected a string. Fix: pass str values "
                             f"(decode bytes first).", index=i)
        if not text.strip():
            raise InputError(f"text {i} is empty or only whitespace; there is nothing to classify. "
                             f"Fix: remove it or give it content.", index=i)
    return texts


class TextEncoder:
    """A tokenizer.json with the bundle's truncation and padding applied (pad to the longest)."""

    def __init__(self, tokenizer_path: str | Path, inputs: Sequence[tuple[str, str]], *, max_length: int,
                 pad_token_id: int, padding_side: str = "right", truncation_side: str = "right"):
        self.inputs = tuple(inputs)  # (graph input name, dtype word) in graph order
        for name, dtype in self.inputs:
            if name not in FEEDABLE:
                raise BundleError(f"model input {name!r}: this runtime cannot feed it from text; it feeds "
                                  f"{list(FEEDABLE)}. Fix: export the model with only those inputs, or use a "
                                  f"runtime version that supports this input.")
            if dtype not in DTYPES:
                raise BundleError(f"model input {name!r}: dtype {dtype!r} is not a token dtype "
                                  f"({list(DTYPES)}). Fix: recompile the bundle (the int32 rewrite gives int32).")
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise BundleError(f"{tokenizer_path}: not a readable tokenizers file ({exc}). "
                              f"Fix: recompile the bundle with a fast tokenizer.") from None
        pad_token = self.tokenizer.id_to_token(pad_token_id)
        if pad_token is None:
            raise BundleError(f"tokenizer.pad_token_id {pad_token_id} is not in {tokenizer_path}'s vocabulary "
                              f"({self.tokenizer.get_vocab_size()} tokens). Fix: recompile the bundle.")
        # Override whatever truncation/padding tokenizer.json carries: the manifest decides.
        self.tokenizer.enable_truncation(max_length, direction=truncation_side)
        self.tokenizer.enable_padding(direction=padding_side, pad_id=pad_token_id, pad_token=pad_token)

    @classmethod
    def from_manifest(cls, bundle_dir: str | Path, manifest: Mapping[str, Any]) -> "TextEncoder":
        """Build the encoder a bundle describes (its tokenizer section and model inputs)."""
        file = manifest_value(manifest, "tokenizer.file", str)
        if file not in manifest.get("files", {}):
            raise BundleError(f"manifest.json: tokenizer.file {file!r} is not among the bundle's hashed files. "
                              f"Fix: recompile the bundle.")
        max_length = manifest_value(manifest, "tokenizer.max_length", int)
        pad_token_id = manifest_value(manifest, "tokenizer.pad_token_id", int)
        sides = {key: manifest_value(manifest, f"tokenizer.{key}", str) for key in ("padding_side", "truncation_side")}
        if max_length <= 0 or pad_token_id < 0:
            raise BundleError(f"manifest.json: tokenizer.max_length {max_length} / pad_token_id {pad_token_id}: "
                              f"expected a positive length and a non-negative id. Fix: recompile the bundle.")
        for key, side in sides.items():
            if side not in SIDES:
                raise BundleError(f"manifest.json: tokenizer.{key} is {side!r}, expected one of {list(SIDES)}. "
                                  f"Fix: recompile the bundle.")
        inputs = []
        for i, spec in enumerate(manifest_value(manifest, "model.inputs", list)):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("dtype"), str):
                raise BundleError(f"manifest.json: model.inputs[{i}] is {spec!r}, expected "
                                  f"{{'name': str, 'dtype': str, 'shape': list}}. Fix: recompile the bundle.")
            inputs.append((spec["name"], spec["dtype"]))
        return cls(Path(bundle_dir) / file, inputs, max_length=max_length, pad_token_id=pad_token_id, **sides)

    def encode_batch(self, texts: Sequence[str]) -> EncodedBatch:
        """Tokenize one batch: truncate to max_length, pad to the longest text in the batch."""
        texts = check_texts(texts)
        if not texts:
            raise InputError("no texts to encode. Fix: pass at least one text.")
        encodings = tuple(self.tokenizer.encode_batch(texts))
        feeds = {name: np.array([getattr(enc, FEEDABLE[name]) for enc in encodings], dtype=DTYPES[dtype])
                 for name, dtype in self.inputs}
        # With stride 0 the tokenizer puts whatever max_length cut off into `overflowing`.
        truncated = tuple(bool(enc.overflowing) for enc in encodings)
        return EncodedBatch(feeds=feeds, truncated=truncated, encodings=encodings)

    def encode(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
        """The feeds for exactly the model's inputs, and how many texts were truncated."""
        batch = self.encode_batch(texts)
        return batch.feeds, sum(batch.truncated)
