"""Small decoders built offline: a byte-level BPE tokenizer trained on local text, and tiny
Qwen2 / Llama configs. Tests and benchmarks/decoder.py use them (no model hub here).

The tokenizer carries what a DeepSeek-R1-Distill-Qwen tokenizer carries and the pipeline reads:
an end-of-sequence token, a padding token, ``<think>`` / ``</think>`` as single tokens, and a
chat template (a simplified R1 one: the assistant turn opens with ``<think>\\n``).
"""

from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"
PAD = "<|pad|>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
THINK_START, THINK_END = "<think>", "</think>"
SPECIAL_TOKENS = (EOS, PAD, USER, ASSISTANT, THINK_START, THINK_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + THINK_START + "\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (seconds for a few MB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[USER, ASSISTANT, THINK_START, THINK_END])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # decoder batches pad on the left so every row's next token is last
    return fast


def tiny_config(model_type: str = "qwen2", vocab_size: int = 2048, hidden_size: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate_size: int = 128, max_positions: int = 512, **extra):
    """A small random-init config with GQA (``heads`` query heads over ``kv_heads`` KV heads)."""
    from transformers import LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[model_type]
    extra.setdefault("tie_word_embeddings", False)
    return cls(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate_size,
               max_position_embeddings=max_positions, **extra)
