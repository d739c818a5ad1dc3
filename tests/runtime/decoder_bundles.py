"""A tiny random Qwen2 and its bundles for the runtime's generation tests (conftest.py makes the
``qwen``, ``qwen_model`` and ``qwen_contrib`` fixtures from it), the toy tokenizer's special tokens
and chat template, and a helper that runs `edgekit-run` in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The toy tokenizer's special tokens and R1-style chat template (edgekit/decoder/toy.py), restated
# so these tests need only the runtime's own dependencies.
EOS, PAD, USER, ASSISTANT, THINK_START, THINK_END = ("<|endoftext|>", "<|pad|>", "<|User|>", "<|Assistant|>",
                                                     "<think>", "</think>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + THINK_START + "\n{% endif %}"
)
SECRET = "patient jane roe asked about her diagnosis"


SUBJECTS = "the cat|a dog|my phone|the old car|her bike|the small robot".split("|")
VERBS = "runs fast|is quiet today|needs a battery|was very good|looks tired|will arrive soon".split("|")
TEXTS = [f"{s} {v}." for s in SUBJECTS for v in VERBS]
QWEN_PROMPTS = ["the cat runs fast and the old car was very good", "a dog", "my phone needs a battery",
                "her bike looks tired today"]  # rows of different lengths: the batch is left padded
MAX_CONTEXT = 128


class Qwen:
    """The transformers model and tokenizer behind the bundles, and the bundles themselves."""

    def __init__(self, tmp: Path, ops: str = "standard"):
        torch = pytest.importorskip("torch")
        pytest.importorskip("transformers")
        from transformers import AutoModelForCausalLM

        from edgekit.bundle.decoder import write_decoder_bundle
        from edgekit.export.decoder import export_decoder
        from edgekit.models.toy import tiny_config, train_tokenizer

        self.torch = torch
        self.tok = train_tokenizer(TEXTS * 4, vocab_size=400)
        torch.manual_seed(0)
        # A wider init than the default 0.02: more varied greedy text and clearer argmax margins.
        config = tiny_config("qwen2", vocab_size=len(self.tok), pad_token_id=self.tok.pad_token_id,
                             eos_token_id=self.tok.eos_token_id, initializer_range=0.1)
        self.model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        self.onnx = export_decoder(self.model, tmp / "work" / "model.onnx", ops=ops, max_positions=MAX_CONTEXT)
        self.bundle = write_decoder_bundle(self.model, self.tok, self.onnx, tmp / "qwen", max_context=MAX_CONTEXT)
        self._write = lambda name: write_decoder_bundle(self.model, self.tok, self.onnx, tmp / name,
                                                        max_context=MAX_CONTEXT)

    def bundle_with_eos(self, extra: int) -> Path:
        """The same graph with ``extra`` as a second eos id (R1 lists several), via the generation config."""
        saved = self.model.generation_config.eos_token_id
        self.model.generation_config.eos_token_id = [self.tok.eos_token_id, extra]
        try:
            return self._write(f"qwen-eos-{extra}")
        finally:
            self.model.generation_config.eos_token_id = saved

    def hf_generate(self, prompts, new: int, eos) -> list[list[int]]:
        """transformers' greedy generate on the same left-padded batch: new tokens per row."""
        enc = self.tok(prompts, padding=True, return_tensors="pt")
        assert self.tok.padding_side == "left"
        with self.torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=new, do_sample=False, eos_token_id=eos,
                                      pad_token_id=self.tok.pad_token_id)
        return out[:, enc["input_ids"].shape[1]:].tolist()


def run_cli(args, capsys, stdin=None, monkeypatch=None):
    from edgekit_runtime.cli.main import main

    if stdin is not None:
        import io

        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err
