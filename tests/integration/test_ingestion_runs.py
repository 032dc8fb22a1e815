"""Ingestion as Dagster runs it, in one persistent instance configured by the repository's dagster.yaml
(orchestration/dagster.yaml, the file `make demo` and `make ui` use):

- two runs started at once that both write the DuckDB warehouse both succeed, their DuckDB steps
  taking turns on the warehouse (the `duckdb_warehouse` pool and the warehouse's lock file) instead of
  failing on DuckDB's lock;
- after those runs (the pipeline run from the command line, as `make demo` does) the landing sensor on
  the same instance and data home starts nothing (`make ui` right after `make demo` retrained everything);
- SIGKILL in the middle of ingesting many files leaves each file all loaded or not at all, and a
  re-run, after `orchestration.stale_runs` released the killed run's pool slot, loads the rest.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ml.data.ingest import read_manifest
from ml.data.synthetic import generate_mona
from ml.paths import REPO_ROOT, DataHome
from orchestration.definitions import build_definitions
from orchestration.resources import DUCKDB_POOL, RlxfSettings, build_resources
from orchestration.sensors import mona_landing_sensor
from orchestration.stale_runs import release_stale_runs

pytestmark = pytest.mark.integration

JOB_IN_ITS_OWN_PROCESS = """
import dagster as dg
from orchestration.definitions import defs
with dg.DagsterInstance.get() as instance:
    result = defs.resolve_job_def("mona_data_platform").execute_in_process(instance=instance, raise_on_error=False)
raise SystemExit(0 if result.success else 1)
"""
DUCKDB_STEPS = {"raw_mona_conditions", "mona_dbt_models", "validated_splits", "mona_splits_great_expectations_suite"}


class World:
    def __init__(self, root: Path):
        self.home = DataHome(root / "home").ensure()
        self.dagster_home = root / "dagster_home"
        self.dagster_home.mkdir()
        shutil.copy(REPO_ROOT / "orchestration" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        self.instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        self.settings = RlxfSettings(profile="smoke", home=str(self.home.root), seed_synthetic=True)

    def env(self) -> dict[str, str]:
        return dict(os.environ, DAGSTER_HOME=str(self.dagster_home), RLXF_PROFILE="smoke",
                    RLXF_HOME=str(self.home.root), RLXF_SEED_SYNTHETIC="1",
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def python(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def warehouse(self, sql: str, wait_seconds: float = 30.0) -> list[tuple]:
        # A process killed with its group lets go of the warehouse's lock only once the kernel has
        # ended it, which can come after the test saw the group's leader exit: wait for the lock.
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                con = duckdb.connect(str(self.home.warehouse), read_only=True)
                break
            except duckdb.IOException as error:
                if "lock" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("ingestion_runs"))
    yield world
    world.instance.dispose()


def warehouse_turns(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """step key -> (start, end) timestamps of its turn on the DuckDB warehouse, from the lines the step
    logs while it holds the warehouse (ml.data.warehouse.take_turn)."""
    starts, turns = {}, {}
    for entry in instance.all_logs(run_id):
        if "this step's turn" in entry.user_message:
            starts[entry.step_key] = entry.timestamp
        elif "turn over" in entry.user_message:
            turns[entry.step_key] = (starts.pop(entry.step_key), entry.timestamp)
    return turns


def test_two_runs_started_at_once_both_succeed_taking_turns_on_duckdb(world):
    assert world.instance.event_log_storage.get_pool_config().default_pool_limit == 1  # from dagster.yaml
    # Two processes, as a sensor-launched run and a manual materialization are: DuckDB's lock is per
    # process. Each executes its steps in its own process (no step subprocesses, to keep the test short).
    runs = [world.python("-c", JOB_IN_ITS_OWN_PROCESS) for _ in range(2)]
    outputs = [[], []]
    readers = [threading.Thread(target=lambda p=p, out=out: out.extend(p.stdout)) for p, out in zip(runs, outputs)]
    for reader in readers:
        reader.start()
    for process, reader in zip(runs, readers):
        process.wait(timeout=600)
        reader.join()
    for process, output in zip(runs, outputs):
        assert process.returncode == 0, "".join(output[-40:])
    records = world.instance.get_run_records(dg.RunsFilter(job_name="mona_data_platform"))
    assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS] * 2
    # The DuckDB steps of the two runs never used the warehouse at the same time: they took turns. (Not
    # their STEP_START..STEP_SUCCESS spans: the SQLite instance's pool can let two claims through at
    # once, and the second step then waits for the warehouse inside its span.)
    turns_by_run = [warehouse_turns(world.instance, r.dagster_run.run_id) for r in records]
    assert [set(turns) for turns in turns_by_run] == [DUCKDB_STEPS] * 2
    turns = sorted(turn for turns in turns_by_run for turn in turns.values())
    assert all(end <= next_start for (_, end), (next_start, _) in zip(turns, turns[1:])), turns
    assert world.warehouse("select count(*) from raw.ingested_files") == [(2,)]  # loaded once, not twice


def test_sensor_after_the_demo_runs_starts_nothing(world):
    # Regression: `make ui` after `make demo` launched rlxf_retraining on the files the demo had loaded.
    context = dg.build_sensor_context(instance=world.instance, resources={"rlxf": world.settings})
    result = mona_landing_sensor(context)
    assert isinstance(result, dg.SkipReason), result
    assert "no new MONA files" in result.skip_message
    assert json.loads(context.cursor) == {"files": {}, "requested": []}


def test_sigkill_during_ingestion_leaves_every_file_whole_and_a_rerun_completes(world):
    files = 40
    for i in range(files):
        export = generate_mona(3_000, seed=1000 + i).export
        export.to_csv(world.home.landing / f"reviews_{i:02d}.csv", index=False)
    process = world.python("-m", "dagster", "asset", "materialize", "--select", "raw_mona_conditions",
                           "-m", "orchestration.definitions")
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if f"/{files + 2}] reviews_03.csv" in line:  # 2 files loaded before: the seeded ones
                os.killpg(process.pid, signal.SIGKILL)
                break
        else:
            pytest.fail("ingestion ended before it was killed:\n" + "".join(seen[-30:]))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    def consistent():
        """Every loaded file has exactly the rows it was recorded with; no rows of unrecorded files."""
        mismatched = world.warehouse("""
            select f.source_file from raw.ingested_files f
            left join (select source_sha256, count(*) n from raw.mona_conditions group by 1) c using (source_sha256)
            where coalesce(c.n, 0) != f.rows_loaded""")
        orphans = world.warehouse("""select count(*) from raw.mona_conditions
            where source_sha256 not in (select source_sha256 from raw.ingested_files)""")
        return mismatched == [] and orphans == [(0,)]

    loaded = {name for (name,) in world.warehouse("select source_file from raw.ingested_files "
                                                  "where source_file like 'reviews_%'")}
    assert 0 < len(loaded) < files, "killed while ingesting"
    assert consistent()
    # The killed run still holds its pool slot and looks STARTED: release it as `make demo` does first.
    killed = world.instance.get_run_records(limit=1)[0].dagster_run
    assert killed.run_id in world.instance.event_log_storage.get_concurrency_run_ids()
    assert release_stale_runs(world.instance) == [killed.run_id]
    assert world.instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not world.instance.event_log_storage.get_concurrency_run_ids()

    defs = build_definitions(build_resources(world.settings))
    result = defs.resolve_job_def("rlxf_full_pipeline").execute_in_process(
        instance=world.instance, asset_selection=[dg.AssetKey("raw_mona_conditions")], raise_on_error=False)
    assert result.success
    assert consistent()
    assert world.warehouse("select count(*), count(distinct source_file) from raw.ingested_files "
                           "where source_file like 'reviews_%'") == [(files, files)]
    assert world.warehouse("select count(*) from raw.mona_conditions where source_file like 'reviews_%'") == [
        (files * 3_000,)]
    manifest = read_manifest(world.home.warehouse)
    assert len(manifest.handled) == files + 2
    assert not [p for p in (world.home.root, world.home.quarantine) for p in p.glob(".*.partial")]
    assert DUCKDB_POOL in {pool.name for pool in world.instance.event_log_storage.get_pool_limits()}
