"""The pass contract every task shares: the Target, the CompileState and the PassResult.

A leaf module (standard library only): stages, task adapters and the run loop import it, it
imports none of them, so no stage can pull the pipeline in behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Target:
    """What the device needs, resolved once in preflight from recipe x profile and read by every pass.

    ``tolerances`` maps each precision the profile allows to its (atol, rtol); a recipe may
    override them (``[validate] atol``), never silently.
    """

    profile: str
    task: str
    opset: int
    rewrite_rules: tuple[str, ...]      # named rules the graph gets (recipe [rewrite] rules, else the profile's)
    simplify: bool                      # onnxsim after the rules
    precision: str                      # of the graph the bundle carries: fp32 or int8
    int8_method: str | None             # qat, ptq-static, ptq-dynamic; None: no int8
    int8_format: str | None             # qdq or qoperator (the profile's int8_format unless the method fixes it)
    token_dtype: str                    # int64 or int32 token inputs
    max_length: int                     # tokens per training / evaluation text
    max_context: int                    # the bundle's sequence limit (encoders: max_length; causal LMs: prompt + generation)
    decoder_ops: str                    # causal LMs: "standard" or "ort-contrib" graph
    tolerances: dict[str, tuple[float, float]]

    def tolerance(self, precision: str | None = None) -> tuple[float, float]:
        """(atol, rtol) of the graph's precision (or the one named)."""
        return self.tolerances[precision or self.precision]


@dataclass
class PassResult:
    changed: bool = True
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Go back and run again from this pass (a quality floor backing off to a bigger student);
    # the pass that asks has already rewritten state.recipe for the retry.
    rerun_from: str | None = None


@dataclass
class CompileState:
    """Everything passes hand each other; one state for every task."""

    recipe: Any                          # edgekit.recipe.Recipe or LMRecipe (the adapter's recipe type)
    profile: Any                         # edgekit_runtime.profile.DeviceProfile
    target: Target
    adapter: Any                         # edgekit.tasks.TaskAdapter
    workdir: Path                        # persistent across --resume; removed after a successful compile
    echo: Callable[[str], None] = print
    resume: bool = False
    teacher_path: Path | None = None
    splits: Any = None                   # the task's data splits
    judge: Any = None                    # validation rows only the quality floor reads (no early stopping saw them)
    tokenizer: Any = None
    teacher: Any = None                  # the (fine-tuned) teacher; None once a pass freed it
    model: Any = None                    # what gets exported: the teacher, or the student once one exists
    fp32_model: Any = None               # the model before QAT (the int8 gate's and the bundle's reference)
    precision: str = "fp32"              # of the graph in onnx_path
    onnx_path: Path | None = None
    rules_applied: tuple[str, ...] = ()
    extra_files: dict[str, Any] = field(default_factory=dict)   # bundle name -> path, e.g. loss curves
    figures: dict[str, Any] = field(default_factory=dict)       # the manifest's "figures" section
    pass_log: list[dict[str, Any]] = field(default_factory=list)
    bundle_path: Path | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.splits.train.label_names

    def progress(self, row: dict[str, Any]) -> None:
        """A training loop's progress line, indented under its pass."""
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
        self.echo("      " + "  ".join(parts))


Pass = Callable[[CompileState], PassResult]
