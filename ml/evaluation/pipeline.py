"""The evaluation report as the pipeline runs it, and the policy's champion decision.

The newest registered policy (the candidate) is evaluated on the held-out test prompts together with
the base and SFT policies, the current champion (when it is another version), and the random and
historical reference policies, judged by the gold side of the RL reward it was trained against. The
registered policies are loaded as the MLflow Models they are (`mlflow.pyfunc.load_model`). The
candidate becomes `champion` of `rlxf-policy-adapter` only if its held-out judged reward (gold P(MET)
x P(asked area | answer)) is better with evidence than the champion's on the same prompts and samples:
a paired bootstrap over the prompts of the difference, whose interval at the profile's level lies
above zero. The report states the decision with both figures, the interval and the p-value, and is
logged to the candidate's MLflow run with the effective settings it was evaluated under (`settings.json`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from transformers import PreTrainedModel

from ml.config import Profile, settings_dict
from ml.data.splits import read_split
from ml.evaluation.collect import attainable_ceiling, collect_answers
from ml.evaluation.judges import EmbeddingAreaJudge
from ml.evaluation.metrics import paired_bootstrap
from ml.evaluation.report import ReportFiles, write_report
from ml.evaluation.summary import PolicyEvaluation, evaluate_policies
from ml.io import atomic_folder
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME, STACK_FILE, PolicyStack, load_policy
from ml.registry import Evidence, PromotionDecision, Registry
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
                   progress: Progress = print) -> EvaluationRun:
    started = time.perf_counter()
    snapshot = home.exports / "splits"
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    prompts = prompts[prompts["split"] == "test"].reset_index(drop=True)
    corpus = read_split(snapshot, "train")
    settings, judging = profile.policy, profile.evaluation
    samples = judging.samples_per_prompt

    versions = registry.versions(POLICY_ADAPTER_NAME)
    if not versions:
        raise LookupError(f"no {POLICY_ADAPTER_NAME} version is registered; materialize ppo_adapter first")
    candidate = versions[-1]
    # Judged with the RL reward the candidate was trained against (its gold side is the judge).
    reward, reward_version = load_rl_reward(registry, candidate.tags.get("rl_reward_version"))
    algorithm = candidate.tags["algorithm"]

    def registered(version: str) -> Callable[[], PreTrainedModel]:
        config = {"device": settings.device, "base_model_cache": str(cache_dir)}
        return lambda: registry.load_model(POLICY_ADAPTER_NAME, version, config).unwrap_python_model().model

    policies: dict[str, Callable[[], PreTrainedModel] | None] = {"base": None}
    base_referenced = set()  # policies whose RL reference (the last adapter off) is the base model itself
    if sft_dir is not None and (Path(sft_dir) / STACK_FILE).exists():
        policies["sft"] = lambda: load_policy(sft_dir, settings, cache_dir)[0]
        if len(PolicyStack.load(sft_dir).adapters) == 1:
            base_referenced.add("sft")
    policies[algorithm] = registered(candidate.version)
    champion = registry.champion_version(POLICY_ADAPTER_NAME)
    if champion is not None and champion.version != candidate.version:
        policies["champion"] = registered(champion.version)

    progress(f"evaluating {', '.join(policies)} (+ random, historical) on {len(prompts)} held-out prompts "
             f"x {samples} samples, judged by {reward.spec.gold['name']} v{reward.spec.gold['version']} "
             f"({RL_REWARD_NAME} v{reward_version})")
    answers = collect_answers(prompts, corpus, policies, settings, cache_dir, reward, samples=samples,
                              seed=profile.data.seed, progress=progress,
                              base_referenced=frozenset(base_referenced))
    ceiling = attainable_ceiling(prompts, corpus, reward, per_area=judging.ceiling_candidates_per_area,
                                 seed=profile.data.seed)
    progress(f"attainable judged reward (best real condition of the area, per prompt): {ceiling.mean():.3f}")
    evaluation = evaluate_policies(answers, corpus, seed=profile.data.seed, n_boot=judging.bootstrap_samples,
                                   copy_threshold=judging.copy_threshold, n_per_scenario=judging.samples_per_scenario,
                                   n_other=judging.other_samples, area_classifier=reward.gold_area,
                                   embedding_judge=EmbeddingAreaJudge(corpus, seed=profile.data.seed), ceiling=ceiling)

    # The champion is judged by the judged reward: gold P(MET) x P(asked area | answer), so a policy of
    # generic or off-topic answers cannot keep the title on P(MET) alone.
    def judged(policy: str) -> pd.Series:
        return answers.loc[answers["policy"] == policy].set_index("prompt_id")["judged_reward"]

    evidence = None
    if "champion" in policies:
        promotion = profile.promotion
        result = paired_bootstrap(judged(algorithm), judged("champion"), n_boot=promotion.bootstrap_samples,
                                  seed=promotion.seed, level=promotion.level)
        evidence = Evidence.from_bootstrap(
            champion.version, judged("champion").mean(),
            f"paired bootstrap over {result.n_pairs} test prompts x {samples} samples", result, promotion.level)
    decision = registry.promote(POLICY_ADAPTER_NAME, candidate.version, PROMOTION_METRIC, judged(algorithm).mean(),
                                evidence)
    progress(f"{POLICY_ADAPTER_NAME} v{candidate.version}: {decision.reason}")

    folder = home.reports / "evaluation"
    curves = training_curves(registry, candidate.run_id, home.reports / "tmp") if candidate.run_id else None
    written: list[ReportFiles] = []

    def write_folder(staging: Path) -> None:
        report = write_report(evaluation, staging, training_curves=curves, tuned=algorithm, promotion={
            **decision.fields(), "champion_version": decision.previous_champion_version,
            "version": candidate.version})
        answers.to_parquet(staging / "answers.parquet", index=False)
        (staging / "settings.json").write_text(json.dumps(settings_dict(profile), indent=2), encoding="utf-8")
        (staging / "headline.json").write_text(json.dumps(
            {"candidate_version": candidate.version, "algorithm": algorithm, "rl_reward_version": reward_version,
             "decision": decision.reason, "promoted": decision.promoted, "headline": report.headline},
            indent=2, default=float), encoding="utf-8")
        written.append(report)

    # One swap: a reader never sees this report's Markdown beside the last one's plots or answers.
    atomic_folder(folder, write_folder)
    report = written[0].moved_to(folder)
    if candidate.run_id:
        registry.client.log_artifacts(candidate.run_id, str(folder), "evaluation_report")
    return EvaluationRun(candidate.version, decision, evaluation, report, answers, time.perf_counter() - started)
