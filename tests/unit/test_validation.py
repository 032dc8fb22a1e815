"""The Great Expectations gate over the splits (real GX 1.x, ephemeral context, no mocks).

A good synthetic split table passes every expectation; each corruption fails exactly the
expectation meant to catch it, and the failure text names the offending value. The structural
rules (a condition or an arrangement in two splits, empty texts) are dbt tests now:
tests/integration/test_dbt.py corrupts a built mona_splits and asserts that dbt catches them.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from ml.config import get_profile
from ml.data.validation import ExpectationOutcome, SplitValidation, split_shares, validate_splits

SETTINGS = get_profile("smoke").data  # min_examples 100, tolerance 0.10, MET share 0.25-0.90, unknown <= 0.02
N_ARRANGEMENTS = 60
ROWS_PER_ARRANGEMENT = 10


def _split_of(arrangement: int) -> str:
    """70/10/20 over arrangements: 0-6 train, 7 validation, 8-9 test (per ten)."""
    slot = arrangement % 10
    return "train" if slot < 7 else ("validation" if slot == 7 else "test")


def make_splits(split_of=_split_of) -> pd.DataFrame:
    rows = []
    for a in range(N_ARRANGEMENTS):
        for j in range(ROWS_PER_ARRANGEMENT):
            met = (a + j) % 20 < 13  # 65% MET overall, and among the first row of each arrangement
            description = f"Adopt the budget law number {a}-{j}"
            rows.append({
                "condition_id": f"C{a:03d}-{j:02d}",
                "arrangement_key": f"A{a:03d}",
                "country": "Kenya",
                "arrangement_type": "ECF",
                "economic_area": "Fiscal",
                "description": description,
                "reward_text": f"Country: Kenya; Type of arrangement: ECF; Economic classification: "
                               f"Fiscal; Condition: {description}",
                "label": "MET" if met else "NON_MET",
                "is_met": int(met),
                "split": split_of(a),
                "is_temporal_holdout": a >= 55,
                "test_year": 2010 + a % 12,
            })
    frame = pd.DataFrame(rows)
    frame["test_year"] = frame["test_year"].astype("Int64")
    return frame


def make_labeled(splits: pd.DataFrame, n_unknown: int = 0) -> pd.DataFrame:
    labeled = pd.DataFrame({
        "condition_id": splits["condition_id"],
        "label": splits["label"],
        "label_reason": "mapped",
    })
    extra = pd.DataFrame({
        "condition_id": [f"X{i:03d}" for i in range(40)],
        "label": "EXCLUDED",
        "label_reason": "not_assessed",
    })
    labeled = pd.concat([labeled, extra], ignore_index=True)
    if n_unknown:
        labeled.loc[: n_unknown - 1, ["label", "label_reason"]] = ["EXCLUDED", "unknown_status"]
    return labeled


def failed(result: SplitValidation) -> set[tuple[str, str, str | None]]:
    return {(o.table, o.expectation, o.column) for o in result.failures()}


def only_failure(result: SplitValidation) -> ExpectationOutcome:
    failures = result.failures()
    assert len(failures) == 1, [f"{o.table}.{o.expectation}({o.column}): {o.observed}" for o in failures]
    assert not result.success
    return failures[0]


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return make_splits()


def test_good_splits_pass_every_expectation(good):
    result = validate_splits(good, make_labeled(good), SETTINGS)
    assert result.success, result.to_markdown()
    assert result.failures() == []
    keys = {(o.table, o.expectation, o.column) for o in result.outcomes}
    assert keys == {
        ("mona_splits", "expect_table_row_count_to_be_between", None),
        ("mona_splits", "expect_column_mean_to_be_between", "is_met"),
        ("split_shares", "expect_column_values_to_be_between", "n_rows"),
        ("split_shares", "expect_column_values_to_be_between", "abs_deviation"),
        ("int_mona__labeled", "expect_column_mean_to_be_between", "is_unknown_status"),
    }
    assert all(o.description for o in result.outcomes)
    metadata = result.to_metadata()
    assert metadata["n_failed"] == 0 and metadata["failed"] == []
    assert metadata["n_expectations"] == len(result.outcomes)
    assert "PASSED" in result.to_markdown()


def test_all_met_fails_class_balance(good):
    splits = good.assign(label="MET", is_met=1)
    result = validate_splits(splits, make_labeled(splits), SETTINGS)
    failure = only_failure(result)
    assert (failure.table, failure.expectation, failure.column) == (
        "mona_splits", "expect_column_mean_to_be_between", "is_met")
    assert failure.result["result"]["observed_value"] == 1 and "0.9" in failure.description


def test_too_few_rows_fails_row_count(good):
    splits = good.groupby("arrangement_key").head(1).reset_index(drop=True)  # 60 rows, same shares
    failure = only_failure(validate_splits(splits, make_labeled(splits), SETTINGS))
    assert (failure.table, failure.expectation, failure.column) == (
        "mona_splits", "expect_table_row_count_to_be_between", None)
    assert failure.result["result"]["observed_value"] == 60 and "100" in failure.description


def test_split_shares_far_off_fail_deviation():
    # 40/10/50 instead of 70/10/20: train and test 0.3 off.
    splits = make_splits(lambda a: "train" if a % 10 < 4 else ("validation" if a % 10 == 4 else "test"))
    failure = only_failure(validate_splits(splits, make_labeled(splits), SETTINGS))
    assert (failure.table, failure.expectation, failure.column) == (
        "split_shares", "expect_column_values_to_be_between", "abs_deviation")
    offending = {row["split"] for row in failure.result["result"]["partial_unexpected_index_list"]}
    assert offending == {"train", "test"}


def test_missing_validation_split_fails_presence():
    splits = make_splits(lambda a: "train" if a % 10 < 8 else "test")  # 80/0/20
    settings = replace(SETTINGS, split_share_tolerance=0.05)
    result = validate_splits(splits, make_labeled(splits), settings)
    assert failed(result) == {
        ("split_shares", "expect_column_values_to_be_between", "n_rows"),
        ("split_shares", "expect_column_values_to_be_between", "abs_deviation"),
    }
    presence = next(o for o in result.failures() if o.column == "n_rows")
    assert [row["split"] for row in presence.result["result"]["partial_unexpected_index_list"]] == ["validation"]


def test_unknown_statuses_above_threshold_fail(good):
    labeled = make_labeled(good, n_unknown=32)  # 32 / 640 = 5% > 2%
    failure = only_failure(validate_splits(good, labeled, SETTINGS))
    assert (failure.table, failure.expectation, failure.column) == (
        "int_mona__labeled", "expect_column_mean_to_be_between", "is_unknown_status")
    assert failure.result["result"]["observed_value"] == pytest.approx(0.05) and "0.02" in failure.description


def test_reports_name_the_failure(good):
    splits = good.groupby("arrangement_key").head(1).reset_index(drop=True)
    result = validate_splits(splits, make_labeled(splits), SETTINGS)
    markdown = result.to_markdown()
    assert markdown.startswith("**FAILED**: 4 of 5 expectations passed, 1 failed.")
    fail_rows = [line for line in markdown.splitlines() if "FAIL " in line and line.startswith("|")]
    assert len(fail_rows) == 1
    assert "mona_splits.expect_table_row_count_to_be_between" in fail_rows[0] and "100" in fail_rows[0]
    metadata = result.to_metadata()
    assert metadata["n_failed"] == 1 and metadata["n_expectations"] == len(result.outcomes)
    assert metadata["failed"][0].startswith(
        "mona_splits.expect_table_row_count_to_be_between: At least 100 examples.: ")
    assert '"observed_value": 60' in metadata["failed"][0]

def test_split_shares_table():
    splits = pd.DataFrame({"split": ["train", "test", "train", "test"]})
    shares = split_shares(splits, SETTINGS.split_targets).set_index("split")
    assert list(shares.index) == ["train", "validation", "test"]
    assert shares.loc["validation", "n_rows"] == 0
    assert shares.loc["train", "abs_deviation"] == pytest.approx(0.2)

def test_great_expectations_is_imported_lazily():
    code = "import sys, ml.data.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
