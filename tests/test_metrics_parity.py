"""edgekit_runtime.metrics gives the reference implementations' numbers on the same inputs:
scikit-learn (accuracy, macro-F1, ROC AUC), the official SQuAD script (EM, F1), rouge-score
(ROUGE-L), sacrebleu (corpus BLEU) and torch's cross-entropy (perplexity). Host side: the
references are dev dependencies, the runtime never imports them."""

from __future__ import annotations

import collections
import math
import re
import string
import warnings

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from edgekit_runtime import metrics as M

RNG_SEEDS = [0, 1, 2, 3]


def _probs(rng, n, k, decimals=None):
    p = rng.dirichlet(np.ones(k), size=n)
    if decimals is not None:  # coarse scores: many ties
        p = np.round(p, decimals)
        p[:, -1] = 1.0 - p[:, :-1].sum(axis=1)  # keep rows summing to 1 (sklearn checks it)
    return p


# ---------------------------------------------------------------- classification

@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_accuracy_and_macro_f1_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, size=200))
    assert M.accuracy(y, p) == pytest.approx(accuracy_score(y, p), abs=1e-15)
    assert M.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)


@pytest.mark.parametrize("y,p,labels", [
    (["a", "a", "b"], ["a", "c", "b"], None),  # a predicted class that never occurs in y_true
    ([0, 0, 1, 1], [0, 0, 1, 1], None),  # perfect
    ([0, 0, 1, 1], [1, 1, 0, 0], None),  # all wrong
    ([0, 0, 0], [0, 0, 0], None),  # one class
    ([0, 0, 1], [0, 0, 1], [0, 1, 2]),  # labels given, class 2 never true nor predicted: F1 0
    ([0, 1, 2, 2], [0, 2, 2, 2], [2, 0]),  # labels a subset, in another order
])
def test_macro_f1_edge_cases_match_sklearn(y, p, labels):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = f1_score(y, p, average="macro", labels=labels, zero_division=0)
    assert M.macro_f1(y, p, labels=labels) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("k,decimals", [(2, None), (3, None), (5, None), (3, 1), (4, 1)])
def test_roc_auc_ovr_matches_sklearn(seed, k, decimals):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=150)
    y[:k] = np.arange(k)  # every class present
    p = _probs(rng, 150, k, decimals)
    if k == 2:
        want = roc_auc_score(y, p[:, 1])
    else:
        want = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert M.roc_auc_ovr(y, p) == pytest.approx(want, abs=1e-12)


def test_auc_ties_and_constant_scores_match_sklearn():
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    for s in ([0.5] * 8, [0.1, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.1], [1, 1, 0, 0, 1, 1, 0, 0]):
        assert M.binary_auc(y == 1, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_with_an_absent_class_is_nan_like_sklearn():
    y = np.array([0, 0, 1, 1])
    p = np.array([[.5, .3, .2], [.2, .5, .3], [.1, .1, .8], [.3, .3, .4]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=[0, 1, 2])
    assert math.isnan(want) and math.isnan(M.roc_auc_ovr(y, p))
    # skip_undefined: the mean over the classes that have an AUC (sklearn's per-class values)
    per_class = [roc_auc_score(y == c, p[:, c]) for c in (0, 1)]
    assert M.roc_auc_ovr(y, p, skip_undefined=True) == pytest.approx(np.mean(per_class), abs=1e-12)


# ---------------------------------------------------------------- SQuAD: the official script (v1.1, and v2.0's F1)

def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_v11(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_f1_v20(a_gold, a_pred):
    gold_toks = official_normalize_answer(a_gold).split()
    pred_toks = official_normalize_answer(a_pred).split()
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


SQUAD_CASES = [
    ("The Eiffel Tower", ["Eiffel Tower", "the eiffel tower."]),
    ("in 1889,  Paris", ["1889"]),
    ("An apple a day", ["apple day", "an apple"]),
    ("Théâtre du Châtelet!", ["théâtre du châtelet"]),
    ("the the the", ["the cat"]),  # normalizes to nothing
    ("Denver Broncos", ["Carolina Panthers"]),
    ("cats, dogs and cats", ["cats and dogs"]),
    ("theater", ["the theater"]),  # 'the' only as a whole word
    ("", ["nothing"]),
]


@pytest.mark.parametrize("prediction,golds", SQUAD_CASES)
def test_squad_em_f1_match_the_official_script(prediction, golds):
    assert M.normalize_answer(prediction) == official_normalize_answer(prediction)
    want_em = max(float(official_normalize_answer(prediction) == official_normalize_answer(g)) for g in golds)
    assert M.squad_em(prediction, golds) == want_em
    assert M.squad_f1(prediction, golds) == pytest.approx(max(official_f1_v20(g, prediction) for g in golds), abs=1e-12)
    if official_normalize_answer(prediction) and all(official_normalize_answer(g) for g in golds):
        assert M.squad_f1(prediction, golds) == pytest.approx(max(official_f1_v11(prediction, g) for g in golds))


def test_squad_scores_are_the_dataset_means():
    preds = [p for p, _ in SQUAD_CASES]
    refs = [g for _, g in SQUAD_CASES]
    out = M.squad_scores(preds, refs)
    assert out["exact_match"] == pytest.approx(np.mean([M.squad_em(p, g) for p, g in SQUAD_CASES]))
    assert out["f1"] == pytest.approx(np.mean([max(official_f1_v20(x, p) for x in g) for p, g in SQUAD_CASES]))


# ---------------------------------------------------------------- ROUGE-L

ROUGE_PAIRS = [
    ("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."),
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("", "something"),
    ("...", "!!!"),  # punctuation only: no tokens
    ("naïve café, déjà vu", "naive cafe deja vu"),  # non-ASCII letters are separators
    ("a a a b b", "a b a b a b"),
    ("Police killed the gunman in 2019", "the gunman was killed by police; 2019"),
    ("running runs ran", "run running"),  # no stemming: only the exact 'running' matches
]


@pytest.mark.parametrize("target,prediction", ROUGE_PAIRS)
def test_rouge_l_matches_rouge_score(target, prediction):
    want = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(target, prediction)["rougeL"]
    got = M.rouge_l(target, prediction)
    assert (got.precision, got.recall, got.fmeasure) == pytest.approx((want.precision, want.recall, want.fmeasure),
                                                                     abs=1e-12)


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_rouge_l_matches_rouge_score_on_random_texts(seed):
    rng = np.random.default_rng(seed)
    vocab = ["alpha", "Beta", "gamma,", "delta.", "42", "x-ray", "the", "A"]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for _ in range(10):
        t = " ".join(rng.choice(vocab, size=rng.integers(1, 40)))
        p = " ".join(rng.choice(vocab, size=rng.integers(1, 40)))
        assert M.rouge_l(t, p).fmeasure == pytest.approx(scorer.score(t, p)["rougeL"].fmeasure, abs=1e-12)


# ---------------------------------------------------------------- BLEU

BLEU_CASES = [
    (["The cat sat on the mat."], [["The cat is on the mat."]]),
    (["the cat sat on the mat"], [["the cat sat on the mat"]]),  # perfect: 100
    (["no overlap at all here"], [["completely different words in it"]]),  # no match: 0
    (["a b"], [["a b c d e"]]),  # shorter than 4 tokens: no 3-/4-grams, brevity penalty
    (["a b c d"], [["a b x y"]]),  # exp smoothing of the orders without a match
    (["Hello, world! It's 3.14 &amp; 3-4.", "e.g. U.S.A. costs $5,000.00 (approx.)  "],
     [["Hello world, it is 3.14 & 3-4!", "The U.S.A. costs $5,000 approx."]]),  # 13a punctuation and entities
    (["one two three four five six", "seven eight nine ten"],
     [["one two three four five six seven", "seven eight nine"], ["one two three", None]]),  # multi-ref, None
    ([""], [["a reference"]]),  # empty hypothesis
    (["the the the the the the the"], [["the cat is on the mat"]]),  # clipped counts
]


@pytest.mark.parametrize("hyps,refs", BLEU_CASES)
def test_corpus_bleu_matches_sacrebleu(hyps, refs):
    want = sacrebleu.corpus_bleu(hyps, refs)
    got = M.corpus_bleu(hyps, refs)
    assert got.score == pytest.approx(want.score, abs=1e-9)
    assert list(got.counts) == list(want.counts) and list(got.totals) == list(want.totals)
    assert (got.sys_len, got.ref_len) == (want.sys_len, want.ref_len)
    assert got.bp == pytest.approx(want.bp, abs=1e-12)
    assert list(got.precisions) == pytest.approx(list(want.precisions), abs=1e-9)


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_corpus_bleu_matches_sacrebleu_on_random_corpora(seed):
    rng = np.random.default_rng(seed)
    vocab = ["the", "cat", "sat", "on", "mat", ",", ".", "3-4", "U.S.", "&amp;", "(", ")", "dog", "a"]
    hyps = [" ".join(rng.choice(vocab, size=rng.integers(1, 25))) for _ in range(30)]
    refs = [[" ".join(rng.choice(vocab, size=rng.integers(1, 25))) for _ in range(30)] for _ in range(2)]
    assert M.corpus_bleu(hyps, refs).score == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, abs=1e-9)
    for line in hyps:
        assert M.tokenize_13a(line) == sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()(line)


# ---------------------------------------------------------------- perplexity

def test_perplexity_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=gen)
    targets = torch.randint(0, 11, (2, 7), generator=gen)
    want = torch.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))).item()
    log_probs = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert M.perplexity(log_probs.numpy()) == pytest.approx(want, rel=1e-6)
    assert M.perplexity([row for row in log_probs.numpy()]) == pytest.approx(want, rel=1e-6)
