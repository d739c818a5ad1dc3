"""ONNX post-passes that make a QDQ graph store int8 tensors (pure onnx + numpy, standard ops only).

``fold_weight_quantize``  QuantizeLinear of a constant weight -> an int8 initializer feeding the
                          DequantizeLinear, so the file holds int8 weights instead of fp32 weights
                          plus scales; a Transpose right after such a DequantizeLinear is folded into
                          the int8 tensor too (its axis follows), so MatMul reads the DQ directly.
``quantize_embeddings``   weight-only int8 for large Gather tables, with per-row fp32 scales.

Both return ``(model, report)``, never change their input, and check the result with
``onnx.checker`` (full_check). ``fold_weight_quantize`` computes exactly what QuantizeLinear
computes: saturate(round_half_to_even(x / scale) + zero_point), in float32, per axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit_runtime.errors import EdgekitError

from ..export.graph import GraphEdit, GraphIndex, NameScope, node_label


class Int8GraphError(EdgekitError):
    """An int8 post-pass produced an invalid graph."""


_QRANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


@dataclass(frozen=True)
class FoldReport:
    folded: int                       # QuantizeLinear nodes turned into int8 initializers
    transposes_folded: int            # DQ -> Transpose pairs whose transpose moved into the int8 tensor
    skipped: tuple[str, ...]          # "node: reason" for each QuantizeLinear left in place
    bytes_before: int
    bytes_after: int


@dataclass(frozen=True)
class EmbeddingReport:
    tables: tuple[str, ...]           # initializers replaced by int8 tables + per-row scales
    gathers: int                      # Gather nodes rewritten
    max_abs_error: float              # max |dequantized - original| over every quantized table
    error_bound: float                # max over rows of scale / 2 = max|table| / 254 (the rounding bound)
    skipped: tuple[str, ...]
    bytes_before: int
    bytes_after: int


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_through(index: GraphIndex, name: str) -> np.ndarray | None:
    """The value of ``name`` if it is a constant, possibly behind Identity / Transpose nodes."""
    value = index.constant(name)
    if value is not None:
        return value
    node = index.producer.get(name)
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("Identity", "Transpose"):
        return None
    value = _constant_through(index, node.input[0])
    if value is None or node.op_type == "Identity":
        return value
    return value.transpose(_attr(node, "perm", None) or tuple(reversed(range(value.ndim))))


def quantize_like_onnx(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear (opset 13): per tensor for a scalar scale, else along ``axis``."""
    x, scale = np.asarray(x, np.float32), np.asarray(scale, np.float32)
    zero_point = np.asarray(zero_point)
    if scale.ndim == 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    lo, hi = _QRANGE[zero_point.dtype]
    q = np.rint(x / scale) + zero_point.astype(np.float32)   # rint: round half to even, as ONNX says
    return np.clip(q, lo, hi).astype(zero_point.dtype)


def _checked(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise Int8GraphError(f"{what} produced an invalid graph: {exc}. Fix: report this model; the pass "
                           f"has a bug for this pattern.") from None
    return model


def _fold_quantize(graph: onnx.GraphProto) -> tuple[int, list[str], dict[str, str]]:
    """Phase 1: every QuantizeLinear of a constant becomes an initializer; returns int8 name -> scale name."""
    index, edit = GraphIndex(graph), GraphEdit(graph, NameScope(graph))
    folded, skipped, made = 0, [], {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        x = _constant_through(index, node.input[0])
        scale = index.constant(node.input[1])
        zp = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if x is None:
            continue  # an activation: it stays a QuantizeLinear
        if scale is None or zp is None:
            skipped.append(f"{node_label(node)}: scale or zero point is not a constant")
            continue
        if node.output[0] in index.outputs:
            skipped.append(f"{node_label(node)}: its output is a graph output")
            continue
        q = quantize_like_onnx(x, scale, zp, _attr(node, "axis", 1))
        name = edit.names.fresh(f"{node.input[0]}_quantized")
        edit.initializers.append(numpy_helper.from_array(q, name))
        edit.renamed[node.output[0]] = name   # readers take the int8 tensor; the Q node goes dead
        made[name] = node.input[1]
        folded += 1
    edit.commit()
    return folded, skipped, made


def _fold_transposes(graph: onnx.GraphProto, made: dict[str, str]) -> int:
    """Phase 2: DequantizeLinear(int8 const) -> Transpose becomes DequantizeLinear(transposed const)."""
    index, edit = GraphIndex(graph), GraphEdit(graph, NameScope(graph))
    count = 0
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in made or len(index.users(dq.input[0])) != 1:
            continue
        tr = index.sole_consumer(dq.output[0])
        if tr is None or tr.op_type != "Transpose" or dq.output[0] in index.outputs:
            continue
        q = index.constant(dq.input[0])
        perm = list(_attr(tr, "perm", None) or reversed(range(q.ndim)))
        name = edit.names.fresh(f"{dq.input[0]}_t")
        edit.initializers.append(numpy_helper.from_array(np.ascontiguousarray(q.transpose(perm)), name))
        scale = index.constant(dq.input[1])
        kwargs = {"axis": perm.index(_attr(dq, "axis", 1) % q.ndim)} if scale.ndim == 1 else {}
        new = helper.make_node("DequantizeLinear", [name, *dq.input[1:]], [tr.output[0]],
                               name=edit.names.fresh(f"{dq.name or 'DequantizeLinear'}_transposed"), **kwargs)
        edit.replace_producer(tr.output[0], [new])   # the old DQ and its int8 tensor go dead
        count += 1
    edit.commit()
    return count


def fold_weight_quantize(model: onnx.ModelProto, fold_transposes: bool = True) -> tuple[onnx.ModelProto, FoldReport]:
    """Store int8 weights: fold each QuantizeLinear of a constant into an int8 initializer.

    With ``fold_transposes`` a Transpose reading such a DequantizeLinear is folded into the int8
    tensor and the DQ axis remapped (per-axis DQ -> MatMul, the form ORT and TensorRT fuse).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    folded, skipped, made = _fold_quantize(out.graph)
    transposed = _fold_transposes(out.graph, made) if fold_transposes and made else 0
    _checked(out, "fold_weight_quantize")
    return out, FoldReport(folded, transposed, tuple(skipped), model.ByteSize(), out.ByteSize())


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row, narrow range: (q [rows, cols] int8, scale [rows, 1] float32)."""
    amax = np.abs(table).max(axis=1, keepdims=True).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return np.clip(np.rint(table / scale), -127, 127).astype(np.int8), scale


def quantize_embeddings(model: onnx.ModelProto, min_rows: int = 1000) -> tuple[onnx.ModelProto, EmbeddingReport]:
    """Weight-only int8 for every Gather(axis 0) of an fp32 2-D initializer with >= ``min_rows`` rows.

    ``Gather(table, ids)`` becomes ``Cast(Gather(table_int8, ids), float) * Gather(scales, ids)``;
    scales are stored as [rows, 1], so the gathered scale broadcasts over the row (no Unsqueeze).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index, edit = GraphIndex(graph), GraphEdit(graph, NameScope(graph))
    tables: dict[str, tuple[str, str]] = {}
    skipped: list[str] = []
    gathers, max_err, bound = 0, 0.0, 0.0
    for node in graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        data = node.input[0]
        init = index.initializers.get(data)
        if init is None or init.data_type != TensorProto.FLOAT or len(init.dims) != 2 or init.dims[0] < min_rows:
            continue
        readers = index.users(data)
        if data in index.input_names or data in index.outputs or any(
                r.op_type != "Gather" or _attr(r, "axis", 0) != 0 for r in readers):
            skipped.append(f"{node_label(node)}: table {data!r} is also read by something other than a "
                           f"Gather on axis 0 (or is a graph input/output); the fp32 table would have to stay")
            continue
        if data not in tables:
            table = numpy_helper.to_array(init)
            q, scale = quantize_rows(table)
            max_err = max(max_err, float(np.abs(q.astype(np.float32) * scale - table).max()))
            bound = max(bound, float(np.abs(table).max()) / 127 / 2)   # all-zero rows (padding) are exact
            names = (edit.names.fresh(f"{data}_int8"), edit.names.fresh(f"{data}_row_scale"))
            edit.initializers += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1])]
            tables[data] = names
        q_name, s_name = tables[data]
        base, ids = node.name or data, node.input[1]
        rows, rows_f, scales = (edit.names.fresh(f"{base}/{s}") for s in ("int8_rows", "rows_float", "row_scales"))
        edit.replace_producer(node.output[0], [
            helper.make_node("Gather", [q_name, ids], [rows], name=edit.names.fresh(f"{base}/GatherInt8")),
            helper.make_node("Cast", [rows], [rows_f], to=TensorProto.FLOAT, name=edit.names.fresh(f"{base}/Cast")),
            helper.make_node("Gather", [s_name, ids], [scales], name=edit.names.fresh(f"{base}/GatherScale")),
            helper.make_node("Mul", [rows_f, scales], [node.output[0]], name=edit.names.fresh(f"{base}/Dequantize")),
        ])
        gathers += 1
    edit.commit()   # the fp32 tables are no longer read: remove_dead_nodes drops them
    _checked(out, "quantize_embeddings")
    return out, EmbeddingReport(tuple(tables), gathers, max_err, bound, tuple(skipped), model.ByteSize(),
                                out.ByteSize())


def unshare_activation_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Give every reader of a quantized activation its own QuantizeLinear -> DequantizeLinear pair.

    onnxsim's common-subexpression pass merges the identical Q -> DQ pairs in front of Q, K and V
    (one input, one observed range) into a single pair with three readers. onnxruntime fuses
    DQ -> MatMul into an int8 MatMul only for a QDQ "node unit" whose DQ has one reader, so those
    MatMuls ran in fp32 on dequantized values. Per-reader pairs compute the same values
    (QuantizeLinear and DequantizeLinear are elementwise and deterministic); the runtime keeps
    onnxruntime's own CSE from merging them again. Returns the model and the number of pairs added.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph_outputs = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):  # a node reading a tensor twice is one reader
            readers.setdefault(name, []).append(node)
    names = NameScope(graph)
    before: dict[int, list[onnx.NodeProto]] = {}   # id(reader) -> the copies to insert ahead of it
    dead: set[int] = set()
    added = 0
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or q.output[0] in graph_outputs:
            continue
        dqs = readers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or d.output[0] in graph_outputs for d in dqs):
            continue
        pairs = [(dq, user) for dq in dqs for user in readers.get(dq.output[0], [])]
        for dq, user in pairs[1:]:
            tag = user.name or user.op_type
            q2, dq2 = onnx.NodeProto(), onnx.NodeProto()
            q2.CopyFrom(q)
            dq2.CopyFrom(dq)
            q2.name, dq2.name = names.fresh(f"{q.name or 'QuantizeLinear'}_for_{tag}"), names.fresh(
                f"{dq.name or 'DequantizeLinear'}_for_{tag}")
            q2.output[0] = dq2.input[0] = names.fresh(f"{q.output[0]}_for_{tag}")
            dq2.output[0] = names.fresh(f"{dq.output[0]}_for_{tag}")
            for i, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[i] = dq2.output[0]
            before.setdefault(id(user), []).extend([q2, dq2])
            added += 1
        kept = pairs[0][0] if pairs else None
        dead.update(id(d) for d in dqs if d is not kept)
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(id(node), []))
        if id(node) not in dead:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return _checked(out, "unshare_activation_qdq"), added
