"""The stress run's client side: ``edgekit-run serve`` started as a subprocess on loopback, and an
open-loop load generator whose every answer is checked against a direct ``predict``."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import EdgekitError
from ..serve.server import PredictServer, ServeConfig

if TYPE_CHECKING:
    from .context import Context
    from .suite import RunSpec

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds edgekit_runtime/
START_TIMEOUT_S = 600  # how long `edgekit-run serve` may take to load the bundle and listen
TOLERANCE = 1e-4  # an answer's probabilities may differ this much from a direct predict (batching)


class BenchRunError(EdgekitError):
    """A run could not complete (a server that did not start, a probe that failed)."""


def child_env() -> dict[str, str]:
    """This environment, with the runtime importable in a child process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


_URL = re.compile(r"http://[\d.]+:\d+")


class ServeTarget:
    """`edgekit-run serve` on loopback port 0, as a subprocess or in this process."""

    def __init__(self, ctx: Context, spec: RunSpec, max_texts: int):
        self.proc: subprocess.Popen | None = None
        self.server = None
        queue_size = max(256, max_texts)
        if spec["server"] == "in-process":

            self.server = PredictServer(ctx.model, ServeConfig(port=0, max_batch=spec["max_batch"],
                                                               max_wait_ms=spec["max_wait_ms"], queue_size=queue_size,
                                                               max_texts=max_texts)).start()
            self.url = self.server.url
            return
        cmd = [sys.executable, "-m", "edgekit_runtime.cli", "serve", str(ctx.bundle), "--port", "0",
               "--max-batch", str(spec["max_batch"]), "--max-wait-ms", f"{spec['max_wait_ms']:g}",
               "--queue-size", str(queue_size), "--max-texts", str(max_texts)]
        if ctx.threads is not None:
            cmd += ["--threads", str(ctx.threads)]
        if ctx.backend is not None:
            cmd += ["--backend", ctx.backend]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=child_env())
        lines: queue.Queue = queue.Queue()

        def drain() -> None:  # the server's stderr, line by line, until it closes (keeps the pipe drained)
            for line in self.proc.stderr:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the server announces its URL on stderr once it listens (warnings may come first)
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                self.proc.wait()
                raise BenchRunError(f"`edgekit-run serve` did not listen within {START_TIMEOUT_S} s. Fix: run "
                                    f"`edgekit-run serve {ctx.bundle} --port 0 --verbose` to see where it stops "
                                    f"(a first TensorRT engine build: warm the cache with `edgekit-run predict`).")
            if line is None:
                self.proc.wait(timeout=30)
                raise BenchRunError(f"`edgekit-run serve` exited {self.proc.returncode} before listening: "
                                    f"{' '.join(seen)[-300:] or '(no output)'}. Fix: run `edgekit-run serve "
                                    f"{ctx.bundle} --port 0` to see why.")
            seen.append(line.strip())
            match = _URL.search(line)
            if match:
                self.url = match.group(0)
                break

    def stop(self) -> int | None:
        if self.server is not None:
            self.server.shutdown(timeout=60)
            return 0
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)  # graceful: answers what is in flight
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def connection(url: str, timeout: float) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def get_json(url: str, path: str) -> dict:
    conn = connection(url, 30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _matches(got: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    probs = got.get("probabilities")
    if got.get("label") != want["label"] or not isinstance(probs, dict) or set(probs) != set(want["probabilities"]):
        return False
    return all(abs(probs[k] - v) <= TOLERANCE for k, v in want["probabilities"].items())


def open_loop(url: str, bodies: Sequence[tuple[bytes, list[int]]], reference: Sequence[Mapping[str, Any]], *,
              clients: int, rate: float, duration_s: float, timeout_s: float) -> dict[str, Any]:
    """Send round(rate * duration_s) requests due at t0 + i / rate (see the module docstring)."""
    total = max(1, round(rate * duration_s))
    lock = threading.Lock()
    state = {"next": 0, "t0": 0.0}
    outs = [{"latency": [], "late": [], "errors": 0, "lost": 0, "wrong": 0, "not_sent": 0, "statuses": {},
             "last": 0.0} for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(out: dict) -> None:
        conn = connection(url, timeout_s)
        barrier.wait()
        t0 = state["t0"]
        while True:
            with lock:
                i = state["next"]
                if i >= total:
                    break
                state["next"] += 1
            due = t0 + i / rate
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            elif now > t0 + duration_s:
                out["not_sent"] += 1  # the window closed while every client was busy
                continue
            body, text_ids = bodies[i % len(bodies)]
            start = time.perf_counter()
            out["late"].append(start - due)
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                out["lost"] += 1
                conn.close()
                conn = connection(url, timeout_s)
                continue
            end = time.perf_counter()
            out["last"] = max(out["last"], end)
            if resp.status != 200:
                out["errors"] += 1
                out["statuses"][str(resp.status)] = out["statuses"].get(str(resp.status), 0) + 1
                continue
            out["latency"].append(end - start)
            try:
                preds = json.loads(data)["predictions"]
                ok = len(preds) == len(text_ids) and all(_matches(p, reference[t]) for p, t in zip(preds, text_ids))
            except (ValueError, KeyError, TypeError):
                ok = False
            out["wrong"] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(o,), daemon=True) for o in outs]
    for t in threads:
        t.start()
    state["t0"] = time.perf_counter() + 0.05
    barrier.wait()
    for t in threads:
        t.join()
    t0 = state["t0"]
    end = max([o["last"] for o in outs] + [t0 + 1e-9])
    lat = [x for o in outs for x in o["latency"]]
    late = np.asarray([x for o in outs for x in o["late"]]) * 1e3
    statuses: dict[str, int] = {}
    for o in outs:
        for k, v in o["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    sent = len(late)
    return {"total": total, "sent": sent, "ok": len(lat), "errors": sum(o["errors"] for o in outs),
            "lost": sum(o["lost"] for o in outs), "wrong": sum(o["wrong"] for o in outs),
            "not_sent": sum(o["not_sent"] for o in outs), "statuses": statuses, "seconds": end - t0,
            "latency_s": lat, "late_ms": late.tolist()}
