"""GELU substitution: replace the exact Erf GELU with an Erf-free approximation.

The legacy exporter writes GELU as Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5 (the two
Muls in either order, either operand constant). Targets without Erf get the tanh form
(error ~1e-3) or the cheaper sigmoid form x * sigmoid(1.702 x) (error ~2e-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import helper

from ..graph import GraphEdit, GraphIndex, node_label
from .base import RewriteRule, register

SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class GeluMatch:
    erf: str  # label of the Erf node
    x: str  # the GELU input
    out: str  # the GELU output; the node producing it is replaced
    dtype: np.dtype  # of the matched constants, so fp16 graphs stay fp16


def _close(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-3 * abs(target)


def _other(node, name: str) -> str | None:
    """The input of a two-input node that is not ``name`` (None if both are)."""
    rest = [n for n in node.input if n != name]
    return rest[0] if len(rest) == 1 else None


def match_erf_gelu(index: GraphIndex, erf) -> GeluMatch | str:
    """Match the Erf GELU subgraph around ``erf``, or say which part is missing."""
    scaled = index.producer.get(erf.input[0])
    if scaled is None or scaled.op_type not in ("Div", "Mul"):
        return "input is not Div(x, sqrt(2))"
    x, c = scaled.input
    if scaled.op_type == "Mul" and index.scalar(x) is not None:
        x, c = c, x
    target = SQRT2 if scaled.op_type == "Div" else 1 / SQRT2
    if not _close(index.scalar(c), target):
        return f"input is {scaled.op_type}(x, {c}) whose constant is not {target:.6g}, so not Div(x, sqrt(2))"
    dtype = index.constant(c).dtype
    add = index.sole_consumer(erf.output[0])
    if add is None or add.op_type != "Add":
        return "output does not feed exactly one Add(erf, 1)"
    if not _close(index.scalar(_other(add, erf.output[0]) or ""), 1.0):
        return f"Add {node_label(add)} does not add 1.0"
    mul = index.sole_consumer(add.output[0])
    if mul is None or mul.op_type != "Mul":
        return f"Add {node_label(add)} does not feed exactly one Mul"
    first = _other(mul, add.output[0]) or ""
    if first == x or _close(index.scalar(first), 0.5):
        # (1 + erf) * x * 0.5 or (1 + erf) * 0.5 * x: a second Mul brings in the other factor.
        last = index.sole_consumer(mul.output[0])
        second = _other(last, mul.output[0]) if last is not None and last.op_type == "Mul" else None
        ok = second == x if first != x else _close(index.scalar(second or ""), 0.5)
        if not ok:
            return f"Mul {node_label(mul)} is not followed by a Mul with {'0.5' if first == x else 'x'}"
        return GeluMatch(node_label(erf), x, last.output[0], dtype)
    half = index.producer.get(first)  # (1 + erf) * (x * 0.5)
    if half is not None and half.op_type == "Mul" and x in half.input:
        if _close(index.scalar(_other(half, x) or ""), 0.5):
            return GeluMatch(node_label(erf), x, mul.output[0], dtype)
    return f"Mul {node_label(mul)} does not multiply by x and 0.5"


class _SubstituteGelu(RewriteRule):
    removes_ops = ("Erf",)

    def candidates(self, index: GraphIndex):
        for node in index.graph.node:
            if node.op_type == "Erf" and node.domain in ("", "ai.onnx"):
                yield f"node {node_label(node)}", node

    def check(self, index: GraphIndex, anchor) -> GeluMatch | str:
        return match_erf_gelu(index, anchor)

    def replace(self, edit: GraphEdit, index: GraphIndex, match: GeluMatch) -> str:
        prefix = match.erf[: -len("/Erf")] if match.erf.endswith("/Erf") else match.erf
        edit.replace_producer(match.out, self.approximation(edit, match, prefix))
        return f"node {match.erf}: Erf GELU -> {self.name}"

    def approximation(self, edit: GraphEdit, m: GeluMatch, prefix: str) -> list:
        raise NotImplementedError


class GeluTanh(_SubstituteGelu):
    name = "gelu-tanh"
    description = "exact Erf GELU -> 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))) (Mul and Tanh only)"

    def approximation(self, edit: GraphEdit, m: GeluMatch, prefix: str) -> list:
        def const(value: float, tag: str) -> str:
            return edit.scalar(value, m.dtype, f"edgekit_gelu_tanh_{tag}")

        t = {k: edit.names.fresh(f"{prefix}/GeluTanh/{k}_output_0") for k in
             ("x2", "x3", "cubic", "inner", "scaled", "tanh", "one_plus", "half_x")}
        steps = [
            ("Mul", [m.x, m.x], t["x2"], "x2"),
            ("Mul", [t["x2"], m.x], t["x3"], "x3"),
            ("Mul", [t["x3"], const(0.044715, "coeff")], t["cubic"], "cubic"),
            ("Add", [m.x, t["cubic"]], t["inner"], "inner"),
            ("Mul", [t["inner"], const(math.sqrt(2 / math.pi), "sqrt_2_over_pi")], t["scaled"], "scaled"),
            ("Tanh", [t["scaled"]], t["tanh"], "tanh"),
            ("Add", [t["tanh"], const(1.0, "one")], t["one_plus"], "one_plus"),
            ("Mul", [m.x, const(0.5, "half")], t["half_x"], "half_x"),
            ("Mul", [t["half_x"], t["one_plus"]], m.out, "out"),
        ]
        return [helper.make_node(op, ins, [out], name=edit.names.fresh(f"{prefix}/GeluTanh/{tag}"))
                for op, ins, out, tag in steps]


class GeluSigmoid(_SubstituteGelu):
    name = "gelu-sigmoid"
    description = "exact Erf GELU -> x*sigmoid(1.702*x) (cheapest; max error ~0.02 per activation)"

    def approximation(self, edit: GraphEdit, m: GeluMatch, prefix: str) -> list:
        scaled = edit.names.fresh(f"{prefix}/GeluSigmoid/scaled_output_0")
        gate = edit.names.fresh(f"{prefix}/GeluSigmoid/sigmoid_output_0")
        k = edit.scalar(1.702, m.dtype, "edgekit_gelu_sigmoid_coeff")
        return [
            helper.make_node("Mul", [m.x, k], [scaled], name=edit.names.fresh(f"{prefix}/GeluSigmoid/scaled")),
            helper.make_node("Sigmoid", [scaled], [gate], name=edit.names.fresh(f"{prefix}/GeluSigmoid/sigmoid")),
            helper.make_node("Mul", [m.x, gate], [m.out], name=edit.names.fresh(f"{prefix}/GeluSigmoid/out")),
        ]


register(GeluTanh())
register(GeluSigmoid())
