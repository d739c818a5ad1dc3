"""Small helpers over one ONNX graph: producers, consumers, constants, batched edits, dead nodes.

Rewrite rules read a graph through ``GraphIndex`` and change it only through ``GraphEdit``, so a
rule's check never sees a half-rewritten graph.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

# Op domains every ONNX runtime implements; anything else is a vendor or contrib op.
STANDARD_DOMAINS = ("", "ai.onnx")


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, including those inside If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from iter_nodes(sub)


def node_label(node: onnx.NodeProto) -> str:
    """The node's name, or its op and first output when the exporter left it unnamed."""
    return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Tensors a node's subgraphs read (outer-scope references count as uses of the node)."""
    names: set[str] = set()
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            for inner in iter_nodes(sub):
                names.update(n for n in inner.input if n)
    return names


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a Constant node holds, or None for sparse/string constants."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


class GraphIndex:
    """Who produces and who reads each tensor of a graph's top level, and which are constants."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in dict.fromkeys([n for n in node.input if n] + sorted(_outer_names(node))):
                self.consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.input_names = {v.name for v in graph.input}
        self.outputs = {v.name for v in graph.output}

    def users(self, name: str) -> list[onnx.NodeProto]:
        return self.consumers.get(name, [])

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name``; None if several read it or it is a graph output."""
        users = self.users(name)
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a Constant node's output, else None."""
        # An initializer that is also a graph input can be overridden at run time: not a constant.
        if name in self.initializers and name not in self.input_names:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            return constant_node_value(node)
        return None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element numeric constant, else None."""
        value = self.constant(name)
        if value is None or value.size != 1 or value.dtype.kind not in "fiu":
            return None
        return float(value.reshape(()))


class NameScope:
    """Hands out node and tensor names that clash with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken: set[str] = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
        self.taken.update(t.name for t in graph.initializer)
        for node in iter_nodes(graph):
            self.taken.update([node.name, *node.input, *node.output])

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def _rename_inputs(node: onnx.NodeProto, renamed: dict[str, str]) -> None:
    for i, name in enumerate(node.input):
        if name in renamed:
            node.input[i] = renamed[name]
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in sub.node:
                _rename_inputs(inner, renamed)


def _set_node_value(node: onnx.NodeProto, value: np.ndarray) -> None:
    """Make a Constant / ConstantOfShape node hold ``value`` in its ``value`` attribute."""
    kept = [a for a in node.attribute if not a.name.startswith("value")]
    node.ClearField("attribute")
    node.attribute.extend(kept)
    node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))


@dataclass
class GraphEdit:
    """Changes recorded against one graph and applied together by ``commit``."""

    graph: onnx.GraphProto
    names: NameScope
    replaced: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    prepended: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    input_types: dict[str, int] = field(default_factory=dict)
    _scalars: dict[tuple[float, str], str] = field(default_factory=dict)

    def scalar(self, value: float, dtype: np.dtype, base: str) -> str:
        """Name of a 0-d initializer holding ``value`` (one per value and dtype per edit)."""
        key = (float(value), np.dtype(dtype).str)
        if key not in self._scalars:
            name = self.names.fresh(base)
            self.initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
            self._scalars[key] = name
        return self._scalars[key]

    def replace_producer(self, output: str, nodes: list[onnx.NodeProto]) -> None:
        """Put ``nodes`` where the node producing ``output`` stands (they must produce it)."""
        self.replaced[output] = nodes

    def commit(self) -> None:
        g = self.graph
        nodes = list(self.prepended)
        for node in g.node:
            key = node.output[0] if node.output else ""
            if key in self.replaced:
                nodes.extend(self.replaced[key])
                continue
            new = onnx.NodeProto()
            new.CopyFrom(node)
            _rename_inputs(new, self.renamed)
            if new.op_type in ("Constant", "ConstantOfShape") and key in self.constants:
                _set_node_value(new, self.constants[key])
            nodes.append(new)
        g.ClearField("node")
        g.node.extend(nodes)
        for tensor in g.initializer:
            if tensor.name in self.constants:
                tensor.CopyFrom(numpy_helper.from_array(self.constants[tensor.name], tensor.name))
        g.initializer.extend(self.initializers)
        for value in g.input:
            if value.name in self.input_types:
                value.type.tensor_type.elem_type = self.input_types[value.name]
        remove_dead_nodes(g)


def remove_dead_nodes(graph: onnx.GraphProto) -> int:
    """Drop nodes and initializers nothing reads, and stale value_info; return nodes removed."""
    live = {v.name for v in graph.output}
    dead: list[int] = []
    # graph.node is topologically sorted, so one backward sweep finds every dead node.
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        if any(o in live for o in node.output if o):
            live.update(n for n in node.input if n)
            live.update(_outer_names(node))
        else:
            dead.append(i)
    for i in dead:  # descending, so indices stay valid
        del graph.node[i]
    inputs = {v.name for v in graph.input}
    unused = [i for i, t in enumerate(graph.initializer) if t.name not in live and t.name not in inputs]
    for i in reversed(unused):
        del graph.initializer[i]
    produced = {o for n in graph.node for o in n.output} | inputs | {t.name for t in graph.initializer}
    stale = [i for i, v in enumerate(graph.value_info) if v.name not in produced]
    for i in reversed(stale):
        del graph.value_info[i]
    return len(dead)
