"""The training assets' work, in the asset's own process or launched on N processes.

Each task (`reward:proxy`, `reward:gold`, `sft`, `rl`) is one function of a `TrainingRequest`: it
trains, registers or writes its outputs and returns the asset's `Outcome` (metadata as plain values,
the Dagster type of the entries that are not plain, the asset checks' results) on rank 0, None on the
other ranks. The asset calls `run_task` directly at world size 1 (orchestration/assets/training.py). Above
that it runs `launch_command(...)`, which is `accelerate launch ... -m orchestration.training_launch
--request JSON`, through Dagster Pipes: every rank runs `main()`, trains its shard, and rank 0 streams
its progress lines to the asset's log and reports the checks and the materialization's metadata;
MLflow runs, registered versions and files come from rank 0 as in process. This module imports
`dagster_pipes` only (not Dagster), as a launched process would on a cluster image.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import pandas as pd

from ml import distributed
from ml.config import DistributedSettings, Profile, profile_for_home, settings_dict
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME, train_rl_stage, train_sft_stage
from ml.registry import PromotionDecision, Registry
from ml.reward.pipeline import RewardRun, load_rl_reward, train_and_register_reward

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainingRequest:
    """Everything a task needs, as JSON-able values: it crosses a process boundary."""

    task: str  # a key of TASKS
    home: str
    profile: str  # the built-in profile, with the same overrides as the asset's (ml.config.profile_for_home)
    profile_file: str  # empty: <home>/profile.toml when it exists
    overrides: str  # one run's TOML overrides (the rlxf resource's run config)
    model_cache: str
    tracking_uri: str  # empty: the data home's SQLite store
    dagster_run_id: str
    algorithm: str = ""  # rl: this run's algorithm (empty: the profile's)

    def data_home(self) -> DataHome:
        return DataHome(Path(self.home))

    def get_profile(self) -> Profile:
        profile = profile_for_home(self.profile, self.data_home(), self.profile_file or None, self.overrides or None)
        if self.algorithm:  # this run's choice, also in the settings MLflow records
            profile = replace(profile, policy=replace(profile.policy, algorithm=self.algorithm))
        return profile

    def open_registry(self, profile: Profile) -> Registry:
        return open_registry(self.tracking_uri, Path(self.home), self.dagster_run_id, profile)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    metadata: dict = field(default_factory=dict)  # plain values


@dataclass(frozen=True)
class Outcome:
    """An asset's result as plain values: `types` names the Dagster type ("md", "path") of the
    metadata entries that are not text or numbers."""

    metadata: dict
    types: dict[str, str] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)


def open_registry(tracking_uri: str, home_root: Path, dagster_run_id: str, profile: Profile | None = None) -> Registry:
    """The MLflow store, tagging every run and version with the Dagster run that wrote it and logging
    `profile`'s effective settings in every run."""
    lineage = {"dagster_run_id": dagster_run_id}
    settings = settings_dict(profile) if profile is not None else None
    if tracking_uri:
        return Registry(tracking_uri, lineage=lineage, settings=settings)
    return Registry.for_home(home_root, lineage=lineage, settings=settings)


# ---------------------------------------------------------------------------------------------
# The tasks


def train_reward(role: str, request: TrainingRequest, progress: Progress) -> Outcome | None:
    """Train, evaluate and register the `role` reward model; the proxy's outcome carries the
    `macro_f1_above_threshold` check."""
    home, profile = request.data_home(), request.get_profile()
    with request.open_registry(profile) as registry:
        run = train_and_register_reward(
            role, home.exports / "splits", home.truth, profile.reward, registry,
            work_dir=home.models / "reward" / role, profile=profile.name, promotion=profile.promotion,
            progress=progress)
    if run is None:
        return None
    checks = []
    if role == "proxy":
        threshold = profile.reward.min_macro_f1
        macro_f1 = float(run.evaluation.metrics["macro_f1"])
        checks.append(CheckOutcome("macro_f1_above_threshold", passed=macro_f1 >= threshold,
                                   metadata={"test_macro_f1": macro_f1, "threshold": threshold}))
    metadata, types = reward_metadata(run)
    return Outcome({**metadata, "num_processes": distributed.current().world_size}, types, checks)


def promotion_metadata(decision: PromotionDecision) -> dict:
    """The champion decision: `promotion` (in words), the test, its interval and p-value, both figures."""
    fields = decision.fields()
    return {"promotion": fields.pop("reason"), **{f"promotion_{key}": value for key, value in fields.items()}}


def reward_metadata(run: RewardRun) -> tuple[dict, dict[str, str]]:
    evaluation = run.evaluation
    plots = {f"plot_{name}": str(path) for name, path in run.plots.items()}
    metadata = {
        "test_accuracy": evaluation.metrics["accuracy"],
        "test_macro_f1": evaluation.metrics["macro_f1"],
        "test_roc_auc": evaluation.metrics["roc_auc"],
        "test_ece": evaluation.metrics["ece"],
        "baseline_tfidf_lr_accuracy": evaluation.baselines["tfidf_lr"]["accuracy"],
        "baseline_majority_accuracy": evaluation.baselines["majority"]["accuracy"],
        "bayes_optimal_accuracy": evaluation.bayes_optimal_accuracy,
        "train_rows": run.train_rows,
        "train_seconds": run.metrics["train_seconds"],
        "mlflow_model": f"{run.registered_name} v{run.version}",
        "mlflow_alias": run.decision.alias,
        **promotion_metadata(run.decision),
        "mlflow_run_id": run.run_id,
        "split_hash": run.split_hash,
        "metrics": evaluation.to_markdown(),
        **plots,
    }
    return metadata, {"metrics": "md", **dict.fromkeys(plots, "path")}


def train_sft(request: TrainingRequest, progress: Progress) -> Outcome | None:
    """The SFT warm start (or `enabled: False` when the profile has none)."""
    home, profile = request.data_home(), request.get_profile()
    if not profile.policy.sft_enabled:
        return Outcome({"enabled": False})
    result = train_sft_stage(home.exports / "splits", profile.policy, Path(request.model_cache),
                             home.models / "policy" / "sft", seed=profile.data.seed, progress=progress)
    if result is None:
        return None
    losses = pd.DataFrame(result.pop("loss_history"), columns=["step", "loss"])
    return Outcome({"enabled": True, **result, "num_processes": distributed.current().world_size,
                    "loss_curve": losses.to_markdown(index=False)}, {"loss_curve": "md"})


def train_policy_adapter(request: TrainingRequest, progress: Progress) -> Outcome | None:
    """Train and register the policy adapter against the newest RL reward."""
    home, profile = request.data_home(), request.get_profile()
    settings = profile.policy
    sft_dir = home.models / "policy" / "sft"
    with request.open_registry(profile) as registry:
        reward, reward_version = load_rl_reward(registry, None)
        use_sft = settings.sft_enabled and (sft_dir / "policy_stack.json").exists()
        run = train_rl_stage(home.exports / "splits", pd.read_parquet(home.exports / "policy_prompts.parquet"),
                             settings, Path(request.model_cache), sft_dir if use_sft else None, reward,
                             reward_version, registry, work_dir=home.models / "policy" / settings.algorithm,
                             profile=profile.name, seed=profile.data.seed, progress=progress)
    if run is None:
        return None
    history = pd.DataFrame(run.history)
    curve = history[[c for c in ("step", "score_mean", "reward", "kl", "kl_coef", "entropy") if c in history]]
    return Outcome({
        "algorithm": run.algorithm, "mlflow_model": f"{POLICY_ADAPTER_NAME} v{run.version}",
        "mlflow_run_id": run.run_id, "best_step": run.best_step, "best_validation_judged_reward": run.best_judged,
        "rl_reward_version": reward_version, "reward_design": reward.spec.design,
        "reward_model_version": reward.spec.proxy["version"], "gold_model_version": reward.spec.gold["version"],
        "sft_warm_start": use_sft, "train_seconds": round(run.seconds, 1),
        "num_processes": distributed.current().world_size,
        "eval_history": pd.DataFrame(run.eval_history).round(4).to_markdown(index=False),
        "training_curve": curve.round(4).to_markdown(index=False),
        "policy": str(run.stack_dir)}, {"eval_history": "md", "training_curve": "md", "policy": "path"})


TASKS: dict[str, Callable[[TrainingRequest, Progress], Outcome | None]] = {
    "reward:proxy": partial(train_reward, "proxy"),
    "reward:gold": partial(train_reward, "gold"),
    "sft": train_sft,
    "rl": train_policy_adapter,
}


def run_task(request: TrainingRequest, progress: Progress) -> Outcome | None:
    """The request's task on this process: its outcome on rank 0, None on the other ranks."""
    if request.task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, not {request.task!r}")
    return TASKS[request.task](request, progress)


# ---------------------------------------------------------------------------------------------
# The launch


def launch_command(request: TrainingRequest, settings: DistributedSettings) -> list[str]:
    """`accelerate launch` of this module on settings.num_processes processes: with the settings'
    accelerate config file when there is one (multi-GPU, FSDP, several nodes), else data-parallel on
    this machine (gloo on CPU, NCCL on GPUs), FSDP-sharded when settings.fsdp."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(settings.num_processes)]
    if settings.accelerate_config:
        launch += ["--config_file", settings.accelerate_config]
    else:
        mode = ["--use_fsdp", "--fsdp_version", "2"] if settings.fsdp else ["--multi_gpu"]
        launch += [*mode, "--num_machines", "1", "--mixed_precision", settings.mixed_precision,
                   "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    return [*launch, "-m", "orchestration.training_launch", "--request", json.dumps(asdict(request))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipes_metadata(metadata: dict, types: dict[str, str]) -> dict:
    return {key: {"raw_value": value, "type": types.get(key, "__infer__")} for key, value in metadata.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", required=True, help="TrainingRequest as JSON")
    request = TrainingRequest(**json.loads(parser.parse_args().request))
    if not distributed.current().is_main:
        run_task(request, progress=lambda _line: None)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        outcome = run_task(request, progress=pipes.log.info)
        for check in outcome.checks:
            pipes.report_asset_check(check_name=check.name, passed=check.passed,
                                     metadata=pipes_metadata(check.metadata, {}))
        pipes.report_asset_materialization(metadata=pipes_metadata(outcome.metadata, outcome.types))


if __name__ == "__main__":
    main()
