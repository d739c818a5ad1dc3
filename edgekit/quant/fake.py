"""int8 fake quantization for nn.Linear (QAT), exported as standard QuantizeLinear/DequantizeLinear.

Numerics, chosen for TensorRT's explicit-quantization path (symmetric, zero point 0 everywhere):

    weights      per output channel, scale = max|w_row| / 127, q in [-127, 127] (narrow range);
                 recomputed from the current weights every forward, so training moves it.
    activations  per tensor (the Linear's input), scale = amax / 127 with amax an EMA of
                 max|x| (or a percentile of |x|) observed during calibration, q in [-128, 127].

The activation clamp is [-128, 127] because that is what ONNX QuantizeLinear does at export; the
torch model and the exported graph then round and clip identically (both round half to even).
Weights never reach -128 since the scale comes from their own max, so narrow range is exact.

The straight-through estimator is the clipped one: d(fq(x))/dx = 1 inside the representable
range [-128 s, 127 s] and 0 outside it (as PyTorch's FakeQuantize masks it). Scales get no gradient.

PyTorch's fused fake-quant/observer ops do not export at opset 13 (pytorch issue 102694), so the
fake quant here is plain round/clamp, and under ``torch.onnx.is_in_onnx_export()`` it goes through
``_QDQ``, an autograd Function whose ``symbolic`` emits the Q/DQ pair for the legacy exporter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from edgekit_runtime.errors import EdgekitError

from ..config import require

QMAX = 127
ACT_QMIN = -128       # what QuantizeLinear saturates to
WEIGHT_QMIN = -127    # narrow range; symmetric around zero
OBSERVING, QUANTIZING, PASSTHROUGH = "observing", "quantizing", "passthrough"


class QuantError(EdgekitError):
    """A model cannot be prepared, calibrated or fake-quantized as asked."""


# Every Linear of the encoder layers (Q, K, V, attention output, FFN in and out) of BERT/RoBERTa
# (`*.encoder.layer.*`) and DistilBERT (`*.transformer.layer.*`), plus BERT's pooler.
DEFAULT_INCLUDE = ("*.encoder.layer.*", "*.transformer.layer.*", "*.pooler.dense")
# The classification head stays fp32: it is a few hundred MACs per sequence (no speed to gain),
# and its error lands on the logits unaveraged, where the distillation loss and argmax read it.
# (RoBERTa's pooler-like `classifier.dense` and DistilBERT's `pre_classifier` belong to the head.)
DEFAULT_EXCLUDE = ("*classifier*",)


@dataclass(frozen=True)
class QATConfig:
    """Which Linear modules get int8 fake quant, and how activation ranges are observed."""

    include: tuple[str, ...] = DEFAULT_INCLUDE   # fnmatch patterns over qualified module names
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE   # applied after include
    observer_momentum: float = 0.9               # amax <- m * amax + (1 - m) * batch statistic
    calibration_batches: int = 16                # batches `calibrate` observes before QAT
    activation_percentile: float | None = None   # batch statistic: None = max|x|, else this percentile of |x|
    # After calibration, fine-tune the activation ranges with the weights (LSQ, Esser et al. 2020):
    # the calibrated amax is the start, the gradient of the quantization error moves it.
    learn_ranges: bool = False
    # After calibration, the Linears whose int8 alone moves the logits most (measured on calibration
    # texts) go back to fp32: mixed precision where one layer carries most of the error (in BERT, the
    # first FFN output projection, whose post-GELU input has outlier channels a per-tensor int8
    # scale cannot cover; Bondarenko et al. 2021).
    fp32_most_sensitive: int = 1
    sensitivity_batches: int = 8
    # Train texts held out of QAT's training: checkpoints are chosen by argmax agreement with the
    # fp32 model on them (what the quantized gate measures, on other texts), and QAT's weights are
    # kept only if they agree better than the calibrated model did before training.
    selection_texts: int = 1000
    # QAT fine-tunes the int8 model toward its own fp32 self (eval mode, no dropout): dropout noise in
    # the int8 model's forward makes it learn something else than reproducing that reference.
    dropout: bool = False

    def __post_init__(self):
        for key in ("include", "exclude"):
            value = getattr(self, key)
            value = (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(self, key, value)
            require(all(isinstance(p, str) and p for p in value), "qat", key, value,
                    "must be a list of non-empty module-name patterns", 'e.g. ["*.encoder.layer.*"]')
        require(bool(self.include), "qat", "include", self.include, "quantizes nothing",
                f"leave it out for the default {list(DEFAULT_INCLUDE)}")
        require(0.0 <= self.observer_momentum < 1.0, "qat", "observer_momentum", self.observer_momentum,
                "must be in [0, 1) (0 keeps only the last batch)", "use 0.9")
        require(isinstance(self.calibration_batches, int) and self.calibration_batches >= 1, "qat",
                "calibration_batches", self.calibration_batches, "must be a positive integer", "use 16")
        require(isinstance(self.fp32_most_sensitive, int) and self.fp32_most_sensitive >= 0, "qat",
                "fp32_most_sensitive", self.fp32_most_sensitive, "must be a non-negative integer",
                "use 1 (0 quantizes every selected Linear)")
        require(isinstance(self.sensitivity_batches, int) and self.sensitivity_batches >= 1, "qat",
                "sensitivity_batches", self.sensitivity_batches, "must be a positive integer", "use 8")
        require(isinstance(self.selection_texts, int) and self.selection_texts >= 0, "qat", "selection_texts",
                self.selection_texts, "must be a non-negative integer",
                "use 1000 (0 keeps the last QAT checkpoint unchecked)")
        p = self.activation_percentile
        require(p is None or 50.0 < p <= 100.0, "qat", "activation_percentile", p,
                "must be in (50, 100]", "use e.g. 99.99, or leave it out to observe max|x|")


def per_channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scale per output channel (row) of a [out, in] weight; 1.0 for an all-zero row."""
    amax = weight.detach().abs().amax(dim=1)
    return torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))


def fake_quant(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int = QMAX, axis: int | None = None
               ) -> torch.Tensor:
    """Quantize-dequantize ``x`` (zero point 0) with a clipped straight-through gradient.

    ``scale`` is a scalar (per tensor) or 1-D along ``axis`` (per channel).
    """
    scale = scale.detach()
    if axis is not None:
        scale = scale.reshape([-1 if d == axis % x.dim() else 1 for d in range(x.dim())])
    q = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
    clipped = torch.clamp(x, qmin * scale, qmax * scale)  # gradient 1 inside the range, 0 outside
    return clipped + (q - clipped).detach()


class _QDQ(torch.autograd.Function):
    """Fake quant that the legacy exporter writes as QuantizeLinear -> DequantizeLinear."""

    @staticmethod
    def forward(ctx, x, scale, qmin, axis, channels):
        return fake_quant(x, scale, qmin, QMAX, axis)

    @staticmethod
    def symbolic(g, x, scale, qmin, axis, channels):
        shape = (channels,) if axis is not None else ()
        zero = g.op("Constant", value_t=torch.zeros(shape, dtype=torch.int8))
        kwargs = {"axis_i": axis} if axis is not None else {}
        q = g.op("QuantizeLinear", x, scale, zero, **kwargs)
        return g.op("DequantizeLinear", q, scale, zero, **kwargs)


def fake_quant_learned(x: torch.Tensor, amax: torch.Tensor, qmin: int, qmax: int = QMAX) -> torch.Tensor:
    """Per-tensor fake quant whose range ``amax`` (scale = amax / qmax) is trained, as in LSQ.

    Forward: exactly ``fake_quant(x, amax / qmax, qmin, qmax)``. Backward: the clipped
    straight-through gradient for ``x``; for ``amax`` the LSQ gradient (round(v) - v inside the
    range, the clip bound outside it, v = x / scale), scaled by 1 / sqrt(numel * qmax) so the
    range moves at the pace of the weights.
    """
    scale = amax / qmax
    g = 1.0 / math.sqrt(x.numel() * qmax)
    scale = scale * g + (scale - scale * g).detach()  # value unchanged, gradient times g
    v = torch.clamp(x / scale, qmin, qmax)
    return (v + (torch.round(v) - v).detach()) * scale


def _qdq(x: torch.Tensor, scale: torch.Tensor, qmin: int, axis: int | None = None, channels: int | None = None
         ) -> torch.Tensor:
    if torch.onnx.is_in_onnx_export():
        # Scales become graph constants (TensorRT needs constant Q/DQ scales; the exporter's constant
        # folding leaves Abs/ReduceMax/Where of the weight in place); channels is a Python int so
        # the tracer does not record scale.numel().
        frozen = torch.tensor(scale.detach().tolist(), dtype=torch.float32)
        return _QDQ.apply(x, frozen, qmin, axis, channels)
    return fake_quant(x, scale, qmin, QMAX, axis)


class QuantLinear(nn.Module):
    """An nn.Linear with int8 fake quant on its input (observed per tensor) and weight (per channel).

    ``mode`` is ``"observing"`` (fp32 forward; the input range is observed) or ``"quantizing"``
    (fake quant with the observed range frozen, as in calibrate-then-fine-tune QAT).
    """

    def __init__(self, linear: nn.Linear, momentum: float = 0.9, percentile: float | None = None,
                learn_range: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias   # the same Parameters: optimizers keep them
        self.momentum, self.percentile = momentum, percentile
        self.mode = OBSERVING
        self.register_buffer("input_amax", torch.tensor(float("nan")))
        # learn_range: a Parameter that starts at the calibrated amax when fake quant is switched on.
        self.learn_range = learn_range
        if learn_range:
            self.learned_amax = nn.Parameter(torch.tensor(float("nan")))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}, "
                f"input_amax={self.input_amax.item():.4g}")

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Fold this batch's max|x| (or percentile of |x|) into the EMA; the first batch sets it."""
        flat = x.detach().abs().flatten().float()
        if self.percentile is None or self.percentile >= 100.0:
            stat = flat.max()
        else:  # kthvalue has no size limit (torch.quantile stops at 2**24 elements)
            k = max(1, min(flat.numel(), round(self.percentile / 100.0 * flat.numel())))
            stat = flat.kthvalue(k).values
        if torch.isnan(self.input_amax):
            self.input_amax.copy_(stat)
        else:
            self.input_amax.mul_(self.momentum).add_((1.0 - self.momentum) * stat)

    def input_range(self) -> torch.Tensor:
        """amax of the input: the learned one once it exists, else the observed one."""
        if self.learn_range and torch.isfinite(self.learned_amax):
            return self.learned_amax
        if not torch.isfinite(self.input_amax) or self.input_amax <= 0:
            raise QuantError(f"QuantLinear({self.in_features}->{self.out_features}) has no observed input "
                               f"range (input_amax={self.input_amax.item()}). Fix: run edgekit.quant.calibrate("
                               f"model, batches) before enable_fake_quant(model).")
        return self.input_amax

    def input_scale(self) -> torch.Tensor:
        return self.input_range() / QMAX

    @torch.no_grad()
    def start_learning_range(self) -> None:
        """Seed the learned range from the observed one (once; a resumed checkpoint brings its own)."""
        if self.learn_range and not torch.isfinite(self.learned_amax):
            self.learned_amax.copy_(self.input_range())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == PASSTHROUGH:
            return nn.functional.linear(x, self.weight, self.bias)
        if self.mode == OBSERVING:
            if not torch.onnx.is_in_onnx_export():
                self.observe(x)
            return nn.functional.linear(x, self.weight, self.bias)
        if self.learn_range and not torch.onnx.is_in_onnx_export():
            self.learned_amax.data.clamp_(min=1e-6)  # a range never reaches zero or flips sign
            x = fake_quant_learned(x, self.learned_amax, ACT_QMIN)
        else:
            x = _qdq(x, self.input_scale(), ACT_QMIN)
        w = _qdq(self.weight, per_channel_scale(self.weight), WEIGHT_QMIN, 0, self.out_features)
        return nn.functional.linear(x, w, self.bias)


def _selected(name: str, cfg: QATConfig) -> bool:
    return (any(fnmatchcase(name, p) for p in cfg.include)
            and not any(fnmatchcase(name, p) for p in cfg.exclude))


def prepare_qat(model: nn.Module, cfg: QATConfig = QATConfig()) -> nn.Module:
    """Replace, in place, every selected nn.Linear by a QuantLinear (observing); nothing else changes."""
    targets = [name for name, m in model.named_modules() if type(m) is nn.Linear and _selected(name, cfg)]
    if not targets:
        linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
        raise QuantError(f"QATConfig(include={list(cfg.include)}, exclude={list(cfg.exclude)}) selects no "
                         f"nn.Linear of {type(model).__name__}; its Linears are {linears[:6]}"
                         f"{'...' if len(linears) > 6 else ''}. Fix: adjust the include/exclude patterns.")
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, QuantLinear(getattr(parent, attr), cfg.observer_momentum, cfg.activation_percentile,
                                          cfg.learn_ranges))
    return model


def quantized_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """Qualified name -> QuantLinear, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def enable_fake_quant(model: nn.Module, on: bool = True) -> nn.Module:
    """Switch every QuantLinear to quantizing (``on``) or back to observing."""
    linears = quantized_linears(model)
    if not linears:
        raise QuantError("model has no QuantLinear. Fix: call prepare_qat(model, cfg) first.")
    for m in linears.values():
        if on:
            m.input_scale()  # fails now, naming the fix, rather than in the first forward
            m.start_learning_range()
        m.mode = QUANTIZING if on else OBSERVING
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Mapping[str, Any] | tuple], max_batches: int | None = None
              ) -> dict[str, float]:
    """Observe input ranges (fake quant off, eval mode) on ``batches``; return name -> amax."""
    linears = quantized_linears(model)
    if not linears:
        raise QuantError("model has no QuantLinear. Fix: call prepare_qat(model, cfg) before calibrate.")
    was_training = model.training
    enable_fake_quant(model, on=False)
    model.eval()
    seen = 0
    try:
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            model(**batch) if isinstance(batch, Mapping) else model(*batch)
            seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise QuantError("calibrate got no batches. Fix: pass at least one batch of model inputs.")
    return {name: float(m.input_amax) for name, m in linears.items()}


@torch.no_grad()
def layer_sensitivity(model: nn.Module, batches: Iterable[Mapping[str, Any]],
                      output: Any = lambda out: out.logits) -> dict[str, float]:
    """Per QuantLinear: mean |output change| when only that Linear is int8 (the rest fp32), on ``batches``.

    ``output`` picks the compared tensor from the model's outputs (default: ``.logits``).
    Needs calibrated ranges; leaves every QuantLinear observing-free (passthrough) afterwards, so
    call ``enable_fake_quant`` next.
    """
    linears = quantized_linears(model)
    if not linears:
        raise QuantError("model has no QuantLinear. Fix: call prepare_qat(model, cfg) and calibrate first.")
    batches = list(batches)
    if not batches:
        raise QuantError("layer_sensitivity got no batches. Fix: pass at least one batch of model inputs.")
    for m in linears.values():
        m.input_scale()  # calibrated, or a QuantError that names the fix
    was_training = model.training
    model.eval()
    try:
        for m in linears.values():
            m.mode = PASSTHROUGH
        reference = [output(model(**b)) for b in batches]
        scores = {}
        for name, m in linears.items():
            m.mode = QUANTIZING
            diffs = [(output(model(**b)) - ref).abs().mean() for b, ref in zip(batches, reference)]
            scores[name] = float(torch.stack(diffs).mean())
            m.mode = PASSTHROUGH
    finally:
        model.train(was_training)
    return scores


def restore_fp32(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Put plain nn.Linear (the same Parameters) back in place of the named QuantLinears."""
    linears = quantized_linears(model)
    unknown = [n for n in names if n not in linears]
    if unknown:
        raise QuantError(f"restore_fp32: {unknown} are not QuantLinears of this model. Fix: use names from "
                         f"quantized_linears(model).")
    done = []
    for name in names:
        q = linears[name]
        linear = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        linear.weight, linear.bias = q.weight, q.bias
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, linear)
        done.append(name)
    return done
