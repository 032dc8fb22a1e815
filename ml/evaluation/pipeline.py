"""The evaluation report as the pipeline runs it, and the policy's champion decision.

The newest registered policy (the candidate) is evaluated on the held-out test prompts together with
the base and SFT policies, the current champion (when it is another version), and the random and
historical reference policies, judged by the gold side of the RL reward it was trained against. The
candidate becomes `champion` of `rlxf-policy-adapter` only if its held-out judged reward (gold P(MET)
x P(asked area | answer)) is at least the champion's on the same prompts and samples; the report
states the decision with both figures and is logged to the candidate's MLflow run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml.config import Profile
from ml.data.splits import read_split
from ml.evaluation.collect import attainable_ceiling, collect_answers
from ml.evaluation.judges import EmbeddingAreaJudge
from ml.evaluation.report import ReportFiles, write_report
from ml.evaluation.summary import PolicyEvaluation, evaluate_policies
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME, STACK_FILE, PolicyStack
from ml.registry import PromotionDecision, Registry
from ml.reward.pipeline import load_rl_reward
from ml.reward.rl_reward import RL_REWARD_NAME

PROMOTION_METRIC = "heldout_judged_reward"
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
    # The training reward as the design defines it, before PPO's normalisation: PPO's score_mean, TRL's reward.
    steps = steps.drop(columns=["reward_mean"], errors="ignore").rename(
        columns={"score_mean": "reward_mean", "train_reward_mean": "reward_mean"})
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

    versions = registry.versions(POLICY_ADAPTER_NAME)
    if not versions:
        raise LookupError(f"no {POLICY_ADAPTER_NAME} version is registered; materialize ppo_adapter first")
    candidate = versions[-1]
    # Judged with the RL reward the candidate was trained against (its gold side is the judge).
    reward, reward_version = load_rl_reward(registry, candidate.tags.get("rl_reward_version"), models_cache)
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
             f"x {samples} samples, judged by {reward.spec.gold['name']} v{reward.spec.gold['version']} "
             f"({RL_REWARD_NAME} v{reward_version})")
    answers = collect_answers(prompts, corpus, policies, profile.policy, cache_dir, reward, samples=samples,
                              seed=profile.data.seed, progress=progress)
    ceiling = attainable_ceiling(prompts, corpus, reward, seed=profile.data.seed)
    progress(f"attainable judged reward (best real condition of the area, per prompt): {ceiling.mean():.3f}")
    evaluation = evaluate_policies(answers, corpus, seed=profile.data.seed, area_classifier=reward.gold_area,
                                   embedding_judge=EmbeddingAreaJudge(corpus, seed=profile.data.seed), ceiling=ceiling)

    # The champion is judged by the judged reward: gold P(MET) x P(asked area | answer), so a policy of
    # generic or off-topic answers cannot keep the title on P(MET) alone.
    def judged(policy: str) -> float:
        return float(answers.loc[answers["policy"] == policy, "judged_reward"].mean())

    candidate_value = judged(algorithm)
    champion_value = judged("champion") if "champion" in policies else None
    decision = registry.promote(POLICY_ADAPTER_NAME, candidate.version, PROMOTION_METRIC, candidate_value,
                                comparison=f"{len(prompts)} test prompts x {samples} samples",
                                champion_value=champion_value)
    progress(f"{POLICY_ADAPTER_NAME} v{candidate.version}: {decision.reason}")

    folder = home.reports / "evaluation"
    curves = training_curves(registry, candidate.run_id, home.reports / "tmp") if candidate.run_id else None
    report = write_report(evaluation, folder, training_curves=curves, tuned=algorithm, promotion={
        "decision": "promoted" if decision.promoted else "challenger", "new_value": decision.new_value,
        "champion_value": decision.champion_value, "champion_version": decision.previous_champion_version,
        "version": candidate.version, "reason": decision.reason, "metric": PROMOTION_METRIC})
    answers.to_parquet(folder / "answers.parquet", index=False)
    (folder / "headline.json").write_text(json.dumps(
        {"candidate_version": candidate.version, "algorithm": algorithm, "rl_reward_version": reward_version,
         "decision": decision.reason, "promoted": decision.promoted, "headline": report.headline},
        indent=2, default=float), encoding="utf-8")
    if candidate.run_id:
        registry.client.log_artifacts(candidate.run_id, str(folder), "evaluation_report")
    return EvaluationRun(candidate.version, decision, evaluation, report, answers, time.perf_counter() - started)
