"""The evaluation report as the pipeline runs it, and the policy's champion decision.

The newest registered policy (the candidate) is evaluated on the held-out test prompts together with
the base and SFT policies, the current champion (when it is another version), and the random and
historical reference policies. The candidate becomes `champion` of `rlxf-policy-adapter` only if its
held-out gold reward (as RL defines it: the gold model's P(MET), with the profile's topic term) is at
least the champion's on the same prompts and samples; the report states
the decision with both figures and is logged to the candidate's MLflow run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml.config import Profile
from ml.data.splits import read_split
from ml.evaluation.collect import collect_answers
from ml.evaluation.report import ReportFiles, write_report
from ml.evaluation.summary import PolicyEvaluation, evaluate_policies
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME, STACK_FILE, PolicyStack, topic_classifiers, topic_factor
from ml.registry import PromotionDecision, Registry
from ml.reward.pipeline import GOLD_REWARD_MODEL_NAME, REWARD_MODEL_NAME, load_champion_reward

PROMOTION_METRIC = "heldout_gold_reward"
Progress = Callable[[str], None]


@dataclass
class EvaluationRun:
    candidate_version: str
    decision: PromotionDecision
    evaluation: PolicyEvaluation
    report: ReportFiles
    answers: pd.DataFrame
    seconds: float


def training_curves(registry: Registry, run_id: str, scratch: Path) -> pd.DataFrame | None:
    """Per-step reward and KL plus the held-out proxy/gold evaluations of the candidate's RL run."""
    try:
        path = registry.client.download_artifacts(run_id, "training/history.json", str(scratch))
    except Exception:  # a run without history (e.g. trained elsewhere) just has no curves
        return None
    logged = json.loads(Path(path).read_text(encoding="utf-8"))
    steps = pd.DataFrame(logged.get("history", []))
    if "score_mean" in steps:
        steps = steps.rename(columns={"reward_mean": "normalised_reward", "score_mean": "reward_mean"})
    evals = pd.DataFrame(logged.get("eval_history", []))
    frames = [frame for frame in (steps, evals) if not frame.empty]
    return pd.concat(frames, ignore_index=True).sort_values("step") if frames else None


def run_evaluation(home: DataHome, profile: Profile, registry: Registry, cache_dir: Path, sft_dir: Path | None,
                   samples: int = 2, progress: Progress = print) -> EvaluationRun:
    started = time.perf_counter()
    snapshot = home.exports / "splits"
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    prompts = prompts[prompts["split"] == "test"].reset_index(drop=True)
    corpus = read_split(snapshot, "train")
    models_cache = home.models / "registry"
    proxy, _ = load_champion_reward(registry, REWARD_MODEL_NAME, models_cache)
    gold, _ = load_champion_reward(registry, GOLD_REWARD_MODEL_NAME, models_cache)

    versions = registry.versions(POLICY_ADAPTER_NAME)
    if not versions:
        raise LookupError(f"no {POLICY_ADAPTER_NAME} version is registered; materialize ppo_adapter first")
    candidate = versions[-1]
    candidate_dir = registry.cached_version(POLICY_ADAPTER_NAME, candidate.version, models_cache)
    algorithm = PolicyStack.load(candidate_dir).algorithm
    policies: dict[str, Path | None] = {"base": None}
    if sft_dir is not None and (Path(sft_dir) / STACK_FILE).exists():
        policies["sft"] = Path(sft_dir)
    policies[algorithm] = candidate_dir
    champion = registry.champion_version(POLICY_ADAPTER_NAME)
    if champion is not None and champion.version != candidate.version:
        policies["champion"] = registry.cached_version(POLICY_ADAPTER_NAME, champion.version, models_cache)

    progress(f"evaluating {', '.join(policies)} (+ random, historical) on {len(prompts)} held-out prompts "
             f"x {samples} samples")
    answers = collect_answers(prompts, corpus, policies, profile.policy, cache_dir, proxy, gold, samples=samples,
                              seed=profile.data.seed, progress=progress)
    evaluation = evaluate_policies(answers, corpus, seed=profile.data.seed)

    # The champion is judged by the gold reward as RL defines it (P(MET), times the topic term when the
    # profile has one), so a policy of generic answers cannot keep the title on P(MET) alone. The
    # answers are conditions already, so their gold P(MET) is the `gold_reward` column.
    _, gold_topic = topic_classifiers(snapshot, profile.policy, profile.reward.seed)

    def heldout_gold(policy: str) -> float:
        rows = answers[answers["policy"] == policy]
        factor = topic_factor(gold_topic, profile.policy.topic_weight, rows["answer"].tolist(),
                              rows["economic_area"].tolist())
        return float(np.mean(rows["gold_reward"].to_numpy() * factor))

    candidate_gold = heldout_gold(algorithm)
    champion_gold = heldout_gold("champion") if "champion" in policies else None
    decision = registry.promote(POLICY_ADAPTER_NAME, candidate.version, PROMOTION_METRIC, candidate_gold,
                                comparison=f"{len(prompts)} test prompts x {samples} samples",
                                champion_value=champion_gold)
    progress(f"{POLICY_ADAPTER_NAME} v{candidate.version}: {decision.reason}")

    folder = home.reports / "evaluation"
    curves = training_curves(registry, candidate.run_id, home.reports / "tmp") if candidate.run_id else None
    report = write_report(evaluation, folder, training_curves=curves, promotion={
        "decision": "promoted" if decision.promoted else "challenger", "new_value": decision.new_value,
        "champion_value": decision.champion_value, "champion_version": decision.previous_champion_version,
        "version": candidate.version, "reason": decision.reason, "metric": PROMOTION_METRIC})
    answers.to_parquet(folder / "answers.parquet", index=False)
    (folder / "headline.json").write_text(json.dumps(
        {"candidate_version": candidate.version, "algorithm": algorithm, "decision": decision.reason,
         "promoted": decision.promoted, "headline": report.headline}, indent=2, default=float), encoding="utf-8")
    if candidate.run_id:
        registry.client.log_artifacts(candidate.run_id, str(folder), "evaluation_report")
    return EvaluationRun(candidate.version, decision, evaluation, report, answers, time.perf_counter() - started)
