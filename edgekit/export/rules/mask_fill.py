"""fp16-safe attention masks: clamp huge negative mask fills to -1e4.

Transformers builds the additive attention mask with finfo(float32).min (Where(keep, 0, min) or
(1 - mask) * min); in fp16 that is -inf, and a fully padded row turns into NaN. -1e4 (BERT's
original value) still zeroes masked keys after Softmax and fits fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, numpy_helper

from ..graph import STANDARD_DOMAINS, GraphEdit, GraphIndex, node_label
from .base import RewriteRule, register

SAFE_FILL = -1e4
# Ops that may read the fill constant directly, and ops a mask passes through on its way to
# the attention scores (broadcasting, reshaping, combining masks).
FILL_READERS = ("Where", "Mul", "Add", "Expand", "Cast", "Identity", "Min")
MASK_PATH = FILL_READERS + ("Sub", "Unsqueeze", "Squeeze", "Reshape", "Slice", "Transpose", "Concat",
                            "Tile", "Gather", "Max")
MAX_DEPTH = 12
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class MaskFill:
    tensor: str  # the initializer or the Constant/ConstantOfShape output to rewrite
    value: np.ndarray


def _reaches_softmax(index: GraphIndex, node) -> bool:
    frontier, seen = [node], set()
    for _ in range(MAX_DEPTH):
        nxt = []
        for n in frontier:
            if n.op_type == "Softmax":
                return True
            if n.op_type in MASK_PATH and id(n) not in seen:
                seen.add(id(n))
                nxt.extend(u for o in n.output for u in index.users(o))
        frontier = nxt
    return False


class Fp16SafeMask(RewriteRule):
    name = "fp16-safe-mask"
    description = "attention-mask fill constants below -1e4 (finfo.min) -> -1e4, which fp16 can hold"
    removes_ops = ()

    def candidates(self, index: GraphIndex):
        for t in index.graph.initializer:
            if t.data_type in _FLOATS and t.name not in index.input_names:
                yield f"initializer {t.name}", (t.name, numpy_helper.to_array(t))
        for node in index.graph.node:
            if node.domain not in STANDARD_DOMAINS or node.op_type not in ("Constant", "ConstantOfShape"):
                continue
            value = index.constant(node.output[0]) if node.op_type == "Constant" else next(
                (numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
            if value is not None and value.dtype.kind == "f":
                yield f"node {node_label(node)}", (node.output[0], value)

    def check(self, index: GraphIndex, anchor) -> MaskFill | str | None:
        tensor, value = anchor
        if value.size == 0 or value.min() >= SAFE_FILL:
            return None  # not a fill value: not a candidate, no line in the report
        readers = index.users(tensor)
        if not readers:
            return "nothing reads it"
        for reader in readers:
            if reader.op_type not in FILL_READERS:
                return (f"value {value.min():.4g} is read by {node_label(reader)} ({reader.op_type}), "
                        f"not by a mask op {FILL_READERS}, so it is not a mask fill")
            if not _reaches_softmax(index, reader):
                return (f"value {value.min():.4g} feeds {node_label(reader)} ({reader.op_type}), which does not "
                        f"reach a Softmax within {MAX_DEPTH} mask ops, so it is not an attention-mask fill")
        return MaskFill(tensor, value)

    def replace(self, edit: GraphEdit, index: GraphIndex, match: MaskFill) -> str:
        safe = np.where(match.value < SAFE_FILL, SAFE_FILL, match.value).astype(match.value.dtype)
        edit.constants[match.tensor] = safe.reshape(match.value.shape)
        return f"tensor {match.tensor}: mask fill {match.value.min():.4g} -> {SAFE_FILL:g}"


register(Fp16SafeMask())
