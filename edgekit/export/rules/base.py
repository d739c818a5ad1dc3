"""The rewrite-rule contract and registry: the ``RewriteRule`` base, the ``RuleReport`` it returns,
and ``RULES``, which each rule module fills with ``register`` when it is imported.

A rule is a pattern (the candidates it looks at), a check that returns the match or the reason
it does not apply, and a replacement recorded on a ``GraphEdit``. The engine that runs rules by
name is edgekit.export.rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import onnx
from edgekit_runtime.errors import EdgekitError

from ..graph import GraphEdit, GraphIndex, NameScope


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
