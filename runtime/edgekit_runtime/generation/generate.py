"""Text generation with a causal-LM bundle's KV-cache graph (docs/decoder.md).

One graph serves prefill (the prompt over an empty past, in chunks when its logits would be
large) and decode (one token over the cache; see decoder.py for how the cache is kept).
A batch is padded on the left; each row's ``position_ids`` count its real tokens, so a row's
tokens are the ones it would get alone. A row that has stopped keeps being fed the pad token
with mask 1 (as transformers does) until every row is done: attention never crosses rows, so
it cannot change the others. Prompts and generated text are never logged.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import sampling
from ..backends.base import Backend
from .chat import ChatTemplate, check_messages
from .decoder import (KV_CACHES, BoundCache, DecoderSpec, DecoderTokenizer, PresentCache, bound_session,
                      check_decoder_io, kv_names, left_pad)
from ..errors import BackendError, BundleError, InputError
from .rows import GenerationResult, PreparedPrompt, Row
from .config import GenerationConfig

# Prefill runs the prompt in chunks whose logits (batch x chunk x vocab float32) stay under this: the
# graph returns logits for every position, and a 2,000-token prompt over a 152k vocabulary (Qwen2)
# would otherwise take 1.2 GB in one output.
PREFILL_LOGITS_BYTES = 64 << 20
StreamCallback = Callable[[int, str], None]  # (prompt index, text increment)
Prompt = str | Sequence[Mapping[str, Any]] | Sequence[int] | np.ndarray


# ---------------------------------------------------------------- per prompt

def _prompt_texts(prompt: Any) -> list[str]:
    """The strings a prompt carries: itself, or its messages' contents."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence):
        return [m["content"] for m in prompt if isinstance(m, Mapping) and isinstance(m.get("content"), str)]
    return []


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- the generator

class Generator:
    """Runs generation on a backend that holds a causal-LM graph; ``CausalLMModel`` wraps one."""

    def __init__(self, backend: Backend, spec: DecoderSpec, tokenizer: DecoderTokenizer,
                 defaults: GenerationConfig | None = None, kv_cache: str | None = None):
        """``kv_cache``: how decode steps keep the cache (decoder.KV_CACHES); default "bound" for an
        ort-contrib graph on ONNX Runtime's CPU provider, else "present"."""
        check_decoder_io(backend.inputs, backend.outputs, spec)
        bindable = spec.graph_ops == "ort-contrib" and bound_session(backend) is not None
        kv_cache = kv_cache or ("bound" if bindable else "present")
        if kv_cache not in KV_CACHES:
            raise InputError(f"kv_cache={kv_cache!r}: expected one of {list(KV_CACHES)}. Fix: leave it unset.")
        if kv_cache == "bound" and not bindable:
            raise InputError(f"kv_cache='bound' updates the cache in place, which only an ort-contrib graph on "
                             f"onnxruntime's CPU provider does (this bundle: graph_ops={spec.graph_ops!r}, backend "
                             f"{getattr(backend, 'name', backend)!r}). Fix: leave kv_cache unset.")
        self.backend, self.spec, self.tokenizer = backend, spec, tokenizer
        self.defaults = defaults or GenerationConfig()
        self.kv_cache = kv_cache
        self._bound_pool: dict[int, BoundCache] = {}  # batch size -> an idle bound cache (see _decode_cache)
        self._pool_lock = threading.Lock()
        self.prefill_logits_bytes = PREFILL_LOGITS_BYTES
        self.names = kv_names(spec.num_layers)
        dtypes = {s.name: np.dtype(s.dtype) for s in backend.inputs}
        self.token_dtype = dtypes["input_ids"]
        self.kv_dtype = dtypes[self.names[0][0]]
        self.template = None
        if spec.chat_template:
            self.template = ChatTemplate(spec.chat_template, {
                "bos_token": tokenizer.token_text(spec.bos_token_id),
                "eos_token": tokenizer.token_text(spec.eos_token_ids[0]),
                "pad_token": tokenizer.token_text(spec.pad_token_id)})

    # ------------------------------------------------------------ prompts

    def prepare(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[PreparedPrompt]:
        """Prompts -> token ids (chat template applied as ``config.chat`` says), each checked to fit
        max_context with max_new_tokens. Errors name the prompt's index, never its text."""
        if isinstance(prompts, (str, bytes)) or (isinstance(prompts, Sequence) and prompts
                                                 and isinstance(prompts[0], (int, np.integer))):
            raise InputError("prompts is a single prompt, expected a list of prompts. Fix: pass [prompt].")
        prompts = list(prompts)
        if not prompts:
            raise InputError("no prompts. Fix: pass at least one prompt.")
        if config.think == "budget" and self.tokenizer.think_ids is None:
            raise InputError("think='budget', but this bundle has no think tokens (task.think is null), so there is "
                             "no section to cut short. Fix: leave think unset for this model.")
        if config.chat is True and self.template is None:
            raise InputError("chat=True, but this bundle has no chat template (task.chat_template is null). "
                             "Fix: pass chat=False (CLI: --no-chat) and write the prompt in the model's own format.")
        out = []
        for i, prompt in enumerate(prompts):
            ids = self._prompt_ids(i, prompt, config)
            total = len(ids) + config.max_new_tokens
            if total > self.spec.max_context:
                room, keep = self.spec.max_context - len(ids), self.spec.max_context - config.max_new_tokens
                fix = (f"lower max_new_tokens to at most {room}, or shorten the prompt" if room > 0
                       else f"shorten the prompt to at most {keep} tokens" if keep > 0
                       else "lower max_new_tokens well below max_context and shorten the prompt")
                raise InputError(f"prompt {i} is {len(ids)} tokens; with max_new_tokens {config.max_new_tokens} that "
                                 f"is {total} > the bundle's max_context {self.spec.max_context}. Fix: {fix}.", index=i)
            out.append(PreparedPrompt(i, tuple(ids), self._opens_think(ids)))
        return out

    def _prompt_ids(self, i: int, prompt: Any, config: GenerationConfig) -> list[int]:
        if not all(_is_unicode(t) for t in _prompt_texts(prompt)):  # a JSON "\ud800" escape: a lone surrogate
            raise InputError(f"prompt {i} holds an unpaired UTF-16 surrogate, which is not text. Fix: pass valid "
                             f"Unicode.", index=i)
        if isinstance(prompt, str):
            if config.chat is False or (config.chat is None and self.template is None):
                ids = self.tokenizer.encode(prompt, add_special_tokens=True)
            else:
                ids = self._render([{"role": "user", "content": prompt}], i)
        elif isinstance(prompt, np.ndarray) or (isinstance(prompt, Sequence) and prompt
                                                and all(isinstance(t, (int, np.integer)) for t in prompt)):
            array = np.asarray(prompt)
            ids = [int(t) for t in array.reshape(-1)] if np.issubdtype(array.dtype, np.integer) else []
            bad = [t for t in ids if not 0 <= t < self.spec.vocab_size]
            if bad or array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise InputError(f"prompt {i}: token ids must be a flat list of integers in [0, "
                                 f"{self.spec.vocab_size}); got {bad[:5] or 'a non-integer or nested array'}. "
                                 f"Fix: pass ids from this bundle's tokenizer.", index=i)
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
            if config.chat is False or self.template is None:
                why = "chat=False" if config.chat is False else "this bundle has none"
                fix = "" if self.template is None else " or leave chat unset"
                raise InputError(f"prompt {i} is a list of messages, which needs the chat template, but {why}. "
                                 f"Fix: pass the prompt as a string{fix}.", index=i)
            ids = self._render(check_messages(prompt, f"prompt {i}"), i)
        else:
            raise InputError(f"prompt {i} is {type(prompt).__name__}, expected a string, a list of "
                             f"{{'role', 'content'}} messages or a list of token ids. Fix: pass one of those.", index=i)
        if not ids:
            raise InputError(f"prompt {i} encodes to no tokens; there is nothing to continue. Fix: give it content.",
                             index=i)
        return ids

    def _render(self, messages: list[dict[str, Any]], i: int) -> list[int]:
        try:
            text = self.template.render(messages)
        except InputError as exc:
            raise InputError(f"prompt {i}: {exc}", index=i) from None
        # The template writes the special tokens (bos included) itself, as transformers' apply_chat_template.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _opens_think(self, ids: Sequence[int]) -> bool:
        if self.tokenizer.think_ids is None:
            return False
        start, end = self.tokenizer.think_ids
        last = {t: i for i, t in enumerate(ids) if t in (start, end)}
        return last.get(start, -1) > last.get(end, -1)

    # ------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None, *,
                 stream: StreamCallback | None = None, **options: Any) -> list[GenerationResult]:
        """Generate for each prompt (a string, a list of chat messages, or token ids); results in
        input order. ``options`` override fields of ``config`` (default: the bundle's defaults).
        ``stream(index, text)`` receives each prompt's answer text as it becomes decodable."""
        cfg = (config or self.defaults).replace(**options) if options else (config or self.defaults)
        return self.run(self.prepare(prompts, cfg), cfg, stream)

    def run(self, prompts: Sequence[PreparedPrompt], cfg: GenerationConfig,
            stream: StreamCallback | None = None) -> list[GenerationResult]:
        """Generate for prepared prompts; results in the order given. Prompts of similar length share
        a batch (less padding); a prompt's tokens do not depend on which others share its batch."""
        results: list[GenerationResult | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda k: len(prompts[k].ids))
        for start in range(0, len(order), cfg.batch_size):
            chunk = order[start:start + cfg.batch_size]
            for k, result in zip(chunk, self.run_batch([prompts[k] for k in chunk], cfg, stream)):
                results[k] = result
        return results  # type: ignore[return-value]

    def run_batch(self, prompts: Sequence[PreparedPrompt], cfg: GenerationConfig,
                  stream: StreamCallback | None = None) -> list[GenerationResult]:
        """One left-padded batch from prefill to the last row's stop."""
        rows = [Row(p, cfg, self.tokenizer, self.spec, streaming=stream is not None) for p in prompts]
        rngs = sampling.row_generators(cfg.seed, [p.index for p in prompts]) if cfg.do_sample else None
        started = time.perf_counter()
        feeds = left_pad([p.ids for p in prompts], self.spec.pad_token_id, self.token_dtype)
        batch, width = feeds["input_ids"].shape
        capacity = width + cfg.max_new_tokens
        mask = np.zeros((batch, capacity), dtype=self.token_dtype)
        mask[:, :width] = feeds["attention_mask"]
        logits, presents = self._prefill(feeds, mask[:, :width])
        with self._decode_cache(batch, capacity) as cache:
            cache.load(presents, width)
            positions = feeds["position_ids"][:, -1:].copy()  # each row's last position; +1 per step
            prefill_s = time.perf_counter() - started
            first_at = None
            for _ in range(cfg.max_new_tokens):
                tokens = self._choose(logits, rows, cfg, rngs)
                now = time.perf_counter()
                first_at = first_at or now
                running = 0
                for row, token in zip(rows, tokens.tolist()):
                    if row.finish_reason is None:
                        piece = row.push(token, now)
                        if piece and stream is not None:
                            stream(row.prompt.index, piece)
                        running += row.finish_reason is None
                if not running:
                    break
                length = cache.length
                mask[:, length] = 1  # stopped rows too: they are fed pad tokens, as transformers does
                positions += 1
                logits = self._step(tokens, positions, mask[:, :length + 1], cache)
        prompt_tokens = sum(len(p.ids) for p in prompts)
        results = []
        for row in rows:
            decode_s = (row.done_at or first_at) - first_at
            n = len(row.tokens) - 1
            results.append(row.result({
                "time_to_first_token_s": first_at - started, "prefill_s": prefill_s,
                "prefill_tokens_per_s": prompt_tokens / prefill_s if prefill_s > 0 else None,
                "decode_s": decode_s, "decode_tokens_per_s": n / decode_s if n > 0 and decode_s > 0 else None,
                "batch_size": batch}))
        return results

    def _choose(self, logits: np.ndarray, rows: Sequence[Row], cfg: GenerationConfig,
                rngs: Sequence[np.random.Generator] | None) -> np.ndarray:
        active = [b for b, row in enumerate(rows) if row.finish_reason is None]  # stopped rows' logits are unused
        early = [b for b in active if len(rows[b].tokens) < cfg.min_new_tokens] if cfg.min_new_tokens else []
        banned = rows[0].banned if early else None  # too soon to stop: eos and stop ids are not candidates
        if cfg.do_sample:
            # a row's max is NaN if any logit is NaN and +inf if any is +inf; a row of -inf has no token
            self._check_finite(logits.max(axis=1), active, rows)
            if early:
                logits = logits.copy()  # the backend's array stays as it was
                logits[np.asarray(early)[:, None], banned] = -np.inf
            tokens = sampling.sample(logits, rngs, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        else:
            tokens = sampling.greedy(logits)
            # argmax picks a NaN or +inf where a row has one, and -inf only in a row of -inf: one pass
            picked = logits[np.arange(len(tokens)), tokens]
            if not np.isfinite(picked).all():  # only rows still running count
                self._check_finite(picked, active, rows)
            held = [b for b in early if tokens[b] in rows[b].banned_set]
            if held:  # the best token is a stop: the best of the others, on a copy of those rows only
                sub = logits[held]
                sub[:, banned] = -np.inf
                tokens[held] = sampling.greedy(sub)
        for b, row in enumerate(rows):
            if row.finish_reason is not None:
                tokens[b] = self.spec.pad_token_id
            elif row.think_ids is not None and (forced := row.forced()) is not None:
                tokens[b] = forced
        return tokens

    def _prefill(self, feeds: dict[str, np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The prompt through the graph in chunks (logits under prefill_logits_bytes); returns the last
        position's logits (B, V) and the present tensors. A batch whose prompt takes several chunks runs
        row by row on an ort-contrib graph: onnxruntime's GroupQueryAttention takes a multi-token step
        over a non-empty past at batch 1 only."""
        batch, width = feeds["input_ids"].shape
        chunk = max(8, self.prefill_logits_bytes // (4 * batch * self.spec.vocab_size))
        by_row = self.spec.graph_ops == "ort-contrib" and batch > 1 and width > chunk
        groups = [slice(b, b + 1) for b in range(batch)] if by_row else [slice(0, batch)]
        logits, presents = [], []
        for rows in groups:
            n = rows.stop - rows.start
            step = max(8, self.prefill_logits_bytes // (4 * n * self.spec.vocab_size))
            cache = PresentCache(self.names, n, self.spec.num_kv_heads, width, self.spec.head_dim, self.kv_dtype)
            for start in range(0, width, step):
                end = min(width, start + step)
                part = {"input_ids": feeds["input_ids"][rows, start:end], "attention_mask": mask[rows, :end],
                        "position_ids": feeds["position_ids"][rows, start:end]}
                outputs = self._run({**part, **cache.feeds()}, cache, end - start)
            logits.append(outputs["logits"][:, -1, :])
            presents.append(cache.presents())
        if len(groups) == 1:
            return logits[0], presents[0]
        return np.concatenate(logits), {name: np.concatenate([p[name] for p in presents]) for name in presents[0]}

    @contextlib.contextmanager
    def _decode_cache(self, batch: int, capacity: int) -> Iterator[Any]:
        """A cache for ``capacity`` positions. A bound cache goes back to the pool afterwards, for the
        next call of the same batch size (its buffers and binding are reused: positions past the
        current length are never read)."""
        args = (self.names, batch, self.spec.num_kv_heads, capacity, self.spec.head_dim, self.kv_dtype)
        if self.kv_cache != "bound":
            yield KV_CACHES[self.kv_cache](*args)
            return
        with self._pool_lock:
            cache = self._bound_pool.pop(batch, None)
        if cache is None or cache.capacity < capacity:
            cache = BoundCache(bound_session(self.backend), *args, self.token_dtype, self.spec.vocab_size)
        try:
            yield cache
        finally:
            with self._pool_lock:
                self._bound_pool[batch] = cache

    def _step(self, tokens: np.ndarray, positions: np.ndarray, mask: np.ndarray, cache) -> np.ndarray:
        """One decode step of ``tokens`` (B,); the new position's logits (B, V)."""
        if isinstance(cache, BoundCache):
            try:
                return cache.step(tokens, positions, mask)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
                raise BackendError(f"decode step failed on backend {getattr(self.backend, 'name', '?')} (batch "
                                   f"{len(tokens)}, {cache.length} cached positions): {exc}. Fix: if memory ran "
                                   f"out, lower the batch size; otherwise pass kv_cache='present' to rule out the "
                                   f"in-place cache.") from None
        feeds = {"input_ids": tokens[:, None].astype(self.token_dtype), "attention_mask": mask,
                 "position_ids": positions, **cache.feeds()}
        return self._run(feeds, cache, 1)["logits"][:, -1, :]

    @staticmethod
    def _check_finite(picked: np.ndarray, active: Sequence[int], rows: Sequence[Row]) -> None:
        if np.isfinite(picked[active]).all():
            return
        bad = [b for b in active if not np.isfinite(picked[b])]
        raise BackendError(f"logits have NaN or inf for batch rows {bad[:10]} (prompts "
                           f"{[rows[b].prompt.index for b in bad[:10]]}): the next token is undefined. Fix: run "
                           f"with the ort-cpu backend to tell a backend precision problem from a broken model.")

    def _run(self, feeds: dict[str, np.ndarray], cache, new: int) -> dict[str, np.ndarray]:
        outputs = self.backend.run(feeds)
        batch, total = feeds["attention_mask"].shape
        logits, present = outputs.get("logits"), outputs.get(self.names[0][1])
        want = (batch, self.spec.num_kv_heads, total, self.spec.head_dim)
        if logits is None or logits.shape[:2] != (batch, new) or present is None or present.shape != want:
            raise BundleError(f"the graph returned logits {getattr(logits, 'shape', None)} and {self.names[0][1]} "
                              f"{getattr(present, 'shape', None)} for {new} new tokens over {total} positions; the "
                              f"contract wants ({batch}, {new}, V) and {want}. Fix: re-export the model with "
                              f"edgekit.decoder.export and recompile the bundle.")
        cache.update(outputs, new)
        return outputs
