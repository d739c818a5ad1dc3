"""Graph rewrite rules: the contract, the registry and the engine that runs them in order.

A rule is a pattern (the candidates it looks at), a check that returns the match or the reason
it does not apply, and a replacement recorded on a ``GraphEdit``. Profiles name rules in
``rewrite_rules``; ``apply_rules`` runs them and returns one ``RuleReport`` per rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import onnx
from edgekit_runtime.errors import EdgekitError

from .graph import GraphEdit, GraphIndex, NameScope


class RewriteError(EdgekitError):
    """A rewrite rule is unknown, produced an invalid graph, or simplification failed."""


@dataclass(frozen=True)
class RuleReport:
    """What one rule did: how many places it rewrote, and why each other candidate was left."""

    rule: str
    fired: int
    skipped: tuple[str, ...]
    # What each firing changed, e.g. "node /layer.0/.../Erf -> Tanh GELU" (for the pass log).
    changed: tuple[str, ...] = ()


class RewriteRule:
    """Base of every rule: subclasses set the three attributes and the three methods."""

    name: str = ""  # the name profiles use in rewrite_rules
    description: str = ""
    removes_ops: tuple[str, ...] = ()  # op types the rule eliminates

    def candidates(self, index: GraphIndex) -> Iterable[tuple[str, Any]]:
        """``(label, anchor)`` for every place the pattern might match, e.g. each Erf node."""
        raise NotImplementedError

    def check(self, index: GraphIndex, anchor: Any) -> Any:
        """The match for ``anchor``, a string saying why the rule does not apply, or None to ignore it."""
        raise NotImplementedError

    def replace(self, edit: GraphEdit, index: GraphIndex, match: Any) -> str:
        """Record the replacement of ``match`` on ``edit``; return a line saying what changed."""
        raise NotImplementedError

    def apply(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, RuleReport]:
        """Rewrite a copy of ``model`` wherever the rule matches; ``model`` is not touched."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        index = GraphIndex(out.graph)
        matches, skipped = [], []
        for label, anchor in self.candidates(index):
            found = self.check(index, anchor)
            if found is None:
                continue
            if isinstance(found, str):
                skipped.append(f"{label}: {found}")
            else:
                matches.append(found)
        if not matches:
            return out, RuleReport(self.name, 0, tuple(skipped))
        edit = GraphEdit(out.graph, NameScope(out.graph))
        changed = tuple(self.replace(edit, index, m) for m in matches)
        edit.commit()
        try:
            onnx.checker.check_model(out)
        except onnx.checker.ValidationError as exc:
            raise RewriteError(
                f"rule '{self.name}' produced an invalid graph after rewriting {changed[0]}: {exc}. "
                f"Fix: drop '{self.name}' from the profile's rewrite_rules and report this model."
            ) from None
        return out, RuleReport(self.name, len(changed), tuple(skipped), changed)


RULES: dict[str, RewriteRule] = {}


def register(rule: RewriteRule) -> RewriteRule:
    """Add ``rule`` to ``RULES`` under its name (names are unique)."""
    if not rule.name or rule.name in RULES:
        raise RewriteError(f"rule name {rule.name!r} is empty or already registered. Fix: give the rule a new name.")
    RULES[rule.name] = rule
    return rule


def get_rule(name: str) -> RewriteRule:
    """The registered rule called ``name``."""
    if name not in RULES:
        raise RewriteError(
            f"unknown rewrite rule {name!r}. Fix: use one of {sorted(RULES)} in the profile's rewrite_rules."
        )
    return RULES[name]


def apply_rules(model: onnx.ModelProto, names: Iterable[str]) -> tuple[onnx.ModelProto, list[RuleReport]]:
    """Apply the named rules in order; every name is resolved before anything runs."""
    chosen = [get_rule(n) for n in names]
    reports = []
    for rule in chosen:
        model, report = rule.apply(model)
        reports.append(report)
    return model, reports


def _dynamic_dims(model: onnx.ModelProto) -> dict[str, list[str]]:
    dims = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims[value.name] = [d.dim_param for d in value.type.tensor_type.shape.dim if d.dim_param]
    return dims


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnxsim (constant folding, dead code, fusions) keeping every dynamic axis."""
    import onnxsim  # heavy; only the export stage needs it

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises bare RuntimeErrors from its C++ core
        raise RewriteError(
            f"onnxsim failed on graph '{model.graph.name}': {exc}. "
            "Fix: export without simplification (skip `simplify`) and report the model."
        ) from None
    if not ok:
        raise RewriteError(
            f"onnxsim's check of the simplified graph '{model.graph.name}' failed. "
            "Fix: export without simplification (skip `simplify`) and report the model."
        )
    before, after = _dynamic_dims(model), _dynamic_dims(simplified)
    lost = {k: v for k, v in before.items() if after.get(k) != v}
    if lost:
        raise RewriteError(
            f"onnxsim changed the dynamic axes of {sorted(lost)} (before {lost}, after "
            f"{ {k: after.get(k) for k in lost} }). Fix: export without simplification and report the model."
        )
    return simplified


# Import the built-in rules last: each module registers itself with the table above.
from . import rules  # noqa: E402,F401
