"""The statistics of the policy evaluation, each a small pure function or fitted helper.

The paper compared expected reward under the tuned policy with a random policy by one t-test. To say
whether a gain is real, and not the policy exploiting its reward model, the report needs more:
confidence intervals (`mean_ci`), Welch's t-test with an effect size (`welch_test`), a bootstrap
interval and permutation test that pair policies on the same prompts (`paired_bootstrap`), diversity
(`distinct_n`; whether an answer copies a training condition is `ml.similarity.NoveltyIndex`), and the rule that
calls a proxy gain without a gold gain over-optimisation (`overoptimisation_flag`); whether an answer
is about the economic area it was asked for is `ml.reward.topic.AreaClassifier`, which the RL reward's
topic term shares. Nothing here knows about policies or reports; `summary.py` combines them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05  # significance level of every test and flag in the report
_TOKEN = re.compile(r"\w+")


class MeanCI(NamedTuple):
    mean: float
    low: float
    high: float


class WelchResult(NamedTuple):
    t: float  # Welch's t of mean(a) - mean(b)
    p: float  # two-sided
    hedges_g: float  # standardised mean difference a - b, small-sample corrected


class BootstrapResult(NamedTuple):
    mean_diff: float  # mean over shared prompts of (a - b), each side averaged over its samples first
    ci_low: float
    ci_high: float
    p: float  # two-sided
    n_pairs: int  # prompts present on both sides
    effect_size: float = math.nan  # Cohen's d_z: mean of the paired differences over their standard deviation


def tokens(text: object) -> list[str]:
    """Lower-cased word tokens: the unit of answer length and of distinct-n."""
    return _TOKEN.findall(text.lower()) if isinstance(text, str) else []


def first_word(text: object) -> str | None:
    """The lower-cased first word token of `text`; None when it has none."""
    return next(iter(tokens(text)), None)


def met_by_first_word(conditions: pd.DataFrame) -> pd.DataFrame:
    """Per first word of the conditions' descriptions: how many open with it (`conditions`) and how many of
    those were met (`met`), the most common first."""
    first = conditions["description"].map(first_word)
    met = (conditions["is_met"] == 1).astype(int)
    return pd.DataFrame({"conditions": first.value_counts(), "met": met.groupby(first).sum()}).sort_values(
        "conditions", ascending=False, kind="stable")


def top_opening(texts: Iterable[object]) -> tuple[str | None, float]:
    """The most common first word of the non-empty `texts` and the share of them that open with it.
    Distinct-2 misses a policy that starts most answers with one verb ("Prepare a …") and varies the
    rest; MONA's own conditions open with no word more than about one time in six. (None, NaN) when
    no text has a word."""
    first = [word for word in map(first_word, texts) if word]
    if not first:
        return None, math.nan
    word, count = Counter(first).most_common(1)[0]
    return word, count / len(first)


def mean_ci(values: Iterable[float], level: float = 0.95) -> MeanCI:
    """Mean with a Student-t confidence interval (scipy's one-sample t interval); NaNs are dropped. With
    fewer than two values the interval is undefined (NaN); with zero spread it collapses onto the mean."""
    x = _finite(values)
    if len(x) == 0:
        return MeanCI(math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2 or np.all(x == x[0]):  # scipy warns on constant data; the interval is the point
        return MeanCI(mean, math.nan, math.nan) if len(x) < 2 else MeanCI(mean, mean, mean)
    interval = stats.ttest_1samp(x, 0.0).confidence_interval(level)
    return MeanCI(mean, float(interval.low), float(interval.high))


def distinct_n(texts: Iterable[object], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams over all n-grams, pooled across `texts`; 1.0 means
    no n-gram repeats anywhere, values near 0 a policy that keeps saying the same thing. NaN when the
    texts hold no n-gram at all."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = tokens(text)
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else math.nan


def welch_test(a: Iterable[float], b: Iterable[float]) -> WelchResult:
    """Welch's unequal-variance t-test of mean(a) vs mean(b), and Hedges' g (the pooled-SD Cohen's d
    times the small-sample correction 1 - 3 / (4 (n_a + n_b) - 9)). NaNs are dropped."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return WelchResult(math.nan, math.nan, math.nan)
    diff = float(a.mean() - b.mean())
    pooled_var = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    if pooled_var == 0:
        # Both sides constant: scipy returns NaN, but the answer is plain (equal, or certainly different).
        return WelchResult(0.0, 1.0, 0.0) if diff == 0 else WelchResult(math.copysign(math.inf, diff), 0.0,
                                                                         math.copysign(math.inf, diff))
    t, p = stats.ttest_ind(a, b, equal_var=False)
    correction = 1 - 3 / (4 * (len(a) + len(b)) - 9)
    return WelchResult(float(t), float(p), float(diff / math.sqrt(pooled_var) * correction))


def paired_bootstrap(a_by_prompt: pd.Series, b_by_prompt: pd.Series, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> BootstrapResult:
    """Paired comparison over prompts of mean(a - b), pairing on the series' index (prompt_id).

    Each side is first averaged over its samples per prompt (the index may repeat), so a prompt counts
    once however many answers it got; only prompts on both sides are used. Pairing removes the
    prompt-to-prompt spread (some combinations are easy for every policy), which is why this test sees
    gains Welch's cannot. The interval is scipy's percentile bootstrap of the mean difference at
    `level`; the two-sided p-value is scipy's paired permutation test (the sign of each prompt's
    difference flipped at random under the null of no difference).
    """
    a = pd.Series(a_by_prompt, dtype=float).groupby(level=0).mean()
    b = pd.Series(b_by_prompt, dtype=float).groupby(level=0).mean()
    diffs = (a - b).dropna().to_numpy()  # index alignment does the pairing
    if len(diffs) == 0:
        return BootstrapResult(math.nan, math.nan, math.nan, math.nan, 0)
    observed = float(diffs.mean())
    if len(diffs) == 1:
        return BootstrapResult(observed, math.nan, math.nan, math.nan, 1)
    spread = float(diffs.std(ddof=1))
    effect = observed / spread if spread > 0 else math.nan

    def mean_difference(d: np.ndarray, axis: int = -1) -> np.ndarray:
        return d.mean(axis=axis)

    return _paired_result((diffs,), mean_difference, observed, n_boot, seed, level, effect)


def paired_bootstrap_macro_f1(labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray,
                              n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> BootstrapResult:
    """Paired comparison over rows of macro-F1(a) - macro-F1(b): two classifiers' 0/1 predictions of the
    same 0/1 `labels`. The interval is scipy's percentile bootstrap over rows (both classifiers scored on
    the same resampled rows); the p-value is scipy's paired permutation test (a and b swapped row by row
    at random). `n_pairs` is the number of rows; no effect size (macro-F1 is not a mean)."""
    labels, a, b = (np.asarray(x, dtype=np.int8) for x in (labels, predicted_a, predicted_b))
    if not len(labels) == len(a) == len(b):
        raise ValueError(f"labels and predictions differ in length: {len(labels)}, {len(a)}, {len(b)}")
    if len(labels) == 0:
        return BootstrapResult(math.nan, math.nan, math.nan, math.nan, 0)

    def f1_difference(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, axis: int = -1) -> np.ndarray:
        return _macro_f1(y, pa) - _macro_f1(y, pb)

    observed = float(f1_difference(labels, a, b))
    return _paired_result((labels, a, b), f1_difference, observed, n_boot, seed, level)


def _macro_f1(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Macro-F1 over the classes 0 and 1 along the last axis, as sklearn's f1_score(average="macro",
    labels=[0, 1], zero_division=0) computes it: a class never true nor predicted scores 0."""
    scores = []
    for cls in (0, 1):
        true, guess = labels == cls, predicted == cls
        tp = (true & guess).sum(axis=-1)
        denominator = true.sum(axis=-1) + guess.sum(axis=-1)  # 2 tp + fp + fn
        scores.append(np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp)), where=denominator > 0))
    return (scores[0] + scores[1]) / 2


def _paired_result(data: tuple[np.ndarray, ...], statistic, observed: float, n_boot: int, seed: int,
                   level: float, effect: float = math.nan) -> BootstrapResult:
    """scipy's paired percentile bootstrap interval and paired permutation p-value of `statistic`.

    `data` is one array of paired differences (permuted by sign flips) or (labels, a, b) whose a and b
    are swapped within rows (labels stay with their rows)."""
    rng = np.random.default_rng(seed)
    interval = stats.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=level, method="percentile",
                               paired=True, vectorized=True, rng=rng).confidence_interval
    if len(data) == 1:
        permuted, permute_statistic = data, statistic
    else:
        labels = data[0]
        permuted = data[1:]

        def permute_statistic(pa: np.ndarray, pb: np.ndarray, axis: int = -1) -> np.ndarray:
            return statistic(labels, pa, pb, axis=axis)
    p = stats.permutation_test(permuted, permute_statistic, permutation_type="samples", n_resamples=n_boot,
                               vectorized=True, rng=rng).pvalue
    return BootstrapResult(observed, float(interval.low), float(interval.high), float(p), len(data[0]), effect)


@dataclass(frozen=True)
class OveroptimisationFlag:
    """Truthy when flagged; `reason` says which part of the rule decided, in words for the report."""
    flagged: bool
    reason: str

    def __bool__(self) -> bool:
        return self.flagged


def overoptimisation_flag(proxy_gain: float, proxy_p: float, gold_gain: float, gold_p: float,
                          alpha: float = ALPHA) -> OveroptimisationFlag:
    """Whether a tuned policy's gain over its baseline looks like reward hacking.

    The rule: flag when
      (1) the proxy gain is positive and significant (proxy_p < alpha) while the gold gain is not
          significant (gold_p >= alpha) or not positive: the policy learned what pleases the reward
          model it trained against, and an independent judge does not confirm it; or
      (2) gold falls significantly (gold_gain < 0, gold_p < alpha) while the proxy rises at all: the
          policy is getting worse by the judge's measure as it climbs the proxy.
    A gold fall within noise does not fire (2), so random variation alone never flags a policy.
    Nothing is flagged when a needed number is missing (no gold model: the check cannot be made).
    """
    numbers = (proxy_gain, proxy_p, gold_gain, gold_p)
    if any(v is None or not math.isfinite(v) for v in numbers):
        return OveroptimisationFlag(False, "not assessed: a gain or p-value is missing")
    proxy_up = proxy_gain > 0 and proxy_p < alpha
    gold_confirms = gold_gain > 0 and gold_p < alpha
    gold_falls = gold_gain < 0 and gold_p < alpha
    if proxy_up and not gold_confirms:
        gold = "fell" if gold_falls else "did not rise significantly"
        return OveroptimisationFlag(True, f"proxy reward rose significantly ({proxy_gain:+.3f}, p={proxy_p:.3g}) "
                                          f"but gold reward {gold} ({gold_gain:+.3f}, p={gold_p:.3g})")
    if proxy_gain > 0 and gold_falls:
        return OveroptimisationFlag(True, f"gold reward fell significantly ({gold_gain:+.3f}, p={gold_p:.3g}) "
                                          f"while proxy reward rose ({proxy_gain:+.3f})")
    if gold_confirms:
        return OveroptimisationFlag(False, f"gold reward confirms the gain ({gold_gain:+.3f}, p={gold_p:.3g})")
    return OveroptimisationFlag(False, f"no significant proxy gain ({proxy_gain:+.3f}, p={proxy_p:.3g})")


def _finite(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(values if isinstance(values, np.ndarray | pd.Series) else list(values), dtype=float)
    return x[np.isfinite(x)]


# Probability under which a token the policy drew marks its answer as a slip of sampling: a word the policy
# itself hardly expected there, drawn from the tail of its distribution. Of the demo champion's 120 answers to
# ten held-out queries (recommend's draws, seed 0), 11 held one: "... rural microentrepreneurs defence units",
# "a glossary of hidden governance measures", "... focusing on government-commissioned units", and three
# readable ones ("fin-tech", "normalization", "proclamation"); "audling", a word it learnt, is not one.
SLIP_BELOW = 1e-4


def is_slip(least_logprob: float | np.ndarray) -> np.ndarray:
    """Does an answer whose least likely token has this log-probability hold a slip of sampling? (Elementwise.)"""
    return np.asarray(least_logprob) < np.log(SLIP_BELOW)
