"""A local HTTP server for one bundle: GET /health, GET /metadata, and POST /predict (a
classification bundle) or POST /generate (a causal-lm bundle).

Stdlib only. Request threads validate and queue texts; one worker thread runs the model, so
onnxruntime sees one call at a time and concurrent requests share a batch (micro-batching):
it takes queued requests up to ``max_batch`` texts, or whatever has arrived ``max_wait_ms``
after the oldest one, runs one ``predict`` and answers each request with its slice. The queue
holds at most ``queue_size`` texts; past that a request gets 429 at once instead of waiting
without bound. For a causal-lm bundle each /generate request is one queue item: the worker runs
the requests it takes that share generation settings as one batch. Input texts, prompts and
generated text are never logged, written or echoed in an error.
"""

from __future__ import annotations

import json
import logging
import signal
import socketserver
import sys
import threading
import time
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from ..errors import EdgekitError
from .batching import MicroBatcher, QueueFull, failure
from .config import ServeConfig
from .requests import GENERATE_EXAMPLE, RequestError, generate_options, parse_generate_body, parse_predict_body

log = logging.getLogger("edgekit_runtime")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ENDPOINTS = {"/health": "GET", "/metadata": "GET", "/predict": "POST", "/generate": "POST"}
CAUSAL_LM = "causal-lm"


class ServeError(EdgekitError):
    """The server cannot start as configured (the port is taken, or the address is not this machine's)."""




def bundle_metadata(model: Any, config: ServeConfig) -> dict[str, Any]:
    """What GET /metadata answers: the bundle's identity and the server's limits, no input text."""
    manifest = model.manifest
    model_file = manifest["model"]["file"]
    return {
        "task": manifest["task"].get("name"),
        "labels": list(model.labels),
        "profile": {"name": model.profile.name, "device": model.profile.device, "sha256": model.profile.sha256},
        "precision": manifest["model"].get("precision"),
        "max_length": model.encoder.max_length,
        "model": {"file": model_file, "sha256": manifest["files"][model_file]["sha256"]},
        "manifest_sha256": manifest.get("manifest_sha256"),
        "edgekit_version": manifest.get("edgekit_version"),
        "backend": model.backend_name,
        "limits": {k: v for k, v in asdict(config).items() if k not in ("host", "port")},
        **({"generation": _generation_metadata(model)} if _is_causal_lm(model) else {}),
    }


def _is_causal_lm(model: Any) -> bool:
    return model.manifest["task"].get("name") == CAUSAL_LM


def _generation_metadata(model: Any) -> dict[str, Any]:
    task = model.manifest["task"]
    defaults = asdict(model.defaults)
    defaults["stop"] = list(defaults["stop"])
    return {"max_context": task.get("max_context"), "eos_token_ids": task.get("eos_token_ids"),
            "chat_template": bool(task.get("chat_template")), "think": task.get("think"), "defaults": defaults,
            "options": generate_options()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client can send many requests over one connection
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (40 ms on Linux) on every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "edgekit-run"

    def version_string(self) -> str:  # no Python version in the Server header
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.app.config.read_timeout_s or None
        super().setup()

    def do_HEAD(self) -> None:  # a HEAD answer has no body: headers only, then close
        self.close_connection = True
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", ENDPOINTS.get(urlsplit(self.path).path, "GET, POST"))
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def _route(self) -> None:
        """Every method but HEAD: one JSON answer, a 4xx naming the fix for anything malformed."""
        app: PredictServer = self.server.app
        method = self.command
        path = urlsplit(self.path).path
        started = time.perf_counter()
        status, payload, headers, close = 500, {}, {}, False
        self._body_read = False
        if not app.enter():
            status, close = 503, True
            payload = {"error": "the server is shutting down", "fix": "retry on a running server"}
        else:
            try:
                status, payload = self._dispatch(app, method, path)
            except RequestError as exc:
                status, headers, close = exc.status, exc.headers, exc.close
                payload = {"error": exc.error, "fix": exc.fix}
            except TimeoutError:
                status, close = 408, True
                payload = {"error": f"the body did not arrive within {app.config.read_timeout_s:g} s",
                           "fix": "send the whole body right after the headers"}
            except Exception as exc:  # a bug here must answer, not kill the connection thread silently
                log.error("request handling failed: %s", failure(exc))
                status, payload = 500, {"error": f"internal error: {failure(exc)}",
                                        "fix": "retry; if it persists, report it with the server log"}
            finally:
                app.leave()
        # A body left unread would be parsed as the next request on this connection: close it.
        has_body = self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers
        close = close or (has_body and not self._body_read)
        self._send_json(status, payload, headers, close)
        n = len(payload.get("predictions", ()))
        count = f" {n} texts" if n else (f" {payload['completion_tokens']} tokens" if "completion_tokens" in payload
                                         else "")
        shown = path if path in ENDPOINTS else "(unknown path)"  # a path is client text: log only ours
        log.info("%s %s %d%s %.1f ms", method, shown, status, count, (time.perf_counter() - started) * 1e3)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _route  # wrong methods get 405, not http.server's 501

    def _dispatch(self, app: "PredictServer", method: str, path: str) -> tuple[int, dict[str, Any]]:
        served = "/generate" if app.generates else "/predict"
        if path not in ENDPOINTS:
            raise RequestError(404, f"no endpoint at {path[:64]!r}", f"use GET /health, GET /metadata or POST {served}")
        if method != ENDPOINTS[path]:
            raise RequestError(405, f"{method} is not allowed on {path}", f"use {ENDPOINTS[path]} {path}",
                               headers={"Allow": ENDPOINTS[path]})
        if path == "/health":
            return 200, app.health()
        if path == "/metadata":
            return 200, app.metadata
        if path != served:
            task = app.metadata["task"]
            raise RequestError(404, f"this server runs a {task} bundle, which "
                                    f"{'generates text' if app.generates else 'classifies texts'}; {path} is for "
                                    f"{'classification' if path == '/predict' else 'causal-lm'} bundles",
                               f"POST {served} " + (GENERATE_EXAMPLE if app.generates else '{"texts": [...]}'))
        body = self._read_body(app.config.max_body_bytes)
        if app.generates:
            return 200, app.generate(*parse_generate_body(body, app.model))
        return 200, app.predict(parse_predict_body(body, app.config.max_texts))

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "chunked request bodies are not accepted", "send a Content-Length header")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "the request has no Content-Length", "send a Content-Length header")
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, f"Content-Length {length[:32]!r} is not a byte count",
                               "send the body's size in bytes") from None
        if size > limit:
            raise RequestError(413, f"the body is {size} bytes, more than this server's --max-body-bytes {limit}",
                               "split the texts over several requests, or restart the server with a larger "
                               "--max-body-bytes")
        body = self.rfile.read(size)
        if len(body) < size:
            raise RequestError(400, f"the body ended after {len(body)} of {size} bytes",
                               "send the whole body", close=True)
        self._body_read = True
        return body

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str], close: bool) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            if close:
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client left; nothing to answer
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, unknown method), as JSON. The
        message is not repeated: it may quote the raw request line."""
        if self.request_version == "HTTP/0.9":  # a garbled request line: still answer with a status line
            self.request_version = "HTTP/1.0"
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "error"
        fix = ("use GET /health, GET /metadata or POST /predict" if code == 501
               else "send a well-formed HTTP/1.1 request")
        self._send_json(code, {"error": f"{code} {phrase}", "fix": fix}, {}, close=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # http.server would print request lines and raw paths to stderr; _route logs a safe line


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up shutdown; in-flight is tracked
    request_queue_size = 128  # many clients connecting at once are queued by the kernel, not refused
    app: "PredictServer"

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN (a DNS query); nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        log.error("connection handler failed: %s", failure(sys.exc_info()[1]))


class PredictServer:
    """The HTTP server and its batcher for one loaded model. ``start`` serves in background threads;
    ``shutdown`` stops accepting, answers everything in flight and queued, then returns."""

    def __init__(self, model: Any, config: ServeConfig):
        self.model = model
        self.config = config
        self.metadata = bundle_metadata(model, config)
        self.generates = _is_causal_lm(model)
        self.batcher = MicroBatcher(self._generate_items if self.generates else model.predict, config)
        self._state = threading.Condition()
        self._in_flight = 0
        self._draining = False
        self.requests = 0
        try:
            self.httpd = _HTTPServer((config.host, config.port), _Handler)
        except OSError as exc:
            raise ServeError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}. Fix: choose "
                             f"another --port (0 picks a free one) or stop the process that holds it.") from None
        self.httpd.app = self
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="edgekit-serve-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> "PredictServer":
        self.batcher.start()
        self._thread.start()
        return self

    def enter(self) -> bool:
        """Count a request in flight; False once shutdown began (the caller answers 503)."""
        with self._state:
            if self._draining:
                return False
            self._in_flight += 1
            self.requests += 1
            return True

    def leave(self) -> None:
        with self._state:
            self._in_flight -= 1
            self._state.notify_all()

    def health(self) -> dict[str, Any]:
        with self._state:
            in_flight = self._in_flight - 1  # not counting the health request itself
        return {"status": "ok", "task": self.metadata["task"], "backend": self.model.backend_name,
                "queue_depth": self.batcher.depth,
                "queue_size": self.config.queue_size, "in_flight": in_flight, "batches": self.batcher.batches}

    def _wait(self, items: list[Any]) -> list[Any]:
        try:
            job = self.batcher.submit(items)
        except QueueFull as full:
            unit = "requests" if self.generates else "texts"
            raise RequestError(429, f"the inference queue is full: {full.queued} {unit} waiting + {full.incoming} "
                                    f"in this request > --queue-size {full.capacity}",
                               "retry after the Retry-After seconds, send fewer texts per request, or restart "
                               "the server with a larger --queue-size", headers={"Retry-After": "1"}) from None
        job.done.wait()
        if job.error is not None:
            raise RequestError(*job.error)
        return job.result or []

    def predict(self, texts: list[str]) -> dict[str, Any]:
        results = self._wait(texts)
        return {"predictions": results, "truncated": sum(bool(r.get("truncated")) for r in results),
                "max_length": self.metadata["max_length"]}

    def generate(self, prompt: Any, config: Any) -> dict[str, Any]:
        """One /generate request: a prepared prompt and its settings, queued as one item."""
        return self._wait([(prompt, config)])[0]

    def _generate_items(self, items: list[tuple[Any, Any]], batch_size: int) -> list[dict[str, Any]]:
        """The worker's call for queued /generate requests: those with equal settings run as one batch."""
        groups: dict[Any, list[int]] = {}
        for i, (_, config) in enumerate(items):
            groups.setdefault(config, []).append(i)
        out: list[dict[str, Any]] = [{}] * len(items)
        for config, members in groups.items():
            for i, result in zip(members, self.model.generator.run([items[i][0] for i in members], config)):
                out[i] = result.to_dict()
        return out

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting, finish requests in flight and queued; True if all finished within ``timeout``."""
        with self._state:
            self._draining = True
        self.httpd.shutdown()  # serve_forever returns: no new connections are accepted
        self.httpd.server_close()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            while self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._state.wait(left)
            drained = self._in_flight == 0
        self.batcher.close(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return drained


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def serve(model: Any, config: ServeConfig, *, announce: Callable[[str], None] = print,
          signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> int:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; returns 0. A second signal stops
    at once (KeyboardInterrupt). Must run in the main thread (signal handlers)."""
    server = PredictServer(model, config)
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        server.start()
        if not is_loopback(config.host):
            log.warning("listening on %s: reachable from the network, with no authentication or TLS", config.host)
        announce(f"serving {model.path} (backend {model.backend_name}) on {server.url} "
                 f"(max batch {config.max_batch}, max wait {config.max_wait_ms:g} ms, queue {config.queue_size} "
                 f"texts); Ctrl-C or SIGTERM stops it")
        while not stop.wait(1.0):
            pass
        announce(f"stopping: no new connections; finishing {server.batcher.depth} queued texts and the "
                 f"requests in flight")
        server.shutdown()
        announce(f"stopped after {server.requests} requests")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
