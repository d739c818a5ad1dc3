"""Generation in the runtime with a numpy fake of the KV-cache graph: sampling, the incremental
detokenizer, stop and think handling, the KV-cache bookkeeping. Real graphs (a tiny random Qwen2
bundle, both operator sets): test_generate_bundle.py; the CLI, serve and bench: test_generate_cli.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from edgekit_runtime.backends.base import Backend, TensorSpec
from edgekit_runtime.generation.chat import ChatTemplate
from edgekit_runtime.generation.decoder import BufferCache, DecoderSpec, DecoderTokenizer, PresentCache, kv_names
from edgekit_runtime.generation.detokenize import IncrementalDetokenizer, StopText, ThinkText
from edgekit_runtime.errors import BackendError, BundleError, InputError
from edgekit_runtime.generation.generate import GenerationConfig, Generator
from edgekit_runtime.generation.sampling import filter_top_k, filter_top_p, greedy, row_generators, sample
from decoder_bundles import ASSISTANT, CHAT_TEMPLATE, EOS, PAD, SECRET, THINK_END, THINK_START, USER

CORPUS = ["the cat sees the door and waits", "a dog follows the red ball", "my phone charges by the window",
          "café naïve déjà vu — ünïcödé text", "日本語のテキストと中文文本", "emoji 🙂🚀 and symbols ∑∫√",
          "the battery lasts all day; the robot moves to its charger", "numbers 12345 and 67890"]


# ---------------------------------------------------------------- a tokenizer and a fake graph

def byte_bpe(path: Path, vocab_size: int = 400) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=[EOS, PAD, USER, ASSISTANT, THINK_START, THINK_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.save(str(path))
    return path


class FakeDecoder(Backend):
    """The KV-cache graph contract in numpy. A token's key/value depend on its id and position; the
    logits of a query mix the mean of the row's unmasked keys so far with its own key, so any slip
    in padding, positions, masks or the cache changes the tokens. ``bias`` (V,) is added to logits;
    ``eos_after`` {row's real-token count: id} makes that id win when a row holds that many tokens."""

    name = "fake"

    def __init__(self, vocab: int, layers: int = 2, heads: int = 2, dim: int = 4, seed: int = 0,
                 dtype: str = "int64", bias=None, eos_after=None, nan_at=None):
        rng = np.random.default_rng(seed)
        self.emb = rng.normal(size=(vocab, heads, dim)).astype(np.float32)
        self.out = rng.normal(size=(heads * dim, vocab)).astype(np.float32)
        self.vocab, self.layers, self.heads, self.dim = vocab, layers, heads, dim
        self.bias = np.zeros(vocab, np.float32) if bias is None else np.asarray(bias, np.float32)
        self.eos_after, self.nan_at = eos_after or {}, nan_at
        tokens = [TensorSpec(n, dtype, ("batch", "sequence")) for n in ("input_ids", "attention_mask", "position_ids")]
        past = [TensorSpec(p, "float32", ("batch", heads, "past", dim)) for p, _ in kv_names(layers)]
        self.inputs = tuple(tokens + past)
        self.outputs = (TensorSpec("logits", "float32", ("batch", "sequence", vocab)),
                        *(TensorSpec(p, "float32", ("batch", heads, "total", dim)) for _, p in kv_names(layers)))
        self.calls: list[dict[str, tuple]] = []

    def run(self, feeds):
        self.calls.append({k: tuple(v.shape) for k, v in feeds.items()})
        ids, mask, pos = feeds["input_ids"], feeds["attention_mask"], feeds["position_ids"]
        batch, seq = ids.shape
        assert mask.shape[1] == feeds["past_key_values.0.key"].shape[2] + seq
        new_k = (self.emb[ids].transpose(0, 2, 1, 3) + 0.05 * pos[:, None, :, None]).astype(np.float32)  # (B,H,S,D)
        new_v = 0.5 * self.emb[ids].transpose(0, 2, 1, 3)
        out = {}
        for i in range(self.layers):
            out[f"present.{i}.key"] = np.concatenate([feeds[f"past_key_values.{i}.key"], new_k * (i + 1)], axis=2)
            out[f"present.{i}.value"] = np.concatenate([feeds[f"past_key_values.{i}.value"], new_v * (i + 1)], axis=2)
        k, v = out["present.0.key"], out["present.0.value"]
        past = k.shape[2] - seq
        logits = np.empty((batch, seq, self.vocab), np.float32)
        for b in range(batch):
            for s in range(seq):
                end = past + s + 1
                valid = mask[b, :end].astype(bool)
                mean = (k[b, :, :end][:, valid] + v[b, :, :end][:, valid]).sum(1) / max(valid.sum(), 1)
                logits[b, s] = (mean + 2 * k[b, :, past + s]).reshape(-1) @ self.out + self.bias
                count = int(valid.sum())
                if count in self.eos_after and mask[b, past + s]:
                    logits[b, s, self.eos_after[count]] = 1e4
        if self.nan_at is not None and past > 0:
            logits[self.nan_at] = np.nan
        out["logits"] = logits
        return out


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    return byte_bpe(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def make_spec(tok_path, layers=2, max_context=96, template=CHAT_TEMPLATE, think=True) -> DecoderSpec:
    raw = Tokenizer.from_file(str(tok_path))
    return DecoderSpec(num_layers=layers, num_kv_heads=2, head_dim=4, vocab_size=raw.get_vocab_size(),
                       max_context=max_context, eos_token_ids=(raw.token_to_id(EOS),),
                       pad_token_id=raw.token_to_id(PAD), chat_template=template,
                       think=(THINK_START, THINK_END) if think else None)


def make_generator(tok_path, *, kv_cache="present", spec=None, **fake) -> Generator:
    spec = spec or make_spec(tok_path)
    tokenizer = DecoderTokenizer(tok_path, spec)
    backend = FakeDecoder(spec.vocab_size, layers=spec.num_layers, **fake)
    return Generator(backend, spec, tokenizer, GenerationConfig(max_new_tokens=16, chat=False), kv_cache=kv_cache)


def never(tok_path, *texts) -> np.ndarray:
    """A bias that keeps the fake from ever choosing these tokens (eos, </think>, ...)."""
    raw = Tokenizer.from_file(str(tok_path))
    bias = np.zeros(raw.get_vocab_size(), np.float32)
    for t in texts:
        bias[raw.token_to_id(t)] = -1e4
    return bias


def reference_greedy(backend: FakeDecoder, ids: list[int], n: int, pad: int) -> list[int]:
    """No cache, no padding, no batch: the whole sequence through the graph every step."""
    seq = list(ids)
    for _ in range(n):
        feeds = {"input_ids": np.array([seq]), "attention_mask": np.ones((1, len(seq)), np.int64),
                 "position_ids": np.arange(len(seq))[None]}
        for p, _ in kv_names(backend.layers):
            feeds[p] = np.zeros((1, backend.heads, 0, backend.dim), np.float32)
        seq.append(int(backend.run(feeds)["logits"][0, -1].argmax()))
    return seq[len(ids):]


# ---------------------------------------------------------------- sampling

def test_top_p_keeps_the_smallest_set_reaching_p_and_at_least_one():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda p: np.isfinite(filter_top_p(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.49) == [True, False, False, False]  # 0.5 alone reaches 0.49
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.79) == [True, True, False, False]  # 0.5 + 0.3 >= 0.79
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.96) == [True] * 4
    assert kept(1e-9) == [True, False, False, False]  # never empty
    assert kept(1.0) == [True] * 4
    shuffled = logits[:, [2, 0, 3, 1]]  # the set follows the values, not the positions
    assert np.isfinite(filter_top_p(shuffled, 0.79))[0].tolist() == [False, True, False, True]


def test_top_k_keeps_k_largest_per_row():
    logits = np.array([[1.0, 5.0, 3.0, 4.0], [9.0, 1.0, 2.0, 0.0]])
    assert np.isfinite(filter_top_k(logits, 2)).tolist() == [[False, True, False, True], [True, False, True, False]]
    assert filter_top_k(logits, 0) is logits


def test_sampling_is_seeded_per_prompt_index_and_top_k_1_is_greedy():
    logits = np.random.default_rng(3).normal(size=(4, 50)).astype(np.float32)
    draw = lambda seed, idx, **kw: sample(logits[: len(idx)], row_generators(seed, idx),  # noqa: E731
                                          temperature=kw.get("t", 1.0), top_k=kw.get("k", 0), top_p=kw.get("p", 1.0))
    a = [draw(7, [0, 1, 2, 3]) for _ in range(2)]
    assert (a[0] == a[1]).all()
    assert any((draw(s, [0, 1, 2, 3]) != a[0]).any() for s in (8, 9))
    # a row's draw depends on (seed, its index), not on the rows beside it
    assert draw(7, [0, 1, 2, 3])[2] == sample(logits[2:3], row_generators(7, [2]), temperature=1, top_k=0, top_p=1)[0]
    assert (draw(5, [0, 1, 2, 3], k=1) == greedy(logits)).all()
    assert (draw(5, [0, 1, 2, 3], p=1e-6) == greedy(logits)).all()
    # a low temperature concentrates on the argmax; a high one spreads
    many = np.concatenate([sample(np.repeat(logits[:1], 200, 0), row_generators(1, range(200)), temperature=t,
                                  top_k=0, top_p=1.0)[None] for t in (0.05, 5.0)])
    assert (many[0] == logits[0].argmax()).mean() > 0.95 and len(set(many[1].tolist())) > 10


# ---------------------------------------------------------------- text stages

def test_incremental_detokenizer_never_emits_a_partial_character(tok_path):
    tok = Tokenizer.from_file(str(tok_path))
    text = "emoji 🙂🚀 and 日本語 with café ∑ — done"
    ids = tok.encode(text).ids
    # the case that matters: some character's bytes are spread over several tokens
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(lambda x: tok.decode(x, skip_special_tokens=False))
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_incremental_detokenizer_with_a_sentencepiece_style_decoder():
    """Llama tokenizers: '▁' for spaces, <0xNN> byte fallback tokens, and a decoder that strips the
    first leading space of whatever it decodes (so decoding token by token would drop spaces)."""
    from tokenizers import normalizers

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator([c for c in CORPUS if c.isascii()] * 4, trainer=trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<s>", "</s>", *byte_tokens], show_progress=False))
    text = "the cat 日本 🙂 café sees  the door"
    ids = tok.encode(text).ids
    assert "<0xF0>" in [tok.id_to_token(i) for i in ids]  # the emoji is four byte tokens
    detok = IncrementalDetokenizer(lambda x: tok.decode(x, skip_special_tokens=False))
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_stop_text_cuts_at_the_first_stop_and_holds_back_a_possible_start():
    stop = StopText(["\n\nUser:", "END"])
    out = [stop.push(p) for p in ["Hello", " wor", "ld\n", "\nUs", "er: more"]]
    assert out == ["Hello", " wor", "ld", "", ""] and stop.stopped
    stop = StopText(["\n\nUser:"])
    assert [stop.push("a\n"), stop.push("b"), stop.flush()] == ["a", "\nb", ""]
    assert StopText([]).push("x") == "x"


@pytest.mark.parametrize("split", [1, 3, 100])
def test_think_text_splits_reasoning_from_the_answer(split):
    raw = "let me think</think>\n\nThe answer is 4.<think>again</think> ok"
    pieces = [raw[i:i + split] for i in range(0, len(raw), split)]
    strip = ThinkText(THINK_START, THINK_END, inside=True, keep_markers=False)
    answer = "".join(strip.push(p) for p in pieces) + strip.flush()
    assert answer == "The answer is 4.ok"
    assert strip.reasoning == "let me thinkagain"
    keep = ThinkText(THINK_START, THINK_END, inside=True, keep_markers=True)
    assert "".join(keep.push(p) for p in pieces) + keep.flush() == raw and keep.reasoning == "let me thinkagain"
    plain = ThinkText(THINK_START, THINK_END, inside=False, keep_markers=False)
    assert plain.push("no thinking here") + plain.flush() == "no thinking here" and plain.reasoning is None


def test_chat_template_renders_like_transformers_in_a_sandbox():
    template = ChatTemplate(CHAT_TEMPLATE, {"eos_token": EOS})
    text = template.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                            {"role": "user", "content": "2+2?"}])
    assert text == f"{USER}hi{ASSISTANT}yo{EOS}{USER}2+2?{ASSISTANT}{THINK_START}\n"
    with pytest.raises(InputError, match=r"messages\[1\]"):
        template.render([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    refusing = ChatTemplate("{{ raise_exception('roles must alternate') }}", {})
    with pytest.raises(InputError, match="roles must alternate"):
        refusing.render([{"role": "user", "content": "a"}])
    escaping = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}", {})
    with pytest.raises(BundleError, match="unsafe"):
        escaping.render([{"role": "user", "content": "a"}])
    mutating = ChatTemplate("{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}ok", {})
    with pytest.raises(BundleError, match="unsafe"):
        mutating.render([{"role": "user", "content": "a"}])
    with pytest.raises(BundleError, match="does not compile"):
        ChatTemplate("{% for %}", {})


# ---------------------------------------------------------------- the generation loop (fake graph)

PROMPTS = ["the cat sees the door", "a dog", "my phone charges by the window and the robot moves", "café"]


@pytest.mark.parametrize("kv_cache", ["present", "buffers"])
def test_greedy_batch_equals_uncached_unpadded_reference(tok_path, kv_cache):
    gen = make_generator(tok_path, kv_cache=kv_cache, bias=never(tok_path, EOS))
    results = gen.generate(PROMPTS, max_new_tokens=12, batch_size=4)
    calls = list(gen.backend.calls)
    for prompt, result in zip(PROMPTS, results):
        ids = gen.tokenizer.encode(prompt, add_special_tokens=True)
        assert result.token_ids == reference_greedy(gen.backend, ids, 12, gen.spec.pad_token_id)
        assert result.finish_reason == "length" and result.completion_tokens == 12
        assert result.prompt_tokens == len(ids)
        assert result.text == gen.tokenizer.decode(result.token_ids)
    # one prefill over the left-padded batch, then one single-token step per new token but the last
    widest = max(r.prompt_tokens for r in results)
    assert [c["input_ids"] for c in calls] == [(4, widest)] + [(4, 1)] * 11
    assert [c["past_key_values.1.value"][2] for c in calls] == [0] + list(range(widest, widest + 11))
    assert [c["attention_mask"][1] for c in calls] == list(range(widest, widest + 12))


def test_long_prompts_prefill_in_chunks_with_the_same_tokens(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS))
    whole = gen.generate(PROMPTS, max_new_tokens=6)
    gen.backend.calls.clear()
    gen.prefill_logits_bytes = 4 * 2 * gen.spec.vocab_size * 8  # 8 positions of logits for a batch of 2
    chunked = gen.generate(PROMPTS, max_new_tokens=6, batch_size=2)
    assert [r.token_ids for r in chunked] == [r.token_ids for r in whole]
    # batch (a dog, café) is 2 wide: one call; (the cat..., my phone...) is 14 wide: 8 + 6
    prefills = [c["input_ids"] for c in gen.backend.calls if c["input_ids"][1] > 1]
    assert sorted(prefills) == [(2, 2), (2, 6), (2, 8)]
    assert any(c["past_key_values.0.key"][2] == 8 and c["input_ids"] == (2, 6) for c in gen.backend.calls)


def test_buffer_cache_holds_exactly_what_present_holds(tok_path):
    spec = make_spec(tok_path)
    backend = FakeDecoder(spec.vocab_size)
    names = kv_names(2)
    buffers = BufferCache(names, 2, 2, 10, 4, np.float32)
    present = PresentCache(names, 2, 2, 10, 4, np.float32)
    rng = np.random.default_rng(0)
    mask = np.ones((2, 0), np.int64)
    for new in (4, 1, 1, 1):
        ids = rng.integers(6, spec.vocab_size, size=(2, new))
        mask = np.concatenate([mask, np.ones((2, new), np.int64)], axis=1)
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": np.cumsum(mask, 1)[:, -new:] - 1}
        out_b = backend.run({**feeds, **buffers.feeds()})
        out_p = backend.run({**feeds, **present.feeds()})
        buffers.update(out_b, new)
        present.update(out_p, new)
        assert buffers.length == present.length == mask.shape[1]
        for past, name in names:
            assert np.array_equal(buffers.buffers[past][:, :, :buffers.length], out_p[name])
            assert np.array_equal(present.past[past], out_p[name])
            assert not buffers.buffers[past][:, :, buffers.length:].any()  # the rest is untouched
    assert buffers.buffers[names[0][0]].shape == (2, 2, 10, 4)


def test_rows_that_stop_early_do_not_change_the_others(tok_path):
    """Row "a dog" hits eos after 4 tokens of its own, in a batch with longer rows; each row
    equals its own batch-of-one run and the rows after eos are fed pad with mask 1."""
    eos = Tokenizer.from_file(str(tok_path)).token_to_id(EOS)
    short = make_generator(tok_path).tokenizer.encode("a dog", add_special_tokens=True)
    gen = make_generator(tok_path, bias=never(tok_path, EOS), eos_after={len(short) + 4: eos})
    prompts = ["the cat sees the door and waits by the window", "a dog", PROMPTS[2]]  # only "a dog" is that short
    batch = gen.generate(prompts, max_new_tokens=10, batch_size=4)
    calls = list(gen.backend.calls)
    alone = gen.generate(prompts, max_new_tokens=10, batch_size=1)
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    dog = batch[1]
    assert dog.finish_reason == "eos" and len(dog.token_ids) == 5 and dog.token_ids[-1] == eos
    assert EOS not in dog.text and dog.text == gen.tokenizer.decode(dog.token_ids[:-1])
    assert [r.finish_reason for i, r in enumerate(batch) if i != 1] == ["length"] * 2
    assert [c["input_ids"][0] for c in calls] == [3] * 10  # the stopped row stays in the batch


def test_stop_strings_and_stop_ids(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS))
    full = gen.generate(["the cat sees the door"], max_new_tokens=16)[0]
    # a stop string that starts inside the 6th token's text and ends later
    cut = len(gen.tokenizer.decode(full.token_ids[:5])) + 1
    stop = full.text[cut:cut + 3]
    assume_unique = full.text.find(stop)
    got = gen.generate(["the cat sees the door"], max_new_tokens=16, stop=[stop])[0]
    assert got.finish_reason == "stop" and got.text == full.text[:assume_unique]
    assert got.token_ids == full.token_ids[:len(got.token_ids)] and len(got.token_ids) < 16
    assert stop in gen.tokenizer.decode(got.token_ids) and stop not in gen.tokenizer.decode(got.token_ids[:-1])
    by_id = gen.generate(["the cat sees the door"], max_new_tokens=16, stop=[full.token_ids[3]])[0]
    first = full.token_ids.index(full.token_ids[3])
    assert by_id.finish_reason == "stop" and by_id.token_ids == full.token_ids[:first + 1]
    assert by_id.text == gen.tokenizer.decode(full.token_ids[:first])


def test_max_new_tokens_and_context_overflow_name_the_numbers(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS))
    assert len(gen.generate(["a dog"], max_new_tokens=3)[0].token_ids) == 3
    n = len(gen.tokenizer.encode(PROMPTS[2], add_special_tokens=True))
    with pytest.raises(InputError, match=rf"prompt 1 is {n} tokens; with max_new_tokens 90 that is {n + 90} > the "
                                         rf"bundle's max_context 96. Fix: lower max_new_tokens to at most {96 - n}"):
        gen.generate(["a dog", PROMPTS[2]], max_new_tokens=90)
    assert len(gen.generate([PROMPTS[2]], max_new_tokens=96 - n)[0].token_ids) == 96 - n  # exactly full is fine


def test_streaming_pieces_add_up_to_the_text_per_prompt(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS))
    pieces: dict[int, list[str]] = {}
    results = gen.generate(PROMPTS, max_new_tokens=24, stream=lambda i, t: pieces.setdefault(i, []).append(t))
    # without a stream the text is decoded once at the end: the same text, token for token
    quiet = gen.generate(PROMPTS, max_new_tokens=24)
    assert [r.text for r in quiet] == [r.text for r in results]
    assert [r.token_ids for r in quiet] == [r.token_ids for r in results]
    for i, result in enumerate(results):
        assert "".join(pieces.get(i, [])) == result.text
        # random tokens can spell invalid UTF-8 (a real replacement character in the text); what a
        # piece must never do is end in the middle of a character that the next token completes
        assert all(p and not p.endswith("\ufffd") for p in pieces.get(i, [])[:-1])


def test_sampling_in_the_loop_is_seeded_and_independent_of_batching(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS))
    run = lambda **kw: [r.token_ids for r in gen.generate(PROMPTS, max_new_tokens=10, do_sample=True, **kw)]  # noqa: E731
    a = run(seed=1)
    assert a == run(seed=1) == run(seed=1, batch_size=1)
    assert a != run(seed=2)
    greedy_ids = [r.token_ids for r in gen.generate(PROMPTS, max_new_tokens=10)]
    assert run(seed=3, top_k=1) == greedy_ids


def test_think_budget_forces_the_end_token_after_n_think_tokens(tok_path):
    raw = Tokenizer.from_file(str(tok_path))
    end = raw.token_to_id(THINK_END)
    gen = make_generator(tok_path, bias=never(tok_path, EOS, THINK_END, THINK_START))
    free = gen.generate(["2+2?"], chat=True, max_new_tokens=20)[0]
    assert end not in free.token_ids and free.think_tokens == 20  # the fake never closes the section itself
    forced = gen.generate(["2+2?"], chat=True, max_new_tokens=20, think="budget", think_budget=5)[0]
    assert forced.token_ids[:5] == free.token_ids[:5] and forced.token_ids[5] == end
    assert end not in forced.token_ids[6:] and len(forced.token_ids) == 20 and forced.think_tokens == 5
    assert forced.text == gen.tokenizer.decode(forced.token_ids)  # budget returns the text as keep does
    zero = gen.generate(["2+2?"], chat=True, max_new_tokens=4, think="budget", think_budget=0)[0]
    assert zero.token_ids[0] == end
    strip = gen.generate(["2+2?"], chat=True, max_new_tokens=20, think="strip")[0]
    assert strip.text == "" and strip.reasoning == free.text.strip()  # never left the section


def test_strip_returns_the_answer_and_reports_the_reasoning(tok_path):
    raw = Tokenizer.from_file(str(tok_path))
    end = raw.token_to_id(THINK_END)
    probe = make_generator(tok_path)
    prompt_len = len(probe.tokenizer.encode(f"{USER}2+2?{ASSISTANT}{THINK_START}\n", add_special_tokens=False))
    # the model closes its reasoning itself: </think> is its 7th token
    gen = make_generator(tok_path, bias=never(tok_path, EOS, THINK_START, THINK_END), eos_after={prompt_len + 6: end})
    kept = gen.generate(["2+2?"], chat=True, max_new_tokens=20)[0]
    assert kept.token_ids[6] == end and kept.text == gen.tokenizer.decode(kept.token_ids)
    assert kept.reasoning == gen.tokenizer.decode(kept.token_ids[:6]).strip() and kept.think_tokens == 6
    pieces = []
    stripped = gen.generate([[{"role": "user", "content": "2+2?"}]], chat=None, max_new_tokens=20, think="strip",
                            stream=lambda i, t: pieces.append(t))[0]
    assert stripped.token_ids == kept.token_ids
    assert stripped.text == gen.tokenizer.decode(kept.token_ids[7:]).lstrip() and stripped.text
    assert stripped.reasoning == kept.reasoning and "".join(pieces) == stripped.text
    assert THINK_END not in stripped.text and kept.reasoning not in stripped.text
    quiet = gen.generate([[{"role": "user", "content": "2+2?"}]], chat=None, max_new_tokens=20, think="strip")[0]
    assert (quiet.text, quiet.reasoning, quiet.think_tokens) == (stripped.text, stripped.reasoning, 6)


def test_chat_prompts_and_prompt_errors_name_the_index(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS))
    chat = gen.generate(["hello"], chat=True, max_new_tokens=2)[0]
    messages = gen.generate([[{"role": "user", "content": "hello"}]], chat=True, max_new_tokens=2)[0]
    rendered = gen.tokenizer.encode(f"{USER}hello{ASSISTANT}{THINK_START}\n", add_special_tokens=False)
    assert chat.prompt_tokens == messages.prompt_tokens == len(rendered) and chat.token_ids == messages.token_ids
    ids = gen.generate([rendered], max_new_tokens=2)[0]
    assert ids.token_ids == chat.token_ids
    with pytest.raises(InputError, match="single prompt"):
        gen.generate("hello")
    with pytest.raises(InputError, match="no prompts"):
        gen.generate([])
    with pytest.raises(InputError, match=r"prompt 1 is int"):
        gen.generate(["ok", 5])
    with pytest.raises(InputError, match=r"prompt 0: token ids must be .* \[0, \d+\)"):
        gen.generate([[1, 2, 10**6]])
    with pytest.raises(InputError, match="prompt 0 is a list of messages.*chat=False"):
        gen.generate([[{"role": "user", "content": "hi"}]], chat=False)
    no_template = make_generator(tok_path, spec=make_spec(tok_path, template=None))
    with pytest.raises(InputError, match="chat=True, but this bundle has no chat template.*--no-chat"):
        no_template.generate(["hi"], chat=True)
    assert no_template.generate(["hi"], max_new_tokens=1)[0].completion_tokens == 1  # chat unset: plain
    with pytest.raises(InputError, match="encodes to no tokens"):
        no_template.generate([""])
    no_think = make_generator(tok_path, spec=make_spec(tok_path, think=False))
    with pytest.raises(InputError, match="no think tokens"):
        no_think.generate(["hi"], think="budget", think_budget=3)
    for bad, match in [({"temperature": 0}, "greedy"), ({"top_p": 0}, r"\(0, 1\]"), ({"think": "hide"}, "strip"),
                       ({"think": "budget"}, "think_budget=N"), ({"think_budget": 4}, "think='budget'"),
                       ({"max_new_tokens": 0}, ">= 1"), ({"stop": [""]}, r"stop\[0\]"), ({"topk": 3}, "unknown")]:
        with pytest.raises(InputError, match=match):
            gen.generate(["hi"], **bad)
    assert SECRET not in str(pytest.raises(InputError, gen.generate, [SECRET, 3]).value)


def test_nan_logits_fail_naming_rows(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS), nan_at=1)
    with pytest.raises(BackendError, match=r"rows \[1\] \(prompts \[\d\]\)"):
        gen.generate(PROMPTS[:2], max_new_tokens=4)


def test_int32_token_inputs_are_fed_int32(tok_path):
    gen = make_generator(tok_path, bias=never(tok_path, EOS), dtype="int32")
    seen = []
    run = gen.backend.run
    gen.backend.run = lambda feeds: (seen.append({k: v.dtype for k, v in feeds.items() if "past" not in k}),
                                     run(feeds))[1]
    assert gen.generate(["a dog"], max_new_tokens=3)[0].completion_tokens == 3
    assert all(d == np.int32 for s in seen for d in s.values())

