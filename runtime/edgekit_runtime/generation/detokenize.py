"""Generated tokens -> text, one increment at a time, for streaming and for the final result.

Three small string stages per prompt, in this order:

- ``IncrementalDetokenizer``: token ids -> text pieces once they decode to whole characters.
  Byte-level BPE can split one UTF-8 character over several tokens; decoding them one by one
  would print replacement characters, so a piece is held back while its decoding ends in one.
- ``StopText``: cuts the text at the first caller stop string; holds back a tail that could be
  the start of one, so a stream never prints text that the final result drops.
- ``ThinkText``: splits ``<think>...</think>`` sections (R1 reasoning) from the answer.

The final text is the concatenation of the streamed pieces, so ``--stream`` and a plain call
print the same thing.
"""

from __future__ import annotations

from typing import Callable, Sequence

REPLACEMENT = "\ufffd"


def _held_prefix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of one of ``markers``."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


class IncrementalDetokenizer:
    """Decodes a growing id list by diffing two short windows (vLLM's scheme): the text of
    ids[prefix:read] (already emitted) and of ids[prefix:]. The window keeps each step O(1) and
    gives decoders that treat the first token specially (SentencePiece's leading space) context."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # ids before this are emitted

    def push(self, token_id: int) -> str:
        """Add one id; the new text it completes ("" while a character is still partial)."""
        self.ids.append(int(token_id))
        seen = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        if len(text) > len(seen) and not text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(seen):]
        return ""

    def flush(self) -> str:
        """Whatever is left at the end (a partial character decodes as a replacement character)."""
        seen = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(seen):]


class StopText:
    """Passes text through until the first stop string; ``stopped`` once one is found."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        if not self.stops:
            return piece
        self._pending += piece
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[:min(hits)], ""
            return out
        keep = _held_prefix(self._pending, self.stops)
        out = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(out):]
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out


class ThinkText:
    """Routes text inside ``start``...``end`` to ``reasoning`` and the rest to the answer.

    ``inside`` is the state at the first generated token: an R1 chat prompt ends with ``<think>``
    already open. Whitespace right after an ``end`` is dropped from the answer ("</think>\\n\\n").
    With ``keep_markers`` the answer is the raw text (markers and reasoning included) and the
    reasoning is still collected.
    """

    def __init__(self, start: str, end: str, *, inside: bool, keep_markers: bool):
        self.start, self.end = start, end
        self.inside = inside
        self.keep_markers = keep_markers
        self.reasoning_parts: list[str] = []
        self.seen = inside  # a think section was opened (in the prompt or generated)
        self._buffer = ""
        self._skip_space = False

    @property
    def reasoning(self) -> str | None:
        return "".join(self.reasoning_parts).strip() if self.seen else None

    def push(self, piece: str) -> str:
        if not piece:
            return ""
        if self.keep_markers:
            self._route(piece, final=False)
            return piece
        return self._route(piece, final=False)

    def flush(self) -> str:
        out = self._route("", final=True)
        return "" if self.keep_markers else out

    def _route(self, piece: str, *, final: bool) -> str:
        self._buffer += piece
        out: list[str] = []
        while self._buffer:
            marker = self.end if self.inside else self.start
            at = self._buffer.find(marker)
            if at < 0:
                take = len(self._buffer) if final else len(self._buffer) - _held_prefix(self._buffer, [marker])
                self._emit(self._buffer[:take], out)
                self._buffer = self._buffer[take:]
                break
            self._emit(self._buffer[:at], out)
            self._buffer = self._buffer[at + len(marker):]
            self.inside = not self.inside
            self.seen = True
            self._skip_space = not self.inside
        return "".join(out)

    def _emit(self, text: str, out: list[str]) -> None:
        if self.inside:
            self.reasoning_parts.append(text)
            return
        if self._skip_space:
            text = text.lstrip()
            self._skip_space = not text
        out.append(text)
