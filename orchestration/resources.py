"""Resources: which profile runs, where its files live, and the dbt CLI.

Environments differ by these resources, never by `if` in asset code. The environment variables
RLXF_PROFILE (smoke | demo | paper), RLXF_PROFILE_FILE (TOML overrides of the profile; default
<home>/profile.toml), RLXF_HOME (data home folder), RLXF_MODEL_CACHE, RLXF_SEED_SYNTHETIC (1: seed an
empty landing folder outside the default home too), RLXF_NUM_PROCESSES and RLXF_ACCELERATE_CONFIG
(policy training on several processes) and MLFLOW_TRACKING_URI reach the resources as `dg.EnvVar`s,
here and only here; unset, a field keeps its default (the demo profile, the default home).

`dbt_project` is the one DbtProject of the dbt assets and the dbt CLI resource. Under `dagster dev`
`prepare_if_dev()` writes its manifest; elsewhere the prepare step does (`make dbt-manifest`, which
`make test`, `make demo` and `make ui` run, and tests/conftest.py for a bare pytest).
"""


import shutil
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject

from ml.config import DistributedSettings, Profile, profile_for_home
from ml.paths import DBT_PROJECT_DIR, REPO_ROOT, DataHome, default_home
from ml.registry import Registry
from orchestration.training_launch import open_registry

# The Dagster concurrency pool of every step that opens the DuckDB warehouse. DuckDB lets one process
# write a database file at a time (and none read it meanwhile), so a sensor-started run and a manual
# materialization take turns instead of one failing on the file lock. Its limit (1) is the instance's
# `concurrency: pools: default_limit` in orchestration/dagster.yaml, which `make ui` and `make demo` use.
# The pool shows the turns in the UI; the warehouse's lock file (ml.data.warehouse.take_turn), which each of
# those steps also holds, guarantees them where the SQLite instance lets two claims through at once.
DUCKDB_POOL = "duckdb_warehouse"


class RlxfSettings(dg.ConfigurableResource):
    """The profile (sizes, models, quality gates) and the data home it reads and writes."""

    profile: str = "demo"
    profile_file: str = ""  # TOML overrides of the profile; empty: <home>/profile.toml when it exists
    # TOML applied on top of the file for one run, e.g. in the launchpad's run config:
    # resources: {rlxf: {config: {overrides: "[policy.ppo]\nsteps = 10"}}}
    overrides: str = ""
    home: str = ""  # empty: <repo>/.rlxf/<profile>
    model_cache: str = ""  # converted base models (SmolLM2 safetensors); empty: <home>/models/base_policy
    # Seed an empty landing folder with the profile's synthetic data. Unset: only in the profile's default
    # home, so that a data home of one's own (or a mistyped RLXF_HOME) never trains on synthetic data.
    seed_synthetic: bool | None = None
    # Training on several processes (Dagster Pipes + accelerate launch); 0 / empty: the profile's.
    num_processes: int = 0
    accelerate_config: str = ""

    def get_profile(self) -> Profile:
        """The effective profile: the named one, then the overrides file, then this run's overrides."""
        return profile_for_home(self.profile, self._home(), self.profile_file or None, self.overrides or None)

    def distributed_settings(self) -> DistributedSettings:
        settings = self.get_profile().distributed
        return replace(settings, num_processes=self.num_processes or settings.num_processes,
                       accelerate_config=self.accelerate_config or settings.accelerate_config)

    def data_home(self) -> DataHome:
        return self._home().ensure()

    def _home(self) -> DataHome:
        return DataHome(Path(self.home) if self.home else default_home(self.profile))

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

    def open(self, home: DataHome, dagster_run_id: str, profile: Profile | None = None) -> Registry:
        """The registry, tagging every run and version it writes with the Dagster run that wrote it, and
        logging `profile`'s effective settings in every run."""
        return open_registry(self.tracking_uri, home.root, dagster_run_id, profile)


# The venv's dbt, also when the venv is not activated (e.g. `.venv/bin/pytest`).
DBT_EXECUTABLE = shutil.which("dbt") or str(Path(sys.executable).with_name("dbt"))

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
dbt_project.prepare_if_dev()


def _env(name: str, default, env_var=dg.EnvVar):
    """The variable as a `dg.EnvVar` (or `dg.EnvVar.int`: resolved when a run starts, shown as such in
    the UI) when it is set, else the field's default."""
    return env_var(name) if dg.EnvVar(name).get_value() is not None else default


def _env_flag(name: str) -> bool | None:
    value = dg.EnvVar(name).get_value("")
    return value.lower() in ("1", "true", "yes") if value else None


def settings_from_env() -> RlxfSettings:
    return RlxfSettings(profile=_env("RLXF_PROFILE", "demo"), profile_file=_env("RLXF_PROFILE_FILE", ""),
                        home=_env("RLXF_HOME", ""), model_cache=_env("RLXF_MODEL_CACHE", ""),
                        seed_synthetic=_env_flag("RLXF_SEED_SYNTHETIC"),
                        num_processes=_env("RLXF_NUM_PROCESSES", 0, dg.EnvVar.int),
                        accelerate_config=_env("RLXF_ACCELERATE_CONFIG", ""))


def launch_configurable(settings: RlxfSettings) -> object:
    """`settings` whose fields a run's config can override one by one (the launchpad's
    `resources: {rlxf: {config: {overrides: ...}}}`): run config naming a configured resource instance
    would replace all of its values with the field defaults, losing the profile and data home."""
    return RlxfSettings.configure_at_launch(**{name: getattr(settings, name) for name in RlxfSettings.model_fields
                                                if getattr(settings, name) is not None})


def build_resources(settings: RlxfSettings | None = None) -> dict[str, object]:
    return {
        "rlxf": launch_configurable(settings or settings_from_env()),
        "mlflow": MlflowRegistry(tracking_uri=_env("MLFLOW_TRACKING_URI", "")),
        # Launches training on several processes (the training assets); on a cluster, dagster_k8s.PipesK8sClient.
        "pipes": dg.PipesSubprocessClient(cwd=str(REPO_ROOT)),
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE),
    }
