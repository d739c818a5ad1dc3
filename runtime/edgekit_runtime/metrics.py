"""Quality metrics in numpy and the standard library, exact to the reference implementations.

Each function gives the number its reference gives on the same inputs (checked in
tests/test_metrics_parity.py on the host, where the references are installed):

======================  ==========================================================================
``accuracy``            sklearn.metrics.accuracy_score
``macro_f1``            sklearn.metrics.f1_score(average="macro", zero_division=0); labels: the
                        union of y_true and y_pred unless given (then sklearn's ``labels=``)
``roc_auc_ovr``         sklearn.metrics.roc_auc_score(multi_class="ovr", average="macro",
                        labels=range(k)); tied scores count one half (the Mann-Whitney U with mid-
                        ranks, which equals the trapezoid under sklearn's ROC curve). Two classes:
                        equal to roc_auc_score(y_true, scores[:, 1])
``squad_em`` / ``squad_f1``  the official SQuAD evaluation script (v1.1 normalization: lowercase,
                        drop punctuation, drop the articles a/an/the, collapse whitespace; max
                        over the gold answers). F1 of two answers that both normalize to nothing
                        is 1 (the v2.0 script's rule; v1.1 gives 0 there and agrees elsewhere)
``rouge_l``             rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False): its
                        default tokenizer (lowercase, non-[a-z0-9] runs are separators). No
                        stemming, deliberately: the Porter stemmer would need nltk, and scores
                        with and without it are not comparable, so ours are the unstemmed ones
``corpus_bleu``         sacrebleu.corpus_bleu(hyps, refs) with every default: 13a tokenization,
                        case-sensitive, exp smoothing, 4-grams, closest reference length, no
                        effective order. The score is on sacrebleu's 0-100 scale
``perplexity``          exp(-mean log p) over all tokens (natural-log probabilities)
======================  ==========================================================================

Rates (accuracy, F1, AUC, EM, ROUGE-L) are fractions in [0, 1]; only BLEU is 0-100.
Bad input raises InputError naming the argument and the fix.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import InputError

__all__ = ["accuracy", "macro_f1", "binary_auc", "roc_auc_ovr", "normalize_answer", "squad_em", "squad_f1",
           "squad_scores", "rouge_tokenize", "rouge_l", "RougeScore", "tokenize_13a", "corpus_bleu", "BleuScore",
           "perplexity"]


# ---------------------------------------------------------------- classification

def _pair(y_true: Sequence[Any], y_pred: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(list(y_true)), np.asarray(list(y_pred))
    if t.ndim != 1 or p.ndim != 1 or len(t) != len(p):
        raise InputError(f"y_true has shape {t.shape} and y_pred {p.shape}; expected two flat sequences of the "
                         f"same length. Fix: pass one label per item in each.")
    if len(t) == 0:
        raise InputError("y_true and y_pred are empty; a rate over no items is undefined. Fix: pass at least one item.")
    return t, p


def accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """Fraction of items whose prediction equals the label."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN), 0 where that is 0/0.

    Classes: ``labels`` if given (a class never true nor predicted then scores 0, as in sklearn),
    else every class that occurs in y_true or y_pred.
    """
    t, p = _pair(y_true, y_pred)
    classes = sorted(set(t.tolist()) | set(p.tolist())) if labels is None else list(labels)
    if not classes:
        raise InputError("labels is empty. Fix: pass the class labels, or None to use those that occur.")
    scores = []
    for c in classes:
        tp = int(np.sum((t == c) & (p == c)))
        fp = int(np.sum((t != c) & (p == c)))
        fn = int(np.sum((t == c) & (p != c)))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of their ranks (scipy's rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    ranks_sorted = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def binary_auc(positive: Sequence[bool], score: Sequence[float]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + P(tie) / 2.

    NaN when there are no positives or no negatives (sklearn warns and returns NaN there).
    """
    pos = np.asarray(list(positive), dtype=bool)
    s = np.asarray(list(score), dtype=np.float64)
    if pos.shape != s.shape or pos.ndim != 1:
        raise InputError(f"positive has shape {pos.shape} and score {s.shape}; expected two flat sequences of the "
                         f"same length. Fix: pass one score per item.")
    if not np.all(np.isfinite(s)):
        raise InputError("score holds NaN or inf; AUC needs finite scores. Fix: check the model's outputs.")
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc_ovr(y_true: Sequence[int], scores: Any, *, skip_undefined: bool = False) -> float:
    """Macro one-vs-rest ROC AUC. ``y_true``: class indices 0..k-1; ``scores``: (n, k), column c
    scoring class c (probabilities or logits: AUC only uses their order within a column).

    A class with no positives or no negatives has no AUC: the result is NaN (sklearn with
    ``labels=range(k)``), or with ``skip_undefined`` the mean over the classes that have one
    (NaN if none has).
    """
    t = np.asarray(list(y_true))
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != len(t) or t.ndim != 1:
        raise InputError(f"scores has shape {s.shape} for {len(t)} labels; expected (n_items, n_classes). "
                         f"Fix: pass one row of class scores per item.")
    if len(t) and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= s.shape[1]):
        raise InputError(f"y_true must hold class indices 0..{s.shape[1] - 1} (one per scores column); got values "
                         f"{sorted(set(t.tolist()))[:10]}. Fix: map label names to their column index first.")
    per_class = [binary_auc(t == c, s[:, c]) for c in range(s.shape[1])]
    defined = [a for a in per_class if not math.isnan(a)]
    if not skip_undefined and len(defined) != len(per_class):
        return float("nan")
    return float(np.mean(defined)) if defined else float("nan")


# ---------------------------------------------------------------- extractive QA (SQuAD)

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """The official SQuAD normalization: lowercase, remove punctuation, articles, extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _answers(ground_truths: str | Sequence[str]) -> list[str]:
    answers = [ground_truths] if isinstance(ground_truths, str) else list(ground_truths)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise InputError(f"ground truths {type(ground_truths).__name__} of {len(answers)} items: expected a string "
                         f"or a non-empty list of strings. Fix: pass every gold answer as a string.")
    return answers


def _f1_one(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_em(prediction: str, ground_truths: str | Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized gold answer, else 0.0."""
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in _answers(ground_truths)))


def squad_f1(prediction: str, ground_truths: str | Sequence[str]) -> float:
    """Token-overlap F1 of the normalized answers, the best over the gold answers."""
    return max(_f1_one(prediction, g) for g in _answers(ground_truths))


def squad_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 over a dataset, as fractions (the official script prints them x100)."""
    if len(predictions) != len(references) or not predictions:
        raise InputError(f"{len(predictions)} predictions for {len(references)} references; expected the same, "
                         f"non-zero number. Fix: pass one prediction per question.")
    em = [squad_em(p, r) for p, r in zip(predictions, references)]
    f1 = [squad_f1(p, r) for p, r in zip(predictions, references)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}


# ---------------------------------------------------------------- ROUGE-L

_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming."""
    text = _NON_ALPHANUM.sub(" ", text.lower())
    return [t for t in _SPACES.split(text) if _VALID_TOKEN.match(t)]


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(b) > len(a):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(target: str, prediction: str) -> RougeScore:
    """Longest-common-subsequence ROUGE of ``prediction`` against ``target`` (precision over the
    prediction's tokens, recall over the target's, F-measure their harmonic mean)."""
    ref, can = rouge_tokenize(target), rouge_tokenize(prediction)
    if not ref or not can:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = _lcs_length(ref, can)
    precision, recall = lcs / len(can), lcs / len(ref)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RougeScore(precision, recall, f)


# ---------------------------------------------------------------- BLEU (sacrebleu defaults)

_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]
MAX_NGRAM_ORDER = 4


def tokenize_13a(line: str) -> str:
    """mteval-v13a tokenization as sacrebleu's '13a' tokenizer does it (tokens joined by spaces)."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


@dataclass(frozen=True)
class BleuScore:
    score: float  # 0-100, as sacrebleu
    counts: tuple[int, ...]  # matched n-grams, n = 1..4
    totals: tuple[int, ...]  # hypothesis n-grams, n = 1..4
    precisions: tuple[float, ...]  # 0-100 (smoothed where a count is 0)
    bp: float
    sys_len: int
    ref_len: int


def _ngrams(tokens: list[str]) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, MAX_NGRAM_ORDER + 1) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str | None]]) -> BleuScore:
    """Corpus BLEU-4 as ``sacrebleu.corpus_bleu(hypotheses, references)``.

    ``references`` is a list of reference streams, each as long as ``hypotheses`` (sacrebleu's
    layout: ``[refs_1, refs_2, ...]``); a None entry means that segment has fewer references.
    """
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses) or not len(hypotheses):
        raise InputError("hypotheses must be a non-empty list of strings. Fix: pass one string per segment.")
    if isinstance(references, str) or not references or any(isinstance(r, str) for r in references):
        raise InputError("references must be a list of reference streams, e.g. [[ref_1, ref_2, ...]] for one "
                         "reference per segment. Fix: wrap the list of references in another list.")
    for k, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise InputError(f"reference stream {k} has {len(stream)} segments for {len(hypotheses)} hypotheses. "
                             f"Fix: give every stream one entry per hypothesis (None where it has none).")
    correct, total = [0] * MAX_NGRAM_ORDER, [0] * MAX_NGRAM_ORDER
    sys_len = ref_len = 0
    for i, hyp in enumerate(hypotheses):
        refs = [tokenize_13a(stream[i].rstrip()).split() for stream in references if stream[i] is not None]
        ref_ngrams: Counter = Counter()
        for tokens in refs:
            for gram, count in _ngrams(tokens).items():
                ref_ngrams[gram] = max(ref_ngrams[gram], count)
        tokens = tokenize_13a(hyp.rstrip()).split()
        closest = None
        for r in refs:  # closest reference length; ties go to the shorter one
            if closest is None or abs(len(tokens) - len(r)) < abs(len(tokens) - closest) or (
                    abs(len(tokens) - len(r)) == abs(len(tokens) - closest) and len(r) < closest):
                closest = len(r)
        sys_len += len(tokens)
        ref_len += closest if closest is not None else -1  # sacrebleu's sentinel for a segment with no reference
        for gram, count in _ngrams(tokens).items():
            total[len(gram) - 1] += count
            if gram in ref_ngrams:
                correct[len(gram) - 1] += min(count, ref_ngrams[gram])
    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * MAX_NGRAM_ORDER
    if not any(correct):
        return BleuScore(0.0, tuple(correct), tuple(total), tuple(precisions), bp, sys_len, ref_len)
    smooth = 1.0
    for n in range(MAX_NGRAM_ORDER):
        if total[n] == 0:
            break
        if correct[n] == 0:  # 'exp' smoothing (NIST): 1 / 2^k for the k-th order without a match
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    log_sum = sum(math.log(p) if p != 0.0 else -9999999999 for p in precisions)
    return BleuScore(bp * math.exp(log_sum / MAX_NGRAM_ORDER), tuple(correct), tuple(total), tuple(precisions),
                     bp, sys_len, ref_len)


# ---------------------------------------------------------------- language modelling

def perplexity(log_probs: Iterable[float] | Iterable[Iterable[float]]) -> float:
    """exp(-mean log p) over every token. ``log_probs``: natural-log probabilities of the observed
    tokens, flat or one sequence per text (then pooled over all tokens: corpus perplexity)."""
    items = list(log_probs)
    flat: list[float] = []
    for item in items:
        if isinstance(item, (int, float, np.floating, np.integer)):
            flat.append(float(item))
        else:
            flat.extend(float(x) for x in np.asarray(item, dtype=np.float64).ravel())
    values = np.asarray(flat, dtype=np.float64)
    if values.size == 0:
        raise InputError("log_probs holds no tokens; perplexity over nothing is undefined. Fix: pass at least one "
                         "token's log-probability.")
    if not np.all(np.isfinite(values)):
        raise InputError("log_probs holds NaN or inf (a token with probability 0 gives -inf). Fix: check the model's "
                         "outputs, or clip probabilities before taking the log.")
    if values.max() > 1e-6:
        raise InputError(f"log_probs holds {values.max():.4g} > 0, which is no log-probability (p <= 1). Fix: pass "
                         f"log p (natural log), not p or -log p.")
    return float(np.exp(-values.mean()))
