"""Can a device profile run this graph? Every op, domain and opset is checked before bundling."""

from __future__ import annotations

from collections import Counter

import onnx
from edgekit_runtime.errors import EdgekitError
from edgekit_runtime.profile import DeviceProfile

from .graph import STANDARD_DOMAINS, iter_nodes, node_label
from .rules.base import RULES


class OpSupportError(EdgekitError):
    """The graph uses ops, domains or an opset the target profile cannot run."""

    def __init__(self, message: str, violations: list[str]):
        super().__init__(message)
        self.violations = violations


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op the graph has (subgraphs included), most frequent first."""
    return dict(Counter(_op_name(n) for n in iter_nodes(model.graph)).most_common())


def _fix_for(op: str, profile: DeviceProfile) -> str:
    rules = [name for name, rule in RULES.items() if op in rule.removes_ops]
    active = [r for r in rules if r in profile.rewrite_rules]
    if active:
        return (f"rule '{active[0]}' is in rewrite_rules of {profile.source} but did not remove this node; "
                f"its RuleReport.skipped says why")
    if rules:
        return f"add {' or '.join(repr(r) for r in rules)} to rewrite_rules in {profile.source}"
    return (f"no edgekit rule removes it: change the model so it does not use {op}, or remove {op} from "
            f"unsupported_ops in {profile.source} if the target does run it")


def check_ops(model: onnx.ModelProto, profile: DeviceProfile, *,
              extra_ops: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Raise OpSupportError listing every node, domain and opset ``profile`` cannot run.

    ``extra_ops``: (domain, op_type) pairs outside the standard domains that this graph kind may use
    on this profile (the causal-LM graph's ONNX Runtime kernels where ``profile.decoder_ops`` allows)."""
    where = f"profile '{profile.name}'"
    violations = []
    for imp in model.opset_import:
        if imp.domain in STANDARD_DOMAINS and imp.version != profile.opset:
            violations.append(
                f"model: opset {imp.version} (domain '{imp.domain or 'ai.onnx'}'), but {where} runs opset "
                f"{profile.opset}. Fix: re-export with opset_version={profile.opset}")
    if not any(imp.domain in STANDARD_DOMAINS for imp in model.opset_import):
        violations.append(f"model: no ai.onnx opset import, but {where} runs opset {profile.opset}. "
                          f"Fix: re-export with opset_version={profile.opset}")
    unsupported = set(profile.unsupported_ops)
    for node in iter_nodes(model.graph):
        if (node.domain, node.op_type) in extra_ops:
            continue
        if node.domain not in STANDARD_DOMAINS:
            violations.append(
                f"node '{node_label(node)}' (op {_op_name(node)}): domain '{node.domain}' is not standard ONNX "
                f"and {where} runs only ai.onnx ops. Fix: no edgekit rule removes it: export without "
                f"runtime-specific fusions (e.g. onnxruntime.transformers optimizer) before bundling")
        elif node.op_type in unsupported:
            violations.append(
                f"node '{node_label(node)}' (op {node.op_type}): {where} lists {node.op_type} in "
                f"unsupported_ops. Fix: {_fix_for(node.op_type, profile)}")
    if violations:
        lines = "\n".join(f"  - {v}" for v in violations)
        raise OpSupportError(
            f"graph '{model.graph.name}' cannot run on {where} ({profile.source}): "
            f"{len(violations)} violation(s):\n{lines}", violations)
