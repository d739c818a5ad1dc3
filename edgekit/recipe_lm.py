"""The causal LM's recipe: one frozen config per stage of a decoder compile (edgekit compile --task
causal-lm). Shared sections (export, rewrite, bundle) are the classifier recipe's own types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import build_config, require
from .distill.causal import CausalDistillConfig
from .prune.config import DecoderPruneConfig
from .sections import BundleConfig, ExportConfig, RewriteConfig


@dataclass(frozen=True)
class LMDataConfig:
    path: str | None = None          # None: the packaged demo corpus's text column
    text_column: str = "text"
    encoding: str | None = None
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)
    seed: int = 0
    max_train: int | None = None     # cap the training texts (CPU runs)
    max_eval: int | None = 500       # cap validation and test texts

    def __post_init__(self):
        object.__setattr__(self, "split", tuple(float(x) for x in self.split))
        for key in ("max_train", "max_eval"):
            value = getattr(self, key)
            require(value is None or value > 0, "data", key, value, "must be positive", "remove it or set a count")


@dataclass(frozen=True)
class LMFinetuneConfig:
    """Next-token fine-tune of the teacher on the training text (packed blocks); 0 steps skips it."""

    steps: int = 0
    batch_size: int = 16
    learning_rate: float = 5e-5

    def __post_init__(self):
        require(self.steps >= 0, "finetune", "steps", self.steps, "must be >= 0", "use 0 to skip")


@dataclass(frozen=True)
class LMDistillStage:
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    max_texts: int | None = None      # distill over the first N training texts (None: all)
    # k: fill an on-disk cache of the teacher's top-k logits first (edgekit.decoder.topk_cache), then
    # free the teacher; the student trains from the cache. None: the live teacher runs every step.
    teacher_cache_top_k: int | None = None
    loss: CausalDistillConfig = field(default_factory=CausalDistillConfig)

    def __post_init__(self):
        require(self.steps > 0, "distill", "steps", self.steps, "must be positive", "use e.g. 300")
        require(self.max_texts is None or self.max_texts > 0, "distill", "max_texts", self.max_texts,
                 "must be positive", "remove it to use every training text")
        require(self.teacher_cache_top_k is None or self.teacher_cache_top_k > 0, "distill",
                 "teacher_cache_top_k", self.teacher_cache_top_k, "must be positive", "use e.g. 64, or remove it")
        require(not (self.teacher_cache_top_k and self.loss.sequence_kd), "distill", "teacher_cache_top_k",
                 self.teacher_cache_top_k, "sequence-level KD needs the live teacher to generate",
                 "drop teacher_cache_top_k or set loss.sequence_kd = false")


@dataclass(frozen=True)
class LMQuantizeConfig:
    method: str = "none"              # "qat" (int8 QDQ of the block Linears) or "none"
    steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-5
    fp32_most_sensitive: int = 1      # block Linears kept fp32 (the ones whose int8 moves logits most)
    max_ppl_increase: float = 0.05    # the int8 gate: graph perplexity <= (1 + this) x the fp32 student's

    def __post_init__(self):
        require(self.method in ("qat", "none"), "quantize", "method", self.method, "must be qat or none",
                 'use "qat" for int8, "none" for fp32')
        require(self.max_ppl_increase >= 0, "quantize", "max_ppl_increase", self.max_ppl_increase,
                 "must be >= 0", "use 0.05 (5%)")

    def resolved_format(self, profile_format: str | None) -> str | None:
        """QAT exports QuantizeLinear/DequantizeLinear: qdq whatever the profile prefers (preflight
        refuses a profile that does not take qdq)."""
        return "qdq" if self.method == "qat" else None


@dataclass(frozen=True)
class LMValidateConfig:
    prompts: int = 4
    decode_steps: int = 8
    # None: the profile's tolerance for the graph's precision (atol + rtol x |reference|); the int8
    # one only catches a broken graph, the perplexity gate judges quality
    atol: float | None = None


@dataclass(frozen=True)
class LMRecipe:
    profile: str = "x86-64-cpu"
    teacher: str = ""
    task: str = "causal-lm"
    max_length: int = 128             # tokens per training / evaluation text
    max_context: int | None = None    # the bundle's prompt + generation limit; None: the profile's max length
    threads: int | None = None
    seed: int = 0
    data: LMDataConfig = field(default_factory=LMDataConfig)
    finetune: LMFinetuneConfig = field(default_factory=LMFinetuneConfig)
    prune: DecoderPruneConfig | None = None   # None: no student; the (fine-tuned) teacher is exported
    distill: LMDistillStage = field(default_factory=LMDistillStage)
    quantize: LMQuantizeConfig = field(default_factory=LMQuantizeConfig)
    validate: LMValidateConfig = field(default_factory=LMValidateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)

    def __post_init__(self):
        require(bool(self.teacher), "recipe", "teacher", self.teacher,
                "a causal-LM compile needs a teacher (there is no packaged causal-LM demo)",
                 "pass --teacher DIR (a local Hugging Face Qwen2 / Llama directory)")
        require(1 < self.max_length <= 8192, "recipe", "max_length", self.max_length, "must be in 2..8192", "use 128")
        require(self.task == "causal-lm", "recipe", "task", self.task, "this recipe type is the causal LM's",
                 'use task = "causal-lm", or the Recipe of the other tasks')

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_lm_recipe(values: dict[str, Any]) -> LMRecipe:
    return build_config(LMRecipe, "recipe", values)
