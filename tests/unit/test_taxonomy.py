"""Seed-driven taxonomy parity: Python's economic areas and status labels are the dbt seeds' rows, and
Python's economic-code rule and status normalization agree with what the seeds hold. The SQL twins
(the `economic_code_for_number` and `status_code` macros) are compared with these functions on built
tables in tests/integration/test_dbt.py."""

from __future__ import annotations

import pytest

from ml.data import synthetic
from ml.data.taxonomy import (
    ECONOMIC_AREAS,
    STATUS_LABELS,
    economic_code_for_number,
    read_seed,
    status_code,
    status_label,
)


def test_economic_areas_are_the_seed_rows_and_their_codes_follow_the_rule():
    seed = read_seed("economic_areas")
    assert [(area.number, area.name) for area in ECONOMIC_AREAS] == [
        (row["economic_descriptor_number"], row["economic_area"]) for row in seed]
    assert [area.code for area in ECONOMIC_AREAS] == [float(row["economic_code"]) for row in seed]
    assert len({area.code for area in ECONOMIC_AREAS}) == len(ECONOMIC_AREAS) == 28
    assert economic_code_for_number("1.6.") == 20.6 and economic_code_for_number("10.") == 29.0


def test_status_labels_are_the_seed_rows_keyed_by_their_normalized_code():
    seed = read_seed("status_label_map")
    assert STATUS_LABELS == {row["status_code"]: row["label"] for row in seed}
    assert all(status_code(code) == code for code in STATUS_LABELS)
    assert set(STATUS_LABELS.values()) == {"MET", "NON_MET", "EXCLUDED"}


@pytest.mark.parametrize(("status", "label"), [
    ("Not-met.", "NON_MET"), ("  partially   met ", "MET"), ("Met (with delay)", "NON_MET"),
    ("n/a", "EXCLUDED"), ("PC", "EXCLUDED"), ("XYZ", None), ("", None), (None, None),
])
def test_status_label_normalizes_like_the_status_code_macro(status, label):
    assert status_label(status) == label


def test_the_synthetic_generator_labels_its_statuses_through_the_label_map():
    for form in (*synthetic.STATUS_SHORT[1:], *synthetic.STATUS_LONG[1:]):
        assert synthetic.status_outcome(form) == status_label(form) in ("MET", "NON_MET"), form
    assert synthetic.status_outcome("") == "PENDING"
