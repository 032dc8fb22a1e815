"""The data graph as Dagster runs it: definitions load, the whole graph materializes in process on
the smoke profile with real DuckDB, dbt and Great Expectations, and a failing suite blocks downstream."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest

from ml.data.synthetic import generate_mona
from orchestration.definitions import build_definitions
from orchestration.resources import RlxfSettings, build_resources, settings_from_env

pytestmark = pytest.mark.integration

DATA_ASSETS = {"raw_mona_conditions", "stg_mona__conditions", "int_mona__latest_status", "int_mona__labeled",
               "mona_examples", "mona_splits", "validated_splits", "status_label_map", "economic_areas"}


def run_data_platform(home):
    settings = RlxfSettings(profile="smoke", home=str(home), seed_synthetic=True)
    defs = build_definitions(build_resources(settings))
    job = defs.resolve_job_def("mona_data_platform")
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def materialization(result, key):
    events = [e for e in result.get_asset_materialization_events()
              if e.asset_key == dg.AssetKey(key)]
    return events[-1].materialization if events else None


def check_results(result):
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def test_definitions_load_and_show_the_lineage():
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert DATA_ASSETS <= keys
    # The dbt source is the Python ingestion asset: one node, connected lineage.
    assert dg.AssetKey("raw_mona_conditions") in graph.get(dg.AssetKey("stg_mona__conditions")).parent_keys
    assert dg.AssetKey("mona_splits") in graph.get(dg.AssetKey("validated_splits")).parent_keys
    check_names = {key.name for key in graph.asset_check_keys}
    assert "great_expectations_suite" in check_names
    assert any(name.startswith("not_null_") for name in check_names)  # dbt tests are asset checks


def test_resources_read_the_environment_through_envvar(monkeypatch):
    for name in ("RLXF_PROFILE", "RLXF_HOME", "RLXF_MODEL_CACHE", "RLXF_SEED_SYNTHETIC", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    unset = settings_from_env()  # build_resources() wraps it to be configurable at launch
    assert (unset.profile, unset.home, unset.seed_synthetic) == ("demo", "", None)
    assert build_resources()["mlflow"].tracking_uri == ""
    monkeypatch.setenv("RLXF_PROFILE", "smoke")
    monkeypatch.setenv("RLXF_SEED_SYNTHETIC", "1")
    settings = settings_from_env()
    assert isinstance(settings.profile, dg.EnvVar) and settings.profile.env_var_name == "RLXF_PROFILE"
    assert settings.seed_synthetic is True


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("smoke_home")
    return home, run_data_platform(home)


def test_whole_data_graph_materializes(first_run):
    home, result = first_run
    assert result.success
    raw = materialization(result, "raw_mona_conditions").metadata
    assert raw["files_loaded"].value == 2 and raw["files_quarantined"].value == 0
    assert raw["rows_loaded"].value == 1_200 + 10  # synthetic export + the paper's rows
    checks = check_results(result)
    assert checks["great_expectations_suite"].passed
    assert all(evaluation.passed for evaluation in checks.values()), [
        name for name, evaluation in checks.items() if not evaluation.passed]
    manifest = json.loads((home / "exports" / "splits" / "manifest.json").read_text())
    train = pd.read_parquet(home / "exports" / "splits" / "train.parquet")
    assert len(train) == manifest["rows"]["train"] > 0
    assert set(train["label"]) == {"MET", "NON_MET"}
    assert materialization(result, "validated_splits").metadata["content_hash"].value == manifest["content_hash"]


def test_rerun_is_idempotent(first_run):
    home, _ = first_run
    before = json.loads((home / "exports" / "splits" / "manifest.json").read_text())
    result = run_data_platform(home)
    assert result.success
    raw = materialization(result, "raw_mona_conditions").metadata
    assert raw["rows_loaded"].value == 0 and raw["files_already_loaded"].value == 2
    after = json.loads((home / "exports" / "splits" / "manifest.json").read_text())
    assert after == before


def test_failing_suite_blocks_downstream_and_keeps_the_last_good_snapshot(first_run, tmp_path):
    home, _ = first_run
    snapshot = (home / "exports" / "splits" / "manifest.json").read_text()
    # A new export in which every condition failed: the class balance falls outside the bounds.
    failed = generate_mona(3_000, seed=99).export
    failed["PC Status"] = failed["PC Status"].where(failed["PC Status"] == "", "NM")
    failed.to_csv(home / "landing" / "all_failed.csv", index=False)

    result = run_data_platform(home)
    assert not result.success
    suite = check_results(result)["great_expectations_suite"]
    assert not suite.passed
    failed_expectations = suite.metadata["failed"].value
    assert any("mean" in line and "is_met" in line for line in failed_expectations), failed_expectations
    assert materialization(result, "validated_splits") is None  # blocked
    assert (home / "exports" / "splits" / "manifest.json").read_text() == snapshot
