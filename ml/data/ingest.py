"""Load every MONA export in the landing folder into DuckDB's raw tables, with provenance.

- A file is identified by the sha256 of its bytes: ingesting the same file again is a no-op, a
  changed file is new data. Ingested files stay in the landing folder (it is the set of exports).
- A file that cannot be read moves to the quarantine folder next to `<name>.reason.txt`; the other
  files still load. Rows the reader could not use go to `raw.rejected_rows` with row and column.
- Each file loads in one transaction: a crash leaves either all of its rows or none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import pandas as pd

from ml.data.reader import SUPPORTED_SUFFIXES, MonaReadError, read_mona_file
from ml.data.schema import CANONICAL_COLUMNS
from ml.data.warehouse import RAW_CONDITIONS, RAW_FILES, RAW_REJECTED_ROWS, connect, create_raw_tables

log = logging.getLogger(__name__)

# .xls is listed so that it is quarantined with a clear reason rather than ignored.
LANDING_SUFFIXES = SUPPORTED_SUFFIXES + (".xls",)


@dataclass(frozen=True)
class FileOutcome:
    file: str
    sha256: str
    status: str  # "loaded" | "already_loaded" | "quarantined"
    rows_loaded: int = 0
    rows_rejected: int = 0
    reason: str = ""  # why it was quarantined, or reader warnings


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
        return pd.DataFrame([outcome.__dict__ for outcome in self.outcomes],
                            columns=["file", "sha256", "status", "rows_loaded", "rows_rejected", "reason"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def landing_files(landing: Path) -> list[Path]:
    """MONA exports waiting in the landing folder, skipping hidden and Excel lock files (~$x.xlsx)."""
    if not landing.exists():
        return []
    return sorted(path for path in landing.iterdir()
                  if path.is_file() and path.suffix.lower() in LANDING_SUFFIXES
                  and not path.name.startswith((".", "~$")))


def ingest_landing(landing: Path, warehouse: Path, quarantine: Path,
                   progress: Callable[[str], None] = log.info) -> IngestReport:
    con = connect(warehouse)
    try:
        create_raw_tables(con)
        outcomes = []
        for path in landing_files(landing):
            outcome = ingest_file(con, path, quarantine)
            progress(f"{outcome.file}: {outcome.status}, {outcome.rows_loaded} rows loaded, "
                     f"{outcome.rows_rejected} rejected {outcome.reason}".rstrip())
            outcomes.append(outcome)
        total = con.execute(f"select count(*) from {RAW_CONDITIONS}").fetchone()[0]
        return IngestReport(outcomes=tuple(outcomes), total_rows=int(total))
    finally:
        con.close()


def ingest_file(con: duckdb.DuckDBPyConnection, path: Path, quarantine: Path) -> FileOutcome:
    sha = file_sha256(path)
    if con.execute(f"select 1 from {RAW_FILES} where source_sha256 = ?", [sha]).fetchone():
        return FileOutcome(file=path.name, sha256=sha, status="already_loaded")
    try:
        mona = read_mona_file(path)
    except MonaReadError as error:
        quarantine_file(path, quarantine, str(error), sha)
        return FileOutcome(file=path.name, sha256=sha, status="quarantined", reason=str(error))

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = mona.rows.assign(source_file=path.name, source_sha256=sha, ingested_at=now)
    rejected = mona.rejected.assign(source_file=path.name, source_sha256=sha, ingested_at=now)
    columns = ", ".join(CANONICAL_COLUMNS) + ", source_file, source_sha256, source_row, ingested_at"
    con.begin()
    try:
        con.register("incoming_rows", rows)
        con.execute(f"insert into {RAW_CONDITIONS} ({columns}) select {columns} from incoming_rows")
        con.register("incoming_rejected", rejected)
        con.execute(f"""insert into {RAW_REJECTED_ROWS}
            select source_file, source_sha256, source_row, column_name, problem, raw_values, ingested_at
            from incoming_rejected""")
        con.execute(f"insert into {RAW_FILES} values (?, ?, ?, ?, ?, ?, ?)",
                    [sha, path.name, mona.sheet, mona.header_row, len(rows), len(rejected), now])
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
        reason = f"rejected rows, first: row {first.source_row} column {first.column_name}: {first.problem}" + (
            f"; {reason}" if reason else "")
    return FileOutcome(file=path.name, sha256=sha, status="loaded", rows_loaded=len(rows),
                       rows_rejected=len(rejected), reason=reason)


def quarantine_file(path: Path, quarantine: Path, reason: str, sha: str | None = None) -> Path:
    """Move a bad file out of the landing folder, keeping it intact next to a reason file."""
    quarantine.mkdir(parents=True, exist_ok=True)
    target = quarantine / path.name
    if target.exists():
        target = quarantine / f"{path.stem}.{(sha or file_sha256(path))[:12]}{path.suffix}"
    shutil.move(str(path), target)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    target.with_name(target.name + ".reason.txt").write_text(
        f"file: {path.name}\nsha256: {sha or file_sha256(target)}\nquarantined_at: {stamp}\nreason: {reason}\n",
        encoding="utf-8")
    return target
