"""Recipe sections every task's recipe shares: export, graph rewrites, the bundle's output."""

from __future__ import annotations

from dataclasses import dataclass

from .config import require


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
class BundleConfig:
    out: str | None = None  # default: bundles/<profile>
    archive: bool = False
    force: bool = False
