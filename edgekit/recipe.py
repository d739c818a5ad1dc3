"""What to compile: a frozen Recipe made of one frozen config per stage.

A recipe TOML holds everything the CLI flags can say; flags override it; the resolved recipe is
written into the bundle's manifest. Every config validates itself and says how to fix a bad value.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budget.config import BudgetConfig
from .config import RecipeError, build_config, require
from .distill.losses import DistillConfig, LogitKDConfig
from .distill.schedules import Schedule
from .prune.config import PruneConfig
from .quant.fake import QATConfig
from .quant.gate import GateConfig
from .recipe_lm import LMRecipe, build_lm_recipe  # noqa: F401  (re-exported: the one place recipes come from)
from .sections import BundleConfig, ExportConfig, RewriteConfig
from .train.manager import TrainingConfig

STUDENT_STAGES = ("prune", "distill")


@dataclass(frozen=True)
class DataConfig:
    """The labelled data: None path means the packaged demo corpus."""

    path: str | None = None
    # Your own held-out files (same columns): then `path` is all training rows and `split` is unused.
    validation_path: str | None = None
    test_path: str | None = None
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
        require((self.validation_path is None) == (self.test_path is None), "data", "validation_path",
                self.validation_path, "needs test_path too (and test_path needs validation_path)",
                "give both held-out files, or neither to split `path` by `split`")
        require(self.validation_path is None or self.path is not None, "data", "validation_path",
                self.validation_path, "needs the training file in `path`", "set path = \"train.csv\"")


@dataclass(frozen=True)
class FinetuneConfig:
    """Teacher fine-tune: AdamW with linear warmup and decay, early stopping on validation.

    Left out (None), epochs, learning_rate and eval_every follow the number of training rows
    (edgekit.train.scaling: 10 epochs at 1e-4 under 1,000 rows ... 1 epoch at 3e-5 past 100,000).
    """

    enabled: bool = True
    epochs: float | None = None
    max_steps: int | None = None  # wins over epochs when set
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int | None = None  # optimizer steps between validation runs; 0 = once per epoch
    early_stopping_patience: int = 3  # evaluations without a better validation metric; 0 = never stop early
    seed: int = 0

    def __post_init__(self):
        require(self.epochs is None or self.epochs > 0, "finetune", "epochs", self.epochs, "must be positive",
                "set e.g. epochs = 3, or leave it out to scale with the data")
        require(self.max_steps is None or self.max_steps > 0, "finetune", "max_steps", self.max_steps,
                 "must be positive", "remove it to train by epochs, or set e.g. max_steps = 400")
        require(self.batch_size > 0, "finetune", "batch_size", self.batch_size, "must be positive", "set e.g. 16")
        require(self.grad_accum > 0, "finetune", "grad_accum", self.grad_accum, "must be positive", "set 1 for none")
        require(self.learning_rate is None or 0 < self.learning_rate < 1, "finetune", "learning_rate",
                self.learning_rate, "must be in (0, 1)", "use e.g. 5e-5 for a BERT-class model, or leave it out")
        require(0 <= self.warmup_ratio < 1, "finetune", "warmup_ratio", self.warmup_ratio, "must be in [0, 1)", "use 0.1")
        require(self.weight_decay >= 0, "finetune", "weight_decay", self.weight_decay, "must be >= 0", "use 0.01")
        require(self.eval_every is None or self.eval_every >= 0, "finetune", "eval_every", self.eval_every,
                "must be >= 0", "0 = per epoch, or leave it out")
        require(self.early_stopping_patience >= 0, "finetune", "early_stopping_patience",
                self.early_stopping_patience, "must be >= 0", "use 3, or 0 to never stop early")


@dataclass(frozen=True)
class StudentConfig:
    """Whether to build a compressed student, and the order of its stages (Minitron: prune first)."""

    enabled: bool = True  # compression is on by default; edgekit compile --no-compress turns it off
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


# "auto": the budget plan picks int8 (QAT, QDQ) where the profile takes int8, else none.
QUANT_METHODS = ("auto", "none", "qat", "ptq-static", "ptq-dynamic")


@dataclass(frozen=True)
class QuantizeConfig:
    """int8: QAT (fake quant fine-tuned with the distillation loss), ORT PTQ, or none."""

    method: str = "auto"
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
        require(not (self.method in ("qat", "auto") and self.format == "qoperator"), "quantize", "format", self.format,
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
        if self.method in ("qat", "auto"):
            return "qdq"
        if self.method == "ptq-dynamic":
            return "qoperator"
        return self.format or profile_format


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
class Recipe:
    profile: str = "x86-64-cpu"
    teacher: str | None = None  # None = the packaged MiniLM (demo)
    task: str = "sequence-classification"
    # A student and int8 planned to [budget], held to its quality floor; false (--no-compress):
    # the fine-tuned teacher is exported as it is (fp32 unless [quantize] method says otherwise).
    compress: bool = True
    max_length: int = 128
    threads: int | None = None  # torch / ORT intra-op threads on the host; None = all cores
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    student_train: TrainingConfig = field(default_factory=TrainingConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # epochs None: half an epoch, but at least QAT_MIN_STEPS optimizer steps (edgekit.train.scaling)
    qat_train: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        batch_size=16, grad_accum=2, learning_rate=1e-5, warmup_steps=0, epochs=None, eval_every=50))
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
        if not self.compress:  # no plan: no student, and int8 only where [quantize] method asks for it
            object.__setattr__(self, "student", dataclasses.replace(self.student, enabled=False))
            if self.quantize.method == "auto":
                object.__setattr__(self, "quantize", dataclasses.replace(self.quantize, method="none"))

    @property
    def is_demo(self) -> bool:
        return self.teacher is None and self.data.path is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



# The packaged demo corpus's columns, used whenever no --data is given.
DEMO_DATA: dict[str, Any] = {"text_column": "text", "label_column": "sentiment"}
# The full demo (packaged MiniLM + packaged corpus) is sized to finish in minutes on 2 CPU cores:
# 12k training texts (the teacher sees 6.4k of them in 400 steps; the student distils over all
# 12k once, from cached teacher logits, evaluated every 125 steps). Only time is sized here: the
# student's shape and int8 come from the default budget, as for any teacher.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {**DEMO_DATA, "max_train": 12000, "max_validation": 1500},
    "finetune": {"max_steps": 400, "batch_size": 16, "eval_every": 200},
    "student_train": {"batch_size": 16, "grad_accum": 2, "learning_rate": 1e-4, "epochs": 1.0,
                      "eval_every": 125},
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
              "no_compress": ("--no-compress", "sequence-classification"),
              "latency_budget": ("--latency-budget", "sequence-classification"),
              "size_budget": ("--size-budget", "sequence-classification"),
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


def budget_value(flag: str | None) -> float | str | None:
    """A budget flag as the recipe holds it: "0.2" -> 0.2 (a ratio), "15ms" / "20MB" / "none" as written."""
    if flag is None:
        return None
    try:
        return float(flag)
    except ValueError:
        return flag


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
                 "student": {"enabled": True if (layers or heads) else None},
                 "compress": False if f.get("no_compress") else None,
                 "budget": {"latency": budget_value(f.get("latency_budget")), "size": budget_value(f.get("size_budget"))}}
    return build_recipe(with_demo_sizing(merge(values, overrides)))
