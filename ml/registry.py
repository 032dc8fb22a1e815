"""MLflow tracking and model registry for the reward model and the PPO adapter.

Every training asset records one MLflow run (params, metrics, plots, reports) and registers the
model folder it produced (safetensors + tokenizer + json) as a new version of a registered model.
Promotion is champion/challenger through model aliases: a version becomes `champion` only when its
evaluation figure is at least the current champion's on the same metric.

The default store is a SQLite file in the data home (`sqlite:///<home>/mlflow.db`, artifacts in
`<home>/mlartifacts`); a tracking-server URI works the same. Everything goes through one
`MlflowClient` per `Registry` (never the fluent `mlflow.start_run` globals), so several registries
or threads in one process do not share an "active run".
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import posixpath
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The project runs offline and logs to Dagster: keep MLflow's usage telemetry and its tqdm
# download bars off unless a caller chose otherwise (defaults written, nothing read; MLflow 3.x
# honours MLFLOW_DISABLE_TELEMETRY=true or DO_NOT_TRACK=true).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow.artifacts  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.telemetry.client import get_telemetry_client, set_telemetry_client  # noqa: E402
from mlflow.telemetry.utils import is_telemetry_disabled  # noqa: E402

if get_telemetry_client() is not None and is_telemetry_disabled():
    set_telemetry_client()  # mlflow was imported before us: re-reads the setting and drops the client

# Creating a fresh SQLite store logs alembic migrations at INFO; keep the pipeline's logs readable.
for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)

try:  # POSIX only; elsewhere the first-time store creation is simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

CHAMPION = "champion"
CHALLENGER = "challenger"
# Weights must be safetensors: these suffixes carry pickles (torch .bin/.pt, joblib, ...).
PICKLE_SUFFIXES = {".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib"}
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
class PromotionDecision:
    promoted: bool  # True: the version is now `champion`; False: it is `challenger`
    version: str
    previous_champion_version: str | None
    new_value: float
    champion_value: float | None  # the champion's figure compared against (None: none to compare)
    reason: str

    @property
    def alias(self) -> str:
        return CHAMPION if self.promoted else CHALLENGER


class TrackedRun:
    """One MLflow run, written through the owning registry's client."""

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
        entities = [Metric(key, value, now, step or 0) for key, value in logged.items()]
        for start in range(0, len(entities), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=entities[start : start + 1000])
        return logged

    def log_params(self, params: Mapping[str, Any]) -> None:
        entities = [Param(clean_key(k), str(v)[:_MAX_PARAM_VALUE]) for k, v in params.items()]
        for start in range(0, len(entities), 100):
            self.client.log_batch(self.run_id, params=entities[start : start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entities = [RunTag(clean_key(k), str(v)[:_MAX_TAG_VALUE]) for k, v in tags.items()]
        for start in range(0, len(entities), 100):
            self.client.log_batch(self.run_id, tags=entities[start : start + 100])

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

    def artifact_files(self, path: str = "") -> dict[str, int]:
        """Relative path -> size of every artifact under `path` (recursive)."""
        files = {}
        for info in self.client.list_artifacts(self.run_id, path or None):
            if info.is_dir:
                files.update(self.artifact_files(info.path))
            else:
                files[info.path] = info.file_size
        return files


class Registry:
    """MLflow tracking + model registry on one store (SQLite file or tracking server).

    One per process is the intended use with SQLite: the file is opened in WAL mode so readers
    (the MLflow UI) do not block the writer. Use as a context manager or call `close()`.
    """

    def __init__(self, tracking_uri: str, artifact_root: str | None = None, await_ready_s: int = 300):
        self.tracking_uri = tracking_uri
        db_path = _sqlite_path(tracking_uri)
        if artifact_root is None and db_path is not None:
            artifact_root = str(db_path.parent / "mlartifacts")  # not MLflow's default ./mlruns in cwd
        self.artifact_root = artifact_root  # None on a server: the server decides
        self.await_ready_s = await_ready_s
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
    def for_home(cls, root: Path) -> "Registry":
        return cls(tracking_uri_for(root), artifact_root_for(root))

    def close(self) -> None:
        """Release pooled SQLite connections (MLflow caches engines per URI, process-wide)."""
        if _sqlite_path(self.tracking_uri) is None:
            return
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

        for store_cls in (TrackingStore, RegistryStore):
            engine = getattr(store_cls, "_engine_map", {}).get(self.tracking_uri)
            if engine is not None:
                engine.dispose()  # safe for other users of the engine: it reconnects on demand

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

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
        """A run that ends FINISHED when the block succeeds, FAILED when it raises (re-raised)."""
        experiment_id = self.ensure_experiment(experiment)
        created = self.client.create_run(
            experiment_id, run_name=run_name, tags={clean_key(k): str(v) for k, v in (tags or {}).items()}
        )
        tracked = TrackedRun(self.client, created.info.run_id, experiment_id, created.info.artifact_uri)
        status = "FAILED"
        try:
            if params:
                tracked.log_params(params)
            yield tracked
            status = "FINISHED"
        except BaseException as exc:
            if not isinstance(exc, Exception):
                status = "KILLED"  # Ctrl-C, SystemExit, a cancelled Dagster step
            raise
        finally:
            try:
                self.client.set_terminated(tracked.run_id, status)
            except Exception:
                if status == "FINISHED":
                    raise
                # Otherwise keep the original exception: it says why the run failed.

    # --- registry -------------------------------------------------------------------------------

    def register_model(
        self,
        run: TrackedRun,
        local_dir: Path,
        name: str,
        artifact_path: str = "model",
        tags: Mapping[str, Any] | None = None,
        require_weights: bool = True,
    ) -> ModelVersionInfo:
        """Upload a model folder to the run, then register it as a new READY version of `name`
        (`require_weights`: the folder must hold safetensors weights).

        The version is created only after every file is in the run's artifacts, so an upload
        that crashes leaves stray artifacts but never a registered, half-written version.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise RegistryError(f"model folder {local_dir} does not exist")
        local = {p.relative_to(local_dir).as_posix(): p.stat().st_size for p in local_dir.rglob("*") if p.is_file()}
        pickles = sorted(p for p in local if Path(p).suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise RegistryError(f"{local_dir} holds pickle files {pickles}: save weights as safetensors")
        if require_weights and not any(p.endswith(".safetensors") for p in local):
            raise RegistryError(f"{local_dir} holds no .safetensors weights")

        run.log_artifacts(local_dir, artifact_path)
        uploaded = {posixpath.relpath(p, artifact_path): s for p, s in run.artifact_files(artifact_path).items()}
        if uploaded != local:
            raise RegistryError(f"upload of {local_dir} to run {run.run_id} is incomplete; nothing registered")

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version_tags = {clean_key(k): str(v) for k, v in (tags or {}).items()}
        version_tags.update({"artifact_path": artifact_path, "files": str(len(local))})
        created = self.client.create_model_version(
            name,
            source=f"{run.artifact_uri.rstrip('/')}/{artifact_path}",
            run_id=run.run_id,
            tags=version_tags,
            await_creation_for=self.await_ready_s,  # raises unless the version becomes READY
        )
        return self._info(self.client.get_model_version(name, created.version))

    def promote(
        self,
        name: str,
        version: str,
        metric: str,
        value: float,
        higher_is_better: bool = True,
        comparison: str = "",
        champion_value: float | None = None,
    ) -> PromotionDecision:
        """Champion/challenger: `version` becomes champion if its `metric` is at least the champion's.

        `value` must come from the same evaluation data as the champion's figure; `comparison`
        records which (e.g. the test split's hash). Pass `champion_value` when the caller re-measured
        the champion on that same data (new reviews change the test split); otherwise the figure
        recorded on the champion when it was promoted is used. A losing version becomes
        `challenger` and the champion alias does not move. Not safe against two promotions of one
        name at once.
        """
        measured_champion_value = champion_value
        version, value = str(version), float(value)
        if not math.isfinite(value):
            raise ValueError(f"cannot promote {name} v{version} on a non-finite {metric}={value}")
        metric_tag = clean_key(f"metric.{metric}")
        self.client.get_model_version(name, version)  # fails early for an unknown version
        # Written before any alias moves, so a champion always carries its own figure.
        self.client.set_model_version_tag(name, version, metric_tag, repr(value))

        champion = self._alias_version(name, CHAMPION)
        champion_value = None
        if champion is None:
            promoted, reason = True, f"{name} has no champion yet; v{version} ({metric}={value:.4g}) becomes champion"
        elif champion.version == version:
            promoted, reason = True, f"v{version} is already champion"
        else:
            if measured_champion_value is not None and math.isfinite(measured_champion_value):
                champion_value = float(measured_champion_value)
            else:
                champion_value = _as_float(champion.tags.get(metric_tag))
            if champion_value is None:
                promoted = True
                reason = f"champion v{champion.version} has no recorded {metric}; v{version} ({value:.4g}) replaces it"
            else:
                promoted = value >= champion_value if higher_is_better else value <= champion_value
                relation = "equal to" if value == champion_value else "better than" if promoted else "worse than"
                reason = (
                    f"v{version} {metric}={value:.4g} is {relation} champion v{champion.version} "
                    f"{metric}={champion_value:.4g} ({'higher' if higher_is_better else 'lower'} is better)"
                )
            champion_comparison = champion.tags.get("promotion.comparison", "")
            if measured_champion_value is not None:
                reason += f"; both measured on {comparison or 'the same data'}"
            elif comparison and champion_comparison and champion_comparison != comparison:
                reason += f"; note: the champion's figure came from {champion_comparison}, this one from {comparison}"

        if promoted:
            self.client.set_registered_model_alias(name, CHAMPION, version)
            if (challenger := self._alias_version(name, CHALLENGER)) and challenger.version == version:
                self.client.delete_registered_model_alias(name, CHALLENGER)
        else:
            self.client.set_registered_model_alias(name, CHALLENGER, version)
        previous = champion.version if champion else None
        for key, tag_value in {
            "promotion.decision": "promoted" if promoted else "challenger",
            "promotion.metric": metric,
            "promotion.new_value": repr(value),
            "promotion.champion_value": "none" if champion_value is None else repr(champion_value),
            "promotion.champion_version": previous or "none",
            "promotion.comparison": comparison,
            "promotion.reason": reason,
        }.items():
            self.client.set_model_version_tag(name, version, key, tag_value)
        return PromotionDecision(promoted, version, previous, value, champion_value, reason)

    def champion_version(self, name: str) -> ModelVersionInfo | None:
        return self._alias_version(name, CHAMPION)

    def cached_version(self, name: str, version: str, cache_root: Path) -> Path:
        """A version's model folder under `cache_root/<name>/v<version>`, downloaded only the first time."""
        folder = Path(cache_root) / name / f"v{version}"
        if not (folder / "model").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a download cut short leaves no partial folder in use
            self.download_version(name, version, folder)
        return folder / "model"

    def download_version(self, name: str, alias_or_version: str | int, dst: Path) -> Path:
        """Download a version (`3`, `"3"` or an alias such as `"champion"`); returns the model folder."""
        ref = str(alias_or_version)
        info = self._info(self.client.get_model_version(name, ref)) if ref.isdigit() else self._alias_version(name, ref)
        if info is None:
            raise RegistryError(f"registered model {name!r} has no version with alias {ref!r}")
        source = self.client.get_model_version_download_uri(name, info.version)
        target = Path(dst) / posixpath.basename(source.rstrip("/"))
        if target.exists() and any(target.iterdir()):
            raise RegistryError(f"{target} is not empty: download {name} v{info.version} to a fresh folder")
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dst), tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        )

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


def _as_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


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
