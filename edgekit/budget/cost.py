"""The latency and size model the budget search prices student shapes with.

Latency is measured, not derived from FLOPs (at batch 1 a CPU spends much of its time in per-op overhead
FLOPs miss): students of the teacher's architecture, cut and exported as the real student is, are timed in
ONNX Runtime on this host and ``ms = c0 + L * (c_layer + H * c_head + F * c_ffn)`` is fitted per precision.
The int8 graphs are a timing proxy for the QAT QDQ graph of the same shape: ORT's static QDQ quantizer on
the encoder Linears, finished as the int8 pass finishes it. Bytes: parameter counts at their stored width,
plus graph overhead (nodes, names) fitted on the measured files.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from edgekit_runtime.backends.base import QDQ_CPU_DISABLED_OPTIMIZERS  # before onnxruntime: telemetry off
from edgekit_runtime.errors import EdgekitError
from onnxruntime import InferenceSession, SessionOptions
from onnxruntime import __version__ as ORT_VERSION
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from ..export.onnx_export import export_onnx
from ..models.arch import get_module
from ..models.encoder import arch_for, encoder_layers, head_dim, layer_shapes
from ..prune.apply import apply_plan
from ..prune.plan import PrunePlan, uniform_layers
from ..quant.onnx_int8 import quantize_embeddings, unshare_activation_qdq
from ..quant.ptq import _FeedReader, _graph_inputs, _quiet_ort_quantizer

PRECISIONS = ("fp32", "int8")
VERSION = 2                 # bump when the measurement changes: old cache files stop matching
NOISY = 0.25                # a fit worse than this on its own timings: re-timed once, and never cached
EMBEDDING_MIN_ROWS = 1000   # as edgekit.quant.passes: only tables this large (the vocabulary) go int8
CHANNEL_BYTES = 5           # per quantized output channel: fp32 scale + int8 zero point
ROUNDS, BURST, CALIBRATION_FEEDS = 7, 5, 4   # the first round warms up: 6 x 4 timed calls per graph
QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,   # as edgekit.quant.ptq
               "OpTypesToExcludeOutputQuantization": ["MatMul"]}
VOLATILE_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "id2label", "label2id",
                 "_commit_hash", "_attn_implementation_autoset", "architectures", "auto_map")


@dataclass(frozen=True)
class Shape:
    layers: int   # encoder layers kept
    heads: int    # attention heads kept in every kept layer
    ffn: int      # FFN (intermediate) neurons kept in every kept layer

    def __post_init__(self):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vars(self).values()):
            raise EdgekitError(f"{self}: layers, heads and ffn must be integers >= 1. Fix: keep at least one of each.")

    def label(self) -> str:
        return f"L{self.layers} H{self.heads} F{self.ffn}"


@dataclass(frozen=True)
class CostModel:
    teacher: Shape
    batch: int
    length: int
    threads: int
    coefficients: dict[str, tuple[float, ...]]   # precision -> (c0, c_layer, c_head, c_ffn), ms
    points: tuple[dict, ...]                     # {"shape": [L, H, F], "precision", "ms", "bytes"}
    residual: dict[str, float]                   # precision -> max relative error on its points
    param_sizes: dict[str, int]

    def _check(self, shape: Shape, precision: str) -> None:
        if precision not in PRECISIONS:
            raise EdgekitError(f"precision {precision!r} is not one of {list(PRECISIONS)}. Fix: use one of those.")
        if any(a > b for a, b in zip(vars(shape).values(), vars(self.teacher).values())):
            raise EdgekitError(f"shape {shape.label()} exceeds the teacher's {self.teacher.label()}. Fix: cut less.")

    def latency_ms(self, shape: Shape, precision: str) -> float:
        """Predicted median ms at ``batch`` x ``length`` with ``threads`` threads on the measured host."""
        self._check(shape, precision)
        if precision not in self.coefficients:
            raise EdgekitError(f"the cost model has no {precision} timings (it has {sorted(self.coefficients)}). "
                               f"Fix: fit it with precisions including {precision!r}.")
        c0, c_layer, c_head, c_ffn = self.coefficients[precision]
        return c0 + shape.layers * (c_layer + shape.heads * c_head + shape.ffn * c_ffn)

    def size_bytes(self, shape: Shape, precision: str, int8_embeddings: bool = True) -> int:
        """Graph file bytes: parameters at their stored width plus the fitted graph overhead."""
        self._check(shape, precision)
        s, (L, H, F) = self.param_sizes, (shape.layers, shape.heads, shape.ffn)
        o = precision if f"overhead_{precision}" in s else "fp32"   # int8 not measured: fp32's overhead
        overhead = s.get(f"overhead_{o}", 0) + L * s.get(f"overhead_layer_{o}", 0)
        w, c = (4, 0) if precision == "fp32" else (1, CHANNEL_BYTES)   # bytes per weight, per output channel
        rows = int8_embeddings and w == 1   # int8 table rows with an fp32 scale each, instead of fp32 rows
        emb = 4 * s["embedding"] - (3 * s["embedding_int8"] - 4 * s["embedding_int8_rows"]) * rows
        part = lambda params, biases, channels: w * (params - biases) + 4 * biases + c * channels   # fp32 biases
        return overhead + emb + 4 * s["head"] + L * (
            4 * s["layer_fixed"] + c * 2 * s["hidden"]   # fp32 biases and norms; the O and FFN-out channels
            + H * part(s["per_head"], s["per_head_bias"], 3 * s["head_dim"])
            + F * part(s["per_neuron"], s["per_neuron_bias"], 1))

    def to_dict(self) -> dict:
        return {"version": VERSION, "teacher": [self.teacher.layers, self.teacher.heads, self.teacher.ffn],
                "batch": self.batch, "length": self.length, "threads": self.threads, "residual": dict(self.residual),
                "coefficients": {p: list(c) for p, c in self.coefficients.items()},
                "points": [dict(p) for p in self.points], "param_sizes": dict(self.param_sizes)}

    @classmethod
    def from_dict(cls, d) -> CostModel:
        try:
            coefficients = {str(p): tuple(float(x) for x in c) for p, c in d["coefficients"].items()}
            if d["version"] != VERSION or any(p not in PRECISIONS or len(c) != 4 for p, c in coefficients.items()):
                raise ValueError(f"version {d['version']!r} (this edgekit: {VERSION}), coefficients {coefficients}")
            return cls(Shape(*(int(x) for x in d["teacher"])), int(d["batch"]), int(d["length"]), int(d["threads"]),
                       coefficients, tuple(dict(p) for p in d["points"]),
                       {p: float(r) for p, r in d["residual"].items()},
                       {k: int(v) for k, v in d["param_sizes"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EdgekitError(f"cost model data is not usable ({type(exc).__name__}: {exc}). Fix: refit it with "
                               f"fit_cost_model (delete the cached cost-*.json).") from None


def teacher_shape(teacher: torch.nn.Module) -> Shape:
    shapes = layer_shapes(teacher)
    if len({(x.heads, x.ffn) for x in shapes}) != 1:
        raise EdgekitError(f"teacher layers have differing sizes {[(x.heads, x.ffn) for x in shapes]}; the cost "
                           f"model prices uniform students. Fix: give the unpruned teacher.")
    return Shape(len(shapes), shapes[0].heads, shapes[0].ffn)


def param_sizes(teacher: torch.nn.Module) -> dict[str, int]:
    """Parameter counts split the way the int8 graph stores them (int8 weights, fp32 the rest)."""
    spec, dh, t = arch_for(teacher), head_dim(teacher), teacher_shape(teacher)
    hidden, layer = getattr(teacher.config, spec.hidden_key), encoder_layers(teacher)[0]
    bias = lambda path: int(get_module(layer, path).bias is not None)
    head_bias, neuron_bias = dh * sum(bias(p) for p in (spec.query, spec.key, spec.value)), bias(spec.ffn_in)
    per_head, per_neuron = 4 * dh * hidden + head_bias, 2 * hidden + neuron_bias
    embeddings = get_module(teacher, spec.embeddings)
    tables = [m.weight for m in embeddings.modules()
              if isinstance(m, torch.nn.Embedding) and m.weight.shape[0] >= EMBEDDING_MIN_ROWS]
    body = {id(p) for m in (encoder_layers(teacher), embeddings) for p in m.parameters()}
    head = [p for p in teacher.parameters() if id(p) not in body]   # pooler and classifier: fp32 Gemms
    return {"hidden": hidden, "head_dim": dh, "embedding": sum(p.numel() for p in embeddings.parameters()),
            "embedding_int8": sum(w.numel() for w in tables), "embedding_int8_rows": sum(w.shape[0] for w in tables),
            "layer_fixed": sum(p.numel() for p in layer.parameters()) - t.heads * per_head - t.ffn * per_neuron,
            "per_head": per_head, "per_head_bias": head_bias, "per_neuron": per_neuron, "per_neuron_bias": neuron_bias,
            "head": sum(p.numel() for p in head)}


def candidate_shapes(t: Shape) -> list[Shape]:
    """About five shapes that vary L, L*H and L*F independently (the 4 coefficients identifiable)."""
    half = lambda n, d=2: max(1, n // d)
    shapes = [t, Shape(1, t.heads, t.ffn), Shape(half(t.layers), half(t.heads), t.ffn),
              Shape(half(t.layers), t.heads, half(t.ffn, 4)), Shape(half(t.layers), half(t.heads, 4), half(t.ffn))]
    return list(dict.fromkeys(shapes))


def export_student(teacher: torch.nn.Module, adapter, tokenizer, shape: Shape, path: Path, length: int) -> Path:
    """A copy of ``teacher`` cut to ``shape`` and exported as the real student is (the teacher is not touched)."""
    model, n = copy.deepcopy(teacher).cpu(), len(encoder_layers(teacher))
    plan = PrunePlan(num_layers=n, kept_layers=uniform_layers(n, shape.layers),
                     heads=(tuple(range(shape.heads)),) * shape.layers, ffn=(tuple(range(shape.ffn)),) * shape.layers)
    return export_onnx(apply_plan(model, plan), adapter, tokenizer, ["an example", "another one"], path, length)


def random_feeds(inputs: dict[str, type], batch: int, length: int, vocab: int, rng: np.random.Generator) -> dict:
    """Random token ids, attention mask all ones, token types zeros, typed as the graph takes them."""
    make = {"input_ids": lambda: rng.integers(1, max(2, vocab), (batch, length)),
            "attention_mask": lambda: np.ones((batch, length)), "token_type_ids": lambda: np.zeros((batch, length))}
    if set(inputs) - set(make):
        raise EdgekitError(f"graph inputs {sorted(inputs)}: only {sorted(make)} can be fed. Fix: price an encoder.")
    return {name: make[name]().astype(dtype) for name, dtype in inputs.items()}


def quantize_proxy(src: Path, dst: Path, feeds: list[dict]) -> Path:
    """Static QDQ as edgekit.quant.ptq does it on the MatMuls with a weight (the encoder Linears; QAT's int8 BERT
    pooler, one GEMV, is left fp32), then the int8 pass's QDQ unsharing and int8 embedding tables."""
    model = onnx.load(str(src))
    weights = {t.name for t in model.graph.initializer}
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    with _quiet_ort_quantizer():
        quantize_static(str(src), str(dst), _FeedReader(feeds, _graph_inputs(model), 1 << 30),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options=dict(QDQ_OPTIONS))
    model, _ = unshare_activation_qdq(onnx.load(str(dst)))
    onnx.save(quantize_embeddings(model, min_rows=EMBEDDING_MIN_ROWS)[0], str(dst))
    return dst


def time_graphs(graphs: list[tuple[Path, str]], feeds: dict, threads: int) -> list[float]:
    """Median ms per (path, precision), bursts round robin with a rotating start so noise hits all alike. Sessions
    as the runtime's ort_session, plus: pools stop spinning after a run (idle ones would take the timed one's cores)."""
    options = SessionOptions()
    options.log_severity_level, options.intra_op_num_threads = 3, threads
    options.add_session_config_entry("session.force_spinning_stop", "1")
    sessions = (InferenceSession(str(p), options, ["CPUExecutionProvider"],
                                 disabled_optimizers=list(QDQ_CPU_DISABLED_OPTIMIZERS) if q == "int8" else None)
                for p, q in graphs)
    runs = [(s, {i.name: feeds[i.name] for i in s.get_inputs()}) for s in sessions]
    times: list[list[float]] = [[] for _ in runs]
    for r, k, b in itertools.product(range(ROUNDS), range(len(runs)), range(BURST)):
        session, feed = runs[j := (r + k) % len(runs)]
        start = time.perf_counter()
        session.run(None, feed)
        if r and b:   # a burst's first call wakes the pool and refills the caches: not the runtime's steady state
            times[j].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def fit_latency(points: list[dict]) -> tuple[tuple[float, ...], float]:
    """(c0, c_layer, c_head, c_ffn) >= 0 by least squares on relative error, and the max relative error."""
    x = np.array([[1, L, L * H, L * F] for L, H, F in (p["shape"] for p in points)], float)
    y = np.array([p["ms"] for p in points], float)
    active, sol = [0, 1, 2, 3], -np.ones(4)
    while (sol < 0).any() and active:
        sol = np.linalg.lstsq(x[:, active] / y[:, None], np.ones(len(y)), rcond=None)[0]
        active = [a for a, c in zip(active, sol) if c >= 0] if (sol < 0).any() else active
    coef = np.zeros(4)
    coef[active] = sol[:len(active)]   # every refit column is >= 0 here (empty only if all were negative)
    return tuple(float(c) for c in coef), float(np.max(np.abs(x @ coef - y) / y))


def cache_key(teacher: torch.nn.Module, *what) -> str:
    """What the timings depend on: the architecture (not the weights), ``what`` was measured, the host."""
    config = {k: v for k, v in teacher.config.to_dict().items() if k not in VOLATILE_KEYS}
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.processor())
    blob = [VERSION, config, teacher.config.num_labels, what, ORT_VERSION, platform.machine(), cpu]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _worst_fit(graphs, ms, precisions) -> list[float]:
    points = [{"shape": [g[2].layers, g[2].heads, g[2].ffn], "ms": m} for g, m in zip(graphs, ms)]
    return [fit_latency([p for p, g in zip(points, graphs) if g[1] == precision])[1] for precision in precisions]


def fit_cost_model(teacher: torch.nn.Module, adapter, tokenizer, *, length: int, batch: int = 1,
                   threads: int | None = None, precisions=("fp32", "int8"), cache_dir: Path | None = None,
                   echo: Callable[[str], None] = print) -> CostModel:
    """Time ~5 students per precision on this host, fit, cache. ``threads`` None: every CPU this process may use."""
    precisions = tuple(dict.fromkeys(precisions))
    if not precisions or any(p not in PRECISIONS for p in precisions):
        raise EdgekitError(f"precisions {list(precisions)}: each must be one of {list(PRECISIONS)}. Fix: use those.")
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for name, value in (("length", length), ("batch", batch), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EdgekitError(f"fit_cost_model {name} = {value!r}: must be a positive integer. Fix: pass an int >= 1.")
    t, shapes = teacher_shape(teacher), candidate_shapes(teacher_shape(teacher))
    cache = None if cache_dir is None else \
        Path(cache_dir) / f"cost-{cache_key(teacher, shapes, batch, length, threads, precisions)}.json"
    if cache is not None and cache.is_file():
        try:
            model = CostModel.from_dict(json.loads(cache.read_text(encoding="utf-8")))
            echo(f"      cost model: measured before on this host ({cache})")
            return model
        except (EdgekitError, ValueError, OSError):
            echo(f"      cost model: {cache} is unreadable; measuring again")
    echo(f"      cost model: timing {len(shapes)} students of {t.label()} ({'/'.join(precisions)}) on this host")
    rng, vocab = np.random.default_rng(0), int(getattr(teacher.config, "vocab_size", 2))
    with tempfile.TemporaryDirectory(prefix="edgekit-cost-") as tmp:
        graphs: list[tuple[Path, str, Shape]] = []
        for i, shape in enumerate(shapes):
            fp32 = export_student(teacher, adapter, tokenizer, shape, Path(tmp) / f"s{i}.onnx", length)
            inputs = _graph_inputs(onnx.load(str(fp32)))
            graphs += [(fp32, "fp32", shape)] if "fp32" in precisions else []
            if "int8" in precisions:
                calib = [random_feeds(inputs, batch, length, vocab, rng) for _ in range(CALIBRATION_FEEDS)]
                graphs.append((quantize_proxy(fp32, Path(tmp) / f"s{i}-int8.onnx", calib), "int8", shape))
        feeds = random_feeds(inputs, batch, length, vocab, rng)
        ms = time_graphs([(p, q) for p, q, _ in graphs], feeds, threads)
        if max(_worst_fit(graphs, ms, precisions)) > NOISY:
            # a burst of load from elsewhere: time again and keep each graph's faster median (noise only adds)
            echo("      cost model: the timings do not fit the model; timing again")
            ms = [min(a, b) for a, b in zip(ms, time_graphs([(p, q) for p, q, _ in graphs], feeds, threads))]
        points = [{"shape": [shape.layers, shape.heads, shape.ffn], "precision": precision, "ms": round(m, 4),
                   "bytes": path.stat().st_size} for (path, precision, shape), m in zip(graphs, ms)]
    for k, ((_, precision, shape), m) in enumerate(zip(graphs, ms), 1):
        echo(f"      timing {k}/{len(graphs)}: {precision} {shape.label()} ... {m:.2f} ms")
    model, overhead = CostModel(t, batch, length, threads, {}, tuple(points), {}, param_sizes(teacher)), {}
    for precision in precisions:   # the model's own dicts fill in as it is fitted
        mine = [p for p in points if p["precision"] == precision]
        model.coefficients[precision], model.residual[precision] = fit_latency(mine)
        if model.residual[precision] > NOISY:   # say so rather than hand the search a guess
            echo(f"      cost model: {precision} fits its timings only within {model.residual[precision]:.0%}: a busy "
                 f"host? Fix: refit on an idle machine or with fewer threads (the cache key includes them)")
        rest = np.array([p["bytes"] - model.size_bytes(Shape(*p["shape"]), precision) for p in mine], float)
        x = np.array([[1, p["shape"][0]] for p in mine], float)   # graph overhead = a + b * L, a, b >= 0
        a, b = np.clip(np.linalg.lstsq(x, rest, rcond=None)[0], 0, None)
        overhead.update({f"overhead_{precision}": round(float(a)), f"overhead_layer_{precision}": round(float(b))})
    model.param_sizes.update(overhead)
    if max(model.residual.values()) > NOISY:
        cache = None  # a poor fit is used once, with the warning above, and never cached
    try:
        if cache is not None:   # atomically: a reader sees the old file or the new one, never half of one
            cache.parent.mkdir(parents=True, exist_ok=True)
            part = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            part.write_text(json.dumps(model.to_dict()), encoding="utf-8")
            os.replace(part, cache)
    except OSError as exc:
        echo(f"      cost model: not cached ({exc}). Fix: make {cache.parent} writable")
    return model

