"""One reward-model training as the pipeline runs it: train, evaluate, track, register, promote.

The proxy reward model (what PPO optimises) and the gold reward model (what judges the policy and
is never optimised against) follow the same recipe on the two disjoint halves of the training split,
with different seeds. Each training is one MLflow run that records its parameters, the data snapshot
it came from, per-step validation metrics, test metrics next to the baselines, plots, and the model as
an MLflow Model (`ml.serving`: a pyfunc over the safetensors classifier with a signature and a model
card), registered as a new version. The version becomes `champion` only if it is better with evidence
than the current champion on the same test split: a paired bootstrap of macro-F1 over the test rows,
the champion re-scored on them, whose interval at the profile's level lies above zero.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ml import distributed
from ml.config import PolicySettings, PromotionSettings, RewardSettings
from ml.data.splits import read_split
from ml.evaluation.metrics import paired_bootstrap_macro_f1
from ml.io import atomic_folder
from ml.registry import Evidence, PromotionDecision, Registry
from ml.reward.evaluate import RewardEvaluation, classification_metrics, evaluate_reward_model, predict
from ml.reward.model import RewardModel
from ml.reward.plots import save_plots
from ml.reward.rl_reward import RL_REWARD_NAME, RewardSpec, RLReward, action_base_rates, fit_area_classifiers
from ml.reward.train import split_train_halves, train_reward_model
from ml.serving.publish import log_reward_model, reward_model_card
from ml.similarity import name_record

REWARD_MODEL_NAME = "rlxf-reward-model"
GOLD_REWARD_MODEL_NAME = "rlxf-gold-reward-model"
REGISTERED_NAMES = {"proxy": REWARD_MODEL_NAME, "gold": GOLD_REWARD_MODEL_NAME}
EXPERIMENT = "rlxf-reward-model"
PROMOTION_METRIC = "test_macro_f1"
RL_REWARD_EXPERIMENT = "rlxf-rl-reward"


@dataclass
class RewardRun:
    role: str  # "proxy" or "gold"
    registered_name: str
    version: str
    run_id: str
    decision: PromotionDecision
    evaluation: RewardEvaluation
    metrics: dict[str, float]  # headline metrics plus timing
    model_dir: Path
    plots: dict[str, Path]
    split_hash: str
    train_rows: int


def read_truth(truth_dir: Path) -> pd.DataFrame | None:
    """The synthetic generator's sidecars (true P(MET) per condition), when the data is synthetic."""
    files = sorted(Path(truth_dir).glob("*.truth.parquet")) if Path(truth_dir).exists() else []
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else None


def train_and_register_reward(role: str, snapshot: Path, truth_dir: Path, settings: RewardSettings,
                              registry: Registry, work_dir: Path, profile: str,
                              promotion: PromotionSettings | None = None,
                              progress: Callable[[str], None] = print) -> RewardRun | None:
    """Train the `role` reward model, evaluate it, log the MLflow run, register and promote the version.
    Under a launcher every rank trains its shard; rank 0 alone evaluates, writes, registers and returns
    the run (None elsewhere)."""
    promotion = promotion or PromotionSettings()
    if role not in REGISTERED_NAMES:
        raise ValueError(f"role must be one of {sorted(REGISTERED_NAMES)}, not {role!r}")
    name = REGISTERED_NAMES[role]
    train, validation, test = (read_split(snapshot, split) for split in ("train", "validation", "test"))
    manifest = json.loads((Path(snapshot) / "manifest.json").read_text(encoding="utf-8"))
    half_a, half_b = split_train_halves(train, seed=settings.seed)
    data, seed = (half_a, settings.seed) if role == "proxy" else (half_b, settings.gold_seed)
    progress(f"{role} reward model: {settings.base_model} on {len(data):,} training rows "
             f"(half {'a' if role == 'proxy' else 'b'} of {len(train):,}), {len(validation):,} validation, "
             f"{len(test):,} test")

    trained = train_reward_model(data, validation, settings, seed=seed, progress=progress)
    if not distributed.current().is_main:
        return None  # the same weights as rank 0, which records them
    model = trained.reward_model()
    evaluation = evaluate_reward_model(model, test, data, read_truth(truth_dir))
    value = evaluation.metrics["macro_f1"]
    progress(f"{role} reward model: test macro-F1 {value:.3f}, accuracy {evaluation.metrics['accuracy']:.3f} "
             f"(TF-IDF+LR {evaluation.baselines['tfidf_lr']['accuracy']:.3f}, "
             f"Bayes-optimal {evaluation.bayes_optimal_accuracy:.3f})")

    model_dir = atomic_folder(Path(work_dir) / "model", model.save)
    plots = save_plots(evaluation, Path(work_dir) / "plots")
    evidence = evidence_against_champion(registry, name, evaluation, test, manifest["content_hash"], promotion)
    metrics = evaluation.headline() | {
        "train_seconds": trained.train_seconds, "tokens_per_second": trained.tokens_per_second,
        "train_steps": float(trained.steps), "best_step": float(trained.best_step)}

    params = {**{f"reward.{k}": v for k, v in asdict(settings).items()}, "role": role, "seed": seed,
              "profile": profile, "train_rows": len(data), "validation_rows": len(validation),
              "test_rows": len(test), "split_hash": manifest["content_hash"]}
    with registry.run(EXPERIMENT, run_name=f"{role}-{profile}", params=params,
                      tags={"role": role, "profile": profile, "base_model": settings.base_model}) as run:
        for entry in trained.history:
            run.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=int(entry["step"]))
        run.log_metrics(metrics)
        run.log_dict({"rows": manifest["rows"], "met_share": manifest["met_share"],
                      "content_hash": manifest["content_hash"]}, "data/split_manifest.json")
        run.log_text(evaluation.to_markdown(), "evaluation/report.md")
        run.log_dict({"by_area": evaluation.by_area.to_dict(orient="records"),
                      "by_year": evaluation.by_year.to_dict(orient="records")}, "evaluation/breakdowns.json")
        for path in plots.values():
            run.log_figure_png(path)
        card = reward_model_card(name, role, settings.base_model, manifest, evaluation, model.temperature, len(data))
        version = log_reward_model(registry, model_dir, name, card, test, tags={
            "role": role, "base_model": settings.base_model, "split_hash": manifest["content_hash"],
            "profile": profile, "test_macro_f1": f"{value:.4f}"})
        run_id = run.run_id
    decision = registry.promote(name, version.version, PROMOTION_METRIC, value, evidence)
    progress(f"{name} v{version.version}: {decision.reason}")
    return RewardRun(role=role, registered_name=name, version=version.version, run_id=run_id, decision=decision,
                     evaluation=evaluation, metrics=metrics, model_dir=model_dir, plots=plots,
                     split_hash=manifest["content_hash"], train_rows=len(data))


def evidence_against_champion(registry: Registry, name: str, evaluation: RewardEvaluation, test: pd.DataFrame,
                              split_hash: str, promotion: PromotionSettings) -> Evidence | None:
    """The new model against the current champion (None without one), both scored on this test split:
    the champion's macro-F1 and a paired bootstrap over the test rows of the difference in macro-F1."""
    champion = registry.champion_version(name)
    if champion is None:
        return None
    champion_probs = load_registered_reward(registry, reward_ref(name, champion.version)).score(test)
    result = paired_bootstrap_macro_f1(evaluation.labels, predict(evaluation.probs), predict(champion_probs),
                                       n_boot=promotion.bootstrap_samples, seed=promotion.seed, level=promotion.level)
    return Evidence.from_bootstrap(
        champion.version, classification_metrics(evaluation.labels, champion_probs)["macro_f1"],
        f"paired bootstrap of macro-F1 over the {len(test):,} rows of test split {split_hash[:12]}", result,
        promotion.level)


def build_rl_reward(snapshot: Path, settings: PolicySettings, reward_seed: int, proxy: tuple[RewardModel, dict],
                    gold: tuple[RewardModel, dict], ensemble: Sequence[tuple[RewardModel, dict]] = ()) -> RLReward:
    """The profile's RL reward over the given reward models (each with its registry reference), with
    area classifiers fitted on the training halves the proxy and the gold model learned from."""
    train = read_split(snapshot, "train")
    half_a, half_b = split_train_halves(train, seed=reward_seed)
    proxy_area, gold_area = fit_area_classifiers(half_a, half_b, seed=reward_seed)
    manifest = json.loads((Path(snapshot) / "manifest.json").read_text(encoding="utf-8"))
    action_rates, action_overall = action_base_rates(half_a) if settings.action_premium else ({}, 0.0)
    spec = RewardSpec(design=settings.reward_design, proxy=proxy[1], gold=gold[1],
                      ensemble=tuple(ref for _, ref in ensemble), topic_weight=settings.topic_weight,
                      on_topic_target=settings.on_topic_target, quote_threshold=settings.quote_threshold,
                      copy_threshold=settings.copy_threshold, copy_ramp_from=settings.copy_ramp_from,
                      floor_repeats=settings.floor_repeats, floor_unknown_names=settings.floor_unknown_names,
                      action_rates=action_rates,
                      action_overall=action_overall, opening_penalty=settings.opening_penalty,
                      info={"split_hash": manifest["content_hash"],
                            "proxy_area_holdout_accuracy": _finite_or_none(proxy_area.holdout_accuracy),
                            "gold_area_holdout_accuracy": _finite_or_none(gold_area.holdout_accuracy)})
    return RLReward(spec, proxy[0], gold[0], proxy_area, gold_area, [model for model, _ in ensemble],
                    copy_corpus=half_a["description"].dropna().drop_duplicates().tolist(),
                    name_record=name_record(half_a).tolist() if settings.floor_unknown_names else None)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def reward_ref(name: str, version: str) -> dict:
    return {"name": name, "version": str(version)}


def load_registered_reward(registry: Registry, ref: dict, device: str = "auto") -> RewardModel:
    """A registered reward model, loaded as the MLflow Model it is (`mlflow.pyfunc.load_model`)."""
    pyfunc = registry.load_model(ref["name"], ref["version"], model_config={"device": device})
    return pyfunc.unwrap_python_model().reward_model


def register_rl_reward(reward: RLReward, registry: Registry, work_dir: Path, profile: str) -> str:
    """Save the RL reward (spec + area classifiers) and register it as a new version of
    `rlxf-rl-reward`, tagged with its design and the reward-model versions it names; returns the version."""
    folder = atomic_folder(Path(work_dir) / "rl_reward", reward.save)
    spec = reward.spec
    tags = {"design": spec.design, "profile": profile, "reward_model_version": spec.proxy["version"],
            "gold_model_version": spec.gold["version"], "split_hash": spec.info.get("split_hash", "")}
    with registry.run(RL_REWARD_EXPERIMENT, run_name=f"rl-reward-{profile}", tags=tags,
                      params=spec.options()) as run:
        run.log_artifacts(folder, "rl_reward")
        version = registry.register(RL_REWARD_NAME, f"{run.artifact_uri}/rl_reward", run.run_id, tags=tags)
    return version.version


def load_rl_reward(registry: Registry, version: str | None, device: str = "auto",
                   **overrides) -> tuple[RLReward, str]:
    """A registered RL reward (the newest version when `version` is None) with its reward models."""
    if version is None:
        versions = registry.versions(RL_REWARD_NAME)
        if not versions:
            raise LookupError(f"no {RL_REWARD_NAME} version is registered; materialize rl_reward first")
        version = versions[-1].version
    folder = registry.download(RL_REWARD_NAME, version)
    reward = RLReward.load(folder, lambda ref: load_registered_reward(registry, ref, device), **overrides)
    return reward, str(version)
