"""The student search: every (layers, heads, FFN width, precision) the cost model can price, and the
one to train for a budget.

What is chosen: the candidate that keeps the most of the teacher's per-layer weights (a capacity
proxy: the field's pruned students lose quality roughly with what they cut) within both limits;
among those within 3% of that capacity, the deepest (depth carries more than width at a fixed
parameter count in distilled BERT students), then the fastest. Backing off plans the same search
for a budget 1.5x looser, so each retry keeps more of the teacher.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .config import Limit
from .cost import CostModel, Shape

FFN_FRACTIONS = (1.0, 0.875, 0.75, 2 / 3, 0.5, 0.375, 0.25)
BACKOFF = 1.5
NEAR_BEST = 0.97


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    precision: str
    latency_ms: float     # predicted, at the cost model's batch x length, on this host
    bytes: int            # predicted bundle graph bytes
    capacity: float       # fraction of the teacher's per-layer weights kept, in [0, 1]

    def to_dict(self, cost: CostModel) -> dict:
        teacher_ms, teacher_bytes = teacher_figures(cost)
        return {"layers": self.shape.layers, "heads": self.shape.heads, "ffn": self.shape.ffn,
                "precision": self.precision, "predicted_ms": round(self.latency_ms, 3),
                "predicted_latency_ratio": round(self.latency_ms / teacher_ms, 4),
                "predicted_bytes": int(self.bytes), "predicted_size_ratio": round(self.bytes / teacher_bytes, 4),
                "capacity": round(self.capacity, 4)}

    def describe(self, cost: CostModel) -> str:
        d = self.to_dict(cost)
        t = cost.teacher
        return (f"{self.shape.layers}/{t.layers} layers, {self.shape.heads}/{t.heads} heads, FFN {self.shape.ffn}/"
                f"{t.ffn}, {self.precision}: predicted {d['predicted_ms']:.2f} ms ({d['predicted_latency_ratio']:.3f}"
                f" x the teacher), {self.bytes / 1e6:.1f} MB ({d['predicted_size_ratio']:.3f} x)")


def teacher_figures(cost: CostModel) -> tuple[float, int]:
    """The teacher's fp32 latency (ms) and bytes that ratio budgets are relative to."""
    return cost.latency_ms(cost.teacher, "fp32"), cost.size_bytes(cost.teacher, "fp32", int8_embeddings=False)


def capacity(cost: CostModel, shape: Shape) -> float:
    sizes, t = cost.param_sizes, cost.teacher
    per_layer = lambda heads, ffn: sizes["layer_fixed"] + heads * sizes["per_head"] + ffn * sizes["per_neuron"]
    return shape.layers * per_layer(shape.heads, shape.ffn) / (t.layers * per_layer(t.heads, t.ffn))


def shapes(teacher: Shape) -> Iterable[Shape]:
    ffns = sorted({max(1, round(teacher.ffn * f)) for f in FFN_FRACTIONS})
    for layers in range(1, teacher.layers + 1):
        for heads in range(1, teacher.heads + 1):
            for ffn in ffns:
                yield Shape(layers, heads, ffn)


def candidates(cost: CostModel, precisions: Iterable[str], int8_embeddings: bool = True) -> list[Candidate]:
    out = []
    for precision in precisions:
        for shape in shapes(cost.teacher):
            out.append(Candidate(shape, precision, cost.latency_ms(shape, precision),
                                 cost.size_bytes(shape, precision, int8_embeddings=int8_embeddings),
                                 capacity(cost, shape)))
    return out


def within(c: Candidate, cost: CostModel, latency: Limit | None, size: Limit | None, relax: float) -> bool:
    teacher_ms, teacher_bytes = teacher_figures(cost)

    def ok(limit: Limit | None, value: float, teacher: float) -> bool:
        if limit is None:
            return True
        factor = 1.0 if limit.hard else relax  # a limit the user wrote never loosens
        return value <= limit.allowed(teacher) * factor

    return ok(latency, c.latency_ms, teacher_ms) and ok(size, c.bytes, teacher_bytes)


def choose(pool: list[Candidate], cost: CostModel, latency: Limit | None, size: Limit | None,
           relax: float = 1.0) -> Candidate | None:
    """The candidate to train within the limits (soft ones loosened by ``relax``), or None."""
    fits = [c for c in pool if within(c, cost, latency, size, relax)]
    if not fits:
        return None
    best = max(c.capacity for c in fits)
    near = [c for c in fits if c.capacity >= NEAR_BEST * best]
    return min(near, key=lambda c: (-c.shape.layers, c.latency_ms, -c.capacity))


def smallest(pool: list[Candidate]) -> Candidate:
    return min(pool, key=lambda c: (c.latency_ms, c.bytes))
