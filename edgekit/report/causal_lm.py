"""The report's sections for task "causal-lm" (`edgekit compile-lm`): the same page and sections as
an encoder's, filled from what compile-lm records. Quality is test perplexity (lower is better), the
int8 gate is the graph's perplexity against the fp32 student's, and the commands are generate and
serve. Decode speed is not in the bundle: benchmarks/decoder.py measures it."""

from __future__ import annotations

from typing import Any, Mapping

from .page import Report
from .parts import NOT_RECORDED, fmt, fmt_bytes, get, kv_table, missing, num, para, pre, table


class LMReport(Report):
    """Report for task "causal-lm"; ``figures`` holds teacher / student / graph."""

    task = "causal-lm"

    def _figures(self, who: str) -> Mapping[str, Any]:
        value = get(self.fig, who)
        return value if isinstance(value, Mapping) else {}

    def _pass(self, name: str) -> Mapping[str, Any]:
        value = get(self.passes, name, "figures")
        return value if isinstance(value, Mapping) else {}

    def bundle_name(self) -> str:
        quant = get(self.m, "model", "int8", "method")
        ops = get(self.m, "model", "graph_ops")
        parts = [self.precision] + ([str(quant)] if quant else []) + ([f"{ops} graph"] if ops else [])
        return f"bundle ({', '.join(parts)})"

    # ------------------------------------------------------------ summary

    def summary(self) -> str:
        m, task = self.m, get(self.m, "task") or {}
        int8 = get(m, "model", "int8")
        precision = self.precision + (f" (int8 method {int8.get('method')}, format {int8.get('format')})"
                                      if isinstance(int8, Mapping) else "")
        shape = (f"{task.get('num_layers', '?')} layers, {task.get('num_key_value_heads', '?')} KV heads x "
                 f"{task.get('head_dim', '?')}, vocabulary {task.get('vocab_size', '?')}, max context "
                 f"{task.get('max_context', '?')} tokens")
        think = task.get("think")
        rows = [("task", f"causal-lm — {shape}"),
                ("profile", f"{get(m, 'profile', 'name') or '?'} — {get(m, 'profile', 'data', 'device') or '?'}"),
                ("precision", precision),
                ("graph", f"{get(m, 'model', 'graph_ops') or 'standard'} operators, opset "
                          f"{get(m, 'model', 'opset') or '?'} (docs/decoder.md)"),
                ("chat template", "yes" if task.get("chat_template") else "none"),
                ("reasoning markers", f"{think.get('start')} ... {think.get('end')}" if isinstance(think, Mapping)
                 else "none"),
                ("integrity", self.integrity or "not checked"),
                ("signature", self.signature()),
                ("compiled", f"{get(m, 'created_utc') or '?'} by edgekit {get(m, 'edgekit_version') or '?'}")]
        out = [kv_table(rows), "<h3>Sizes</h3>"]
        teacher, student = self._figures("teacher"), self._figures("student")
        size_rows = self.file_size_rows()
        for label, figs in (("teacher", teacher), ("student", student)):
            params = num(figs.get("params"))
            if params is not None:
                size_rows.append((f"{label} weights (fp32, parameters x 4 bytes)",
                                  f"{fmt_bytes(params * 4)} ({params:,.0f} parameters)"))
        out.append(kv_table(size_rows) if size_rows else missing("sizes"))
        out += ["<h3>Quality</h3>", self._quality_table(), "<h3>Quantized gate</h3>", self._gate(),
                "<h3>Compression</h3>", self._compression()]
        return "".join(out)

    def _quality_table(self) -> str:
        teacher, student, graph = self._figures("teacher"), self._figures("student"), self._figures("graph")
        base = num(teacher.get("test_perplexity"))
        rows = []
        for label, figs in (("teacher (PyTorch fp32)", teacher), ("student (PyTorch fp32)", student),
                            (f"bundle graph (ONNX Runtime, {graph.get('precision') or self.precision})", graph)):
            ppl = num(figs.get("test_perplexity"))
            if ppl is not None:
                rows.append((label, fmt(ppl, ".3f"), fmt(ppl / base, ".3f") if base else "-"))
        if not rows:
            return missing("quality figures")
        return (table(["system", "test perplexity (lower is better)", "vs teacher"], rows)
                + para("Token-weighted perplexity on the held-back test split of the compile's data "
                       f"({fmt(get(self._pass('load data'), 'test'), '.0f')} texts)."))

    def _gate(self) -> str:
        graph = self._figures("graph")
        ratio = num(graph.get("perplexity_vs_fp32"))
        if ratio is None:
            return para("No int8 gate: this bundle is not int8." if self.precision != "int8" else
                        "the int8 gate's figures: " + NOT_RECORDED + ".")
        limit = num(get(self.m, "recipe", "quantize", "max_ppl_increase"))
        verdict = "" if limit is None else (f" against a limit of {1 + limit:.3f}x: "
                                             f"{'passed' if ratio <= 1 + limit else 'FAILED'}")
        return para(f"The int8 graph's test perplexity is {ratio:.4f}x the fp32 student's{verdict} "
                    f"(compile-lm fails the compile above the limit).")

    def _compression(self) -> str:
        prune, teacher = self._pass("prune"), self._pass("load teacher")
        if not prune:
            return para("No pruning pass ran: the bundle holds the teacher's architecture.")
        rows = [("parameters", f"{fmt(prune.get('params_before'), ',.0f')} -> {fmt(prune.get('params_after'), ',.0f')} "
                               f"({fmt(prune.get('param_ratio'), '.3f')}x)")]
        task = get(self.m, "task") or {}
        if teacher:
            rows.append(("blocks", f"{teacher.get('num_layers', '?')} -> {task.get('num_layers', '?')}"))
            rows.append(("KV heads", f"{teacher.get('num_kv_heads', '?')} -> {task.get('num_key_value_heads', '?')}"))
        recipe = get(self.m, "recipe", "prune")
        if isinstance(recipe, Mapping):
            rows.append(("importance (layers / heads / channels)",
                         f"{recipe.get('layer_importance', '?')} / {recipe.get('head_importance', '?')} / "
                         f"{recipe.get('channel_importance', '?')}"))
        return kv_table(rows)

    # ------------------------------------------------------------ the other sections

    def training(self) -> str:
        rows = []
        for name in ("finetune", "distill", "qat int8"):
            figs = self._pass(name)
            if figs.get("steps"):
                rows.append((name, fmt(figs.get("steps"), ".0f"), fmt(figs.get("loss_first"), ".4f"),
                             fmt(figs.get("loss_last"), ".4f"), fmt(figs.get("kd_first"), ".4f"),
                             fmt(figs.get("kd_last"), ".4f"), fmt(figs.get("seconds"), ".1f")))
        if not rows:
            return missing("training figures")
        return (table(["stage", "steps", "loss first", "loss last", "KD first", "KD last", "seconds"], rows)
                + para("compile-lm records each stage's first and last logged loss, not the whole curve."))

    def latency(self) -> str:
        return para("Decode speed is not recorded in a causal-LM bundle. `edgekit-run generate BUNDLE \"...\"` "
                    "prints time to first token, prefill and decode tokens/s on the device; "
                    "benchmarks/decoder.py compares them with onnxruntime-genai and transformers.")

    def tradeoff(self) -> str:
        return para("Not drawn for a causal-LM bundle (no latency is recorded in it); see Quality and Sizes.")

    def substitutions(self) -> str:
        rules = get(self.m, "model", "rewrite_rules") or []
        out = [para(f"Rules applied to the shipped graph: {', '.join(map(str, rules)) or 'none'}.")]
        ops = self._pass("check ops").get("ops")
        if isinstance(ops, Mapping):
            contrib = {k: v for k, v in ops.items() if "." in str(k)}
            out.append(para(f"Every op passed the profile's check ({sum(map(int, ops.values()))} nodes"
                            + (f"; ONNX Runtime kernels: {', '.join(f'{k} x{v}' for k, v in contrib.items())}"
                               if contrib else "; standard ONNX domain only") + ")."))
        v = self._pass("validate")
        if v:
            out.append("<h3>Validation of the graph against transformers</h3>")
            out.append(kv_table([
                ("prefill logits, max |diff|", fmt(v.get("prefill_logits"), ".3g")),
                ("decode logits, max |diff|", fmt(v.get("decode_logits"), ".3g")),
                ("present keys / values, max |diff|", f"{fmt(v.get('present'), '.3g')} "
                                                     f"(keys: {v.get('present_keys') or 'all rows'})"),
                ("greedy agreement", fmt(v.get("greedy_agreement"), ".2%")),
                ("tolerance (atol)", fmt(v.get("atol"), "g"))]))
        else:
            out.append(missing("validation figures"))
        return "".join(out)

    def commands(self) -> str:
        return pre("\n".join(["edgekit-run verify BUNDLE",
                              "edgekit-run generate BUNDLE \"your prompt\" --stream",
                              "edgekit-run serve BUNDLE        # POST /generate",
                              "edgekit report BUNDLE --out report.html"]))
