"""Resources: which profile runs, where its files live, and the dbt CLI.

Environments differ by these resources, never by `if` in asset code. The environment variables
RLXF_PROFILE (smoke | demo | paper), RLXF_PROFILE_FILE (TOML overrides of the profile; default
<home>/profile.toml), RLXF_HOME (data home folder), RLXF_MODEL_CACHE and RLXF_SEED_SYNTHETIC (1: seed an
empty landing folder outside the default home too) are read here and only here.
"""


import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject

from ml.config import Profile, profile_for_home, settings_dict
from ml.paths import DBT_PROJECT_DIR, DataHome, default_home
from ml.registry import Registry


# The Dagster concurrency pool of every step that opens the DuckDB warehouse. DuckDB lets one process
# write a database file at a time (and none read it meanwhile), so a sensor-started run and a manual
# materialization take turns instead of one failing on the file lock. Its limit (1) is the instance's
# `concurrency: pools: default_limit` in orchestration/dagster.yaml, which `make ui` and `make demo` use.
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

    def get_profile(self) -> Profile:
        """The effective profile: the named one, then the overrides file, then this run's overrides."""
        return profile_for_home(self.profile, self._home(), self.profile_file or None, self.overrides or None)

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
        lineage = {"dagster_run_id": dagster_run_id}
        settings = settings_dict(profile) if profile is not None else None
        if self.tracking_uri:
            return Registry(self.tracking_uri, lineage=lineage, settings=settings)
        return Registry.for_home(home.root, lineage=lineage, settings=settings)


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
    return RlxfSettings(profile=os.environ.get("RLXF_PROFILE", "demo"),
                        profile_file=os.environ.get("RLXF_PROFILE_FILE", ""), home=os.environ.get("RLXF_HOME", ""),
                        model_cache=os.environ.get("RLXF_MODEL_CACHE", ""),
                        seed_synthetic=seed.lower() in ("1", "true", "yes") if seed else None)


def launch_configurable(settings: RlxfSettings) -> object:
    """`settings` whose fields a run's config can override one by one (the launchpad's
    `resources: {rlxf: {config: {overrides: ...}}}`): run config naming a configured resource instance
    would replace all of its values with the field defaults, losing the profile and data home."""
    return RlxfSettings.configure_at_launch(**{name: getattr(settings, name) for name in RlxfSettings.model_fields
                                                if getattr(settings, name) is not None})


def build_resources(settings: RlxfSettings | None = None) -> dict[str, object]:
    return {
        "rlxf": launch_configurable(settings or settings_from_env()),
        "mlflow": MlflowRegistry(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "")),
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE),
    }
