"""Resources: which profile runs, where its files live, and the dbt CLI.

Environments differ by these resources, never by `if` in asset code. The environment variables
RLXF_PROFILE (smoke | demo | paper), RLXF_HOME (data home folder), RLXF_MODEL_CACHE and
RLXF_SEED_SYNTHETIC (1: seed an empty landing folder outside the default home too), RLXF_NUM_PROCESSES
and RLXF_ACCELERATE_CONFIG (policy training on several processes) are read here and only here.
"""


import os
import shutil
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject

from ml.config import DistributedSettings, Profile, get_profile
from ml.paths import DBT_PROJECT_DIR, REPO_ROOT, DataHome, default_home
from ml.registry import Registry
from orchestration.rl_training import open_registry


# The Dagster concurrency pool of every step that opens the DuckDB warehouse. DuckDB lets one process
# write a database file at a time (and none read it meanwhile), so a sensor-started run and a manual
# materialization take turns instead of one failing on the file lock. Its limit (1) is the instance's
# `concurrency: pools: default_limit` in orchestration/dagster.yaml, which `make ui` and `make demo` use.
DUCKDB_POOL = "duckdb_warehouse"


class RlxfSettings(dg.ConfigurableResource):
    """The profile (sizes, models, quality gates) and the data home it reads and writes."""

    profile: str = "demo"
    home: str = ""  # empty: <repo>/.rlxf/<profile>
    model_cache: str = ""  # converted base models (SmolLM2 safetensors); empty: <home>/models/base_policy
    # Seed an empty landing folder with the profile's synthetic data. Unset: only in the profile's default
    # home, so that a data home of one's own (or a mistyped RLXF_HOME) never trains on synthetic data.
    seed_synthetic: bool | None = None
    # Policy training on several processes (Dagster Pipes + accelerate launch); 0 / empty: the profile's.
    num_processes: int = 0
    accelerate_config: str = ""

    def get_profile(self) -> Profile:
        return get_profile(self.profile)

    def distributed_settings(self) -> DistributedSettings:
        settings = self.get_profile().distributed
        return replace(settings, num_processes=self.num_processes or settings.num_processes,
                       accelerate_config=self.accelerate_config or settings.accelerate_config)

    def data_home(self) -> DataHome:
        return DataHome(Path(self.home) if self.home else default_home(self.profile)).ensure()

    def seeds_synthetic_data(self) -> bool:
        if self.seed_synthetic is not None:
            return self.seed_synthetic
        return not self.home or Path(self.home).resolve() == default_home(self.profile).resolve()

    def model_cache_dir(self) -> Path:
        return Path(self.model_cache) if self.model_cache else self.data_home().models / "base_policy"


class MlflowRegistry(dg.ConfigurableResource):
    """MLflow tracking store and model registry; empty `tracking_uri`: a SQLite file in the data home.

    A thin layer over `MlflowClient` (ml/registry.py): the `dagster-mlflow` package is op-style.
    """

    tracking_uri: str = ""

    def open(self, home: DataHome, dagster_run_id: str) -> Registry:
        """The registry, tagging every run and version it writes with the Dagster run that wrote it."""
        return open_registry(self.tracking_uri, home.root, dagster_run_id)


# The venv's dbt, also when the venv is not activated (e.g. `.venv/bin/pytest`).
DBT_EXECUTABLE = shutil.which("dbt") or str(Path(sys.executable).with_name("dbt"))


def _dbt_sources_newer_than(manifest: Path) -> bool:
    sources = [DBT_PROJECT_DIR / "dbt_project.yml",
               *(path for folder in ("models", "seeds", "macros", "tests") for path in (DBT_PROJECT_DIR / folder).rglob("*"))]
    return max(path.stat().st_mtime for path in sources) > manifest.stat().st_mtime


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
dbt_project.prepare_if_dev()
if not dbt_project.manifest_path.exists() or _dbt_sources_newer_than(dbt_project.manifest_path):
    # Outside `dagster dev` nothing else writes the manifest (tests, CLI runs): parse here, also after an
    # edit of the dbt project, whose stale manifest would not know the new nodes.
    subprocess.run([DBT_EXECUTABLE, "parse", "--quiet", "--project-dir", ".", "--profiles-dir", "."],
                   cwd=DBT_PROJECT_DIR, check=True)


def settings_from_env() -> RlxfSettings:
    seed = os.environ.get("RLXF_SEED_SYNTHETIC", "")
    return RlxfSettings(profile=os.environ.get("RLXF_PROFILE", "demo"), home=os.environ.get("RLXF_HOME", ""),
                        model_cache=os.environ.get("RLXF_MODEL_CACHE", ""),
                        seed_synthetic=seed.lower() in ("1", "true", "yes") if seed else None,
                        num_processes=int(os.environ.get("RLXF_NUM_PROCESSES", "0")),
                        accelerate_config=os.environ.get("RLXF_ACCELERATE_CONFIG", ""))


def build_resources(settings: RlxfSettings | None = None) -> dict[str, object]:
    return {
        "rlxf": settings or settings_from_env(),
        "mlflow": MlflowRegistry(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "")),
        # Launches training on several processes (ppo_adapter); on a cluster, dagster_k8s.PipesK8sClient.
        "pipes": dg.PipesSubprocessClient(cwd=str(REPO_ROOT)),
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE),
    }
