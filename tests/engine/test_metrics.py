"""Answer scoring (engine/evaluation/metrics.py): the normalisation, each metric against values worked out by
hand, and the paired bootstrap intervals of summarize()."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu

from engine.evaluation.metrics import (METRIC_INFO, METRICS, PER_EXAMPLE, bleu_from_stats, bleu_stats,
                            normalize_answer, score_answers, summarize, token_f1)


def one(pred: str, ref: str) -> dict[str, float]:
    return score_answers([pred], [ref])[0]


# --- normalisation -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("  The Cat, sat! ", "the cat sat"),       # case, punctuation, outer whitespace
    ("ＡＢＣ　ｄｅｆ！", "abc def"),             # NFKC: full-width letters, ideographic space, "！"
    ("Straße", "strasse"),                     # casefold, not lower(): ß -> ss
    ("ﬁne ①", "fine 1"),                       # NFKC: ligature, circled digit
    ("don't  well-known\t\n«Paris»", "dont wellknown paris"),   # P* deleted, not spaced
    ("the a an", "the a an"),                  # no article removal
    ("$5 + 3 = 8°", "$5 + 3 = 8°"),            # symbols (S*) are kept
    ("Привет, МИР!", "привет мир"),
    (" ... ", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# --- per-example metrics -----------------------------------------------------------------------

def test_exact_match_after_normalisation():
    assert one("Paris.", "  paris")["exact_match"] == 1.0
    assert one("ＰＡＲＩＳ", "Paris")["exact_match"] == 1.0
    assert one("Paris", "Paris, France")["exact_match"] == 0.0
    assert one("The Paris", "Paris")["exact_match"] == 0.0     # articles count


def test_token_f1_partial_overlap():
    # pred a b c d, ref a b e: common {a, b} = 2; p = 2/4, r = 2/3
    # f1 = 2 * (1/2)(2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7 = 0.5714...
    assert one("a b c d", "a b e")["token_f1"] == pytest.approx(4 / 7)
    # multisets: pred {a:2, b:1}, ref {a:1, b:2}: common = min(2,1) + min(1,2) = 2
    # p = r = 2/3, f1 = 2/3
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)
    assert token_f1("A, B!", "a b") == 1.0                     # over normalised tokens
    assert token_f1("x y", "a b") == 0.0


def test_token_f1_empty():
    assert token_f1("", "") == 1.0
    assert token_f1("!!", " ") == 1.0                          # both empty once normalised
    assert token_f1("", "a") == 0.0
    assert token_f1("a", "") == 0.0


def test_rouge_l_by_hand():
    # pred [a cat on the mat] (5), ref [the cat sat on the mat] (6)
    # LCS = cat on the mat = 4: p = 4/5, r = 4/6, F = 2 * 4 / (5 + 6) = 8/11 = 0.7272...
    assert one("a cat on the mat", "The cat sat on the mat.")["rouge_l"] == pytest.approx(8 / 11)
    # order matters to ROUGE-L but not to token F1: LCS of [c b a] and [a b c] is 1
    # F = 2 * 1 / (3 + 3) = 1/3, while token F1 is 1
    scores = one("c b a", "a b c")
    assert scores["rouge_l"] == pytest.approx(1 / 3)
    assert scores["token_f1"] == 1.0


def test_rouge_l_non_ascii():
    # [привет мир] vs [привет всем мир]: LCS 2, F = 2 * 2 / (2 + 3) = 4/5
    assert one("Привет, мир!", "привет всем мир")["rouge_l"] == pytest.approx(0.8)
    assert one("Der Bär schläft.", "der bär schläft")["rouge_l"] == 1.0
    assert one("日本語", "日本語")["rouge_l"] == 1.0
    # why the tokenizer: rouge-score's default keeps only [a-z0-9], so Cyrillic has no tokens
    from rouge_score import rouge_scorer
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score("привет мир", "привет мир")["rougeL"].fmeasure == 0.0


def test_rouge_l_empty():
    assert one("", "")["rouge_l"] == 1.0                       # agrees with exact match
    assert one("", "a")["rouge_l"] == 0.0
    assert one("a", "")["rouge_l"] == 0.0


def test_chrf():
    assert one("The cat sat.", "The cat sat.")["chrf"] == pytest.approx(100)
    assert one("日本語です", "日本語です")["chrf"] == pytest.approx(100)
    assert one("abc", "xyz")["chrf"] == 0.0                    # no character n-gram in common
    assert 0 < one("the cat sat", "the cat sits")["chrf"] < 100
    assert one("", "")["chrf"] == 100.0
    assert one("", "abc")["chrf"] == 0.0


def test_score_answers_shape():
    scores = score_answers(["a", "b"], ["a", "c"])
    assert [tuple(s) for s in scores] == [PER_EXAMPLE, PER_EXAMPLE]
    assert [s["exact_match"] for s in scores] == [1.0, 0.0]
    assert score_answers([], []) == []
    with pytest.raises(ValueError, match="references has 1 items but predictions has 2"):
        score_answers(["a", "b"], ["a"])


# --- BLEU --------------------------------------------------------------------------------------

def test_bleu_by_hand():
    # hyp "the cat sat on the mat", ref "the cat sat on a mat" (6 tokens each, BP = 1)
    # matches: 1-grams 5/6, 2-grams 3/5 (the cat, cat sat, sat on), 3-grams 2/4, 4-grams 1/3
    # BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25 = 53.728...
    stats = bleu_stats(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert bleu_from_stats(stats.sum(axis=0)) == pytest.approx(100 * (1 / 12) ** 0.25)


def test_bleu_identical():
    texts = ["the cat sat on the mat", "a quick brown fox jumps"]
    assert bleu_from_stats(bleu_stats(texts, texts).sum(axis=0)) == pytest.approx(100)
    # one-word answers have no 4-grams: effective order keeps them at 100 (standard BLEU says 0)
    words = ["Paris", "Berlin", "Rome"]
    assert bleu_from_stats(bleu_stats(words, words).sum(axis=0)) == pytest.approx(100)
    assert sacrebleu.corpus_bleu(words, [words]).score == 0.0


def test_bleu_stats_equal_corpus_bleu():
    hyps = ["the cat sat on the mat", "a b c d e", "hello there world", "one two three four"]
    refs = ["the cat sat on a mat", "a b c d f", "hello world", "one two four three"]
    stats = bleu_stats(hyps, refs)
    assert bleu_from_stats(stats.sum(axis=0)) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs]).score)
    rows = [2, 2, 0, 3, 3, 3]                                  # a resample, with repeats
    assert bleu_from_stats(stats[rows].sum(axis=0)) == pytest.approx(
        sacrebleu.corpus_bleu([hyps[i] for i in rows], [[refs[i] for i in rows]]).score)


# --- summarize ---------------------------------------------------------------------------------

def dataset(n: int, seed: int = 1):
    """n references; base gets about a third right, tuned about two thirds (and all base's)."""
    rng = np.random.default_rng(seed)
    refs = [f"answer {i} is {'x y z w'[: 2 * int(rng.integers(1, 4))]}" for i in range(n)]
    draws = rng.random(n)
    base_preds = [r if d < 1 / 3 else f"wrong guess {i}"
                  for i, (r, d) in enumerate(zip(refs, draws))]
    tuned_preds = [r if d < 2 / 3 else f"answer {i}"
                   for i, (r, d) in enumerate(zip(refs, draws))]
    return base_preds, tuned_preds, refs


def run(base_preds, tuned_preds, refs, **kw):
    base = None if base_preds is None else score_answers(base_preds, refs)
    return summarize(base, score_answers(tuned_preds, refs), base_preds, tuned_preds, refs, **kw)


def test_summarize_shape_and_points():
    base_preds, tuned_preds, refs = dataset(30)
    report = run(base_preds, tuned_preds, refs)
    assert tuple(report) == METRICS == tuple(METRIC_INFO)
    base, tuned = score_answers(base_preds, refs), score_answers(tuned_preds, refs)
    for metric, entry in report.items():
        assert entry["n"] == 30
        assert entry["scale"] == METRIC_INFO[metric]["scale"]
        if metric != "bleu":
            assert entry["base"] == pytest.approx(np.mean([s[metric] for s in base]))
            assert entry["tuned"] == pytest.approx(np.mean([s[metric] for s in tuned]))
        assert entry["delta"] == pytest.approx(entry["tuned"] - entry["base"])
        for side in ("base", "tuned", "delta"):
            lo, hi = entry[f"{side}_ci"]
            assert lo <= entry[side] <= hi
        assert entry["delta"] > 0 and entry["delta_ci"][0] > 0   # tuned is clearly better
    assert report["bleu"]["tuned"] == pytest.approx(
        sacrebleu.corpus_bleu(tuned_preds, [refs], use_effective_order=True).score)


def test_summarize_two_examples_by_hand():
    # exact match [0, 1]: resample means are 0, 1/2 or 1 (p = 1/4, 1/2, 1/4), so 1000 draws
    # put the 2.5th percentile at 0 and the 97.5th at 1
    entry = run(None, ["a", "b"], ["x", "b"])["exact_match"]
    assert entry["tuned"] == 0.5
    assert entry["tuned_ci"] == [0.0, 1.0]


def test_summarize_without_base():
    report = run(None, ["a b", "c"], ["a b", "d"])
    for entry in report.values():
        assert entry["base"] is entry["delta"] is entry["base_ci"] is entry["delta_ci"] is None
        assert entry["tuned_ci"][0] <= entry["tuned"] <= entry["tuned_ci"][1]


def test_interval_shrinks_with_more_examples():
    def width(n):
        lo, hi = run(*dataset(n))["exact_match"]["delta_ci"]
        return hi - lo

    assert width(200) < width(50) / 1.5                        # ~ 1/sqrt(n): about half


def test_same_answers_give_zero_delta():
    _, tuned_preds, refs = dataset(40)
    report = run(tuned_preds, tuned_preds, refs)
    for entry in report.values():
        assert entry["delta"] == 0.0
        assert entry["delta_ci"] == [0.0, 0.0]
        assert entry["base_ci"] == entry["tuned_ci"]
        assert entry["tuned_ci"][0] < entry["tuned_ci"][1]


def test_delta_interval_is_paired():
    # each reference is t0 .. t9; base answers its first m tokens (m = 1..8, varying), tuned its
    # first m + 1: token F1 of an m-token prefix is 2m / (m + 10) (p = 1, r = m/10), so both
    # vary a lot across examples while their per-example difference hardly does
    m = np.random.default_rng(5).integers(1, 9, size=60)
    words = [f"t{j}" for j in range(10)]
    refs = [" ".join(words)] * 60
    base_preds = [" ".join(words[:k]) for k in m]
    tuned_preds = [" ".join(words[:k + 1]) for k in m]
    report = run(base_preds, tuned_preds, refs, resamples=2000)
    lo, hi = report["token_f1"]["delta_ci"]
    # the same delta with base and tuned resampled independently (an unpaired bootstrap)
    base = 2 * m / (m + 10)
    tuned = 2 * (m + 1) / (m + 11)
    assert report["token_f1"]["delta"] == pytest.approx(tuned.mean() - base.mean())
    rng = np.random.default_rng(0)
    unpaired = (tuned[rng.integers(0, 60, (2000, 60))].mean(axis=1)
                - base[rng.integers(0, 60, (2000, 60))].mean(axis=1))
    unpaired_lo, unpaired_hi = np.percentile(unpaired, [2.5, 97.5])
    assert hi - lo < 0.25 * (unpaired_hi - unpaired_lo)


def test_deterministic_by_seed():
    data = dataset(25)
    assert run(*data, seed=3) == run(*data, seed=3)
    assert run(*data, seed=3)["chrf"]["tuned_ci"] != run(*data, seed=4)["chrf"]["tuned_ci"]


def test_one_example_collapses():
    report = run(["the cat"], ["the cat sat on the mat"], ["the cat sat on a mat"])
    for entry in report.values():
        for side in ("base", "tuned", "delta"):
            assert entry[f"{side}_ci"] == [entry[side], entry[side]]


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        summarize([], [], [], [], [])
    with pytest.raises(ValueError, match="empty"):
        summarize(None, [], None, [], [])
    tuned = score_answers(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="tuned has 2 items but references has 3"):
        summarize(None, tuned, None, ["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="tuned_predictions has 1 items but references has 2"):
        summarize(None, tuned, None, ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="base has 1 items but references has 2"):
        summarize(tuned[:1], tuned, ["a"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="together"):
        summarize(tuned, tuned, None, ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="resamples"):
        summarize(None, tuned, None, ["a", "b"], ["a", "b"], resamples=0)
