"""The DuckDB warehouse: the raw tables that ingestion appends to and dbt reads as sources.

`raw.mona_conditions` keeps every row of every ingested file exactly as read (text columns), with
its provenance; nothing is updated or deleted, so the warehouse is a lossless history of all exports.
`raw.ingested_files` and `raw.quarantined_files` record, by sha256, every file ingestion has handled:
the same bytes are never read twice, whether they loaded or were quarantined.

`dbt_vars` is what every dbt invocation passes with `--vars`: the warehouse file and the profile's
data settings that the models read (split shares, temporal holdout), so the profile is their one source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from filelock import FileLock, Timeout

from ml.config import DataSettings
from ml.data.schema import CANONICAL_COLUMNS

RAW_SCHEMA = "raw"
RAW_CONDITIONS = f"{RAW_SCHEMA}.mona_conditions"
RAW_FILES = f"{RAW_SCHEMA}.ingested_files"
RAW_REJECTED_ROWS = f"{RAW_SCHEMA}.rejected_rows"
RAW_QUARANTINED_FILES = f"{RAW_SCHEMA}.quarantined_files"

PROVENANCE_COLUMNS = ("source_file", "source_sha256", "source_sheet", "source_row", "ingested_at")

_DDL = [
    f"create schema if not exists {RAW_SCHEMA}",
    f"""create table if not exists {RAW_CONDITIONS} (
        {", ".join(f"{column} varchar" for column in CANONICAL_COLUMNS)},
        source_file varchar not null,   -- file name as it arrived in the landing folder
        source_sha256 varchar not null, -- content hash: the same file twice is ingested once
        source_row integer not null,    -- row number in the file or sheet (1 = first line / spreadsheet row)
        ingested_at timestamp not null
    )""",
    f"""create table if not exists {RAW_FILES} (
        source_sha256 varchar primary key,
        source_file varchar not null,
        sheet varchar,
        header_row integer,
        rows_loaded integer not null,
        rows_rejected integer not null,
        ingested_at timestamp not null
    )""",
    f"""create table if not exists {RAW_REJECTED_ROWS} (
        source_file varchar not null,
        source_sha256 varchar not null,
        source_row integer not null,
        column_name varchar not null,
        problem varchar not null,
        raw_values varchar,             -- JSON of the row as read, so nothing is lost
        ingested_at timestamp not null
    )""",
    f"""create table if not exists {RAW_QUARANTINED_FILES} (
        source_sha256 varchar primary key,
        source_file varchar not null,
        reason varchar not null,
        quarantined_to varchar,         -- the copy in quarantine/; NULL when it could not be written
        left_in_landing boolean not null, -- the landing file could not be removed (read-only folder)
        quarantined_at timestamp not null
    )""",
    # Columns added after the first release: warehouses written before them gain them here.
    f"alter table {RAW_CONDITIONS} add column if not exists source_sheet varchar",  # workbook sheet
    f"alter table {RAW_REJECTED_ROWS} add column if not exists source_sheet varchar",
    f"alter table {RAW_FILES} add column if not exists encoding varchar",  # how a CSV was decoded
    f"alter table {RAW_FILES} add column if not exists warnings varchar",  # reader warnings, '; '-joined
]


class WarehouseError(RuntimeError):
    """The DuckDB file cannot be opened (missing folder, locked by another process, corrupt)."""


# How long a pipeline step waits for another process's DuckDB lock. The concurrency pool lets one step
# at a time open the warehouse, but the process of the step before (dbt's subprocess, say) can still be
# closing its connection when the pool hands the slot on.
LOCK_WAIT_SECONDS = 60.0


def connect(path: Path, read_only: bool = False, wait_seconds: float = 0.0) -> duckdb.DuckDBPyConnection:
    """Open the warehouse; while another process holds its lock, retry for up to `wait_seconds`."""
    path = Path(path)
    if read_only and not path.exists():
        raise WarehouseError(f"DuckDB warehouse {path} does not exist; run the ingestion first")
    deadline, pause = time.monotonic() + wait_seconds, 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() + pause > deadline:
                raise WarehouseError(f"cannot open DuckDB warehouse {path}: {error}") from error
        time.sleep(pause)
        pause = min(2 * pause, 1.0)


@contextmanager
def take_turn(path: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the warehouse for one pipeline step: other processes' steps wait until it is released.

    The Dagster pool `duckdb_warehouse` is meant to give steps turns, but on the default SQLite instance
    two steps that claim its one slot at the same moment can both get it (the claim reads the free slot,
    then writes it, with no row lock), and a dbt build would then fail on DuckDB's file lock. This lock
    file is the guarantee; the OS releases it when the holding process dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name(path.name + ".lock"))
    started = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"DuckDB warehouse {path.name}: waiting for a step of another run to finish with it")
        lock.acquire()
    try:
        log(f"DuckDB warehouse {path.name}: this step's turn (waited {time.monotonic() - started:.1f} s)")
        yield
    finally:
        log(f"DuckDB warehouse {path.name}: turn over")
        lock.release()


def create_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    for statement in _DDL:
        con.execute(statement)


def dbt_vars(data: DataSettings, warehouse: Path) -> dict[str, object]:
    """dbt's `--vars` for a build of `warehouse` under the profile's data settings."""
    return {
        "duckdb_path": str(warehouse),
        "split_train_share": data.split_train_share,
        "split_validation_share": data.split_validation_share,
        "temporal_holdout_years": data.temporal_holdout_years,
    }
