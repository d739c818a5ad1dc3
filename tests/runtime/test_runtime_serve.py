"""edgekit-run serve: answers equal BundleModel.predict, micro-batching, back-pressure, every
malformed request answered in JSON without echoing text, graceful shutdown, and no network use."""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import edgekit_runtime as rt
from edgekit_runtime.cli.main import main
from edgekit_runtime.serve.server import PredictServer, ServeConfig, ServeError

from runtime_fixtures import LABELS, MAX_LENGTH

SECRET = "patient jane roe loved the great film"
TEXTS = ["the movie was great!", "i hate it", "boring plot but good music", "ok", "a very slow, terrible story"]
LONG = " ".join(["the movie was very good and the acting was great"] * 10)  # well over MAX_LENGTH tokens


class GatedModel:
    """The real model behind a gate: predict waits while the gate is closed, so a test can fill the
    queue deterministically; texts in ``fail_on`` make predict raise (an inference failure)."""

    def __init__(self, model, fail_on=()):
        self._model = model
        self.fail_on = set(fail_on)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, texts, batch_size=32):
        self.calls.append(list(texts))
        self.entered.set()
        assert self.gate.wait(60), "test gate never opened"
        if self.fail_on & set(texts):
            raise RuntimeError(f"cannot run {texts}")  # quotes the input: the server must not pass it on
        return self._model.predict(texts, batch_size=batch_size)


def wait_until(condition, what: str, limit: float = 30.0) -> None:
    """Poll for a state the test set up (not a timing assertion: the limit only stops a hang)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


def call(server: PredictServer, method: str, path: str, body=None, headers=None):
    """(status, headers, parsed JSON body) over a fresh loopback connection."""
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(raw) if raw else None
    finally:
        conn.close()


def post(server, texts):
    return call(server, "POST", "/predict", {"texts": texts})


def raw_exchange(server: PredictServer, data: bytes, shut_write: bool = False) -> tuple[int, dict]:
    """Send raw bytes (for bodies that lie about their length); (status, JSON body)."""
    with socket.create_connection(server.address, timeout=60) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(reply: bytes) -> int:
    match = re.search(rb"content-length: *(\d+)", reply, re.IGNORECASE)
    return int(match.group(1)) if match else 0


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with rt.load(tiny_bundle) as m:
        yield m


@pytest.fixture(scope="module")
def server(model):
    srv = PredictServer(model, ServeConfig(port=0, max_texts=8, queue_size=64, max_body_bytes=4096)).start()
    yield srv
    assert srv.shutdown(timeout=60)


def make_server(model, **config) -> PredictServer:
    return PredictServer(model, ServeConfig(port=0, **config)).start()


# ---------------------------------------------------------------- answers


def test_predict_equals_load_predict_exactly(server, tiny_bundle):
    texts = [*TEXTS, LONG]
    status, _, body = post(server, texts)
    assert status == 200
    with rt.load(tiny_bundle) as direct:
        expected = direct.predict(texts)
    assert body["predictions"] == expected  # JSON floats round-trip exactly
    assert [p["label"] for p in body["predictions"]] == [e["label"] for e in expected]


def test_truncated_counts_texts_cut_to_max_length(server):
    status, _, body = post(server, [LONG, "ok", LONG + " and more"])
    assert status == 200
    assert body["truncated"] == 2 and body["max_length"] == MAX_LENGTH
    assert [p["truncated"] for p in body["predictions"]] == [True, False, True]
    assert post(server, TEXTS[:2])[2]["truncated"] == 0


def test_health_and_metadata_describe_the_bundle(server, model):
    status, _, health = call(server, "GET", "/health")
    assert status == 200
    assert health["status"] == "ok" and health["backend"] == "ort-cpu"
    assert health["queue_depth"] == 0 and health["queue_size"] == 64
    status, _, meta = call(server, "GET", "/metadata")
    assert status == 200
    manifest = model.manifest
    assert meta["task"] == "sequence-classification" and meta["labels"] == LABELS
    assert meta["profile"]["name"] == "x86-64-cpu" and meta["precision"] == "fp32"
    assert meta["max_length"] == MAX_LENGTH
    assert meta["model"]["sha256"] == manifest["files"]["model.onnx"]["sha256"]
    assert meta["manifest_sha256"] == manifest["manifest_sha256"]
    assert meta["limits"]["max_texts"] == 8


def test_concurrent_requests_share_one_batch_and_get_their_own_slice(model):
    gated = GatedModel(model)
    gated.gate.clear()
    srv = make_server(gated, max_batch=16, max_wait_ms=0)
    groups = [[TEXTS[0]], [TEXTS[1], TEXTS[2]], [TEXTS[3]], [TEXTS[4], LONG]]
    try:
        with ThreadPoolExecutor(len(groups)) as pool:
            first = pool.submit(post, srv, groups[0])
            assert gated.entered.wait(30)  # the worker holds request 1; the others queue behind it
            rest = [pool.submit(post, srv, g) for g in groups[1:]]
            wait_until(lambda: srv.batcher.depth == 5, "the other three requests queued")
            gated.gate.set()
            answers = [first.result(), *(f.result() for f in rest)]
    finally:
        gated.gate.set()
        assert srv.shutdown(timeout=60)
    assert [sorted(c) for c in gated.calls] == [sorted(groups[0]), sorted(t for g in groups[1:] for t in g)]
    for group, (status, _, body) in zip(groups, answers):
        assert status == 200
        assert body["predictions"] == model.predict(group)


# ---------------------------------------------------------------- refusals


MALFORMED = [
    ("not JSON", b"texts=" + SECRET.encode(), 400, "not JSON"),
    ("invalid UTF-8", b'{"texts": ["\xff\xfe ' + SECRET.encode() + b'"]}', 400, "not valid UTF-8"),
    ("a bare list", json.dumps([SECRET]).encode(), 400, "JSON array"),
    ("missing key", json.dumps({"text": [SECRET]}).encode(), 400, "expected exactly ['texts']"),
    ("extra key", json.dumps({"texts": [SECRET], "top_k": 2}).encode(), 400, "expected exactly ['texts']"),
    ("texts a string", json.dumps({"texts": SECRET}).encode(), 400, "a single string"),
    ("texts an object", json.dumps({"texts": {"a": SECRET}}).encode(), 400, "JSON object"),
    ("a number among texts", json.dumps({"texts": [SECRET, 5]}).encode(), 400, "text 1 is a JSON number"),
    ("null among texts", json.dumps({"texts": [SECRET, None]}).encode(), 400, "text 1 is a JSON null"),
    ("empty string", json.dumps({"texts": [SECRET, ""]}).encode(), 400, "text 1 is empty"),
    ("blank string", json.dumps({"texts": [SECRET, " \n\t"]}).encode(), 400, "text 1 is empty"),
    ("empty list", json.dumps({"texts": []}).encode(), 400, "empty list"),
    ("too many texts", json.dumps({"texts": [SECRET] * 9}).encode(), 413, "--max-texts 8"),
    ("deep nesting", b"[" * 2000 + b"]" * 2000, 400, "nested too deeply"),
    ("lone surrogate", b'{"texts": ["' + SECRET.encode() + b' \\ud800"]}', 400, "text 0 holds an unpaired"),
]


@pytest.mark.parametrize("case,body,status,phrase", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_predict_bodies_get_json_errors_without_the_text(server, case, body, status, phrase):
    got, headers, answer = call(server, "POST", "/predict", body, {"Content-Type": "application/json"})
    assert got == status, answer
    assert headers["Content-Type"] == "application/json"
    assert set(answer) == {"error", "fix"} and answer["fix"]
    assert phrase in answer["error"]
    assert "jane" not in json.dumps(answer)


def test_body_over_the_cap_is_refused_from_content_length_alone(server):
    # Only the headers are sent: the server must answer 413 without waiting for 10 MB.
    status, answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    assert status == 413
    assert "10000000 bytes" in answer["error"] and "--max-body-bytes 4096" in answer["error"]


@pytest.mark.parametrize("head,status,phrase", [
    (b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n", 411, "no Content-Length"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n", 400, "not a byte count"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "chunked"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"texts\"", 400, "ended after 8 of 100"),
    (b"GARBAGE\r\n\r\n", 400, "400 Bad Request"),
    (b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n", 501, "501 Not Implemented"),
])
def test_broken_http_requests_get_json_errors(server, head, status, phrase):
    got, answer = raw_exchange(server, head, shut_write=True)
    assert got == status and phrase in answer["error"] and answer["fix"]


def test_a_client_that_stops_sending_gets_408_not_a_hung_thread(model):
    srv = make_server(model, read_timeout_s=0.2)
    try:
        status, answer = raw_exchange(srv, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
        assert status == 408 and "did not arrive" in answer["error"]
        assert post(srv, ["great film"])[0] == 200
    finally:
        assert srv.shutdown(timeout=60)


def test_keep_alive_survives_a_refused_body_but_not_an_unread_one(server):
    conn = http.client.HTTPConnection(*server.address, timeout=60)
    try:
        conn.request("POST", "/predict", body=b"not json")
        first = conn.getresponse()
        first.read()
        conn.request("POST", "/predict", body=json.dumps({"texts": ["ok"]}))
        second = conn.getresponse()
        assert (first.status, second.status) == (400, 200) and not second.will_close
        second.read()
        conn.request("POST", "/health", body=b"{}")  # 405 before the body is read: the server closes
        third = conn.getresponse()
        assert third.status == 405 and third.will_close
    finally:
        conn.close()


@pytest.mark.parametrize("method,path,status,allow", [
    ("GET", "/nope", 404, None), ("POST", "/predict/extra", 404, None),
    ("GET", "/predict", 405, "POST"), ("POST", "/health", 405, "GET"), ("PUT", "/metadata", 405, "GET"),
    ("DELETE", "/predict", 405, "POST"),
])
def test_unknown_paths_and_wrong_methods(server, method, path, status, allow):
    got, headers, answer = call(server, method, path, b"{}" if method in ("POST", "PUT") else None)
    assert got == status and answer["error"] and answer["fix"]
    assert headers.get("Allow") == allow


def test_the_server_keeps_serving_after_refusals(server):
    for _, body, _, _ in MALFORMED:
        call(server, "POST", "/predict", body)
    status, _, body = post(server, ["great film"])
    assert status == 200 and len(body["predictions"]) == 1


def test_inference_failure_answers_500_for_that_request_only(model):
    poison = "terrible " + SECRET
    gated = GatedModel(model, fail_on=[poison])
    gated.gate.clear()
    srv = make_server(gated, max_wait_ms=0)
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(post, srv, ["ok"])
            assert gated.entered.wait(30)
            bad = pool.submit(post, srv, [poison])
            good = pool.submit(post, srv, ["great film"])
            wait_until(lambda: srv.batcher.depth == 2, "both requests queued behind the first")
            gated.gate.set()  # the poison and the good request run as one batch, which fails
            (s1, _, _), (s2, _, b2), (s3, _, b3) = first.result(), bad.result(), good.result()
        assert s1 == 200 and s3 == 200 and b3["predictions"] == model.predict(["great film"])
        assert s2 == 500 and "RuntimeError" in b2["error"] and b2["fix"]
        assert "jane" not in json.dumps(b2)
        assert post(srv, ["boring"])[0] == 200  # still serving
    finally:
        gated.gate.set()
        assert srv.shutdown(timeout=60)


def test_a_full_queue_answers_429_with_retry_after(model):
    gated = GatedModel(model)
    gated.gate.clear()
    srv = make_server(gated, queue_size=3, max_texts=2, max_wait_ms=0)
    try:
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(post, srv, ["ok"])
            assert gated.entered.wait(30)  # the worker holds it, so the queue is empty again
            queued = pool.submit(post, srv, ["great film", "i hate it"])
            wait_until(lambda: srv.batcher.depth == 2, "two texts queued")
            assert call(srv, "GET", "/health")[2]["queue_depth"] == 2
            status, headers, answer = post(srv, ["boring", "slow"])  # 2 + 2 > 3
            assert status == 429 and headers["Retry-After"] == "1"
            assert "--queue-size 3" in answer["error"] and "--queue-size" in answer["fix"]
            fits = pool.submit(post, srv, ["fun"])  # 2 + 1 <= 3: queued, answered once released
            wait_until(lambda: srv.batcher.depth == 3, "the one-text request queued")
            gated.gate.set()
            assert [f.result()[0] for f in (running, queued, fits)] == [200, 200, 200]
        assert post(srv, ["boring", "slow"])[0] == 200  # drained: accepted again
    finally:
        gated.gate.set()
        assert srv.shutdown(timeout=60)


# ---------------------------------------------------------------- shutdown


def test_graceful_shutdown_finishes_in_flight_and_queued_requests(model):
    gated = GatedModel(model)
    gated.gate.clear()
    srv = make_server(gated, max_wait_ms=0)
    with ThreadPoolExecutor(3) as pool:
        in_flight = pool.submit(post, srv, [TEXTS[0]])
        assert gated.entered.wait(30)
        queued = pool.submit(post, srv, [TEXTS[1]])
        wait_until(lambda: srv.batcher.depth == 1, "the second request queued")
        stopping = pool.submit(srv.shutdown, 60)
        wait_until(lambda: srv.httpd.socket.fileno() == -1, "the listening socket closed")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(srv.address, timeout=5)
        assert not stopping.done()  # still waiting for the two requests
        gated.gate.set()
        assert stopping.result() is True
        for future, text in ((in_flight, TEXTS[0]), (queued, TEXTS[1])):
            status, _, body = future.result()
            assert status == 200 and body["predictions"] == model.predict([text])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_exits_0_on_signal(tiny_bundle, signum):
    proc = subprocess.Popen([sys.executable, "-m", "edgekit_runtime.cli", "serve", str(tiny_bundle), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        match = re.search(r"http://([\d.]+):(\d+)", line)
        assert match, line
        conn = http.client.HTTPConnection(match.group(1), int(match.group(2)), timeout=60)
        conn.request("POST", "/predict", body=json.dumps({"texts": [SECRET]}))
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped after 1 requests" in err and "jane" not in line + err


def test_texts_never_reach_the_log(server, caplog):
    caplog.set_level(logging.DEBUG, logger="edgekit_runtime")
    post(server, [SECRET])
    post(server, [SECRET, ""])
    call(server, "GET", "/predict?text=" + SECRET.replace(" ", "+"))
    assert "POST /predict 200" in caplog.text
    assert "jane" not in caplog.text


# ---------------------------------------------------------------- CLI


def test_cli_refuses_contradictory_limits_before_loading(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--max-texts", "500", "--queue-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "max_texts=500 exceeds queue_size=100" in err and "--queue-size" in err


def test_a_taken_port_is_a_clear_error(server, model):
    with pytest.raises(ServeError, match=r"cannot listen on 127\.0\.0\.1:\d+.*Fix: choose another --port"):
        PredictServer(model, ServeConfig(port=server.address[1]))


def test_serve_help_warns_about_other_hosts(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "edgekit-run serve" in out and "exposes the server to the network" in out and "(default 16)" in out


# ---------------------------------------------------------------- offline


def _is_loopback(host) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name to resolve: a DNS lookup already leaves the machine


@pytest.fixture
def offline(monkeypatch):
    """Block every outbound connection and name lookup except loopback; return the attempts."""
    attempts: list[str] = []

    def check(where: str, address) -> None:
        if isinstance(address, (tuple, list)) and not _is_loopback(address[0]):
            attempts.append(f"{where} {address!r}")
            raise OSError(f"offline guard: {where} to {address!r} blocked")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def connect(self, address):
        check("connect", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check("connect_ex", address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        check("create_connection", address)
        return real_create(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        check("getaddrinfo", (host,))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_offline_guard_blocks_the_network(offline):
    with pytest.raises(OSError, match="offline guard"):
        socket.create_connection(("198.51.100.7", 443), timeout=1)
    assert offline == ["create_connection ('198.51.100.7', 443)"]
    offline.clear()


def test_load_predict_and_serve_work_offline(tiny_bundle, offline):
    with rt.load(tiny_bundle) as m:
        expected = m.predict(TEXTS)
        srv = make_server(m)
        try:
            status, _, body = post(srv, TEXTS)
            assert call(srv, "GET", "/health")[0] == 200
        finally:
            assert srv.shutdown(timeout=60)
    assert status == 200 and body["predictions"] == expected
    assert offline == []  # nothing tried to leave the machine
