"""MLflow tracking and model registry, and the champion rule, which is the part MLflow does not do.

Every training asset records one MLflow run. Inside it `ml.serving` logs the model with MLflow's own
`mlflow.pyfunc.log_model` (an MLflow Model: `MLmodel`, signature, input example, requirements), and
`Registry.register` makes it a new version of a registered model, tagged with its lineage (git commit
of the code, Dagster run id, and what the caller adds: data snapshot, reward-model versions).
`Registry.load_model` is `mlflow.pyfunc.load_model("models:/<name>/<version or @alias>")` on this store.

Promotion is champion/challenger through model aliases. A challenger takes `champion` only when a
paired test on the same data says it is better (`Evidence.better`: the interval of challenger minus
champion, at the profile's level, lies above zero); a tie or an inconclusive test keeps the champion,
and the challenger gets the `challenger` alias. The first version of a name becomes champion. The
test, its interval and p-value and both figures are written as version tags.

The default store is a SQLite file in the data home (`sqlite:///<home>/mlflow.db`, artifacts in
`<home>/mlartifacts`); a tracking-server URI works the same. MLflow's fluent API (`mlflow.start_run`,
`log_model`, `models:/` URIs) reads the process's tracking URI, which `mlflow.set_tracking_uri` also
exports as MLFLOW_TRACKING_URI to subprocesses: a `Registry` points it at its own store only inside
`with registry:`, `registry.run(...)` and `registry.load_model(...)`, and puts back what was there after,
so no other code and no subprocess started later inherits a store by accident (MLflow has no public
way to use a store for one block only).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The project runs offline and logs to Dagster: keep MLflow's usage telemetry and its tqdm progress
# bars off unless a caller chose otherwise (defaults written, nothing read).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
import mlflow.artifacts  # noqa: E402
import mlflow.pyfunc  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from ml.paths import REPO_ROOT  # noqa: E402

# Creating a fresh SQLite store logs alembic migrations at INFO; keep the pipeline's logs readable.
for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)

try:  # POSIX only; elsewhere the first-time store creation is simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

CHAMPION = "champion"
CHALLENGER = "challenger"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the run page of the MLflow UI shows this one
SETTINGS_ARTIFACT = "settings/profile.json"  # the effective profile of the run (`Registry(settings=...)`)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_KEY = 250  # MLflow's limit on metric/param/tag names
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000


class RegistryError(RuntimeError):
    """The store cannot be opened, or a registry operation cannot be carried out."""


def tracking_uri_for(root: Path) -> str:
    """The SQLite tracking/registry store of a data home."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def artifact_root_for(root: Path) -> str:
    """Where runs of a data home store their artifacts."""
    return str(Path(root).resolve() / "mlartifacts")


def clean_key(name: str) -> str:
    """A metric/param/tag name MLflow accepts on every OS: letters, digits, `_ - . /` and space.

    Other characters become `_`; empty, `.` and `..` path segments are dropped because MLflow
    rejects names that change under path normalisation.
    """
    name = re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name))
    name = "/".join(part for part in name.split("/") if part not in ("", ".", ".."))
    if name.startswith(".."):
        name = "_" + name
    return name[:_MAX_KEY] or "_"


def code_version(root: Path = REPO_ROOT) -> dict[str, str]:
    """The git commit of the code, and whether the work tree differed from it, as lineage tags."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()

        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": str(bool(git("status", "--porcelain"))).lower()}
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (an installed package)
        return {"git_commit": "unknown"}


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    source: str
    status: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class Evidence:
    """A challenger against the champion on the same data: both figures and a paired test of the
    difference (challenger minus champion; higher is better)."""

    champion_version: str
    champion_value: float  # the champion's figure, measured on the same data as the challenger's
    test: str  # which test, on which data, in words
    ci_low: float  # interval of the difference at `level`
    ci_high: float
    p_value: float  # two-sided, of no difference
    level: float

    @property
    def better(self) -> bool:
        """Better with evidence: the whole interval lies above zero (an undefined one does not)."""
        return self.ci_low > 0

    @classmethod
    def from_bootstrap(cls, champion_version: str, champion_value: float, test: str, result: Any,
                       level: float) -> Evidence:
        """From a `ml.evaluation.metrics.BootstrapResult` of challenger minus champion at `level`."""
        return cls(str(champion_version), float(champion_value), test, float(result.ci_low), float(result.ci_high),
                   float(result.p), float(level))


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool  # True: the version is now `champion`; False: it is `challenger`
    version: str
    previous_champion_version: str | None
    metric: str
    new_value: float
    champion_value: float | None  # the champion's figure compared against (None: none to compare)
    reason: str
    evidence: Evidence | None = None

    @property
    def alias(self) -> str:
        return CHAMPION if self.promoted else CHALLENGER

    def fields(self) -> dict[str, Any]:
        """The decision as flat fields: the version tags (`promotion.<field>`), Dagster metadata, reports."""
        fields = {"decision": "promoted" if self.promoted else "challenger", "metric": self.metric,
                  "new_value": self.new_value, "champion_version": self.previous_champion_version or "none",
                  "champion_value": self.champion_value, "reason": self.reason}
        if self.evidence is not None:
            fields |= {"test": self.evidence.test, "ci_low": self.evidence.ci_low, "ci_high": self.evidence.ci_high,
                       "p_value": self.evidence.p_value, "level": self.evidence.level}
        return {key: value for key, value in fields.items() if value is not None}


class TrackedRun:
    """One MLflow run, written through the owning registry's client (names made valid, NaN skipped)."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, artifact_uri: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.artifact_uri = artifact_uri

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log numeric metrics; names are sanitised, NaN/inf values skipped. Returns what was logged."""
        now = int(time.time() * 1000)
        logged = {}
        for name, value in metrics.items():
            value = float(value)  # numpy / torch scalars too; a non-number is a caller bug and raises
            if math.isfinite(value):
                logged[clean_key(name)] = value
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step or 0)
                                                    for key, value in logged.items()])
        return logged

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(clean_key(k), str(v)[:_MAX_PARAM_VALUE])
                                                   for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(clean_key(k), str(v)[:_MAX_TAG_VALUE])
                                                 for k, v in tags.items()])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, dictionary: dict, artifact_file: str) -> None:
        """JSON for `.json` files, YAML for `.yaml`/`.yml`."""
        self.client.log_dict(self.run_id, dictionary, artifact_file)

    def log_figure_png(self, path: Path | str, artifact_path: str = "figures") -> None:
        """Log a PNG plot written to disk (e.g. by the evaluation report)."""
        path = Path(path)
        with path.open("rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                raise ValueError(f"{path} is not a PNG file")
        self.client.log_artifact(self.run_id, str(path), artifact_path)


class Registry:
    """MLflow tracking + model registry on one store (SQLite file or tracking server).

    With SQLite the file is opened in WAL mode so readers (the MLflow UI) do not block the writer.
    `lineage` (e.g. the Dagster run id) is added, with the git commit of the code, to the tags of every
    run and every registered version; `settings` (the effective profile, `ml.config.settings_dict`) is
    logged as `settings/profile.json` in every run. `with registry:` makes this store MLflow's current one
    for the block.
    """

    def __init__(self, tracking_uri: str, artifact_root: str | None = None, lineage: Mapping[str, str] | None = None,
                 await_ready_s: int = 300, settings: Mapping[str, Any] | None = None):
        self.tracking_uri = tracking_uri
        db_path = _sqlite_path(tracking_uri)
        if artifact_root is None and db_path is not None:
            artifact_root = str(db_path.parent / "mlartifacts")  # not MLflow's default ./mlruns in cwd
        self.artifact_root = artifact_root  # None on a server: the server decides
        self.await_ready_s = await_ready_s
        self.lineage = {**code_version(), **{k: str(v) for k, v in (lineage or {}).items() if v}}
        self.settings = dict(settings) if settings is not None else None
        self._saved_environment: list[str | None] = []
        try:
            with _creation_lock(db_path):
                if db_path is not None:
                    _prepare_sqlite(db_path)  # before MLflow: it retries a bad SQLite path for minutes
                # MlflowClient opens the tracking store (creating tables on a fresh file); open the
                # registry store too, so every store error surfaces here and not mid-training.
                self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
                self.client.search_registered_models(max_results=1)
        except Exception as exc:
            raise RegistryError(f"cannot open MLflow store {tracking_uri}: {exc}") from exc

    @classmethod
    def for_home(cls, root: Path, lineage: Mapping[str, str] | None = None,
                 settings: Mapping[str, Any] | None = None) -> Registry:
        return cls(tracking_uri_for(root), artifact_root_for(root), lineage=lineage, settings=settings)

    def __enter__(self) -> Registry:
        """MLflow's current store is this one until the block ends (re-entrant)."""
        self._saved_environment.append(os.environ.get(TRACKING_URI_VARIABLE))
        mlflow.set_tracking_uri(self.tracking_uri)
        return self

    def __exit__(self, *exc_info) -> None:
        # Unset MLflow's process-wide URI and put the variable back as it was: MLflow then resolves the
        # store as before the block (set_tracking_uri mirrors the URI into the variable anyway).
        mlflow.set_tracking_uri(None)
        saved = self._saved_environment.pop()
        if saved is None:
            os.environ.pop(TRACKING_URI_VARIABLE, None)
        else:
            os.environ[TRACKING_URI_VARIABLE] = saved

    # --- tracking -------------------------------------------------------------------------------

    def ensure_experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None
            if self.artifact_root:
                location = f"{self.artifact_root.rstrip('/')}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:  # another process created it between our two calls
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    @contextlib.contextmanager
    def run(
        self,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> Iterator[TrackedRun]:
        """A run that is MLflow's active run inside the block (so `mlflow.pyfunc.log_model` logs into it)
        and ends FINISHED when the block succeeds, FAILED when it raises, KILLED on Ctrl-C, SystemExit
        or a cancelled Dagster step (the exception is re-raised)."""
        experiment_id = self.ensure_experiment(experiment)
        run_tags = {**self.lineage, GIT_COMMIT_TAG: self.lineage["git_commit"], **(tags or {})}
        with self:
            active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                                      tags={clean_key(k): str(v)[:_MAX_TAG_VALUE] for k, v in run_tags.items()})
            tracked = TrackedRun(self.client, active.info.run_id, experiment_id, active.info.artifact_uri)
            status = "FAILED"
            try:
                if params:
                    tracked.log_params(params)
                if self.settings is not None:
                    tracked.log_dict(self.settings, SETTINGS_ARTIFACT)
                yield tracked
                status = "FINISHED"
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    status = "KILLED"
                raise
            finally:
                mlflow.end_run(status)

    # --- registry -------------------------------------------------------------------------------

    def register(self, name: str, source: str, run_id: str | None, tags: Mapping[str, Any] | None = None,
                 description: str | None = None, model_id: str | None = None) -> ModelVersionInfo:
        """A new READY version of `name` (created if new): `source` is a logged model's `models:/m-...`
        URI with its `model_id`, or an artifact folder's URI. Tagged with the lineage and `tags`."""
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version_tags = {clean_key(k): str(v)[:_MAX_TAG_VALUE] for k, v in {**self.lineage, **(tags or {})}.items()}
        created = self.client.create_model_version(
            name, source=source, run_id=run_id, tags=version_tags, description=description,
            await_creation_for=self.await_ready_s, model_id=model_id)  # raises unless the version becomes READY
        return self._info(self.client.get_model_version(name, created.version))

    def load_model(self, name: str, version_or_alias: str | int,
                   model_config: Mapping[str, Any] | None = None) -> mlflow.pyfunc.PyFuncModel:
        """`mlflow.pyfunc.load_model` of a version (`3`) or an alias (`"champion"`) of `name`;
        `model_config` overrides the settings the model was logged with (e.g. `device`)."""
        ref = str(version_or_alias)
        uri = f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"
        with self:
            return mlflow.pyfunc.load_model(uri, model_config=dict(model_config) if model_config else None)

    def download(self, name: str, version: str | int) -> Path:
        """A version's artifacts on local disk: their own folder for a store on this machine, else a
        fresh download."""
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                        tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri))

    def promote(self, name: str, version: str, metric: str, value: float,
                evidence: Evidence | None = None) -> PromotionDecision:
        """Champion/challenger: `version` (whose `metric` is `value`) becomes champion when the name has
        none, or when `evidence` against the current champion on the same data says it is better.
        Otherwise it becomes `challenger` and the champion alias does not move. Not safe against two
        promotions of one name at once."""
        version, value = str(version), float(value)
        if not math.isfinite(value):
            raise ValueError(f"cannot promote {name} v{version} on a non-finite {metric}={value}")
        self.client.get_model_version(name, version)  # fails early for an unknown version
        # Written before any alias moves, so a champion always carries its own figure.
        self.client.set_model_version_tag(name, version, clean_key(f"metric.{metric}"), repr(value))

        champion = self._alias_version(name, CHAMPION)
        if champion is None or champion.version == version:
            evidence = None
            promoted = True
            reason = (f"v{version} is already champion" if champion else
                      f"{name} has no champion yet; v{version} ({metric}={value:.4g}) becomes champion")
        elif evidence is None:
            raise ValueError(f"{name} v{version} needs evidence against champion v{champion.version} to be judged")
        elif evidence.champion_version != champion.version:
            promoted = False
            reason = (f"v{version} was compared with v{evidence.champion_version}, but the champion is now "
                      f"v{champion.version}; kept as challenger")
        else:
            promoted = evidence.better
            verdict = ("better with evidence: promoted" if promoted else
                       "worse with evidence: champion kept" if evidence.ci_high < 0 else
                       "not better with evidence (a tie or an inconclusive test): champion kept")
            reason = (f"v{version} {metric}={value:.4g} vs champion v{champion.version} {evidence.champion_value:.4g} "
                      f"on the same data: difference {value - evidence.champion_value:+.4g}, {evidence.level:.0%} "
                      f"interval [{evidence.ci_low:+.4g}, {evidence.ci_high:+.4g}], p={evidence.p_value:.3g} "
                      f"({evidence.test}); {verdict}")

        if promoted:
            self.client.set_registered_model_alias(name, CHAMPION, version)
            if (challenger := self._alias_version(name, CHALLENGER)) and challenger.version == version:
                self.client.delete_registered_model_alias(name, CHALLENGER)
        else:
            self.client.set_registered_model_alias(name, CHALLENGER, version)
        decision = PromotionDecision(promoted, version, champion.version if champion else None, metric, value,
                                     evidence.champion_value if evidence else None, reason, evidence)
        for key, tag_value in decision.fields().items():
            self.client.set_model_version_tag(name, version, f"promotion.{key}",
                                              repr(tag_value) if isinstance(tag_value, float) else str(tag_value))
        return decision

    def champion_version(self, name: str) -> ModelVersionInfo | None:
        return self._alias_version(name, CHAMPION)

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of `name`, oldest first, with aliases and tags."""
        found, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{name}'", page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        # Search results may omit aliases; the registered model has them all.
        by_version: dict[str, list[str]] = {}
        if found:
            for alias, version in self.client.get_registered_model(name).aliases.items():
                by_version.setdefault(str(version), []).append(alias)
        infos = [self._info(mv, tuple(sorted(by_version.get(str(mv.version), [])))) for mv in found]
        return sorted(infos, key=lambda info: int(info.version))

    def version_tags(self, name: str, version: str | int) -> dict[str, str]:
        return dict(self.client.get_model_version(name, str(version)).tags)

    # --- helpers --------------------------------------------------------------------------------

    def _alias_version(self, name: str, alias: str) -> ModelVersionInfo | None:
        # Read the alias map rather than get_model_version_by_alias: an unset alias is reported
        # with a generic INVALID_PARAMETER_VALUE that cannot be told apart from real errors.
        try:
            version = self.client.get_registered_model(name).aliases.get(alias)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return None if version is None else self._info(self.client.get_model_version(name, str(version)))

    @staticmethod
    def _info(mv: ModelVersion, aliases: tuple[str, ...] | None = None) -> ModelVersionInfo:
        return ModelVersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            status=mv.status,
            aliases=tuple(mv.aliases or ()) if aliases is None else aliases,
            tags=dict(mv.tags or {}),
        )


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for servers and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _prepare_sqlite(db_path: Path) -> None:
    """Create the folder, prove the file is writable, and switch it to WAL (persists in the file)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(db_path.parent, os.W_OK) or (db_path.exists() and not os.access(db_path, os.W_OK)):
        raise PermissionError(f"{db_path} is not writable")
    connection = sqlite3.connect(db_path, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


@contextlib.contextmanager
def _creation_lock(db_path: Path | None) -> Iterator[None]:
    """Serialise first-time table creation: two Dagster steps may open a fresh store at once."""
    if db_path is None or fcntl is None:
        yield
        return
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with open(db_path.with_name(db_path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
