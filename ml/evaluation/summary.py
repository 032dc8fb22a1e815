"""The policy evaluation: every policy's answers to the held-out prompts, measured side by side.

`evaluate_policies` turns scored answers (one row per policy, prompt and sample; the caller generated
and scored them) into a `PolicyEvaluation`:
- `table`: one row per policy: proxy and gold reward with 95% CIs, KL to base, length, distinct-1/2,
  on-topic rate, similarity to the nearest training condition, the share of copies, and the shares that
  repeat themselves or name a body no training condition names;
- `tests`: tuned policy vs base and vs random (Welch's t-test with Hedges' g, and a bootstrap interval
  and permutation test paired on prompts), on the proxy and on the gold reward;
- `flags`: per tuned policy, whether its gain over base looks like over-optimisation of the proxy;
- `scenarios`: a Table-3-style sample of answers for the paper's three scenarios and a few others.
`headline()` flattens the numbers into MLflow-safe metric names. The reference policies are `random`
(a corpus condition drawn at random, ignoring the prompt: the paper's baseline) and `historical` (the
MET conditions recorded for the prompt's combination: what the IMF actually wrote).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.evaluation.metrics import (
    distinct_n,
    is_slip,
    mean_ci,
    overoptimisation_flag,
    paired_bootstrap,
    tokens,
    top_opening,
    welch_test,
)
from ml.policy.grounding import quotes_precedent
from ml.policy.prompts import prompt_echoes
from ml.reward.topic import AreaClassifier, area_key
from ml.similarity import NoveltyIndex, name_record, repeats_itself, unknown_names

POLICY_ORDER = ("base", "sft", "ppo", "grpo", "random", "historical")
TUNED_POLICIES = ("sft", "ppo", "grpo")
REFERENCE_POLICIES = ("random", "historical")
REQUIRED_COLUMNS = ("policy", "prompt_id", "economic_area", "answer", "proxy_reward", "gold_reward")
OPTIONAL_COLUMNS = ("country", "arrangement_type", "prompt", "kl_to_base", "kl_to_reference", "n_tokens",
                    "gold_p_area", "judged_reward", "least_token_logprob")
# Measures of an answer compared between policies: proxy and gold P(MET), and the judged reward
# (gold P(MET) x P(asked area | answer)), which the champion rule uses.
REWARDS = {"proxy": "proxy_reward", "gold": "gold_reward", "judged": "judged_reward"}

# The paper's Table 3 scenarios, by how the asked-for economic area's name begins (MONA numbering
# stripped, case-insensitive); areas matching none go to "other".
SCENARIOS: dict[str, tuple[str, ...]] = {
    "fiscal": ("Revenue", "Expenditure", "Budget", "Fiscal", "General government", "Debt"),
    "trade and investment": ("Trade", "Exchange", "Private sector"),
    "financial sector": ("Financial", "Central bank", "Restructuring and privatization of financial"),
}
OTHER_SCENARIO = "other"

TABLE_COLUMNS = ["policy", "n", "n_prompts", "proxy_mean", "proxy_ci_low", "proxy_ci_high", "gold_mean",
                 "gold_ci_low", "gold_ci_high", "judged_mean", "judged_ci_low", "judged_ci_high", "ceiling_share",
                 "kl_reference_mean", "kl_mean", "tokens_mean", "words_mean", "words_median", "distinct_1",
                 "distinct_2", "opening_word", "opening_share", "on_topic_rate", "on_topic_rate_knn",
                 "nearest_similarity", "copy_share", "quote_share", "repeat_share", "unknown_name_share",
                 "slip_share", "echo_share"]
TEST_COLUMNS = ["comparison", "treatment", "control", "metric", "gain", "welch_t", "welch_p", "hedges_g",
                "bootstrap_diff", "bootstrap_ci_low", "bootstrap_ci_high", "bootstrap_p", "paired_d", "n_pairs"]
FLAG_COLUMNS = ["policy", "control", "proxy_gain", "proxy_p", "gold_gain", "gold_p", "flagged", "reason"]
SAMPLE_COLUMNS = ["scenario", "prompt_id", "country", "arrangement_type", "economic_area", "prompt", "policy",
                  "answer", "proxy_reward", "gold_reward"]
# headline(): per-policy table column -> metric suffix.
_HEADLINE_POLICY_METRICS = {"n": "n", "proxy_mean": "proxy_p_met", "proxy_ci_low": "proxy_p_met_ci_low",
                            "proxy_ci_high": "proxy_p_met_ci_high", "gold_mean": "gold_p_met",
                            "gold_ci_low": "gold_p_met_ci_low", "gold_ci_high": "gold_p_met_ci_high",
                            "judged_mean": "judged_reward", "judged_ci_low": "judged_reward_ci_low",
                            "judged_ci_high": "judged_reward_ci_high", "ceiling_share": "share_of_ceiling",
                            "kl_reference_mean": "kl_to_reference", "kl_mean": "kl_to_base", "tokens_mean": "tokens",
                            "words_mean": "words", "words_median": "words_median",
                            "distinct_1": "distinct_1", "distinct_2": "distinct_2", "opening_share": "opening_share",
                            "on_topic_rate": "on_topic_rate", "on_topic_rate_knn": "on_topic_rate_knn",
                            "nearest_similarity": "nearest_similarity", "copy_share": "copy_share",
                            "quote_share": "quote_share", "repeat_share": "repeat_share",
                            "unknown_name_share": "unknown_name_share", "slip_share": "slip_share",
                            "echo_share": "echo_share"}
_HEADLINE_TEST_METRICS = ("welch_t", "welch_p", "hedges_g", "bootstrap_diff", "bootstrap_ci_low",
                          "bootstrap_ci_high", "bootstrap_p", "paired_d")
_UNSAFE_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")


@dataclass
class PolicyEvaluation:
    table: pd.DataFrame  # TABLE_COLUMNS, one row per policy in POLICY_ORDER (unknown policies after)
    tests: pd.DataFrame  # TEST_COLUMNS, one row per (comparison, metric in "proxy", "gold")
    flags: pd.DataFrame  # FLAG_COLUMNS, one row per tuned policy compared with base
    scenarios: pd.DataFrame  # SAMPLE_COLUMNS: `scenario_samples` of the answers
    scored: pd.DataFrame  # the answers plus words, on_topic, nearest_similarity, nearest_text, is_copy, quotes,
                          # repeats, unknown_names, echoes
    area_classifier_accuracy: float  # the on-topic classifier on held-out corpus rows; NaN if too few
    copy_threshold: float
    n_prompts: int
    n_boot: int  # bootstrap resamples behind `tests`
    ceiling: float = math.nan  # mean over prompts of the best judged reward among real conditions of the area

    @property
    def policies(self) -> list[str]:
        return list(self.table["policy"])

    def headline(self) -> dict[str, float]:
        """Flat MLflow-safe metrics; non-finite values are left out.

        Per policy: `<policy>_judged_reward`, `<policy>_proxy_p_met`, `<policy>_gold_p_met` (each + `_ci_low`,
        `_ci_high`), `_share_of_ceiling`, `_kl_to_reference`, `_on_topic_rate_knn`, `_words_median`,
        `_kl_to_base`, `_tokens`, `_words`, `_distinct_1`, `_distinct_2`, `_opening_share`, `_on_topic_rate`,
        `_nearest_similarity`, `_copy_share`, `_quote_share`, `_repeat_share`, `_unknown_name_share`, `_slip_share`
        (sampled policies only), `_echo_share`, `_n`; tuned
        ones also `_overoptimised` (1 or 0).
        Per comparison (`ppo_vs_base`, `ppo_vs_random`, ...): `<cmp>_proxy_gain`, `<cmp>_gold_gain` (difference
        of means), and test statistics `welch_t`, `welch_p`, `hedges_g`, `bootstrap_diff`,
        `bootstrap_ci_low`, `bootstrap_ci_high`, `bootstrap_p`: unqualified (`ppo_vs_random_welch_p`)
        they test the proxy reward, the reward the paper tested; with `gold_` (`ppo_vs_base_gold_welch_p`)
        the gold reward. Also `n_prompts` and `area_classifier_accuracy`.
        """
        flat: dict[str, float] = {"n_prompts": float(self.n_prompts),
                                  "area_classifier_accuracy": self.area_classifier_accuracy,
                                  "attainable_judged_reward": self.ceiling}
        for row in self.table.itertuples(index=False):
            for column, suffix in _HEADLINE_POLICY_METRICS.items():
                flat[f"{row.policy}_{suffix}"] = getattr(row, column)
        for row in self.tests.itertuples(index=False):
            flat[f"{row.comparison}_{row.metric}_gain"] = row.gain
            qualifier = "" if row.metric == "proxy" else f"{row.metric}_"
            for stat in _HEADLINE_TEST_METRICS:
                flat[f"{row.comparison}_{qualifier}{stat}"] = getattr(row, stat)
        for row in self.flags.itertuples(index=False):
            if not row.reason.startswith("not assessed"):
                flat[f"{row.policy}_overoptimised"] = float(row.flagged)
        return {_metric_name(k): float(v) for k, v in flat.items()
                if v is not None and math.isfinite(float(v))}

    def overoptimised(self) -> list[str]:
        """Tuned policies whose proxy gain over base is not backed by the gold reward."""
        return [str(p) for p in self.flags.loc[self.flags["flagged"].astype(bool), "policy"]]


def evaluate_policies(answers: pd.DataFrame, corpus: pd.DataFrame, seed: int = 0, n_boot: int = 2000,
                      copy_threshold: float = 0.9, n_per_scenario: int = 2, n_other: int = 2,
                      area_classifier: AreaClassifier | None = None, embedding_judge=None,
                      ceiling: pd.Series | None = None) -> PolicyEvaluation:
    """Measures every policy in `answers` (see the module docstring) against the training `corpus`
    (description, economic_area: what the novelty index learns from, and the area classifier unless
    one is given). `embedding_judge` (`ml.evaluation.judges.EmbeddingAreaJudge`) is the second
    on-topic judge; `ceiling` the best judged reward attainable per prompt_id (`attainable_ceiling`).

    Means, CIs and Welch's test run over answers (rows); the paired bootstrap over prompts, each side
    averaged over its samples first. Over-optimisation flags use the paired bootstrap (it sees the
    gold change more sharply than Welch's test); Welch's p-value stands in where no prompt is shared.
    """
    answers = _validated(answers)
    classifier = area_classifier or AreaClassifier.fit(corpus, seed=seed)
    novelty = NoveltyIndex(corpus["description"], copy_threshold=copy_threshold)
    nearest = novelty.nearest(answers["answer"])
    scored = answers.assign(words=[len(tokens(a)) for a in answers["answer"]],
                            on_topic=classifier.on_topic(answers),
                            on_topic_knn=embedding_judge.on_topic(answers) if embedding_judge is not None
                            else math.nan,
                            ceiling=answers["prompt_id"].map(ceiling) if ceiling is not None else math.nan,
                            nearest_similarity=nearest["similarity"].to_numpy(),
                            nearest_text=nearest["nearest"].to_numpy(),
                            is_copy=nearest["is_copy"].to_numpy(),
                            # A copy of a precedent the grounded prompt itself shows (a subset of the copies).
                            quotes=quotes_precedent(answers["prompt"], answers["answer"], copy_threshold),
                            repeats=answers["answer"].map(repeats_itself).astype(bool),
                            # A name no training condition holds: an institution the policy may have invented.
                            unknown_names=[bool(names) for names in unknown_names(answers["answer"],
                                                                                  name_record(corpus))],
                            # Words of the question no training condition uses: the answer speaks of the request.
                            echoes=[bool(words) for words in
                                    prompt_echoes(corpus["description"]).echoes(answers["answer"])])
    policies = ordered_policies(scored["policy"])
    table = pd.DataFrame([_policy_row(policy, scored[scored["policy"] == policy]) for policy in policies],
                         columns=TABLE_COLUMNS)
    mean_ceiling = float(ceiling.mean()) if ceiling is not None and len(ceiling) else math.nan
    tests = pd.DataFrame([row for treatment, control in comparisons(policies)
                          for row in _test_rows(scored, treatment, control, n_boot, seed)], columns=TEST_COLUMNS)
    return PolicyEvaluation(table=table, tests=tests, flags=_flags(tests), scored=scored,
                            scenarios=scenario_samples(scored, n_per_scenario=n_per_scenario, n_other=n_other),
                            area_classifier_accuracy=classifier.holdout_accuracy, copy_threshold=copy_threshold,
                            n_prompts=int(scored["prompt_id"].nunique()), n_boot=n_boot, ceiling=mean_ceiling)


def ordered_policies(policies: pd.Series) -> list[str]:
    present = set(policies.astype(str))
    return [p for p in POLICY_ORDER if p in present] + sorted(present - set(POLICY_ORDER))


def comparisons(policies: list[str]) -> list[tuple[str, str]]:
    """(treatment, control) pairs that are present, PPO (the product) first: every tuned policy vs
    base; PPO and GRPO vs random (the paper's test); PPO vs SFT (what PPO added to its warm start)."""
    pairs = [("ppo", "base"), ("ppo", "random"), ("ppo", "sft"), ("sft", "base"), ("grpo", "base"),
             ("grpo", "random")]
    return [(t, c) for t, c in pairs if t in policies and c in policies]


def scenario_of(area: object) -> str:
    """The paper's scenario an asked-for economic area belongs to, or "other"."""
    key = area_key(area)
    if key is None:
        return OTHER_SCENARIO
    for scenario, prefixes in SCENARIOS.items():
        if any(key.startswith(prefix.casefold()) for prefix in prefixes):
            return scenario
    return OTHER_SCENARIO


def scenario_samples(answers: pd.DataFrame, n_per_scenario: int = 2, n_other: int = 2) -> pd.DataFrame:
    """Table 3 of the paper, extended: for each scenario (fiscal; trade and investment; financial
    sector; then `n_other` prompts from other areas) up to `n_per_scenario` prompts, and per prompt
    each policy's first answer with its proxy and gold reward (SAMPLE_COLUMNS, long format).

    Prompts answered by more policies come first (the table is a comparison), then distinct areas
    before a second prompt from the same area; ties break on prompt_id, so the pick is stable.
    """
    frame = answers.copy()
    for column in OPTIONAL_COLUMNS:
        if column not in frame:
            frame[column] = math.nan
    frame["scenario"] = frame["economic_area"].map(scenario_of)
    prompts = (frame.groupby("prompt_id", sort=True)
               .agg(scenario=("scenario", "first"), area=("economic_area", "first"), n_policies=("policy", "nunique"))
               .reset_index().sort_values(["n_policies", "prompt_id"], ascending=[False, True]))
    picked: list[str] = []
    for scenario in [*SCENARIOS, OTHER_SCENARIO]:
        want = n_other if scenario == OTHER_SCENARIO else n_per_scenario
        candidates = prompts[prompts["scenario"] == scenario]
        first_of_area = ~candidates["area"].map(area_key).duplicated()
        ranked = pd.concat([candidates[first_of_area], candidates[~first_of_area]])
        picked += list(ranked["prompt_id"].head(want))
    rows = frame[frame["prompt_id"].isin(picked)].drop_duplicates(["prompt_id", "policy"], keep="first")
    policy_rank = {p: i for i, p in enumerate(ordered_policies(frame["policy"]))}
    rows = rows.assign(_prompt_rank=rows["prompt_id"].map({p: i for i, p in enumerate(picked)}),
                       _policy_rank=rows["policy"].map(policy_rank))
    return rows.sort_values(["_prompt_rank", "_policy_rank"])[SAMPLE_COLUMNS].reset_index(drop=True)


def _validated(answers: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in answers]
    if missing:
        raise ValueError(f"answers lack columns {missing}; expected at least {list(REQUIRED_COLUMNS)}")
    if answers.empty:
        raise ValueError("answers is empty: nothing to evaluate")
    frame = answers.reset_index(drop=True).copy()
    for column in OPTIONAL_COLUMNS:
        if column not in frame:
            frame[column] = math.nan
    frame["policy"] = frame["policy"].astype(str)
    frame["prompt_id"] = frame["prompt_id"].astype(str)
    frame["answer"] = frame["answer"].map(lambda a: a if isinstance(a, str) else "").astype(object)
    for column in ("proxy_reward", "gold_reward", "judged_reward", "gold_p_area", "kl_to_base", "kl_to_reference",
                   "n_tokens", "least_token_logprob"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def _policy_row(policy: str, rows: pd.DataFrame) -> dict[str, object]:
    proxy, gold, judged = (mean_ci(rows[c]) for c in ("proxy_reward", "gold_reward", "judged_reward"))
    ceiling = _nanmean(rows["ceiling"])
    opening_word, opening_share = top_opening(rows["answer"])
    return {"policy": policy, "n": len(rows), "n_prompts": rows["prompt_id"].nunique(),
            "proxy_mean": proxy.mean, "proxy_ci_low": proxy.low, "proxy_ci_high": proxy.high,
            "gold_mean": gold.mean, "gold_ci_low": gold.low, "gold_ci_high": gold.high,
            "judged_mean": judged.mean, "judged_ci_low": judged.low, "judged_ci_high": judged.high,
            # Over the same answers' prompts: the policy's mean judged reward as a share of the best it could get.
            "ceiling_share": judged.mean / ceiling if ceiling and math.isfinite(ceiling) else math.nan,
            "kl_reference_mean": _nanmean(rows["kl_to_reference"]), "kl_mean": _nanmean(rows["kl_to_base"]),
            "tokens_mean": _nanmean(rows["n_tokens"]), "words_mean": _nanmean(rows["words"]),
            "words_median": float(np.median(rows["words"])) if len(rows) else math.nan,
            "distinct_1": distinct_n(rows["answer"], 1), "distinct_2": distinct_n(rows["answer"], 2),
            "opening_word": opening_word, "opening_share": opening_share,
            "on_topic_rate": _nanmean(rows["on_topic"]), "on_topic_rate_knn": _nanmean(rows["on_topic_knn"]),
            "nearest_similarity": _nanmean(rows["nearest_similarity"]),
            "copy_share": float(rows["is_copy"].astype(bool).mean()),
            "quote_share": float(rows["quotes"].astype(bool).mean()),
            "repeat_share": float(rows["repeats"].mean()) if len(rows) else math.nan,
            "unknown_name_share": float(rows["unknown_names"].mean()) if len(rows) else math.nan,
            # Sampled answers only: the historical and random conditions were not drawn from a policy.
            "slip_share": _slip_share(rows["least_token_logprob"]),
            "echo_share": float(rows["echoes"].mean()) if len(rows) else math.nan}


def _slip_share(least_token_logprob: pd.Series) -> float:
    sampled = least_token_logprob.dropna()
    return float(is_slip(sampled.to_numpy()).mean()) if len(sampled) else math.nan


def _test_rows(scored: pd.DataFrame, treatment: str, control: str, n_boot: int, seed: int) -> list[dict]:
    a, b = scored[scored["policy"] == treatment], scored[scored["policy"] == control]
    rows = []
    for metric, column in REWARDS.items():
        welch = welch_test(a[column], b[column])
        boot = paired_bootstrap(a.set_index("prompt_id")[column], b.set_index("prompt_id")[column],
                                n_boot=n_boot, seed=seed)
        rows.append({"comparison": f"{treatment}_vs_{control}", "treatment": treatment, "control": control,
                     "metric": metric, "gain": _nanmean(a[column]) - _nanmean(b[column]),
                     "welch_t": welch.t, "welch_p": welch.p, "hedges_g": welch.hedges_g,
                     "bootstrap_diff": boot.mean_diff, "bootstrap_ci_low": boot.ci_low,
                     "bootstrap_ci_high": boot.ci_high, "bootstrap_p": boot.p, "paired_d": boot.effect_size,
                     "n_pairs": boot.n_pairs})
    return rows


def _flags(tests: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, pair in tests[tests["control"] == "base"].groupby("comparison", sort=False):
        by_metric = pair.set_index("metric")
        gains, ps = {}, {}
        for metric in ("proxy", "gold"):
            test = by_metric.loc[metric]
            paired = test["n_pairs"] >= 2 and math.isfinite(test["bootstrap_p"])
            gains[metric] = test["bootstrap_diff"] if paired else test["gain"]
            ps[metric] = test["bootstrap_p"] if paired else test["welch_p"]
        flag = overoptimisation_flag(gains["proxy"], ps["proxy"], gains["gold"], ps["gold"])
        rows.append({"policy": pair["treatment"].iloc[0], "control": "base", "proxy_gain": gains["proxy"],
                     "proxy_p": ps["proxy"], "gold_gain": gains["gold"], "gold_p": ps["gold"],
                     "flagged": flag.flagged, "reason": flag.reason})
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


def _nanmean(values: pd.Series) -> float:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _metric_name(name: str) -> str:
    # MLflow allows only letters, digits, `_ - . /` and space; a policy name could carry anything.
    return _UNSAFE_METRIC_CHARS.sub("_", name)
