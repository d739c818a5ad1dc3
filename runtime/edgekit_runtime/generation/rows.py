"""One prompt during generation (``Row``: its tokens, finish, think state and text stages), the
prepared prompt it starts from, and the ``GenerationResult`` it ends as. The loop that drives rows
is generate.Generator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .decoder import DecoderSpec, DecoderTokenizer
from .detokenize import IncrementalDetokenizer, StopText, ThinkText

if TYPE_CHECKING:
    from .config import GenerationConfig


@dataclass
class GenerationResult:
    """One prompt's output. ``text`` excludes eos / stop tokens and stop strings (and, with
    think='strip', the reasoning, which is in ``reasoning``); ``token_ids`` are every generated id,
    the one that stopped generation included. ``timings``: time to first token, prefill tokens/s
    (the batch's prompt tokens over the prefill), decode tokens/s (this prompt's tokens after the
    first over its decode time)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    reasoning: str | None
    prompt_tokens: int
    completion_tokens: int
    think_tokens: int
    timings: dict[str, float | int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PreparedPrompt:
    index: int
    ids: tuple[int, ...]
    inside_think: bool  # the prompt leaves a think section open (an R1 chat prompt ends with "<think>\n")


class Row:
    """One prompt during generation: its tokens, think state and text stages."""

    def __init__(self, prompt: PreparedPrompt, cfg: GenerationConfig, tok: DecoderTokenizer, spec: DecoderSpec,
                 streaming: bool = True):
        self.prompt = prompt
        self.cfg = cfg
        self.tokens: list[int] = []
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.done_at: float | None = None
        self.eos = frozenset(spec.eos_token_ids)
        self.stop_ids = frozenset(s for s in cfg.stop if isinstance(s, int))
        self.banned_set = self.eos | self.stop_ids  # what min_new_tokens holds back
        self.banned = np.fromiter(self.banned_set, dtype=np.int64)
        self.detok = IncrementalDetokenizer(tok.decode)
        self.stop_text = StopText([s for s in cfg.stop if isinstance(s, str)])
        self.think_text = (ThinkText(*spec.think, inside=prompt.inside_think, keep_markers=cfg.think != "strip")
                           if spec.think else None)
        self.think_ids = tok.think_ids
        self.inside = prompt.inside_think and tok.think_ids is not None
        self.think_run = 0  # tokens generated in the open think section
        self.think_tokens = 0
        # Text is needed per token only to stream it or to find a stop string; otherwise it is decoded
        # once, at the end, through the same stages (the incremental pieces add up to the same text).
        self.deferred = not streaming and not self.stop_text.stops

    def forced(self) -> int | None:
        """</think> once the open section has used its budget (think='budget')."""
        if self.cfg.think == "budget" and self.inside and self.think_run >= self.cfg.think_budget:
            return self.think_ids[1]
        return None

    def push(self, token: int, now: float) -> str:
        """Take the next token; the answer text it completes. Sets finish_reason when the row is done."""
        self.tokens.append(token)
        if self.think_ids is not None:
            if token == self.think_ids[0]:
                self.inside, self.think_run = True, 0
            elif token == self.think_ids[1]:
                self.inside = False
            elif self.inside:
                self.think_run += 1
                self.think_tokens += 1
        if self.deferred:
            if token in self.banned_set:
                self.finish_reason = "eos" if token in self.eos else "stop"
            elif len(self.tokens) >= self.cfg.max_new_tokens:
                self.finish_reason = "length"
            if self.finish_reason is not None:
                self.done_at = now
            return ""
        if token in self.eos or token in self.stop_ids:
            self.finish_reason = "eos" if token in self.eos else "stop"
            piece = self._flush()
        else:
            piece = self._stage(self.detok.push(token))
            if self.stop_text.stopped:
                self.finish_reason = "stop"
                piece += self._stage_flush()
            elif len(self.tokens) >= self.cfg.max_new_tokens:
                self.finish_reason = "length"
                piece += self._flush()
        if self.finish_reason is not None:
            self.done_at = now
        self.parts.append(piece)
        return piece

    def _stage(self, raw: str) -> str:
        safe = self.stop_text.push(raw)
        return self.think_text.push(safe) if self.think_text else safe

    def _stage_flush(self) -> str:
        safe = self.stop_text.flush()
        if not self.think_text:
            return safe
        return self.think_text.push(safe) + self.think_text.flush()

    def _flush(self) -> str:
        return self._stage(self.detok.flush()) + self._stage_flush()

    def result(self, timings: dict[str, Any]) -> GenerationResult:
        if self.deferred:  # the text of every token but a final eos / stop id, as push would have staged it
            text_ids = self.tokens[:-1] if self.finish_reason in ("eos", "stop") else self.tokens
            for token in text_ids:
                self.detok.ids.append(int(token))
            self.parts = [self._flush()]
        return GenerationResult(text="".join(self.parts), token_ids=list(self.tokens),
                                finish_reason=self.finish_reason or "length",
                                reasoning=self.think_text.reasoning if self.think_text else None,
                                prompt_tokens=len(self.prompt.ids), completion_tokens=len(self.tokens),
                                think_tokens=self.think_tokens, timings=timings)
