"""Load every MONA export in the landing folder into DuckDB's raw tables, with provenance.

- A file is identified by the sha256 of its bytes: a file handled once (loaded or quarantined) is
  never read again, a changed file is new data. Loaded files stay in the landing folder (it is the set
  of exports); one whose size and mtime have not changed since the last run is not even hashed again.
- No file can stop the others: any error while reading, checking or loading one file (a damaged
  workbook, a zip that is not one, an encoding, a DuckDB error on its rows) quarantines that file with
  the reason, and the loop goes on. Only a warehouse that cannot be opened or written stops ingestion.
- A quarantined file is copied to the quarantine folder next to `<name>.reason.txt`, then removed
  from the landing folder. When the landing folder is read-only, the file stays there; when the
  quarantine folder cannot be written, no partial copy is left. Either way the reason is recorded in
  `raw.quarantined_files`, so the file is reported and never retried.
- Each file loads in one transaction: a crash (even SIGKILL) leaves either all of its rows or none.
- After every run, a JSON manifest beside the warehouse lists the sha256 of every handled file and
  the (size, mtime) of the landing files they were read from: the landing sensor reads it instead of
  opening DuckDB, which a running job may hold locked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from ml.data.reader import SUPPORTED_SUFFIXES, MonaFile, MonaReadError, read_mona_file
from ml.data.schema import CANONICAL_COLUMNS
from ml.data.warehouse import (
    LOCK_WAIT_SECONDS,
    RAW_CONDITIONS,
    RAW_FILES,
    RAW_QUARANTINED_FILES,
    RAW_REJECTED_ROWS,
    connect,
    create_raw_tables,
)
from ml.io import atomic_copy, atomic_write_text

log = logging.getLogger(__name__)

# .xls is listed so that it is quarantined with a clear reason rather than ignored.
LANDING_SUFFIXES = SUPPORTED_SUFFIXES + (".xls",)
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class FileOutcome:
    file: str
    sha256: str
    status: str  # "loaded" | "already_loaded" | "quarantined" | "already_quarantined" | "unreadable"
    rows_loaded: int = 0
    rows_rejected: int = 0
    reason: str = ""  # why it was quarantined, or the reader's warnings and first rejected row
    warnings: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class IngestReport:
    outcomes: tuple[FileOutcome, ...]
    total_rows: int  # rows in raw.mona_conditions after this ingestion

    def with_status(self, status: str) -> list[FileOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == status]

    @property
    def rows_loaded(self) -> int:
        return sum(outcome.rows_loaded for outcome in self.outcomes)

    @property
    def rows_rejected(self) -> int:
        return sum(outcome.rows_rejected for outcome in self.outcomes)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{k: v for k, v in outcome.__dict__.items() if k != "warnings"}
                             for outcome in self.outcomes],
                            columns=["file", "sha256", "status", "rows_loaded", "rows_rejected", "reason"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def landing_files(landing: Path) -> list[Path]:
    """MONA exports waiting in the landing folder, skipping hidden, partial and Excel lock files (~$x.xlsx)."""
    if not landing.exists():
        return []
    return sorted(Path(entry.path) for entry in os.scandir(landing)
                  if entry.is_file() and Path(entry.name).suffix.lower() in LANDING_SUFFIXES
                  and not entry.name.startswith((".", "~$")))


# ---------------------------------------------------------------------------------------------
# The manifest: which files (by sha256) are handled, readable without opening DuckDB


def manifest_path(warehouse: Path) -> Path:
    return Path(warehouse).with_name(Path(warehouse).stem + ".manifest.json")


@dataclass(frozen=True)
class Manifest:
    handled: dict[str, str]  # sha256 -> "loaded" | "quarantined"
    landing: dict[str, tuple[int, int, str]]  # file name -> (size, mtime_ns, sha256) when last hashed


def read_manifest(warehouse: Path) -> Manifest | None:
    """The manifest beside the warehouse, or None when ingestion has not written one yet."""
    path = manifest_path(warehouse)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(handled=dict(data["handled"]), landing={k: tuple(v) for k, v in data["landing"].items()})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):  # unreadable: rebuilt from DuckDB
        return None


def handled_files(warehouse: Path) -> Manifest:
    """What ingestion has handled: from the manifest; for a warehouse written before manifests existed,
    from DuckDB read-only (raises WarehouseError while a job holds it)."""
    manifest = read_manifest(warehouse)
    if manifest is not None:
        return manifest
    if not Path(warehouse).exists():
        return Manifest(handled={}, landing={})
    con = connect(warehouse, read_only=True)
    try:
        return Manifest(handled=_handled_in_warehouse(con), landing={})
    finally:
        con.close()


def _handled_in_warehouse(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    tables = {row[0] for row in con.execute(
        "select table_schema || '.' || table_name from information_schema.tables").fetchall()}
    handled = {}
    if RAW_QUARANTINED_FILES in tables:
        handled.update({sha: "quarantined" for (sha,) in
                        con.execute(f"select source_sha256 from {RAW_QUARANTINED_FILES}").fetchall()})
    if RAW_FILES in tables:
        handled.update({sha: "loaded" for (sha,) in con.execute(f"select source_sha256 from {RAW_FILES}").fetchall()})
    return handled


def _write_manifest(con: duckdb.DuckDBPyConnection, warehouse: Path,
                    landing: dict[str, tuple[int, int, str]]) -> None:
    handled = _handled_in_warehouse(con)
    data = {"version": MANIFEST_VERSION, "handled": handled,
            "landing": {name: list(stat) for name, stat in landing.items() if stat[2] in handled}}
    atomic_write_text(manifest_path(warehouse), json.dumps(data, sort_keys=True))


def landing_shas(files: list[Path], *known: dict[str, tuple[int, int, str]]) -> dict[Path, tuple[int, int, str]]:
    """(size, mtime_ns, sha256) of each file, hashing only files whose size and mtime match no entry of
    the `known` maps (file name -> (size, mtime_ns, sha256)), as git and rsync decide what to re-read.
    A file that vanished or cannot be read is left out."""
    result = {}
    for path in files:
        try:
            stat = path.stat()
            now = (stat.st_size, stat.st_mtime_ns)
            sha = next((entry[2] for cache in known if (entry := cache.get(path.name)) and tuple(entry[:2]) == now),
                       None)
            result[path] = (*now, sha or file_sha256(path))
        except OSError:
            continue
    return result


# ---------------------------------------------------------------------------------------------
# Ingestion


def ingest_landing(landing: Path, warehouse: Path, quarantine: Path,
                   progress: Callable[[str], None] = log.info) -> IngestReport:
    con = connect(warehouse, wait_seconds=LOCK_WAIT_SECONDS)
    try:
        create_raw_tables(con)
        _remove_partial_copies(quarantine)
        files = landing_files(landing)
        previous = read_manifest(warehouse)
        stats = landing_shas(files, previous.landing if previous else {})
        outcomes = []
        for number, path in enumerate(files, start=1):
            if path in stats:
                outcome = ingest_file(con, path, quarantine, sha=stats[path][2])
            else:
                outcome = FileOutcome(file=path.name, sha256="", status="unreadable",
                                      reason=f"{path.name}: vanished or cannot be read; it will be tried again")
            progress(f"[{number}/{len(files)}] {outcome.file}: {outcome.status}, {outcome.rows_loaded} rows loaded, "
                     f"{outcome.rows_rejected} rejected {outcome.reason}".rstrip())
            outcomes.append(outcome)
        still_there = {path.name: stat for path, stat in stats.items() if path.exists()}
        _write_manifest(con, warehouse, still_there)
        total = con.execute(f"select count(*) from {RAW_CONDITIONS}").fetchone()[0]
        return IngestReport(outcomes=tuple(outcomes), total_rows=int(total))
    finally:
        con.close()


def _remove_partial_copies(quarantine: Path) -> None:
    """Staging files of a run killed while copying into quarantine: under the warehouse lock, no other
    run is writing there. (The manifest's own write removes a killed writer's staging.)"""
    for partial in quarantine.glob(".*.partial") if quarantine.exists() else []:
        partial.unlink(missing_ok=True)


def ingest_file(con: duckdb.DuckDBPyConnection, path: Path, quarantine: Path, sha: str | None = None) -> FileOutcome:
    """Load one file, or quarantine it with the reason; never raises because of the file's content."""
    try:
        sha = sha or file_sha256(path)
    except OSError as error:
        return FileOutcome(file=path.name, sha256="", status="unreadable",
                           reason=f"{path.name}: cannot be read ({error}); it will be tried again")
    done = con.execute(f"select 'already_loaded', source_file, '' from {RAW_FILES} where source_sha256 = ? "
                       f"union all select 'already_quarantined', source_file, reason from {RAW_QUARANTINED_FILES} "
                       f"where source_sha256 = ?", [sha, sha]).fetchone()
    if done:
        status, first_name, reason = done
        same = "" if first_name == path.name else f"same bytes as {first_name}"
        reason = "; ".join(part for part in (same, reason and f"quarantined before: {reason}") if part)
        return FileOutcome(file=path.name, sha256=sha, status=status, reason=f"{path.name}: {reason}" if reason else "")
    try:
        mona = read_mona_file(path)
        return _load(con, path, sha, mona)
    except Exception as error:  # whatever the file did to the reader or the load, it stays one file's problem
        _ensure_usable(con, error)
        reason = str(error) if isinstance(error, MonaReadError) else (
            f"{path.name}: {type(error).__name__} while reading or loading: {error}")
        return _quarantine(con, path, quarantine, sha, reason)


def _ensure_usable(con: duckdb.DuckDBPyConnection, error: Exception) -> None:
    """Re-raise `error` when the warehouse itself is broken: that is no file's fault."""
    try:
        con.execute("select 1").fetchone()
    except duckdb.Error as broken:
        raise error from broken


def _load(con: duckdb.DuckDBPyConnection, path: Path, sha: str, mona: MonaFile) -> FileOutcome:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = mona.rows.assign(source_file=path.name, source_sha256=sha, ingested_at=now)
    rejected = mona.rejected.assign(source_file=path.name, source_sha256=sha, ingested_at=now)
    columns = ", ".join(CANONICAL_COLUMNS) + ", source_file, source_sha256, source_sheet, source_row, ingested_at"
    rejected_columns = "source_file, source_sha256, source_sheet, source_row, column_name, problem, raw_values, " \
                       "ingested_at"
    con.begin()
    try:
        con.register("incoming_rows", rows)
        con.execute(f"insert into {RAW_CONDITIONS} ({columns}) select {columns} from incoming_rows")
        if len(rejected):  # registering a DataFrame costs milliseconds: not for nothing
            con.register("incoming_rejected", rejected)
            con.execute(f"insert into {RAW_REJECTED_ROWS} ({rejected_columns}) "
                        f"select {rejected_columns} from incoming_rejected")
        con.execute(f"""insert into {RAW_FILES} (source_sha256, source_file, sheet, header_row, rows_loaded,
                        rows_rejected, ingested_at, encoding, warnings) values (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    [sha, path.name, mona.sheet, mona.header_row, len(rows), _rows_rejected(rejected), now,
                     mona.encoding,
                     "; ".join(mona.warnings) or None])
        con.commit()
    except Exception:
        con.rollback()
        raise
    finally:
        con.unregister("incoming_rows")
        con.unregister("incoming_rejected")
    reason = "; ".join(mona.warnings)
    if len(rejected):
        first = rejected.iloc[0]
        where = f"sheet {first.source_sheet!r} " if first.source_sheet else ""
        reason = f"rejected rows, first: {where}row {first.source_row} column {first.column_name}: {first.problem}" \
                 + (f"; {reason}" if reason else "")
    return FileOutcome(file=path.name, sha256=sha, status="loaded", rows_loaded=len(rows),
                       rows_rejected=_rows_rejected(rejected), reason=reason, warnings=mona.warnings)


def _rows_rejected(rejected: pd.DataFrame) -> int:
    """Rows set aside; a row with two problems is one row (and two records in raw.rejected_rows)."""
    return len(rejected[["source_sheet", "source_row"]].drop_duplicates())


def _quarantine(con: duckdb.DuckDBPyConnection, path: Path, quarantine: Path, sha: str, reason: str) -> FileOutcome:
    target, note = quarantine_file(path, quarantine, reason, sha)
    left_in_landing = path.exists()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    # Recorded whether or not the file could be moved: a file left in a read-only landing folder is
    # reported, not read again on every run.
    con.execute(f"""insert or ignore into {RAW_QUARANTINED_FILES}
                    (source_sha256, source_file, reason, quarantined_to, left_in_landing, quarantined_at)
                    values (?, ?, ?, ?, ?, ?)""",
                [sha, path.name, reason + (f" ({note})" if note else ""), str(target) if target else None,
                 left_in_landing, now])
    return FileOutcome(file=path.name, sha256=sha, status="quarantined",
                       reason=reason + (f" ({note})" if note else ""))


def quarantine_file(path: Path, quarantine: Path, reason: str, sha: str | None = None) -> tuple[Path | None, str]:
    """Copy a bad file to the quarantine folder next to its reason, then remove it from the landing folder.

    Returns (the copy, or None when none could be written; a note on what could not be done). The copy
    is written under a temporary name and the reason file before the landing file is removed, so an
    interruption never loses the file nor leaves a copy without its reason.
    """
    sha = sha or file_sha256(path)
    target = quarantine / path.name
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    text = f"file: {path.name}\nsha256: {sha}\nquarantined_at: {stamp}\nreason: {reason}\n"
    try:
        quarantine.mkdir(parents=True, exist_ok=True)
        if target.exists() and file_sha256(target) != sha:  # another file of that name is already there
            target = quarantine / f"{path.stem}.{sha[:12]}{path.suffix}"
        if not (target.exists() and file_sha256(target) == sha):  # else: a copy from an interrupted run
            atomic_copy(path, target)
        atomic_write_text(target.with_name(target.name + ".reason.txt"), text)
    except OSError as error:
        # A read-only or full quarantine folder: leave no copy without a reason behind.
        for leftover in (target, target.with_name(target.name + ".reason.txt")):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        return None, f"could not be copied to {quarantine}: {error.strerror or error}; left in the landing folder"
    try:
        path.unlink()
    except OSError as error:
        return target, f"copied to {target}, but could not be removed from the landing folder: " \
                       f"{error.strerror or error}"
    return target, ""



