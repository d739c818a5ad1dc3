"""Dynamic micro-batching for ``serve``: one worker thread takes queued requests up to ``max_batch``
texts, or whatever has arrived ``max_wait_ms`` after the oldest, runs one inference and answers
each request with its slice. The queue is bounded in texts; a request that does not fit raises
QueueFull at once (the server answers 429) instead of waiting without bound.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

from ..errors import EdgekitError

if TYPE_CHECKING:
    from .config import ServeConfig

log = logging.getLogger("edgekit_runtime")


class QueueFull(Exception):
    def __init__(self, queued: int, incoming: int, capacity: int):
        super().__init__(f"{queued} texts queued + {incoming} > {capacity}")
        self.queued, self.incoming, self.capacity = queued, incoming, capacity


class Job:
    """One request's texts waiting for the worker; ``done`` is set once result or error is filled."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.result: list[dict[str, Any]] | None = None
        self.error: tuple[int, str, str] | None = None  # (HTTP status, error, fix)

    def finish(self, result=None, error=None) -> None:
        self.result, self.error = result, error
        self.done.set()


def failure(exc: BaseException) -> str:
    """What an inference failure says: an EdgekitError's message (it never quotes a text); for any
    other exception only its type, since a third-party message might quote the input."""
    if isinstance(exc, EdgekitError):
        return " ".join(str(exc).split())
    return f"{type(exc).__name__} (message withheld: it may quote the input)"


class MicroBatcher:
    """A bounded text queue and the single worker thread that batches it into ``predict`` calls."""

    def __init__(self, predict: Callable[..., list[dict[str, Any]]], config: ServeConfig):
        self.predict = predict
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_ms / 1000.0
        self.capacity = config.queue_size
        self._pending: collections.deque[Job] = collections.deque()
        self._queued_texts = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="edgekit-serve-worker", daemon=True)
        self._running: list[Job] = []
        self.batches = 0

    @property
    def depth(self) -> int:
        """Texts waiting for inference (those in the running batch are not counted)."""
        with self._cond:
            return self._queued_texts

    def start(self) -> None:
        self._thread.start()

    def submit(self, texts: list[str]) -> Job:
        """Queue one request's texts; QueueFull if they do not fit (the caller answers 429)."""
        job = Job(texts)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._queued_texts + len(texts) > self.capacity:
                raise QueueFull(self._queued_texts, len(texts), self.capacity)
            self._pending.append(job)
            self._queued_texts += len(texts)
            self._cond.notify()
        return job

    def close(self, timeout: float | None = None) -> None:
        """Stop once every queued job is answered; waits for the worker up to ``timeout``."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            # The deadline counts from the oldest job's arrival: a job that already waited while
            # the previous batch ran goes out at once with whatever has queued behind it.
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._queued_texts < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, taken = [], 0
            while self._pending and (not batch or taken + len(self._pending[0].texts) <= self.max_batch):
                job = self._pending.popleft()
                batch.append(job)
                taken += len(job.texts)
            self._queued_texts -= taken
            return batch

    def _run(self, jobs: list[Job]) -> None:
        texts = [t for job in jobs for t in job.texts]
        try:
            results = self.predict(texts, batch_size=self.max_batch)
        except Exception as exc:
            if len(jobs) > 1:  # one bad request must not fail the others it was batched with
                for job in jobs:
                    self._run([job])
                return
            log.error("inference failed for a request of %d texts: %s", len(texts), failure(exc))
            log.debug("traceback (frames only):\n%s", "".join(traceback.format_tb(exc.__traceback__)))
            jobs[0].finish(error=(500, f"inference failed: {failure(exc)}",
                                  "the server is still running; retry, and if it fails again run "
                                  "`edgekit-run predict` on the same texts with --verbose to see the cause"))
            return
        self.batches += 1
        start = 0
        for job in jobs:
            job.finish(result=results[start:start + len(job.texts)])
            start += len(job.texts)

    def _work(self) -> None:
        try:
            while (jobs := self._next_batch()) is not None:
                self._running = jobs
                self._run(jobs)
        finally:  # whatever stopped the worker, no request is left waiting forever
            with self._cond:
                self._closed = True
                left, self._pending = list(self._pending), collections.deque()
                self._queued_texts = 0
            for job in [*self._running, *left]:
                if not job.done.is_set():
                    job.finish(error=(503, "the inference worker stopped before this request ran",
                                  "restart the server and retry"))
