"""The RL training of the `ppo_adapter` asset, in the asset's own process or launched on N processes.

`train_policy_adapter` is the asset's work: open the registry, load the newest RL reward, train the
profile's algorithm (ml/policy/pipeline.py) and return the asset's metadata as plain values. The asset
calls it directly at world size 1. Above that it runs `launch_command(...)`, which is
`accelerate launch ... -m orchestration.rl_training --request JSON`, through Dagster Pipes: every rank
runs `main()`, trains its shard, and rank 0 streams its progress lines to the asset's log and reports
the materialization's metadata; MLflow metrics and the registered version come from rank 0 as in
process. This module imports `dagster_pipes` only (not Dagster), as a launched process would on a
cluster image.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from ml import distributed
from ml.config import DistributedSettings, Profile, profile_for_home, settings_dict
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME, train_rl_stage
from ml.registry import Registry
from ml.reward.pipeline import load_rl_reward

# Metadata entries that are not plain values: their Dagster type (the rest are text or numbers).
METADATA_TYPES = {"eval_history": "md", "training_curve": "md", "policy": "path"}


@dataclass(frozen=True)
class RLTrainingRequest:
    """Everything the training needs, as JSON-able values: it crosses a process boundary."""

    home: str
    profile: str  # the built-in profile, with the same overrides as the asset's (ml.config.profile_for_home)
    profile_file: str  # empty: <home>/profile.toml when it exists
    overrides: str  # one run's TOML overrides (the rlxf resource's run config)
    algorithm: str  # empty: the profile's
    model_cache: str
    tracking_uri: str  # empty: the data home's SQLite store
    dagster_run_id: str


def open_registry(tracking_uri: str, home_root: Path, dagster_run_id: str, profile: Profile | None = None) -> Registry:
    """The MLflow store, tagging every run and version with the Dagster run that wrote it and logging
    `profile`'s effective settings in every run."""
    lineage = {"dagster_run_id": dagster_run_id}
    settings = settings_dict(profile) if profile is not None else None
    if tracking_uri:
        return Registry(tracking_uri, lineage=lineage, settings=settings)
    return Registry.for_home(home_root, lineage=lineage, settings=settings)


def train_policy_adapter(request: RLTrainingRequest, progress: Callable[[str], None]) -> dict | None:
    """Train and register the policy adapter; the asset's metadata on rank 0, None on the others."""
    home = DataHome(Path(request.home))
    profile = profile_for_home(request.profile, home, request.profile_file or None, request.overrides or None)
    if request.algorithm:  # this run's choice, also in the settings MLflow records
        profile = replace(profile, policy=replace(profile.policy, algorithm=request.algorithm))
    settings = profile.policy
    sft_dir = home.models / "policy" / "sft"
    with open_registry(request.tracking_uri, home.root, request.dagster_run_id, profile) as registry:
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
    return {
        "algorithm": run.algorithm, "mlflow_model": f"{POLICY_ADAPTER_NAME} v{run.version}",
        "mlflow_run_id": run.run_id, "best_step": run.best_step, "best_validation_judged_reward": run.best_judged,
        "rl_reward_version": reward_version, "reward_design": reward.spec.design,
        "reward_model_version": reward.spec.proxy["version"], "gold_model_version": reward.spec.gold["version"],
        "sft_warm_start": use_sft, "train_seconds": round(run.seconds, 1),
        "num_processes": distributed.current().world_size,
        "eval_history": pd.DataFrame(run.eval_history).round(4).to_markdown(index=False),
        "training_curve": curve.round(4).to_markdown(index=False),
        "policy": str(run.stack_dir)}


def launch_command(request: RLTrainingRequest, settings: DistributedSettings) -> list[str]:
    """`accelerate launch` of this module on settings.num_processes processes: with the settings'
    accelerate config file when there is one (multi-GPU, FSDP, several nodes), else data-parallel on
    this machine (gloo on CPU, NCCL on GPUs)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(settings.num_processes)]
    if settings.accelerate_config:
        launch += ["--config_file", settings.accelerate_config]
    else:
        launch += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", settings.mixed_precision,
                   "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    return [*launch, "-m", "orchestration.rl_training", "--request", json.dumps(asdict(request))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", required=True, help="RLTrainingRequest as JSON")
    request = RLTrainingRequest(**json.loads(parser.parse_args().request))
    if not distributed.current().is_main:
        train_policy_adapter(request, progress=lambda _line: None)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        metadata = train_policy_adapter(request, progress=pipes.log.info)
        pipes.report_asset_materialization(metadata={
            key: {"raw_value": value, "type": METADATA_TYPES.get(key, "__infer__")} for key, value in metadata.items()})


if __name__ == "__main__":
    main()
