"""`edgekit-run generate`, serve's /generate and `edgekit-run bench` on causal-LM bundles: the same
text as the Python API, timings on stderr, errors that name value, reason and fix, no input text in
any log, and the bench generation kind."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from decoder_bundles import MAX_CONTEXT, QWEN_PROMPTS, SECRET, THINK_END
from decoder_bundles import run_cli as _cli

def test_cli_generate_stream_prints_the_same_text_and_timings_go_to_stderr(qwen, qwen_model, capsys, monkeypatch):
    args = ["generate", str(qwen.bundle), SECRET, "--max-new-tokens", "24"]
    code, plain, err = _cli(args, capsys)
    assert code == 0
    expected = qwen_model.generate([SECRET], max_new_tokens=24)[0]  # the chat template applies by default
    assert plain == expected.text + "\n"
    assert re.search(r"24 tokens \(finish: length.*prompt \d+ tokens; time to first token [\d.]+ ms; prefill "
                     r"[\d.]+ tokens/s; decode [\d.]+ tokens/s", err)
    assert SECRET not in err and (not expected.text.strip() or expected.text not in err)
    code, streamed, err_stream = _cli([*args, "--stream"], capsys)
    assert code == 0 and streamed == plain and SECRET not in err_stream
    code, out, _ = _cli([*args, "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["text"] == expected.text and data["token_ids"] == expected.token_ids
    assert data["finish_reason"] == "length"
    assert set(data["timings"]) >= {"time_to_first_token_s", "prefill_tokens_per_s", "decode_tokens_per_s"}
    code, piped, _ = _cli(["generate", str(qwen.bundle), "-", "--max-new-tokens", "24"], capsys,
                          stdin=SECRET + "\n", monkeypatch=monkeypatch)
    assert code == 0 and piped == plain
    code, raw, _ = _cli([*args, "--no-chat", "--think", "strip", "--json"], capsys)
    no_chat = qwen_model.generate([SECRET], max_new_tokens=24, chat=False, think="strip")[0]
    assert json.loads(raw)["token_ids"] == no_chat.token_ids and json.loads(raw)["text"] == no_chat.text


def test_cli_generate_sampling_flags_and_think_budget(qwen, qwen_model, capsys):
    base = ["generate", str(qwen.bundle), "the cat", "--max-new-tokens", "12", "--json"]
    one = json.loads(_cli([*base, "--seed", "5", "--temperature", "1.5"], capsys)[1])
    assert one == {**json.loads(_cli([*base, "--seed", "5", "--temperature", "1.5"], capsys)[1]),
                   "timings": one["timings"]}
    assert one["token_ids"] == qwen_model.generate(["the cat"], max_new_tokens=12, do_sample=True, seed=5,
                                                   temperature=1.5)[0].token_ids
    budget = json.loads(_cli([*base, "--think-budget", "3"], capsys)[1])
    end = qwen.tok.convert_tokens_to_ids(THINK_END)
    assert end not in budget["token_ids"][:3] and end in budget["token_ids"][:4]


@pytest.mark.parametrize("extra, message", [
    (["--top-p", "2"], r"argument --top-p: 2 is not in \(0, 1\]"),
    (["--temperature", "0"], "argument --temperature: 0 must be > 0 .*--greedy"),
    (["--greedy", "--temperature", "0.7"], "--greedy contradicts --temperature"),
    (["--think", "keep", "--think-budget", "4"], "--think-budget only applies with --think budget"),
    (["--stream", "--json"], "pick one"),
    (["--max-new-tokens", "500"], r"the prompt is \d+ tokens; with max_new_tokens 500 that is \d+ > the bundle's "
                                  rf"max_context {MAX_CONTEXT}\. Fix: lower max_new_tokens to at most \d+"),
])
def test_cli_generate_errors_name_value_reason_and_fix(qwen, capsys, extra, message):
    code, out, err = _cli(["generate", str(qwen.bundle), SECRET, *extra], capsys)
    assert code == 2 and out == ""
    assert re.search(message, err) and len(err.strip().splitlines()) == 1 and SECRET not in err


def test_cli_generate_refuses_a_classification_bundle(tiny_bundle, capsys):
    code, _, err = _cli(["generate", str(tiny_bundle), "hello"], capsys)
    assert code == 2 and "sequence-classification bundle; generate needs a causal-lm bundle" in err
    assert "edgekit-run predict" in err


# ---------------------------------------------------------------- serve

def _call(server, method, path, body=None):
    import http.client

    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode("utf-8"))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def qwen_server(qwen_model):
    from edgekit_runtime.serve.server import PredictServer, ServeConfig

    server = PredictServer(qwen_model, ServeConfig(port=0)).start()
    yield server
    assert server.shutdown(timeout=120)


def _no_timings(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "timings"}


def test_serve_generate_equals_generate_and_logs_no_text(qwen_server, qwen_model, caplog):
    caplog.set_level(logging.DEBUG, logger="edgekit_runtime")
    status, body = _call(qwen_server, "POST", "/generate", {"prompt": SECRET, "max_new_tokens": 16})
    assert status == 200
    assert _no_timings(body) == _no_timings(qwen_model.generate([SECRET], max_new_tokens=16)[0].to_dict())
    messages = [{"role": "user", "content": SECRET}]
    status, chat = _call(qwen_server, "POST", "/generate", {"messages": messages, "max_new_tokens": 16,
                                                            "think": "strip", "stop": ["zz"]})
    assert status == 200 and _no_timings(chat) == _no_timings(
        qwen_model.generate([messages], max_new_tokens=16, think="strip", stop=["zz"])[0].to_dict())
    status, sampled = _call(qwen_server, "POST", "/generate", {"prompt": "a dog", "max_new_tokens": 8, "chat": False,
                                                               "do_sample": True, "seed": 3, "top_p": 0.9})
    assert status == 200 and sampled["token_ids"] == qwen_model.generate(
        ["a dog"], max_new_tokens=8, chat=False, do_sample=True, seed=3, top_p=0.9)[0].token_ids
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /generate 200 16 tokens" in logged
    assert SECRET not in logged and body["text"] not in logged.replace("POST /generate", "")


@pytest.mark.parametrize("payload, field", [
    ({"prompt": SECRET, "temperature": 0}, "temperature=0"),
    ({"prompt": SECRET, "top_p": 1.5}, "top_p=1.5"),
    ({"prompt": SECRET, "max_new_tokens": "many"}, "max_new_tokens='many'"),
    ({"prompt": SECRET, "think": "budget"}, "think_budget=N"),
    ({"prompt": SECRET, "stop": [3.5]}, r"stop\[0\]"),
    ({"prompt": SECRET, "max_new_tokens": 1000}, rf"the prompt is \d+ tokens.*max_context {MAX_CONTEXT}"),
    ({"prompt": SECRET, "beams": 4}, r"unknown keys \['beams'\]"),
    ({"prompt": SECRET, "messages": []}, "both 'prompt' and 'messages'"),
    ({"max_new_tokens": 4}, "neither 'prompt' nor 'messages'"),
    ({"prompt": 5}, "'prompt' is a JSON number"),
    ({"prompt": "  "}, "'prompt' is empty"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\] is not an object with string 'role' and 'content'"),
    ({"messages": [{"role": "user", "content": SECRET}], "chat": False}, "needs the chat template"),
    ({"messages": [{"role": "user", "content": SECRET + " \ud800"}]}, "unpaired UTF-16 surrogate"),
])
def test_serve_generate_refuses_bad_fields_naming_them(qwen_server, payload, field):
    status, body = _call(qwen_server, "POST", "/generate", payload)
    assert status == 400 and re.search(field, body["error"]) and body["fix"]
    assert SECRET not in json.dumps(body)


def test_serve_health_metadata_and_predict_point_to_generate(qwen_server, qwen_model):
    status, health = _call(qwen_server, "GET", "/health")
    assert status == 200 and health["task"] == "causal-lm"
    status, meta = _call(qwen_server, "GET", "/metadata")
    assert status == 200 and meta["task"] == "causal-lm" and meta["labels"] == []
    assert meta["generation"]["max_context"] == MAX_CONTEXT and meta["generation"]["chat_template"] is True
    assert meta["generation"]["defaults"]["max_new_tokens"] == 256 and "think_budget" in meta["generation"]["options"]
    status, body = _call(qwen_server, "POST", "/predict", {"texts": [SECRET]})
    assert status == 404 and "causal-lm bundle" in body["error"] and body["fix"].startswith("POST /generate")


def test_concurrent_generate_requests_with_equal_settings_share_a_batch(qwen_model):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from edgekit_runtime.serve.server import PredictServer, ServeConfig

    gate, entered, sizes = threading.Event(), threading.Event(), []
    run = qwen_model.generator.run

    def gated(prompts, cfg, stream=None):
        sizes.append(len(prompts))
        entered.set()
        assert gate.wait(60)
        return run(prompts, cfg, stream)

    qwen_model.generator.run = gated
    server = PredictServer(qwen_model, ServeConfig(port=0, max_wait_ms=0)).start()
    body = lambda p, n=8: {"prompt": p, "max_new_tokens": n, "chat": False}  # noqa: E731
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(_call, server, "POST", "/generate", body(QWEN_PROMPTS[0]))
            assert entered.wait(60)  # the worker holds request 1; the others queue behind it
            rest = [pool.submit(_call, server, "POST", "/generate", b)
                    for b in (body(QWEN_PROMPTS[1]), body(QWEN_PROMPTS[2]), body(QWEN_PROMPTS[3], 5))]
            deadline = time.monotonic() + 60
            while server.batcher.depth < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            gate.set()
            answers = [first.result(), *(f.result() for f in rest)]
    finally:
        gate.set()
        del qwen_model.generator.run
        assert server.shutdown(timeout=60)
    assert sizes == [1, 2, 1]  # the two requests with equal settings ran as one batch
    for prompt, n, (status, result) in zip(QWEN_PROMPTS, (8, 8, 8, 5), answers):
        assert status == 200
        assert result["token_ids"] == qwen_model.generate([prompt], max_new_tokens=n, chat=False)[0].token_ids


def test_classification_serve_points_generate_to_predict(tiny_bundle):
    import edgekit_runtime as rt
    from edgekit_runtime.serve.server import PredictServer, ServeConfig

    with rt.load(tiny_bundle) as model:
        server = PredictServer(model, ServeConfig(port=0)).start()
        try:
            status, body = _call(server, "POST", "/generate", {"prompt": SECRET})
            assert status == 404 and "classifies" in body["error"] and body["fix"].startswith("POST /predict")
            assert _call(server, "GET", "/health")[1]["task"] == "sequence-classification"
            assert "generation" not in _call(server, "GET", "/metadata")[1]
        finally:
            assert server.shutdown(timeout=60)


def test_bench_refuses_a_causal_lm_bundle_naming_the_alternative(qwen, capsys):
    suite = Path(__file__).resolve().parents[2] / "benchmarks" / "suites" / "latency.toml"
    code, out, err = _cli(["bench", str(qwen.bundle), "--suite", str(suite)], capsys)
    assert code == 1 and "a causal-lm bundle, but runs ['latency']" in err and "generation.toml" in err


def test_bench_generation_suite_times_a_causal_lm_bundle(qwen_contrib, tiny_bundle, tmp_path, capsys):
    """The generation kind: the runtime's own timings per batch size, every prompt generating exactly
    max_new_tokens; a classifier bundle is refused naming the runs."""
    suite = tmp_path / "gen.toml"
    suite.write_text('[suite]\nname = "gen"\n[[run]]\nkind = "generation"\nprompts = 4\nmax_new_tokens = 12\n'
                     'batch_sizes = [1, 2]\nwarmup = 0\n', encoding="utf-8")
    out = tmp_path / "result.json"
    code, _, err = _cli(["bench", str(qwen_contrib.bundle), "--suite", str(suite), "--json", str(out)], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    [run] = doc["runs"]
    assert run["status"] == "ok" and doc["bundle"]["task"] == "causal-lm"
    m = run["metrics"]
    for key in ("b1.decode_tokens_per_s", "b2.decode_tokens_per_s", "b2.batch_decode_tokens_per_s",
                "b1.prefill_tokens_per_s", "b1.time_to_first_token.p50_ms"):
        assert m[key]["value"] > 0, key
    assert m["b1.decode_tokens_per_s"]["better"] == "higher" and m["b1.time_to_first_token.p50_ms"]["better"] == "lower"
    details = run["details"][0]
    assert details["tokens"] == {"b1": 4 * 12, "b2": 4 * 12} and details["kv_cache"] == "bound"
    code, _, err = _cli(["bench", str(tiny_bundle), "--suite", str(suite)], capsys)
    assert code == 1 and "['generation']" in err and "causal-lm" in err
