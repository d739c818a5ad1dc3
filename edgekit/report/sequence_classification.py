"""The report's sections for task "sequence-classification" (an encoder with a classifier head,
`edgekit compile`): quality of teacher / student / bundle against the majority baseline, the int8
gate, the compression stages, the graph substitutions' measured effects and the graph's validation;
training curves and latency from the shared mixins (training.py, latency.py)."""

from __future__ import annotations

from typing import Mapping

from .latency import LatencySections
from .page import Report
from .parts import NOT_RECORDED, fmt, fmt_bytes, get, kv_table, missing, num, para, short, table
from .training import TrainingSections


class SequenceClassificationReport(TrainingSections, LatencySections, Report):
    """Report for task "sequence-classification", and for a manifest that names no task it knows."""

    task = "sequence-classification"

    def summary(self) -> str:
        m, q = self.m, self.quality
        out = []
        labels = get(m, "task", "labels")
        int8 = get(m, "model", "int8")
        precision = self.precision + (f" (int8 method {int8.get('method')}, format {int8.get('format')})"
                                      if isinstance(int8, Mapping) else "")
        rows = [("task", f"{get(m, 'task', 'name') or '?'}"
                 + (f" — labels: {', '.join(map(str, labels))}" if isinstance(labels, list) else "")),
                ("profile", f"{get(m, 'profile', 'name') or '?'} — {get(m, 'profile', 'data', 'device') or '?'}"),
                ("precision", precision),
                ("backend (quality and latency below)", q.get("backend") or NOT_RECORDED),
                ("integrity", self.integrity or "not checked"),
                ("signature", self.signature()),
                ("compiled", f"{get(m, 'created_utc') or '?'} by edgekit {get(m, 'edgekit_version') or '?'}")]
        out.append(kv_table(rows))

        out.append("<h3>Sizes</h3>")
        size_rows = self.file_size_rows()
        int8 = get(self.passes, "int8", "figures")
        if isinstance(int8, Mapping) and num(int8.get("bytes_fp32")) is not None:
            size_rows.append(("graph before / after int8", f"{fmt_bytes(int8.get('bytes_fp32'))} -> "
                                                           f"{fmt_bytes(int8.get('bytes_int8'))}"))
        if self.teacher_params() is not None:
            size_rows.append(("teacher weights (fp32, parameters x 4 bytes)",
                              f"{fmt_bytes(self.teacher_params() * 4)} ({self.teacher_params():,.0f} parameters)"))
        if self.student_params() is not None:
            size_rows.append(("student weights (fp32, parameters x 4 bytes)",
                              f"{fmt_bytes(self.student_params() * 4)} ({self.student_params():,.0f} parameters)"))
        out.append(kv_table(size_rows) if size_rows else missing("sizes"))

        out.append("<h3>Quality</h3>")
        out.append(self._quality_table())
        out.append("<h3>Quantized gate</h3>")
        out.append(self._gate())
        out.append("<h3>Budget</h3>")
        out.append(self._budget())
        out.append("<h3>Compression</h3>")
        out.append(self._compression())
        return "".join(out)

    def _budget(self) -> str:
        """The plan against its budget, attempt by attempt: predicted, and measured on the bundle."""
        budget = get(self.fig, "budget")
        if not isinstance(budget, Mapping):
            return para("No budget plan: this bundle was compiled without compression (compress = false).")
        attempts = [a for a in budget.get("attempts") or [] if isinstance(a, Mapping)]
        out = [kv_table([("latency budget", budget.get("latency", "-")), ("size budget", budget.get("size", "-")),
                         ("quality allowance (validation, vs the teacher)",
                          f"{num(budget.get('quality_allowance')) * 100:.1f} points"
                          if num(budget.get("quality_allowance")) is not None else "-"),
                         ("teacher fp32 on this host", f"{fmt(budget.get('teacher_ms'), '.2f')} ms at batch "
                          f"{budget.get('batch', '?')} x {budget.get('length', '?')}, "
                          f"{fmt_bytes(budget.get('teacher_bytes'))}")])]
        rows = []
        for i, a in enumerate(attempts, 1):
            student, bundle = a.get("student") or {}, a.get("bundle") or {}
            rows.append((i, f"{a.get('layers')} L, {a.get('heads')} H, FFN {a.get('ffn')}, {a.get('precision')}",
                         fmt(a.get("predicted_latency_ratio"), ".3f"), fmt(bundle.get("measured_latency_ratio"), ".3f"),
                         fmt(a.get("predicted_size_ratio"), ".3f"), fmt(bundle.get("measured_size_ratio"), ".3f"),
                         fmt(-num(student["drop"]) * 100 if num(student.get("drop")) is not None else None, "+.2f"),
                         fmt(-num(bundle["drop"]) * 100 if num(bundle.get("drop")) is not None else None, "+.2f")))
        out.append(table(["attempt", "plan", "latency predicted", "measured", "bytes predicted", "measured",
                          "student vs teacher (points)", "bundle vs teacher (points)"], rows)
                   if rows else missing("budget attempts"))
        return "".join(out)

    def _quality_table(self) -> str:
        q = self.quality
        systems = [("teacher (PyTorch)", "teacher_pytorch"), ("student (PyTorch)", "student_pytorch"),
                   (self.bundle_name(), "bundle_runtime"),
                   (f"majority-class baseline (always '{q.get('majority_label', '?')}')", "majority_baseline")]
        present = [(name, key) for name, key in systems if isinstance(q.get(key), Mapping)]
        if not present:
            return missing("quality figures")
        metrics: list[str] = []
        for _, key in present:
            for metric in q[key]:
                if metric not in metrics:
                    metrics.append(str(metric))
        headline = self.headline
        if headline in metrics:
            metrics.remove(headline)
            metrics.insert(0, headline)
        base = num(get(q, "majority_baseline", headline))
        headers = ["system"] + metrics + ([f"{headline} vs baseline"] if base is not None else [])
        rows = []
        for name, key in present:
            row = [name] + [fmt(q[key].get(metric)) for metric in metrics]
            if base is not None:
                value = num(q[key].get(headline))
                row.append("-" if value is None or key == "majority_baseline" else f"{(value - base) * 100:+.1f} points")
            rows.append(row)
        out = [table(headers, rows)]
        where = f"{q.get('split', '?')} split, {q.get('rows', '?')} rows" if q.get("rows") is not None else None
        notes = []
        if where:
            notes.append(f"On the {where}, which no training, calibration or checkpoint choice saw.")
        if num(q.get("student_retention")) is not None:
            notes.append(f"The student keeps {q['student_retention']:.1%} of the teacher's {headline}.")
        if notes:
            out.append(para(" ".join(notes)))
        absent = [name for name, key in systems[:3] if key not in q
                  and (key != "student_pytorch" or self.expects_student())]
        if "student_pytorch" not in q and not self.expects_student():
            out.append(para("No student: the recipe built none ([student] enabled = false), so the bundle is the "
                            "teacher's graph."))
        for name in absent:
            out.append(missing(f"{name} quality"))
        return "".join(out)

    def _gate(self) -> str:
        gate = get(self.fig, "quant_gate")
        if not isinstance(gate, Mapping):
            if self.precision == "int8":
                return missing("the quantized gate's figures")
            return para(f"No quantized gate: this bundle is {self.precision} (the gate judges int8 graphs).")
        metric = gate.get("metric", "metric")
        passed = gate.get("passed")
        verdict = "passed" if passed is True else ("FAILED" if passed is False else "?")
        rows = [("verdict", verdict), ("rows (validation split)", gate.get("rows", "-")),
                ("argmax agreement with the fp32 model", f"{fmt(gate.get('argmax_agreement'))} "
                                                         f"(needs >= {fmt(gate.get('min_argmax_agreement'), 'g')})"),
                (f"{metric}: fp32 -> int8", f"{fmt(gate.get('reference_metric'))} -> {fmt(gate.get('quantized_metric'))}"),
                (f"{metric} drop", (f"{num(gate.get('metric_drop')) * 100:+.2f} points"
                                    if num(gate.get("metric_drop")) is not None else "-")
                 + (f" (allowed <= {num(gate.get('max_metric_drop')) * 100:.2f})"
                    if num(gate.get("max_metric_drop")) is not None else ""))]
        return kv_table(rows)

    def _compression(self) -> str:
        comp = get(self.fig, "compression")
        if not isinstance(comp, Mapping) or not comp:
            return para("No compression stage ran (no prune, distill or QAT figures in this bundle).")
        out = []
        prune = comp.get("prune")
        if isinstance(prune, Mapping):
            params = prune.get("params") if isinstance(prune.get("params"), Mapping) else {}
            rows = [(f"{k} parameters", f"{fmt(get(v, 0), ',.0f')} -> {fmt(get(v, 1), ',.0f')}") for k, v in params.items()]
            rows.append(("non-embedding parameters kept", fmt(prune.get("non_embedding_ratio"), ".1%")))
            out.append("<h4>Prune</h4>" + kv_table(rows))
        distill = comp.get("distill")
        if isinstance(distill, Mapping):
            rows = [("steps", distill.get("steps", "-")),
                    ("best validation metric", fmt(distill.get("best_validation"))),
                    ("stopped early", distill.get("stopped_early")),
                    ("seconds", fmt(distill.get("seconds"), ".1f"))]
            rows += [("alert", a) for a in distill.get("alerts") or []]
            out.append("<h4>Distill</h4>" + kv_table(rows))
        qat = comp.get("qat")
        if isinstance(qat, Mapping):
            sel = qat.get("selection") if isinstance(qat.get("selection"), Mapping) else None
            kept = qat.get("kept_fp32") or []
            rows = [("quantized Linear layers", qat.get("quantized_linears", "-")),
                    ("kept in fp32 (most sensitive)", ", ".join(map(str, kept)) if kept else "none"),
                    ("int8 embedding tables", ", ".join(map(str, qat.get("int8_embedding_tables") or [])) or "none"),
                    ("distilled from", qat.get("distilled_from", "-")),
                    ("steps", qat.get("steps", "-"))]
            if sel:
                rows.append(("argmax agreement with fp32 on held-out train texts, before -> after QAT",
                             f"{fmt(sel.get('agreement_before_qat'))} -> {fmt(sel.get('agreement_after_qat'))} "
                             f"({sel.get('texts', '?')} texts; kept the {sel.get('kept', '?')} model)"))
            rows += [("alert", a) for a in qat.get("alerts") or []]
            out.append("<h4>QAT</h4>" + kv_table(rows))
            sens = qat.get("most_sensitive")
            if isinstance(sens, Mapping) and sens:
                out.append(para("Most quantization-sensitive Linear layers: mean |logit change| when only that "
                                "layer is int8 (the rest fp32), on train texts; the top ones stay fp32."))
                out.append(table(["layer", "sensitivity", "kept fp32"],
                                 [(k, fmt(v, ".5f"), "yes" if k in kept else "no") for k, v in sens.items()]))
            else:
                out.append(missing("QAT layer sensitivity"))
        return "".join(out) or missing("compression figures")

    def substitutions(self) -> str:
        out = []
        subs = get(self.fig, "substitutions")
        applied = get(self.m, "model", "rewrite_rules")
        if isinstance(applied, list):
            out.append(para("Rules applied to the shipped graph: " + (", ".join(map(str, applied)) or "none") + "."))
        if not isinstance(subs, Mapping):
            out.append(missing("substitution effects"))
        else:
            rows = []
            for rule, s in subs.items():
                if not isinstance(s, Mapping):
                    continue
                name = "all rules + simplify (the shipped graph)" if rule == "all_rules_and_simplify" else rule
                fired = s.get("fired", "-" if rule == "all_rules_and_simplify" else "?")
                skipped = "; ".join(map(str, s.get("skipped") or []))
                rows.append((name, fired, fmt(s.get("max_abs_logit_diff"), ".2e"), fmt(s.get("argmax_agreement")),
                             s.get("samples", "-"), short(skipped, 80) if skipped else ""))
            out.append(para("Each rule is measured alone against the plain export on validation texts, then all "
                            "together with the simplifier: max |logit diff| and the fraction of texts whose argmax "
                            "is unchanged."))
            out.append(table(["rule", "fired (nodes)", "max |logit diff|", "argmax agreement", "texts",
                              "skipped (first)"], rows))
        val = get(self.fig, "validation")
        out.append("<h3>Validation of the graph</h3>")
        if not isinstance(val, Mapping):
            out.append(missing("validation figures"))
            return "".join(out)
        compared = val.get("values_compared", True)
        out.append(kv_table([
            ("precision", val.get("precision", "-")),
            ("values compared with PyTorch", "yes" if compared else "no (PTQ graph: shapes and finiteness checked; "
                                                                    "its values are judged by the quantized gate)"),
            ("max |diff| over every case", fmt(val.get("max_abs_diff"), ".2e")),
            ("tolerance", f"atol {fmt(val.get('atol'), 'g')}, rtol {fmt(val.get('rtol'), 'g')}"),
            ("reference patched for", ", ".join(map(str, val.get("reference_patches") or [])) or "nothing")]))
        cases = [c for c in val.get("cases") or [] if isinstance(c, Mapping)]
        if cases:
            batches = list(dict.fromkeys(c.get("batch", "-") for c in cases))
            lengths = list(dict.fromkeys(c.get("length", "-") for c in cases))
            cell = {(c.get("batch", "-"), c.get("length", "-")): fmt(c.get("max_abs_diff"), ".2e") for c in cases}
            out.append(para("max |diff| per shape (real validation texts, padded to the length):"))
            out.append(table(["batch \\ length"] + [str(n) for n in lengths],
                             [[str(b)] + [cell.get((b, n), "-") for n in lengths] for b in batches], "compact"))
        return "".join(out)
