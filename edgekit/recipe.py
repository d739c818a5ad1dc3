"""What to compile: a frozen Recipe made of one frozen config per stage.

A recipe TOML holds everything the CLI flags can say; flags override it; the resolved recipe is
written into the bundle's manifest. Every config validates itself and says how to fix a bad value.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import RecipeError, build_config, require
from .distill.causal import CausalDistillConfig
from .distill.losses import DistillConfig, LogitKDConfig
from .distill.schedules import Schedule
from .prune.config import DecoderPruneConfig, PruneConfig
from .quant.fake import QATConfig
from .quant.gate import GateConfig
from .train.manager import TrainingConfig

STUDENT_STAGES = ("prune", "distill")


@dataclass(frozen=True)
class DataConfig:
    """The labelled data: None path means the packaged demo corpus."""

    path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    format: str | None = None
    encoding: str | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    # Deterministic stratified caps, to keep CPU runs short; None keeps the whole split.
    max_train: int | None = None
    max_validation: int | None = None
    max_test: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "split", tuple(float(x) for x in self.split))
        require(len(self.split) == 3 and all(x > 0 for x in self.split) and abs(sum(self.split) - 1) < 1e-6,
                 "data", "split", self.split, "needs three positive fractions summing to 1", "e.g. split = [0.8, 0.1, 0.1]")
        for key in ("max_train", "max_validation", "max_test"):
            value = getattr(self, key)
            require(value is None or value > 0, "data", key, value, "must be positive", "remove it or set a positive count")


@dataclass(frozen=True)
class FinetuneConfig:
    """Teacher fine-tune: AdamW with linear warmup and decay."""

    enabled: bool = True
    epochs: float = 3.0
    max_steps: int | None = None  # wins over epochs when set
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 0  # optimizer steps between validation runs; 0 = once per epoch and at the end
    seed: int = 0

    def __post_init__(self):
        require(self.epochs > 0, "finetune", "epochs", self.epochs, "must be positive", "set e.g. epochs = 3")
        require(self.max_steps is None or self.max_steps > 0, "finetune", "max_steps", self.max_steps,
                 "must be positive", "remove it to train by epochs, or set e.g. max_steps = 400")
        require(self.batch_size > 0, "finetune", "batch_size", self.batch_size, "must be positive", "set e.g. 16")
        require(self.grad_accum > 0, "finetune", "grad_accum", self.grad_accum, "must be positive", "set 1 for none")
        require(0 < self.learning_rate < 1, "finetune", "learning_rate", self.learning_rate,
                 "must be in (0, 1)", "use e.g. 5e-5 for a BERT-class model")
        require(0 <= self.warmup_ratio < 1, "finetune", "warmup_ratio", self.warmup_ratio, "must be in [0, 1)", "use 0.1")
        require(self.weight_decay >= 0, "finetune", "weight_decay", self.weight_decay, "must be >= 0", "use 0.01")
        require(self.eval_every >= 0, "finetune", "eval_every", self.eval_every, "must be >= 0", "0 = per epoch")


@dataclass(frozen=True)
class StudentConfig:
    """Whether to build a compressed student, and the order of its stages (Minitron: prune first)."""

    enabled: bool = False
    order: tuple[str, ...] = ("prune", "distill")
    # Teacher-data batches used to score layers / heads / neurons for importance-based pruning.
    importance_batches: int = 16
    importance_batch_size: int = 16

    def __post_init__(self):
        object.__setattr__(self, "order", tuple(self.order))
        require(set(self.order) <= set(STUDENT_STAGES) and len(set(self.order)) == len(self.order),
                 "student", "order", self.order, f"stages must be distinct names from {list(STUDENT_STAGES)}",
                 'use order = ["prune", "distill"] (default) or ["distill", "prune"]')
        require(self.importance_batches > 0 and self.importance_batch_size > 0, "student", "importance_batches",
                 self.importance_batches, "must be positive", "use 16")


QUANT_METHODS = ("none", "qat", "ptq-static", "ptq-dynamic")


@dataclass(frozen=True)
class QuantizeConfig:
    """int8: QAT (fake quant fine-tuned with the distillation loss), ORT PTQ, or none."""

    method: str = "none"
    format: str | None = None  # "qdq" | "qoperator"; None = the profile's int8_format (QAT is always qdq)
    embeddings: bool = True  # weight-only int8 embedding tables (per-row scales)
    # Whom QAT distils from: the fp32 model it starts as ("fp32": the int8 model learns to behave
    # like the fp32 student, which is what the quantized gate checks), or the fine-tuned teacher.
    qat_teacher: str = "fp32"
    calibration_samples: int = 256  # ptq-static: train texts fed to the calibrator
    qat: QATConfig = field(default_factory=QATConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self):
        require(self.method in QUANT_METHODS, "quantize", "method", self.method,
                 f"must be one of {list(QUANT_METHODS)}", 'use "qat" for the best int8 accuracy, or "none"')
        require(self.format in (None, "qdq", "qoperator"), "quantize", "format", self.format,
                 "must be qdq or qoperator", "leave it out to use the profile's int8_format")
        require(not (self.method == "qat" and self.format == "qoperator"), "quantize", "format", self.format,
                 "QAT exports QuantizeLinear/DequantizeLinear (qdq) only", 'leave format out or set "qdq"')
        require(not (self.method == "ptq-dynamic" and self.format == "qdq"), "quantize", "format", self.format,
                 "dynamic quantization quantizes activations at run time (QOperator-style ops)",
                 'leave format out, or use method = "ptq-static" for qdq')
        require(self.calibration_samples > 0, "quantize", "calibration_samples", self.calibration_samples,
                 "must be positive", "use 256")
        require(self.qat_teacher in ("fp32", "teacher"), "quantize", "qat_teacher", self.qat_teacher,
                 "must be fp32 or teacher", 'use "fp32" (distil from the model before QAT)')

    def resolved_format(self, profile_format: str | None) -> str | None:
        if self.method == "none":
            return None
        if self.method == "qat":
            return "qdq"
        if self.method == "ptq-dynamic":
            return "qoperator"
        return self.format or profile_format


@dataclass(frozen=True)
class ExportConfig:
    """torch -> ONNX with the legacy exporter (the only one that reaches opset 13)."""

    precision: str | None = None  # None = fp32 graph; the profile must allow it

    def __post_init__(self):
        require(self.precision in (None, "fp32"), "export", "precision", self.precision,
                 "this version exports fp32 graphs only (fp16 is the TensorRT engine's job, int8 comes with QAT)",
                 "remove it or set precision = \"fp32\"")


@dataclass(frozen=True)
class RewriteConfig:
    """Graph rewrites: None rules means the profile's list."""

    rules: tuple[str, ...] | None = None
    simplify: bool = True
    measure_samples: int = 512  # validation texts used to measure each substitution's effect

    def __post_init__(self):
        if self.rules is not None:
            object.__setattr__(self, "rules", tuple(self.rules))
        require(self.measure_samples > 0, "rewrite", "measure_samples", self.measure_samples, "must be positive", "use 512")


@dataclass(frozen=True)
class ValidateConfig:
    """ONNX Runtime vs PyTorch on real validation texts, several batch sizes and lengths, padded."""

    batch_sizes: tuple[int, ...] = (1, 4, 16)
    lengths: tuple[int, ...] = (16, 64, 128)
    batches_per_shape: int = 2

    def __post_init__(self):
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        object.__setattr__(self, "lengths", tuple(self.lengths))
        require(bool(self.batch_sizes) and min(self.batch_sizes) > 0, "validate", "batch_sizes", self.batch_sizes,
                 "needs positive batch sizes", "e.g. [1, 4, 16]")
        require(bool(self.lengths) and min(self.lengths) > 1, "validate", "lengths", self.lengths,
                 "needs lengths > 1", "e.g. [16, 64, 128]")


@dataclass(frozen=True)
class BundleConfig:
    out: str | None = None  # default: bundles/<profile>
    archive: bool = False
    force: bool = False


@dataclass(frozen=True)
class Recipe:
    profile: str = "x86-64-cpu"
    teacher: str | None = None  # None = the packaged MiniLM (demo)
    task: str = "sequence-classification"
    max_length: int = 128
    threads: int | None = None  # torch / ORT intra-op threads on the host; None = all cores
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    student_train: TrainingConfig = field(default_factory=TrainingConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    qat_train: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        batch_size=16, grad_accum=2, learning_rate=1e-5, warmup_steps=0, epochs=0.5, eval_every=50))
    # QAT's loss: soft targets only, at a mild temperature, so the int8 model tracks its reference.
    qat_distill: DistillConfig = field(default_factory=lambda: DistillConfig(
        logits=LogitKDConfig(temperature=Schedule(2.0, 1.0, "linear")),
        task_weight=Schedule(0.0, 0.0, "constant"), soft_only_fraction=0.0))
    export: ExportConfig = field(default_factory=ExportConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)

    def __post_init__(self):
        require(1 < self.max_length <= 4096, "recipe", "max_length", self.max_length,
                 "must be in 2..4096", "use 128 for short texts")
        require(self.threads is None or self.threads > 0, "recipe", "threads", self.threads, "must be positive", "remove it")

    @property
    def is_demo(self) -> bool:
        return self.teacher is None and self.data.path is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



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


# The packaged demo corpus's columns, used whenever no --data is given.
DEMO_DATA: dict[str, Any] = {"text_column": "text", "label_column": "sentiment"}
# The full demo (packaged MiniLM + packaged corpus) is sized to finish in minutes on 2 CPU cores:
# 12k training texts (the teacher sees 6.4k of them in 400 steps; the student distils over all
# 12k once, from cached teacher logits), a 3-of-6-layer, 8-of-12-head student keeping 67% of its FFN
# neurons (benchmarks/int8.py: 98.6% of the teacher's test macro-F1). The student trains at
# effective batch 32 with lr 1e-4 rather than the field's 256 / 3e-5: one pass over 12k texts is
# only 47 steps at 256, too few for a student that lost half its layers.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {**DEMO_DATA, "max_train": 12000, "max_validation": 1500},
    "finetune": {"max_steps": 400, "batch_size": 16, "eval_every": 200},
    "student": {"enabled": True},
    "prune": {"layers_to_keep": 3, "heads_to_keep": 8, "head_score": "gradient", "ffn_keep_ratio": 0.67},
    "student_train": {"batch_size": 16, "grad_accum": 2, "learning_rate": 1e-4, "epochs": 1.0,
                      "eval_every": 125},
    # The whole chain: QAT int8 (the Jetson profiles' QDQ; the CPU profiles' int8_format is qdq too).
    "quantize": {"method": "qat"},
}


def build_recipe(values: Mapping[str, Any]) -> Recipe:
    """Build a Recipe from nested plain data (a parsed TOML plus CLI overrides)."""
    return build_config(Recipe, "recipe", values)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested dicts; override wins; None values in override are ignored."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            out[key] = merge(out.get(key, {}), value)
        else:
            out[key] = value
    return out


def read_recipe_file(path: str | Path | None) -> dict[str, Any]:
    """A recipe TOML as plain data ({} for None); a missing file or bad TOML is a RecipeError."""
    if path is None:
        return {}
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} not found. Fix: check the --recipe path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe file {path}: invalid TOML ({exc}). Fix: correct that line.") from None


def load_recipe(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Read a recipe TOML (or none), apply flag overrides, add demo sizing when it is the demo."""
    return build_recipe(with_demo_sizing(merge(read_recipe_file(path), overrides or {})))


def with_demo_sizing(values: Mapping[str, Any]) -> dict[str, Any]:
    """The packaged demo's sizing under the user's values when no --data (and no --teacher) is given."""
    values = dict(values)
    demo_data = values.get("data", {}).get("path") is None
    # Demo settings apply under the user's own values, never over them.
    if demo_data and values.get("teacher") is None:
        values = merge(DEMO_OVERRIDES, values)
    elif demo_data:
        values = merge({"data": DEMO_DATA}, values)
    return values


# CLI flags that only one kind of recipe has: (flag, the task that takes it).
TASK_FLAGS = {"label_column": ("--label-column", "sequence-classification"),
              "max_steps": ("--max-steps", "sequence-classification"),
              "no_finetune": ("--no-finetune", "sequence-classification"),
              "heads": ("--heads", "sequence-classification"),
              "kv_groups": ("--kv-groups", "causal-lm"), "heads_per_group": ("--heads-per-group", "causal-lm"),
              "ffn": ("--ffn", "causal-lm"), "distill_steps": ("--distill-steps", "causal-lm"),
              "max_context": ("--max-context", "causal-lm")}


def teacher_task(teacher: str | Path | None) -> str | None:
    """The task a teacher directory's config.json implies (``*ForCausalLM`` -> causal-lm), if any."""
    if teacher is None:
        return None
    try:
        config = json.loads((Path(teacher) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the teacher check reports a missing or bad config.json with its fix
    architectures = config.get("architectures") or [] if isinstance(config, dict) else []
    return "causal-lm" if any(str(a).endswith("ForCausalLM") for a in architectures) else None


def resolve_task(flag: str | None, values: Mapping[str, Any], teacher: str | Path | None) -> str:
    """--task, else the recipe file's ``task`` (``values``: the parsed file), else what the teacher's
    config implies, else sequence classification (the packaged demo). An unknown name is refused by
    edgekit.tasks.get_task in preflight, with the list of tasks."""
    return flag or values.get("task") or teacher_task(teacher) or "sequence-classification"


def recipe_from_flags(task: str, values: Mapping[str, Any], flags: Mapping[str, Any]):
    """The recipe of ``task`` from its parsed TOML (``values``) and the CLI flags (flags win; a flag the
    task does not take is an error naming it). Flags shared by both tasks have one name and one meaning."""
    for key, (flag, owner) in TASK_FLAGS.items():
        value = flags.get(key)
        if owner != task and value not in (None, False):
            raise RecipeError(f"{flag} applies to --task {owner} only, and this compile is {task}. "
                              f"Fix: drop {flag}, or pass --task {owner}.")
    f = dict(flags)
    bundle = {"out": f.get("out"), "archive": f.get("archive") or None, "force": f.get("force") or None}
    common = {"profile": f.get("profile"), "teacher": f.get("teacher"), "threads": f.get("threads"),
              "max_length": f.get("max_length"), "bundle": bundle,
              "quantize": {"method": "qat" if f.get("int8") else None}}
    if task == "causal-lm":
        prune = {"keep_layers": f.get("layers"), "kv_groups_keep": f.get("kv_groups"),
                 "heads_per_group_keep": f.get("heads_per_group"), "intermediate_keep": f.get("ffn")}
        overrides = {**common, "max_context": f.get("max_context"),
                     "data": {"path": f.get("data"), "text_column": f.get("text_column")},
                     "prune": prune if any(v is not None for v in prune.values()) else None,
                     "distill": {"steps": f.get("distill_steps")}}
        return build_lm_recipe(merge(values, overrides))
    layers, heads = f.get("layers"), f.get("heads")
    overrides = {**common,
                 "data": {"path": f.get("data"), "text_column": f.get("text_column"),
                          "label_column": f.get("label_column")},
                 "finetune": {"max_steps": f.get("max_steps"), "enabled": False if f.get("no_finetune") else None},
                 "prune": {"layers_to_keep": layers, "heads_to_keep": heads},
                 "student": {"enabled": True if (layers or heads) else None}}
    return build_recipe(with_demo_sizing(merge(values, overrides)))
