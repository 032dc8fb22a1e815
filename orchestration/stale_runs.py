"""Release what runs killed outright (SIGKILL, out of memory, power loss) still hold in the instance.

A run killed that way cannot report its end: it stays STARTED and keeps its slot in the
`duckdb_warehouse` concurrency pool, so every later step that opens DuckDB would wait for it forever,
and the landing sensor would wait for it too. Dagster's run-monitoring daemon fails such runs when it
launched them (`make ui`); runs started from the command line (`make demo`, `dagster job execute`) are
not monitored. This module marks a run failed and frees its slots when the process that executed it,
whose pid the run's first engine event records, no longer exists on this machine. `make demo` and
`make ui` run it first:

    python -m orchestration.stale_runs      # uses $DAGSTER_HOME
"""

from __future__ import annotations

import os

import dagster as dg

UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _executor_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20).records:
        metadata = getattr(record.event_log_entry.dagster_event.event_specific_data, "metadata", None) or {}
        if "pid" in metadata:
            return int(metadata["pid"].value)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def release_stale_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail unfinished runs whose executing process is gone, free their pool slots; returns their ids."""
    released = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED)):
        run = record.dagster_run
        pid = _executor_pid(instance, run.run_id)
        if pid is None or _alive(pid):
            continue
        instance.report_run_failed(run, f"process {pid} that executed this run no longer exists (killed)")
        released.append(run.run_id)
    storage = instance.event_log_storage
    holders = list(storage.get_concurrency_run_ids()) if storage.supports_global_concurrency_limits else []
    if holders:
        # Slots still held by finished runs (those just failed among them) are free to take.
        unfinished = {r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(run_ids=holders))
                      if not r.dagster_run.is_finished}
        for run_id in set(holders) - unfinished:
            storage.free_concurrency_slots_for_run(run_id)
    return released


if __name__ == "__main__":
    with dg.DagsterInstance.get() as current:
        for run_id in release_stale_runs(current):
            print(f"run {run_id}: its process is gone; marked failed and its concurrency slots freed")
