"""Generation on real graphs: a tiny random Qwen2 exported both ways (the standard opset-13 graph
and the CPU profiles' ort-contrib graph) gives token for token what transformers' generate gives,
batched with left padding and alone; the ort-contrib graph's in-place KV cache, row-by-row
prefill and cache reuse; and generation needs neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from decoder_bundles import MAX_CONTEXT, QWEN_PROMPTS, THINK_END, THINK_START

from edgekit_runtime.errors import InputError


def test_load_gives_a_causal_lm_model(qwen_model, qwen):
    from edgekit_runtime import CausalLMModel

    assert isinstance(qwen_model, CausalLMModel) and qwen_model.backend_name == "ort-cpu"
    assert qwen_model.spec.max_context == MAX_CONTEXT and qwen_model.spec.think == (THINK_START, THINK_END)
    assert qwen_model.defaults.max_new_tokens == 256 and qwen_model.defaults.do_sample is False
    with pytest.raises(InputError, match="generate"):
        qwen_model.predict(["hello"])


def test_greedy_equals_transformers_generate_token_for_token(qwen_model, qwen):
    """64 new tokens for a left-padded batch of 4, and each prompt alone. The bundle's eos (id 0)
    never comes up for these prompts, so every row is compared over all 64 tokens; the next
    test makes rows stop early."""
    enc = qwen.tok(QWEN_PROMPTS)["input_ids"]
    expected = qwen.hf_generate(QWEN_PROMPTS, 64, qwen.tok.eos_token_id)
    batch = qwen_model.generate(QWEN_PROMPTS, max_new_tokens=64, chat=False)
    alone = qwen_model.generate(QWEN_PROMPTS, max_new_tokens=64, chat=False, batch_size=1)
    for ids, hf, got, single in zip(enc, expected, batch, alone):
        assert got.prompt_tokens == len(ids)
        assert got.finish_reason == "length" and got.token_ids == hf
        assert single.token_ids == hf
        assert len(set(hf)) > 8  # not a one-token loop: the comparison covers varied steps
        assert got.text == qwen.tok.decode(hf)
    assert {r.timings["batch_size"] for r in batch} == {4} and {r.timings["batch_size"] for r in alone} == {1}
    for r in batch:
        t = r.timings
        assert 0 < t["prefill_s"] <= t["time_to_first_token_s"] and t["decode_tokens_per_s"] > 0
        assert t["prefill_tokens_per_s"] > 0


def test_rows_that_hit_eos_stop_and_the_others_match_transformers(qwen):
    """A second eos id taken from row 1's own greedy text: row 1 (and any row that produces it)
    stops there with finish 'eos'; transformers, given the same eos ids, pads those rows after it."""
    import edgekit_runtime as rt

    free = qwen.hf_generate(QWEN_PROMPTS, 24, qwen.tok.eos_token_id)
    row = free[1]
    at = next(p for p in range(6, 24) if row[p] not in row[:p])
    extra = row[at]
    expected = qwen.hf_generate(QWEN_PROMPTS, 24, [qwen.tok.eos_token_id, extra])
    with rt.load(qwen.bundle_with_eos(extra)) as model:
        assert model.spec.eos_token_ids == (qwen.tok.eos_token_id, extra)
        results = model.generate(QWEN_PROMPTS, max_new_tokens=24, chat=False)
    reasons = []
    for hf, got in zip(expected, results):
        n = len(got.token_ids)
        assert got.token_ids == hf[:n]
        if got.finish_reason == "eos":
            assert got.token_ids[-1] == extra and set(hf[n:]) <= {qwen.tok.pad_token_id}
            assert got.text == qwen.tok.decode(hf[:n - 1])
        reasons.append(got.finish_reason)
    assert reasons[1] == "eos" and len(results[1].token_ids) == at + 1 and "length" in reasons


def test_min_new_tokens_holds_eos_back_like_transformers(qwen):
    """With an eos id row 1 emits early, min_new_tokens=N keeps every row going for N tokens, token
    for token what transformers' min_new_tokens gives; eos may end a row after that."""
    import edgekit_runtime as rt

    free = qwen.hf_generate(QWEN_PROMPTS, 24, qwen.tok.eos_token_id)
    row = free[1]
    at = next(p for p in range(4, 12) if row[p] not in row[:p])
    extra = row[at]
    enc = qwen.tok(QWEN_PROMPTS, padding=True, return_tensors="pt")
    with qwen.torch.no_grad():
        expected = qwen.model.generate(**enc, max_new_tokens=24, min_new_tokens=16, do_sample=False,
                                       eos_token_id=[qwen.tok.eos_token_id, extra],
                                       pad_token_id=qwen.tok.pad_token_id)[:, enc["input_ids"].shape[1]:].tolist()
    with rt.load(qwen.bundle_with_eos(extra)) as model:
        held = model.generate(QWEN_PROMPTS, max_new_tokens=24, min_new_tokens=16, chat=False)
        free_run = model.generate(QWEN_PROMPTS, max_new_tokens=24, chat=False)
        with pytest.raises(rt.InputError, match="min_new_tokens=30 exceeds max_new_tokens=24"):
            model.generate(QWEN_PROMPTS, max_new_tokens=24, min_new_tokens=30, chat=False)
    assert free_run[1].finish_reason == "eos" and len(free_run[1].token_ids) == at + 1
    for hf, got in zip(expected, held):
        assert len(got.token_ids) >= 16 and got.token_ids == hf[:len(got.token_ids)]
        assert extra not in got.token_ids[:16] and qwen.tok.eos_token_id not in got.token_ids[:16]


def test_chat_prompts_are_the_tokenizer_s_apply_chat_template(qwen_model, qwen):
    messages = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "runs fast."},
                {"role": "user", "content": "and the dog?"}]
    want = qwen.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    got = qwen_model.generate([messages], max_new_tokens=8)[0]
    assert got.prompt_tokens == len(want)
    assert got.token_ids == qwen_model.generate([list(want)], max_new_tokens=8)[0].token_ids
    assert qwen.hf_generate([qwen.tok.decode(want)], 8, qwen.tok.eos_token_id)[0] == got.token_ids


def test_sampling_on_the_bundle_is_seeded_and_top_k_1_is_greedy(qwen_model):
    run = lambda **kw: [r.token_ids for r in qwen_model.generate(QWEN_PROMPTS[:2], max_new_tokens=16,  # noqa: E731
                                                                 chat=False, **kw)]
    a = run(do_sample=True, seed=11, temperature=1.5)
    assert a == run(do_sample=True, seed=11, temperature=1.5)
    assert a != run(do_sample=True, seed=12, temperature=1.5)
    assert run(do_sample=True, seed=13, top_k=1) == run()
    assert run(do_sample=True, seed=14, top_p=1e-6) == run()


def test_generation_imports_neither_torch_nor_transformers(qwen, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import edgekit_runtime
        from edgekit_runtime.cli.main import main as cli
        model = edgekit_runtime.load({str(qwen.bundle)!r})
        out = model.generate(["the cat"], max_new_tokens=4, think="strip")
        assert out[0].completion_tokens == 4, out
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print("clean")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


def test_chunked_prefill_on_the_graph_still_equals_transformers(qwen_model, qwen):
    """The same graph run with past > 0 and several new tokens at once (prefill in chunks of 8)."""
    expected = qwen.hf_generate(QWEN_PROMPTS, 16, qwen.tok.eos_token_id)
    generator = qwen_model.generator
    saved, generator.prefill_logits_bytes = generator.prefill_logits_bytes, 4 * 4 * qwen_model.spec.vocab_size * 8
    try:
        got = qwen_model.generate(QWEN_PROMPTS, max_new_tokens=16, chat=False)
    finally:
        generator.prefill_logits_bytes = saved
    assert [r.token_ids for r in got] == expected


def test_contrib_graph_generates_what_transformers_does_with_the_cache_in_place(qwen_contrib):
    """The ort-contrib bundle decodes through IO binding (KV buffers bound as past and present, written
    in place): 64 greedy tokens equal transformers' for a left-padded batch and one by one, and
    equal what the same graph gives with the cache fed back as numpy (kv_cache='present')."""
    import edgekit_runtime as rt
    from edgekit_runtime.generation.generate import Generator

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
    from edgekit_runtime.generation.generate import Generator

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
