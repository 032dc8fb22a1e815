"""Landing-folder sensor: new MONA exports start the retraining job.

The sensor only looks: it lists the landing folder, knows each file by its sha256 and asks for a run
when a file is new. Reading, checking and quarantining are the ingestion asset's work, so a malformed
file can never make the sensor fail.

- "New" means: not handled by ingestion yet, however it got into the warehouse (a sensor run, `make
  demo`, a manual materialization). The sensor reads ingestion's JSON manifest beside the warehouse,
  never DuckDB itself, which a running job may hold locked.
- Hashing is done once per file: a file whose size and mtime match the manifest or the cursor keeps its
  known sha256. The cursor holds these (size, mtime, sha256) only for files now in the landing folder
  that the manifest does not describe, and the sha256s it requested runs for until ingestion has
  handled them, so it stays small however many files accumulate.
- One run per new file, keyed by its sha256; files found together start one run (keyed by the sha256
  of their sorted hashes), since one ingestion loads them all. A file is requested once. While a run
  this sensor started is still queued or running, the sensor waits: that run may load the files that
  arrived meanwhile.
"""

import hashlib
import json

import dagster as dg

from ml.data.ingest import handled_files, landing_files, landing_shas
from ml.data.warehouse import WarehouseError
from orchestration.jobs import retraining_job
from orchestration.resources import RlxfSettings

TRIGGER_TAG = ("rlxf/trigger", "landing_sensor")
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


def run_key_for(hashes: list[str]) -> str:
    """One file: its sha256. Several arriving together: the sha256 of their sorted hashes."""
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def _read_cursor(cursor: str | None) -> tuple[dict[str, tuple[int, int, str]], set[str]]:
    """(file name -> (size, mtime_ns, sha256), sha256s already requested); older cursors held a list."""
    data = json.loads(cursor) if cursor else {}
    if not isinstance(data, dict):
        return {}, set()
    return {name: tuple(stat) for name, stat in data.get("files", {}).items()}, set(data.get("requested", []))


@dg.sensor(job=retraining_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts one retraining run when new or changed MONA exports land in the landing folder.")
def mona_landing_sensor(context: dg.SensorEvaluationContext, rlxf: RlxfSettings):
    home = rlxf.data_home()
    running = context.instance.get_run_records(
        dg.RunsFilter(job_name=retraining_job.name, tags=dict([TRIGGER_TAG]), statuses=IN_FLIGHT), limit=1)
    if running:
        return dg.SkipReason(f"waiting for run {running[0].dagster_run.run_id} of this sensor to finish")
    try:
        handled = handled_files(home.warehouse)
    except WarehouseError as error:  # no manifest yet, and a job holds the warehouse: look again later
        return dg.SkipReason(f"cannot tell which files are loaded yet: {error}")

    cached, requested = _read_cursor(context.cursor)
    stats = landing_shas(landing_files(home.landing), cached, handled.landing)
    pending = sorted((path.name, stat[2]) for path, stat in stats.items() if stat[2] not in handled.handled)
    new = [(name, sha) for name, sha in pending if sha not in requested]
    context.update_cursor(json.dumps({
        "files": {path.name: list(stat) for path, stat in stats.items() if handled.landing.get(path.name) != stat},
        "requested": sorted({sha for _, sha in pending}),  # until ingestion has handled them
    }))
    if not new:
        if pending:
            return dg.SkipReason(f"{len(pending)} file(s) waiting for the run already requested for them")
        return dg.SkipReason(f"no new MONA files in {home.landing} ({len(stats)} file(s), all ingested)")
    names = ", ".join(name for name, _ in new[:20]) + (f" and {len(new) - 20} more" if len(new) > 20 else "")
    context.log.info(f"{len(new)} new MONA file(s): {names}")
    return dg.RunRequest(run_key=run_key_for(sorted({sha for _, sha in new})),
                         tags={TRIGGER_TAG[0]: TRIGGER_TAG[1], "rlxf/files": names[:200]})
