"""The statistics of the policy evaluation, each a small pure function or fitted helper.

The paper compared expected reward under the tuned policy with a random policy by one t-test. To say
whether a gain is real, and not the policy exploiting its reward model, the report needs more:
confidence intervals (`mean_ci`), Welch's t-test with an effect size (`welch_test`), a bootstrap that
pairs policies on the same prompts (`paired_bootstrap`), diversity (`distinct_n`), whether it merely
copies a training condition (`NoveltyIndex`), and the rule that calls a proxy gain without a gold gain
over-optimisation (`overoptimisation_flag`); whether an answer is about the economic area it was asked
for is `ml.reward.topic.AreaClassifier`, which the RL reward's topic term shares. Nothing here knows
about policies or reports; `summary.py` combines them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.feature_extraction.text import TfidfVectorizer

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


def mean_ci(values: Iterable[float], level: float = 0.95) -> MeanCI:
    """Mean with a Student-t confidence interval; NaNs are dropped. With fewer than two values the
    interval is undefined (NaN); with zero spread it collapses onto the mean."""
    x = np.asarray(list(values) if not isinstance(values, np.ndarray | pd.Series) else values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return MeanCI(math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return MeanCI(mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, df=len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return MeanCI(mean, mean - half, mean + half)


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
    """Bootstrap over prompts of mean(a - b), pairing on the series' index (prompt_id).

    Each side is first averaged over its samples per prompt (the index may repeat), so a prompt counts
    once however many answers it got; only prompts on both sides are used. Pairing removes the
    prompt-to-prompt spread (some combinations are easy for every policy), which is why this test sees
    gains Welch's cannot. The CI is the percentile interval at `level`; the p-value is two-sided, from
    the bootstrap distribution shifted to mean zero (the null of no difference), with the +1 correction
    so it is never exactly 0.
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
    rng = np.random.default_rng(seed)
    boot = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)  # (n_boot,)
    return _bootstrap_result(boot, observed, level, len(diffs), effect)


def paired_bootstrap_macro_f1(labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray,
                              n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> BootstrapResult:
    """Bootstrap over rows of macro-F1(a) - macro-F1(b): two classifiers' 0/1 predictions of the same
    0/1 `labels`, each resample scoring both on the same rows (the pairing). CI and p-value as in
    `paired_bootstrap`; `n_pairs` is the number of rows; no effect size (macro-F1 is not a mean)."""
    labels, a, b = (np.asarray(x, dtype=np.int8) for x in (labels, predicted_a, predicted_b))
    if not len(labels) == len(a) == len(b):
        raise ValueError(f"labels and predictions differ in length: {len(labels)}, {len(a)}, {len(b)}")
    if len(labels) == 0:
        return BootstrapResult(math.nan, math.nan, math.nan, math.nan, 0)
    observed = float(_macro_f1(labels[None], a[None])[0] - _macro_f1(labels[None], b[None])[0])
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(labels), size=(n_boot, len(labels)), dtype=np.int32)  # (n_boot, N)
    boot = _macro_f1(labels[rows], a[rows]) - _macro_f1(labels[rows], b[rows])
    return _bootstrap_result(boot, observed, level, len(labels))


def _macro_f1(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Macro-F1 over the classes 0 and 1 of each row of (R, N) arrays, as sklearn's f1_score(average=
    "macro", labels=[0, 1], zero_division=0) computes it: a class never true nor predicted scores 0."""
    scores = []
    for cls in (0, 1):
        true, guess = labels == cls, predicted == cls
        tp = (true & guess).sum(axis=1)
        denominator = true.sum(axis=1) + guess.sum(axis=1)  # 2 tp + fp + fn
        scores.append(np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0))
    return (scores[0] + scores[1]) / 2


def _bootstrap_result(boot: np.ndarray, observed: float, level: float, n_pairs: int,
                      effect: float = math.nan) -> BootstrapResult:
    """Percentile interval at `level` and the two-sided p-value of a bootstrap distribution of a difference."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    extreme = np.abs(boot - observed) >= abs(observed) - 1e-12  # |shifted| as large as observed
    p = (1 + int(extreme.sum())) / (len(boot) + 1)
    return BootstrapResult(observed, float(low), float(high), float(min(p, 1.0)), n_pairs, effect)


class NoveltyIndex:
    """Cosine similarity (TF-IDF, character 3-5 grams within words by default, so light edits of a
    training condition still look like it) of each answer to its nearest training condition. A policy
    tuned against a reward model learned from those very conditions can score well by reciting them;
    `copy_threshold` marks such answers as copies.
    """

    def __init__(self, corpus_texts: Iterable[object], analyzer: str = "char_wb",
                 ngram_range: tuple[int, int] = (3, 5), copy_threshold: float = 0.9, batch_size: int = 256):
        texts = pd.Series([t for t in corpus_texts if isinstance(t, str) and t.strip()], dtype=object)
        self.texts = texts.drop_duplicates().to_numpy(dtype=object)
        if len(self.texts) == 0:
            raise ValueError("NoveltyIndex needs at least one corpus text")
        self.vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(self.texts)  # rows L2-normalised: dot = cosine
        self.copy_threshold = copy_threshold
        self.batch_size = batch_size

    def nearest(self, texts: Iterable[object]) -> pd.DataFrame:
        """One row per text: `similarity` to the nearest corpus text (0 for an empty answer), that
        `nearest` text, and `is_copy` (similarity >= copy_threshold)."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        similarity = np.zeros(len(texts))
        index = np.zeros(len(texts), dtype=int)
        # Batches bound the dense (batch, corpus) similarity block.
        for start in range(0, len(texts), self.batch_size):
            block = (self.vectorizer.transform(texts[start:start + self.batch_size]) @ self.matrix.T).toarray()
            index[start:start + len(block)] = block.argmax(axis=1)
            similarity[start:start + len(block)] = block.max(axis=1)
        return pd.DataFrame({"similarity": similarity, "nearest": self.texts[index],
                             "is_copy": similarity >= self.copy_threshold - 1e-9})


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
