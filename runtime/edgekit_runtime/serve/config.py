"""How the local server runs: address, threads, batching and limits, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen and the limits that keep the server responsive under load."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 16  # texts per inference call
    max_wait_ms: float = 5.0  # how long the oldest queued request waits for others to join its batch
    queue_size: int = 256  # texts waiting for inference (not requests: a 200-text request weighs 200)
    max_texts: int = 256  # texts per request
    max_body_bytes: int = 1 << 20
    read_timeout_s: float = 30.0  # a client that stops sending mid-request is dropped, not waited on (0: never)

    def __post_init__(self):
        for name in ("max_batch", "queue_size", "max_texts", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"{name}={value!r}: expected a positive integer. Fix: pass e.g. {name}=16.")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port={self.port}: expected 0..65535 (0 picks a free port). Fix: pass e.g. port=8080.")
        for name in ("max_wait_ms", "read_timeout_s"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name}={getattr(self, name)!r}: expected a number >= 0. Fix: pass e.g. {name}=5.")
        if self.max_texts > self.queue_size:
            raise InputError(f"max_texts={self.max_texts} exceeds queue_size={self.queue_size}: a request that "
                             f"large could never be queued. Fix: raise --queue-size to at least {self.max_texts} "
                             f"or lower --max-texts.")
