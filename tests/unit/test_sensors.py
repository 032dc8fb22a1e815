"""Landing sensor with Dagster's sensor test context: run requests, run keys, the manifest, the cursor."""

import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest

from ml.data.ingest import file_sha256, ingest_landing, manifest_path
from orchestration.resources import RlxfSettings
from orchestration.sensors import mona_landing_sensor, run_key_for


@pytest.fixture()
def settings(tmp_path):
    return RlxfSettings(profile="smoke", home=str(tmp_path))


@pytest.fixture()
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def evaluate(settings, instance, cursor=None):
    context = dg.build_sensor_context(cursor=cursor, resources={"rlxf": settings}, instance=instance)
    result = mona_landing_sensor(context)
    return result, context.cursor


def ingest(settings):
    home = settings.data_home()
    return ingest_landing(home.landing, home.warehouse, home.quarantine, progress=lambda _: None)


def test_new_file_starts_one_run_keyed_by_its_sha(settings, instance, paper_sample_csv):
    landing = settings.data_home().landing
    shutil.copy(paper_sample_csv, landing / "reviews_2024.csv")
    result, cursor = evaluate(settings, instance)
    assert isinstance(result, dg.RunRequest)
    sha = file_sha256(landing / "reviews_2024.csv")
    assert result.run_key == sha
    assert json.loads(cursor)["files"]["reviews_2024.csv"][2] == sha
    # Until the run has ingested it, the file is not requested again (e.g. after a restart).
    again, cursor_again = evaluate(settings, instance, cursor=cursor)
    assert isinstance(again, dg.SkipReason) and "waiting for the run already requested" in again.skip_message
    assert cursor_again == cursor


def test_unchanged_file_is_not_hashed_again(settings, instance, paper_sample_csv):
    landing = settings.data_home().landing
    target = landing / "reviews.csv"
    shutil.copy(paper_sample_csv, target)
    first, cursor = evaluate(settings, instance)
    # Same size, same mtime, other bytes: the sensor trusts its cached sha256 (it does not re-read), so
    # it sees the file it already requested, not a new one.
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-2:-1] = b"X"
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again, cursor_again = evaluate(settings, instance, cursor=cursor)
    assert isinstance(first, dg.RunRequest) and isinstance(again, dg.SkipReason)
    assert cursor_again == cursor
    # A new mtime: hashed again, and the changed bytes are new data.
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed, _ = evaluate(settings, instance, cursor=cursor)
    assert isinstance(changed, dg.RunRequest) and changed.run_key == file_sha256(target) != first.run_key


def test_files_already_ingested_start_nothing_however_they_got_there(settings, instance, paper_sample_csv):
    landing = settings.data_home().landing
    shutil.copy(paper_sample_csv, landing / "reviews.csv")
    ingest(settings)  # e.g. `make demo` loaded it through the job, not through this sensor
    result, cursor = evaluate(settings, instance)  # no cursor: a sensor that never saw these files
    assert isinstance(result, dg.SkipReason) and "no new MONA files" in result.skip_message
    assert json.loads(cursor) == {"files": {}, "requested": []}  # the manifest describes every file
    # A copy under another name is the same data: still nothing.
    shutil.copy(paper_sample_csv, landing / "copy_of_reviews.csv")
    result, cursor = evaluate(settings, instance, cursor=cursor)
    assert isinstance(result, dg.SkipReason)
    assert list(json.loads(cursor)["files"]) == ["copy_of_reviews.csv"]  # hashed once, then cached


def test_files_arriving_together_start_one_run(settings, instance, paper_sample_csv):
    landing = settings.data_home().landing
    for name in ("a.csv", "b.csv"):
        text = paper_sample_csv.read_text(encoding="utf-8")
        (landing / name).write_text(text + f"KENYA,20.2,1.2. Revenue administration,Condition {name},1,"
                                    "06/30/2020,M\n", encoding="utf-8")
    result, _ = evaluate(settings, instance)
    assert isinstance(result, dg.RunRequest)
    hashes = [file_sha256(landing / name) for name in ("a.csv", "b.csv")]
    assert result.run_key == run_key_for(hashes)
    assert "a.csv" in result.tags["rlxf/files"] and "b.csv" in result.tags["rlxf/files"]


def test_changed_file_triggers_again(settings, instance, paper_sample_csv):
    landing = settings.data_home().landing
    target = landing / "mona.csv"
    shutil.copy(paper_sample_csv, target)
    first, cursor = evaluate(settings, instance)
    ingest(settings)
    target.write_text(target.read_text(encoding="utf-8") + "GHANA,20.2,1.2. Revenue administration,New,1,"
                      "06/30/2021,NM\n", encoding="utf-8")
    second, _ = evaluate(settings, instance, cursor=cursor)
    assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key
    assert second.run_key == file_sha256(target)


def test_malformed_file_is_left_to_the_ingestion_asset(settings, instance):
    # The sensor only looks: reading and quarantining are the asset's work (a broken workbook used to
    # raise in the sensor on every tick).
    home = settings.data_home()
    bad = home.landing / "MONA_StructuralConditions.xlsx"
    bad.write_text("this is not a workbook", encoding="utf-8")
    result, _ = evaluate(settings, instance)
    assert isinstance(result, dg.RunRequest) and result.run_key == file_sha256(bad)
    assert bad.exists() and not list(home.quarantine.iterdir())
    ingest(settings)  # the run quarantines it ...
    again, _ = evaluate(settings, instance)
    assert isinstance(again, dg.SkipReason)  # ... and a quarantined file never starts another run


def test_partial_uploads_are_ignored(settings, instance, paper_sample_csv):
    landing = settings.data_home().landing
    shutil.copy(paper_sample_csv, landing / ".mona.csv.partial")
    result, _ = evaluate(settings, instance)
    assert isinstance(result, dg.SkipReason)


def test_waits_while_a_run_it_started_is_in_flight(settings, instance, paper_sample_csv):
    shutil.copy(paper_sample_csv, settings.data_home().landing / "reviews.csv")
    run = instance.add_run(dg.DagsterRun(job_name="rlxf_retraining", status=dg.DagsterRunStatus.STARTED,
                                         tags={"rlxf/trigger": "landing_sensor"}))
    result, _ = evaluate(settings, instance)
    assert isinstance(result, dg.SkipReason) and run.run_id in result.skip_message
    instance.report_run_failed(run)
    result, _ = evaluate(settings, instance)
    assert isinstance(result, dg.RunRequest)


def test_cursor_stays_bounded_as_files_accumulate(settings, instance, paper_sample_csv):
    landing = settings.data_home().landing
    text = paper_sample_csv.read_text(encoding="utf-8")
    cursor = None
    for batch in range(3):
        for i in range(40):
            (landing / f"export_{batch}_{i}.csv").write_text(
                text + f"KENYA,20.2,1.2. Revenue administration,Condition {batch}-{i},1,06/30/2020,M\n",
                encoding="utf-8")
        result, cursor = evaluate(settings, instance, cursor=cursor)
        assert isinstance(result, dg.RunRequest)
        assert len(json.loads(cursor)["files"]) == len(json.loads(cursor)["requested"]) == 40  # not ingested yet
        ingest(settings)
    result, cursor = evaluate(settings, instance, cursor=cursor)
    assert isinstance(result, dg.SkipReason) and "120 file(s)" in result.skip_message
    assert json.loads(cursor) == {"files": {}, "requested": []}


def test_warehouse_without_manifest_is_read_and_a_locked_one_is_waited_for(settings, instance, paper_sample_csv):
    home = settings.data_home()
    shutil.copy(paper_sample_csv, home.landing / "reviews.csv")
    ingest(settings)
    manifest_path(home.warehouse).unlink()  # a warehouse written before manifests existed
    result, _ = evaluate(settings, instance)
    assert isinstance(result, dg.SkipReason) and "no new MONA files" in result.skip_message
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import duckdb, time; c = duckdb.connect({str(home.warehouse)!r}); "
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result, _ = evaluate(settings, instance)
        assert isinstance(result, dg.SkipReason) and "cannot tell which files are loaded" in result.skip_message
    finally:
        holder.kill()
        holder.wait()
