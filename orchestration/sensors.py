"""Landing-folder sensor: new MONA exports start the retraining job.

Each file is known by its sha256. The cursor (kept by Dagster across restarts) holds the hashes
already handled, and the run key is derived from the new hashes, so the same file never triggers
twice. Files arriving together start one run. A malformed file is quarantined with its reason and
reported as the skip reason instead of failing the sensor.
"""

import hashlib
import json

import dagster as dg

from ml.data.ingest import file_sha256, landing_files, quarantine_file
from ml.data.reader import MonaReadError, read_mona_file
from orchestration.jobs import retraining_job
from orchestration.resources import RlxfSettings


def run_key_for(hashes: list[str]) -> str:
    """One file: its sha256. Several arriving together: the sha256 of their sorted hashes."""
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


@dg.sensor(job=retraining_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts one retraining run when new or changed MONA exports land in the landing folder.")
def mona_landing_sensor(context: dg.SensorEvaluationContext, rlxf: RlxfSettings):
    home = rlxf.data_home()
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    new_files, quarantined = [], []
    for path in landing_files(home.landing):
        sha = file_sha256(path)
        if sha in seen:
            continue
        seen.add(sha)
        try:
            read_mona_file(path)
        except MonaReadError as error:
            quarantine_file(path, home.quarantine, str(error), sha)
            quarantined.append(str(error))
            continue
        new_files.append((path.name, sha))

    context.update_cursor(json.dumps(sorted(seen)))
    if not new_files:
        reason = f"no new MONA files in {home.landing}"
        if quarantined:
            reason = f"quarantined {len(quarantined)} malformed file(s): " + "; ".join(quarantined)
        return dg.SkipReason(reason)
    names = ", ".join(name for name, _ in new_files)
    context.log.info(f"new MONA files: {names}" + (f"; quarantined: {quarantined}" if quarantined else ""))
    return dg.RunRequest(
        run_key=run_key_for([sha for _, sha in new_files]),
        tags={"rlxf/trigger": "landing_sensor", "rlxf/files": names[:200]},
    )
