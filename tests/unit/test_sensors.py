"""Landing sensor with Dagster's sensor test context: run requests, run keys, cursor, quarantine."""

import json
import shutil

import dagster as dg
import pytest

from ml.data.ingest import file_sha256
from orchestration.resources import RlxfSettings
from orchestration.sensors import mona_landing_sensor, run_key_for


@pytest.fixture()
def settings(tmp_path):
    return RlxfSettings(profile="smoke", home=str(tmp_path))


def evaluate(settings, cursor=None):
    context = dg.build_sensor_context(cursor=cursor, resources={"rlxf": settings})
    result = mona_landing_sensor(context)
    return result, context.cursor


def test_new_file_starts_one_run_keyed_by_its_sha(settings, tmp_path, paper_sample_csv):
    landing = settings.data_home().landing
    shutil.copy(paper_sample_csv, landing / "reviews_2024.csv")
    result, cursor = evaluate(settings)
    assert isinstance(result, dg.RunRequest)
    sha = file_sha256(landing / "reviews_2024.csv")
    assert result.run_key == sha
    assert json.loads(cursor) == [sha]

    # Same file again (e.g. after a restart, with the stored cursor): no run.
    again, cursor_again = evaluate(settings, cursor=cursor)
    assert isinstance(again, dg.SkipReason) and "no new MONA files" in again.skip_message
    assert cursor_again == cursor


def test_files_arriving_together_start_one_run(settings, paper_sample_csv):
    landing = settings.data_home().landing
    for name in ("a.csv", "b.csv"):
        text = paper_sample_csv.read_text(encoding="utf-8")
        (landing / name).write_text(text + f"KENYA,20.2,1.2. Revenue administration,Condition {name},1,"
                                    "06/30/2020,M\n", encoding="utf-8")
    result, cursor = evaluate(settings)
    assert isinstance(result, dg.RunRequest)
    hashes = [file_sha256(landing / name) for name in ("a.csv", "b.csv")]
    assert result.run_key == run_key_for(hashes) and len(json.loads(cursor)) == 2
    assert "a.csv" in result.tags["rlxf/files"] and "b.csv" in result.tags["rlxf/files"]


def test_changed_file_triggers_again(settings, paper_sample_csv):
    landing = settings.data_home().landing
    target = landing / "mona.csv"
    shutil.copy(paper_sample_csv, target)
    first, cursor = evaluate(settings)
    target.write_text(target.read_text(encoding="utf-8") + "GHANA,20.2,1.2. Revenue administration,New,1,"
                      "06/30/2021,NM\n", encoding="utf-8")
    second, _ = evaluate(settings, cursor=cursor)
    assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key


def test_malformed_file_is_quarantined_with_a_skip_reason(settings):
    home = settings.data_home()
    bad = home.landing / "MONA_StructuralConditions.xlsx"
    bad.write_text("this is not a workbook", encoding="utf-8")
    result, cursor = evaluate(settings)
    assert isinstance(result, dg.SkipReason)
    assert "quarantined 1 malformed file" in result.skip_message
    assert "not a valid Excel workbook" in result.skip_message
    assert not bad.exists() and (home.quarantine / bad.name).exists()
    assert (home.quarantine / (bad.name + ".reason.txt")).exists()
    assert len(json.loads(cursor)) == 1


def test_partial_uploads_are_ignored(settings, paper_sample_csv):
    landing = settings.data_home().landing
    shutil.copy(paper_sample_csv, landing / ".mona.csv.partial")
    result, _ = evaluate(settings)
    assert isinstance(result, dg.SkipReason)
