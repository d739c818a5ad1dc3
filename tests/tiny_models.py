"""Tiny random Hugging Face model directories and labelled data for fast pipeline tests."""

from __future__ import annotations

import csv
import random
from pathlib import Path

WORDS = ("good great nice lovely fine happy bad awful poor sad terrible angry the a car phone day "
         "battery screen was is very not really quite").split()
LABEL_WORDS = {"positive": ["good", "great", "nice", "lovely", "happy"],
               "negative": ["bad", "awful", "poor", "sad", "terrible"],
               "neutral": ["car", "phone", "day", "screen", "battery"]}


def make_tokenizer(model_input_names=("input_ids", "token_type_ids", "attention_mask")):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + list(WORDS) + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
                                            + list("abcdefghijklmnopqrstuvwxyz"))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=list(model_input_names))


def make_model_dir(path: Path, arch: str = "bert", hidden_act: str = "gelu") -> Path:
    """Save a tiny random ``arch`` (bert | distilbert | roberta) model + tokenizer to ``path``."""
    import torch
    from transformers import (AutoModelForSequenceClassification, BertConfig, DistilBertConfig, RobertaConfig)

    torch.manual_seed(0)
    if arch == "bert":
        tokenizer = make_tokenizer()
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=128, hidden_act=hidden_act)
    elif arch == "distilbert":
        tokenizer = make_tokenizer(("input_ids", "attention_mask"))
        config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=128, activation=hidden_act)
    elif arch == "roberta":
        tokenizer = make_tokenizer(("input_ids", "attention_mask"))
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=130, pad_token_id=0,
                               type_vocab_size=1, hidden_act=hidden_act)
    else:
        raise ValueError(arch)
    model = AutoModelForSequenceClassification.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_csv(path: Path, rows: int = 150, seed: int = 0, text_column: str = "text",
             label_column: str = "label") -> Path:
    """A learnable 3-class corpus: each text holds words typical of its label."""
    rng = random.Random(seed)
    labels = sorted(LABEL_WORDS)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([label_column, text_column])
        for i in range(rows):
            label = labels[i % 3]
            words = [rng.choice(LABEL_WORDS[label]) for _ in range(rng.randint(2, 4))]
            words += [rng.choice(["the", "a", "very", "really", "was", "is"]) for _ in range(rng.randint(1, 12))]
            rng.shuffle(words)
            writer.writerow([label, " ".join(words)])
    return path
