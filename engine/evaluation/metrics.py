"""Score generated answers against references, and compare a base model with a fine-tuned one.

Use from Python:
    from engine.evaluation.metrics import score_answers, summarize, METRICS, METRIC_INFO
    base = score_answers(base_answers, references)    # one dict per example: exact_match,
    tuned = score_answers(tuned_answers, references)  # token_f1, rouge_l, chrf
    report = summarize(base, tuned, base_answers, tuned_answers, references)
    report["token_f1"]   # {"base": 0.41, "tuned": 0.87, "delta": 0.46, "base_ci": [lo, hi],
                         #  "tuned_ci": [..], "delta_ci": [..], "n": 60, "scale": "share"}
    METRIC_INFO["chrf"]  # {"label": "chrF", "higher_is_better": True, "scale": "score"}

Pass base=None (and base_predictions=None) to score the fine-tuned model alone: "base", "delta"
and their intervals are then None.

Normalisation (normalize_answer), used by exact match, token F1 and ROUGE-L, in this order:
  1. Unicode NFKC (full-width "ＡＢＣ" -> "ABC", ligature "ﬁ" -> "fi", "①" -> "1");
  2. str.casefold() ("Straße" -> "strasse", "ΣΑΣ" -> "σασ");
  3. delete every punctuation character, i.e. Unicode category P* (Pc Pd Ps Pe Pi Pf Po):
     "don't" -> "dont", "well-known" -> "wellknown", "«Paris»" -> "paris"; symbols (S*: $ + = °)
     and digits are kept;
  4. collapse runs of Unicode whitespace to one space and strip both ends.
No English article removal (SQuAD drops a/an/the; the studio is multilingual).

Per example (score_answers):
  exact_match  1.0 when the normalised prediction equals the normalised reference, else 0.0.
  token_f1     SQuAD-style F1 over the whitespace tokens of the normalised strings: common =
               multiset intersection, precision = common / prediction tokens, recall = common /
               reference tokens. Both empty -> 1.0, exactly one empty -> 0.0.
  rouge_l      ROUGE-L F-measure from `rouge-score`, with a tokenizer that splits the normalised
               text on whitespace. The package's default tokenizer keeps only [a-z0-9] (everything
               else becomes a separator), so Cyrillic, Greek or CJK answers would have no tokens
               and score 0 whatever they say, and "schläft" would become "schl ft". With ours,
               ROUGE-L sees the same tokens as token F1; it differs only in rewarding order (the
               longest common subsequence). No stemming. Both empty -> 1.0 (rouge-score says 0),
               to agree with exact match.
  chrf         sacrebleu's sentence chrF (character 6-grams, beta 2, case-sensitive, whitespace
               ignored), 0..100, on the raw texts: it needs no word splitting, so it is the
               metric that works for languages written without spaces. Both empty (or
               whitespace only) -> 100 (sacrebleu says 0).
Whole set (summarize):
  bleu         sacrebleu's corpus BLEU (13a tokenizer, exp smoothing), 0..100, on the raw texts,
               with effective_order=True: when no answer in the set has n tokens, orders >= n
               are left out instead of making BLEU 0 (identical one-word answers score 100, not
               0). When every order has at least one n-gram this is exactly standard corpus
               BLEU. Per-example BLEU is too noisy to average, so there is no per-example value.
               For the bootstrap, each example's n-gram statistics are computed once and the
               resampled sums go through sacrebleu's BLEU.compute_bleu: equal to re-running
               corpus_score on the resampled texts (tested), but fast.

Intervals: 95% percentile bootstrap, `resamples` draws of n example indices with replacement from
numpy.random.default_rng(seed). The same index draws serve base, tuned and every metric, so the
delta interval is paired (the difference is taken within each resample): when both models do
well or badly on the same examples, that shared difficulty cancels. Same inputs and seed -> the
same intervals. With n == 1 every interval is the point itself.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np

#: reported metrics, in display order
METRICS = ("exact_match", "token_f1", "rouge_l", "chrf", "bleu")
#: those with a value per example (bleu is corpus-level only)
PER_EXAMPLE = METRICS[:4]
#: "share": 0..1, shown as a percentage; "score": 0..100
METRIC_INFO: dict[str, dict[str, Any]] = {
    "exact_match": {"label": "exact match", "higher_is_better": True, "scale": "share"},
    "token_f1": {"label": "token F1", "higher_is_better": True, "scale": "share"},
    "rouge_l": {"label": "ROUGE-L", "higher_is_better": True, "scale": "share"},
    "chrf": {"label": "chrF", "higher_is_better": True, "scale": "score"},
    "bleu": {"label": "BLEU", "higher_is_better": True, "scale": "score"},
}
#: the interval's coverage
CONFIDENCE = 0.95


def normalize_answer(text: str) -> str:
    """NFKC, casefold, punctuation (Unicode P*) deleted, whitespace collapsed and stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over the whitespace tokens of the normalised strings."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class NormalisedTokens:
    """rouge-score tokenizer: the whitespace tokens of normalize_answer (any script)."""

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text).split()


@lru_cache(maxsize=1)
def _scorers():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=NormalisedTokens())
    return rouge, CHRF(), BLEU(effective_order=True)


def score_answers(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """One {"exact_match", "token_f1", "rouge_l", "chrf"} dict per (prediction, reference)."""
    _check_lengths(predictions=predictions, references=references)
    rouge, chrf, _ = _scorers()
    scores = []
    for pred, ref in zip(predictions, references):
        norm_pred, norm_ref = normalize_answer(pred), normalize_answer(ref)
        both_empty = not norm_pred and not norm_ref
        scores.append({
            "exact_match": float(norm_pred == norm_ref),
            "token_f1": token_f1(pred, ref),
            "rouge_l": 1.0 if both_empty else rouge.score(ref, pred)["rougeL"].fmeasure,
            "chrf": (100.0 if not pred.split() and not ref.split()
                     else chrf.sentence_score(pred, [ref]).score),
        })
    return scores


def bleu_stats(predictions: list[str], references: list[str]) -> np.ndarray:
    """Per-example BLEU sufficient statistics, (n, 2 + 2 * 4): sys_len, ref_len, the matching
    n-gram counts (n = 1..4), the prediction's n-gram totals. Rows add up over a corpus."""
    _check_lengths(predictions=predictions, references=references)
    _, _, bleu = _scorers()
    rows = []
    for pred, ref in zip(predictions, references):
        s = bleu.corpus_score([pred], [[ref]])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.array(rows, dtype=np.int64).reshape(len(rows), 2 + 2 * bleu.max_ngram_order)


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU (0..100) of summed bleu_stats rows."""
    _, _, bleu = _scorers()
    k = bleu.max_ngram_order
    stats = [int(v) for v in stats]
    return bleu.compute_bleu(
        correct=stats[2:2 + k], total=stats[2 + k:], sys_len=stats[0], ref_len=stats[1],
        smooth_method=bleu.smooth_method, smooth_value=bleu.smooth_value,
        effective_order=bleu.effective_order, max_ngram_order=k).score


def summarize(base: list[dict] | None, tuned: list[dict],
              base_predictions: list[str] | None, tuned_predictions: list[str],
              references: list[str], *, resamples: int = 1000, seed: int = 0
              ) -> dict[str, dict[str, Any]]:
    """For each metric in METRICS: base and tuned means (bleu: corpus scores), tuned - base,
    and their paired 95% bootstrap intervals. `base`/`tuned` come from score_answers."""
    if not references:
        raise ValueError("summarize needs at least one example (references is empty)")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    if (base is None) != (base_predictions is None):
        raise ValueError("base and base_predictions must be given together (or both None)")
    _check_lengths(references=references, tuned=tuned, tuned_predictions=tuned_predictions)
    if base is not None:
        _check_lengths(references=references, base=base, base_predictions=base_predictions)

    n = len(references)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    sides = {"tuned": (tuned, tuned_predictions)}
    if base is not None:
        sides["base"] = (base, base_predictions)

    report = {}
    for metric in METRICS:
        points, draws = {}, {}
        for side, (scores, predictions) in sides.items():
            if metric == "bleu":
                stats = bleu_stats(predictions, references)
                points[side] = bleu_from_stats(stats.sum(axis=0))
                draws[side] = np.array([bleu_from_stats(stats[rows].sum(axis=0))
                                        for rows in idx])
            else:
                values = np.array([float(s[metric]) for s in scores])
                points[side] = float(values.mean())
                draws[side] = values[idx].mean(axis=1)
        entry = {"base": None, "tuned": points["tuned"], "delta": None, "base_ci": None,
                 "tuned_ci": _interval(draws["tuned"]), "delta_ci": None, "n": n,
                 "scale": METRIC_INFO[metric]["scale"]}
        if base is not None:
            entry.update(base=points["base"], delta=points["tuned"] - points["base"],
                         base_ci=_interval(draws["base"]),
                         delta_ci=_interval(draws["tuned"] - draws["base"]))
        report[metric] = entry
    return report


def metric_info(name: str) -> dict[str, Any]:
    """METRIC_INFO of a metric, also for GRPO's reward metrics (reward, reward_<function>)."""
    if name in METRIC_INFO:
        return METRIC_INFO[name]
    if name == "reward" or name.startswith("reward_"):
        label = "mean reward" if name == "reward" else f"reward {name[len('reward_'):]}"
        return {"label": label, "higher_is_better": True, "scale": "score"}
    return {"label": name.replace("_", " "), "higher_is_better": True, "scale": "score"}


def summarize_values(base: list[float] | None, tuned: list[float], *, resamples: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """summarize()'s entry for one per-example value (a reward): base and tuned means, the
    change, and paired 95% bootstrap intervals from the same index draws as summarize()."""
    if not tuned:
        raise ValueError("summarize_values needs at least one example")
    n = len(tuned)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    t = np.array(tuned, dtype=float)
    entry = {"base": None, "tuned": float(t.mean()), "delta": None, "base_ci": None,
             "tuned_ci": _interval(t[idx].mean(axis=1)), "delta_ci": None, "n": n,
             "scale": "score"}
    if base is not None:
        _check_lengths(tuned=tuned, base=base)
        b = np.array(base, dtype=float)
        entry.update(base=float(b.mean()), delta=float(t.mean() - b.mean()),
                     base_ci=_interval(b[idx].mean(axis=1)),
                     delta_ci=_interval(t[idx].mean(axis=1) - b[idx].mean(axis=1)))
    return entry


def _interval(draws: np.ndarray) -> list[float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _check_lengths(**sequences) -> None:
    """ValueError naming the first sequence whose length differs from the first one's."""
    (first, items), *rest = sequences.items()
    for name, other in rest:
        if len(other) != len(items):
            raise ValueError(f"{name} has {len(other)} items but {first} has {len(items)}")
