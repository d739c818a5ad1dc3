"""How to generate: the options a generation takes, checked once, defaults from the bundle."""

from __future__ import annotations
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping
from ..bundle.format import MANIFEST
from ..errors import BundleError, InputError


THINK_MODES = ("keep", "strip", "budget")


def _positive(name: str, value: Any, *, zero: bool = False) -> int:
    low = 0 if zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(f"{name}={value!r}: expected an integer >= {low}. Fix: pass e.g. {name}={max(low, 1) * 16}.")
    return value


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Defaults come from the bundle's ``task.generation``; ``generate(**options)``
    overrides single fields. ``stop``: extra stop strings and token ids (the manifest's eos ids
    always stop). ``think``: keep the R1 reasoning in the text, strip it (reported apart), or
    ``budget`` (after ``think_budget`` reasoning tokens, force ``</think>``). ``chat``: None applies
    the bundle's chat template when it has one, True requires it, False feeds the prompt as is."""

    max_new_tokens: int = 256
    # eos (and stop token ids) cannot be chosen before this many new tokens (transformers' min_new_tokens)
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str | int, ...] = ()
    think: str = "keep"
    think_budget: int | None = None
    chat: bool | None = None
    batch_size: int = 8  # prompts per batch (each batch has its own KV cache)

    def __post_init__(self):
        _positive("max_new_tokens", self.max_new_tokens)
        _positive("min_new_tokens", self.min_new_tokens, zero=True)
        if self.min_new_tokens > self.max_new_tokens:
            raise InputError(f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={self.max_new_tokens}. "
                             f"Fix: pass min_new_tokens <= max_new_tokens.")
        _positive("top_k", self.top_k, zero=True)
        _positive("batch_size", self.batch_size)
        if not isinstance(self.do_sample, bool):
            raise InputError(f"do_sample={self.do_sample!r}: expected True or False. Fix: pass do_sample=True "
                             f"to sample.")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 < self.temperature < math.inf:
            raise InputError(f"temperature={self.temperature!r}: expected a number > 0. Fix: pass e.g. "
                             f"temperature=0.7; for deterministic output use do_sample=False (greedy), not "
                             f"temperature 0.")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p!r}: expected a number in (0, 1]. Fix: pass e.g. top_p=0.9 "
                             f"(1.0 turns nucleus filtering off).")
        if self.seed is not None:
            _positive("seed", self.seed, zero=True)
        stop = (self.stop,) if isinstance(self.stop, (str, int)) else tuple(self.stop)
        for i, s in enumerate(stop):
            if isinstance(s, bool) or not isinstance(s, (str, int)) or s == "" or (isinstance(s, int) and s < 0):
                raise InputError(f"stop[{i}] is {type(s).__name__} {'' if isinstance(s, str) else s!r}: expected a "
                                 f"non-empty string or a token id >= 0. Fix: pass stop=['\\n\\n', 151643].", index=i)
        object.__setattr__(self, "stop", stop)
        if self.think not in THINK_MODES:
            raise InputError(f"think={self.think!r}: expected one of {list(THINK_MODES)}. Fix: pass think='strip' to "
                             f"return the answer without its reasoning.")
        if self.think == "budget":
            if self.think_budget is None:
                raise InputError("think='budget' needs think_budget=N (reasoning tokens before </think> is forced). "
                                 "Fix: pass e.g. think_budget=256.")
            _positive("think_budget", self.think_budget, zero=True)
        elif self.think_budget is not None:
            raise InputError(f"think_budget={self.think_budget!r} with think={self.think!r}: the budget applies only "
                             f"with think='budget'. Fix: pass think='budget', or drop think_budget.")
        if self.chat not in (None, True, False):
            raise InputError(f"chat={self.chat!r}: expected True, False or None (use the template when the bundle "
                             f"has one). Fix: pass chat=False to feed the prompt as is.")

    @classmethod
    def from_manifest(cls, task: Mapping[str, Any]) -> "GenerationConfig":
        """The bundle's defaults (``task.generation``); a malformed section is the bundle's fault."""
        section = task.get("generation") or {}
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            if not isinstance(section, Mapping):
                raise InputError(f"it is a {type(section).__name__}, not a table")
            return cls(**{k: v for k, v in section.items() if k in known})
        except InputError as exc:
            raise BundleError(f"{MANIFEST}: task.generation: {exc}") from None

    def replace(self, **options: Any) -> "GenerationConfig":
        """A copy with ``options`` changed; an unknown option names the known ones."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InputError(f"unknown generation option(s) {unknown}; known: {known}. Fix: check the spelling.")
        return dataclasses.replace(self, **options)
