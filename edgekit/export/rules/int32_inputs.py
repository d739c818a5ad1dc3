"""Token inputs as int32: many Jetson/TensorRT paths and ARM runtimes prefer int32 indices.

Each int64 graph input becomes int32 and is cast back to int64 right after it, so the rest of
the graph (Gather, Range, Shape arithmetic) is unchanged and exact for ids below 2**31.
"""

from __future__ import annotations

from onnx import TensorProto, helper

from ..graph import GraphEdit, GraphIndex
from .base import RewriteRule, register


class Int32Inputs(RewriteRule):
    name = "int32-inputs"
    description = "int64 graph inputs (input_ids, attention_mask, ...) become int32 with a Cast to int64 after them"
    removes_ops = ()

    def candidates(self, index: GraphIndex):
        for value in index.graph.input:
            if value.name not in index.initializers:
                yield f"input {value.name}", value

    def check(self, index: GraphIndex, value) -> str | object:
        elem = value.type.tensor_type.elem_type
        if elem != TensorProto.INT64:
            return f"type is {TensorProto.DataType.Name(elem).lower()}, not int64"
        if value.name in index.outputs:
            return "it is also a graph output, whose type would change"
        return value

    def replace(self, edit: GraphEdit, index: GraphIndex, value) -> str:
        edit.input_types[value.name] = TensorProto.INT32
        if index.users(value.name):
            wide = edit.names.fresh(f"{value.name}_int64")
            edit.prepended.append(helper.make_node(
                "Cast", [value.name], [wide], name=edit.names.fresh(f"/edgekit/{value.name}/Cast"),
                to=TensorProto.INT64))
            edit.renamed[value.name] = wide
        return f"input {value.name}: int64 -> int32"


register(Int32Inputs())
