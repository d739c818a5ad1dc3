"""The CPU profiles' ort-contrib decoder graph in the runtime: generation through the in-place KV
cache (IO binding) equals transformers, multi-chunk batches prefill row by row, idle caches are
reused, and `edgekit-run bench` times a causal-LM bundle with the generation kind. The model and
helpers are test_generate.py's."""

from __future__ import annotations

import json

import pytest
from test_generate import MAX_CONTEXT, QWEN_PROMPTS, Qwen, _cli  # noqa: F401  (MAX_CONTEXT: Qwen's)

from edgekit_runtime.errors import InputError


@pytest.fixture(scope="module")
def qwen_contrib(tmp_path_factory) -> Qwen:
    """The same model as an ort-contrib graph (the CPU profiles'): GroupQueryAttention, cache in place."""
    return Qwen(tmp_path_factory.mktemp("qwen-contrib"), ops="ort-contrib")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Qwen:
    return Qwen(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def qwen_model(qwen):
    import edgekit_runtime as rt

    with rt.load(qwen.bundle) as model:
        yield model


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


def test_contrib_graph_generates_what_transformers_does_with_the_cache_in_place(qwen_contrib):
    """The ort-contrib bundle decodes through IO binding (KV buffers bound as past and present, written
    in place): 64 greedy tokens equal transformers' for a left-padded batch and one by one, and
    equal what the same graph gives with the cache fed back as numpy (kv_cache='present')."""
    import edgekit_runtime as rt
    from edgekit_runtime.generate import Generator

    expected = qwen_contrib.hf_generate(QWEN_PROMPTS, 64, qwen_contrib.tok.eos_token_id)
    with rt.load(qwen_contrib.bundle) as model:
        assert model.spec.graph_ops == "ort-contrib" and model.generator.kv_cache == "bound"
        batch = model.generate(QWEN_PROMPTS, max_new_tokens=64, chat=False)
        alone = model.generate(QWEN_PROMPTS, max_new_tokens=64, chat=False, batch_size=1)
        plain = Generator(model.backend, model.spec, model.encoder, model.defaults, kv_cache="present")
        fed_back = plain.generate(QWEN_PROMPTS, max_new_tokens=64, chat=False)
    for hf, got, single, numpy_cache in zip(expected, batch, alone, fed_back):
        assert got.token_ids == single.token_ids == numpy_cache.token_ids == hf
        assert len(set(hf)) > 8


def test_contrib_graph_prefills_a_multi_chunk_batch_row_by_row(qwen_contrib):
    """GroupQueryAttention takes several tokens over a non-empty past at batch 1 only: a batch whose
    prompt needs several prefill chunks runs its rows one by one, then decodes together."""
    import edgekit_runtime as rt

    expected = qwen_contrib.hf_generate(QWEN_PROMPTS, 16, qwen_contrib.tok.eos_token_id)
    with rt.load(qwen_contrib.bundle) as model:
        generator = model.generator
        calls = []
        run = model.backend.run
        model.backend.run = lambda feeds: calls.append(feeds["input_ids"].shape) or run(feeds)
        generator.prefill_logits_bytes = 4 * model.spec.vocab_size * 8  # 8 positions a chunk for one row
        got = model.generate(QWEN_PROMPTS, max_new_tokens=16, chat=False)
    assert [r.token_ids for r in got] == expected
    assert calls and {shape[0] for shape in calls} == {1}  # every prefill call is one row; decode is bound
    assert sorted({shape[1] for shape in calls}) == [6, 8]  # the 14-token width as 8 + 6, for each row
    assert len(calls) == 2 * len(QWEN_PROMPTS)


def test_bound_cache_is_refused_for_a_standard_graph(qwen_model):
    from edgekit_runtime.generate import Generator

    with pytest.raises(InputError, match="kv_cache='bound'.*graph_ops='standard'.*Fix: leave kv_cache unset"):
        Generator(qwen_model.backend, qwen_model.spec, qwen_model.encoder, kv_cache="bound")
    assert qwen_model.generator.kv_cache == "present"


def test_bound_cache_is_reused_across_calls_without_leaking_state(qwen_contrib):
    """An idle bound cache serves the next call of the same batch size when it is large enough; the
    positions a longer earlier call left in its buffers are never read (same tokens as a fresh one)."""
    import edgekit_runtime as rt

    expected = qwen_contrib.hf_generate(QWEN_PROMPTS[1:2], 12, qwen_contrib.tok.eos_token_id)
    with rt.load(qwen_contrib.bundle) as model:
        generator = model.generator
        model.generate(QWEN_PROMPTS[:1], max_new_tokens=40, chat=False)  # a long context first
        first = generator._bound_pool[1]
        again = model.generate(QWEN_PROMPTS[1:2], max_new_tokens=12, chat=False)
        assert generator._bound_pool[1] is first  # reused: 12 + a short prompt fits in 40 + a long one
        model.generate(QWEN_PROMPTS[:1], max_new_tokens=90, chat=False)
        assert generator._bound_pool[1] is not first and generator._bound_pool[1].capacity > first.capacity
    assert again[0].token_ids == expected[0]
