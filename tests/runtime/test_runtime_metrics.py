"""edgekit_runtime.metrics on values worked out by hand (runtime only: no reference library here;
tests/test_metrics_parity.py checks the same functions against sklearn, sacrebleu, rouge-score)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit_runtime import InputError
from edgekit_runtime import metrics as M


def test_accuracy():
    assert M.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert M.accuracy(["a", "b"], ["a", "b"]) == 1.0


def test_macro_f1_by_hand():
    # class 0: tp 1 fp 1 fn 1 -> 2/4; class 1: tp 2 fp 1 fn 0 -> 4/5; class 2: tp 0 fp 0 fn 1 -> 0
    assert M.macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # labels given: a class never true nor predicted counts 0
    assert M.macro_f1([0, 1], [0, 1], labels=[0, 1, 2]) == pytest.approx(2 / 3)


def test_binary_auc_counts_ties_as_half():
    # positives 0.8, 0.3; negatives 0.8, 0.1: pairs 0.5 + 1 + 0 + 1 = 2.5 of 4
    assert M.binary_auc([True, False, True, False], [0.8, 0.8, 0.3, 0.1]) == 0.625
    assert M.binary_auc([True, False], [0.2, 0.2]) == 0.5
    assert math.isnan(M.binary_auc([True, True], [0.1, 0.2]))


def test_roc_auc_ovr_macro_and_undefined_classes():
    y = [0, 1, 2, 0]
    p = np.array([[.7, .2, .1], [.2, .6, .2], [.1, .2, .7], [.6, .3, .1]])
    assert M.roc_auc_ovr(y, p) == 1.0  # every class ranked perfectly
    y2 = [0, 1, 0, 1]  # class 2 never true: undefined
    assert math.isnan(M.roc_auc_ovr(y2, p))
    # class 0: positives .7, .1 vs negatives .2, .6 -> 1 + 1 + 0 + 0 = 2/4;
    # class 1: positives .6, .3 vs negatives .2, .2 -> 4/4; class 2 left out
    assert M.roc_auc_ovr(y2, p, skip_undefined=True) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(InputError, match="class indices"):
        M.roc_auc_ovr([0, 3], p[:2])


def test_squad_normalization_em_f1():
    assert M.normalize_answer("The  Cat, sat!") == "cat sat"
    assert M.normalize_answer("An apple") == "apple"
    assert M.squad_em("the Cat sat.", ["cat  sat"]) == 1.0
    # 'cat sat' vs 'cat sat down': precision 1, recall 2/3 -> F1 0.8
    assert M.squad_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert M.squad_f1("a", "the") == 1.0  # both normalize to nothing
    assert M.squad_f1("dog", ["cat", "the dog"]) == 1.0  # best gold answer
    assert M.squad_scores(["cat", "dog"], ["cat", "cow"]) == {"exact_match": 0.5, "f1": 0.5}


def test_rouge_l_by_hand():
    # target 6 tokens, prediction 5, LCS 5: precision 1, recall 5/6, F = 10/11
    s = M.rouge_l("the cat sat on the mat", "The cat, on the mat!")
    assert (s.precision, s.recall, s.fmeasure) == pytest.approx((1.0, 5 / 6, 10 / 11))
    assert M.rouge_tokenize("Héllo, WORLD-2!") == ["h", "llo", "world", "2"]
    assert M.rouge_l("", "x").fmeasure == 0.0


def test_bleu_by_hand():
    # 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3, equal lengths: (1/12)^(1/4)
    b = M.corpus_bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert b.score == pytest.approx(100 * (1 / 12) ** 0.25)
    assert (b.counts, b.totals, b.bp) == ((5, 3, 2, 1), (6, 5, 4, 3), 1.0)
    # exp smoothing: 3-grams 0/2 -> 1/(2*2), 4-grams 0/1 -> 1/(4*1)
    b = M.corpus_bleu(["a b c d"], [["a b x y"]])
    assert b.score == pytest.approx(100 * (0.5 * (1 / 3) * 0.25 * 0.25) ** 0.25)
    assert M.corpus_bleu(["exactly the same words here"], [["exactly the same words here"]]).score == pytest.approx(100)
    assert M.corpus_bleu(["x y z w"], [["a b c d"]]).score == 0.0
    # brevity penalty: 2 tokens against 4 -> exp(1 - 4/2)
    assert M.corpus_bleu(["a b"], [["a b c d"]]).bp == pytest.approx(math.exp(-1))
    assert M.tokenize_13a("Hello, world! It's 3.14 &amp; 3-4.") == "Hello , world ! It's 3.14 & 3 - 4 ."
    with pytest.raises(InputError, match="reference streams"):
        M.corpus_bleu(["a"], ["a"])


def test_perplexity():
    assert M.perplexity([math.log(0.5)] * 4) == pytest.approx(2.0)
    # pooled over all tokens: (ln 1/2 + ln 1/4 + ln 1) / 3 = ln(1/8)/3 = -ln 2
    assert M.perplexity([[math.log(0.5), math.log(0.25)], [0.0]]) == pytest.approx(2.0)
    for bad, match in (([], "no tokens"), ([0.3], "no log-probability"), ([float("-inf")], "NaN or inf")):
        with pytest.raises(InputError, match=match):
            M.perplexity(bad)
