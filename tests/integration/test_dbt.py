"""`dbt build` of dbt_project/ on a small hand-made raw table: the paper's ten real rows plus
arrangements whose conditions recur over reviews with changing statuses.

One build for the whole module (about 10 s); every test reads the resulting DuckDB file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from ml.config import get_profile
from ml.data.schema import CANONICAL_COLUMNS
from ml.data.taxonomy import economic_code_for_number, status_code, status_label
from ml.data.text import reward_input_text
from ml.data.warehouse import PROVENANCE_COLUMNS, RAW_CONDITIONS, create_raw_tables, dbt_vars

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DBT_PROJECT = REPO_ROOT / "dbt_project"
PAPER_SAMPLE = REPO_ROOT / "ml" / "data" / "samples" / "mona_table2_sample.csv"
DBT = Path(sys.executable).with_name("dbt")
# dbt's vars come from the profile, as in the Dagster asset.
DATA = get_profile("smoke").data

# The tests that are expected to warn on this data, and why.
EXPECTED_WARNINGS = {
    "stg_mona__conditions_status_code_in_label_map",  # the 'XYZ' status
    "stg_mona__conditions_economic_code_matches_descriptor",  # code 20.5 with descriptor 1.6.
}

KENYA_ECF = {"arrangement_number": "1001", "country": "Kenya", "country_code": "ken",
             "arrangement_type": "ECF", "approval_date": "2015-03-01"}
GHANA_PRGF = {"country": "GHANA", "country_code": "GHA", "arrangement_type": " prgf ",
              "approval_date": "2009-07-15"}
UKRAINE_SBA = {"arrangement_number": "2002", "country": "UKRAINE", "arrangement_type": "SBA",
               "approval_date": "2021-06-01", "condition_type": "SB"}

TREASURY = {"economic_code": "20.6",
            "economic_descriptor": "1.6. Expenditure auditing, accounting, and financial controls",
            "description": "Adopt a treasury single account"}
ARREARS = {"economic_code": "20.3",
           "economic_descriptor": "1.3. Expenditure measures, including arrears clearance",
           "description": "Clear domestic arrears of the central government"}
# Whitespace Python's str.split() removes: tab, no-break space, em space, newline.
BUDGET_LAW = {"economic_descriptor": "1.8.  Budget preparation\t(e.g., submission or approval)",
              "description": "Submit\tthe  2010 budget\u00a0law to\u2003Parliament\n"}


def _paper_rows() -> list[dict]:
    sample = pd.read_csv(PAPER_SAMPLE, dtype=str, keep_default_na=False)
    rows = []
    for index, record in enumerate(sample.to_dict("records")):
        test_date_text = record["TestDate"]
        try:
            test_date = datetime.strptime(test_date_text, "%m/%d/%Y").date().isoformat()
        except ValueError:
            test_date = None
        rows.append({
            "country": record["Country Name"],
            "economic_code": record["Economic Code"],
            "economic_descriptor": record["Economic Descriptor"],
            "description": record["Description"],
            "description_code": record["Description Code"],
            "test_date": test_date,
            "test_date_text": test_date_text,
            "status": record["PC Status"],
            "source_file": PAPER_SAMPLE.name,
            "source_row": index + 2,
        })
    return rows


def _review(arrangement: dict, condition: dict, review: str | None, test_date: str, status: str | None,
            **overrides) -> dict:
    return {**arrangement, **condition, "review_type": review, "test_date": test_date,
            "test_date_text": test_date, "status": status, **overrides}


def _export_rows() -> list[dict]:
    """A first MONA export (file 1) and a later re-export (file 2)."""
    file_1 = [
        # Kenya: blank at R1, not met at R2, met at R3 -> latest MET.
        _review(KENYA_ECF, TREASURY, "R1", "2015-12-31", None),
        _review(KENYA_ECF, TREASURY, "R2", "2016-06-30", "NM"),
        _review(KENYA_ECF, TREASURY, "R3", "2016-12-31", "M"),
        # Not met, then delayed, then not yet assessed at R3 -> latest assessed is DELAYED.
        _review(KENYA_ECF, ARREARS, "R1", "2015-12-31", "Not met"),
        _review(KENYA_ECF, ARREARS, "R2", "2016-06-30", "Delayed"),
        _review(KENYA_ECF, ARREARS, "R3", "2016-12-31", None),
        # A status form the label map does not know.
        _review(KENYA_ECF, {"economic_code": "21.1", "description": "Recapitalize the central bank"},
                "R1", "2015-12-31", "XYZ"),
        # Never assessed.
        _review(KENYA_ECF, {"economic_code": "25.2", "description": "Privatize the state savings bank"},
                "R2", "2017-06-30", None),
        # No code: derived from the descriptor number (6.1. -> 25.1).
        _review(KENYA_ECF, {"economic_descriptor": "6.1. Financial sector legal reforms, regulation, and supervision",
                            "description": "Enact the banking law"}, "R2", "2016-06-30", "Partially met"),
        # No descriptor: the economic area comes from the seed by code.
        _review(KENYA_ECF, {"economic_code": "27.1", "description": "Restructure the power utility"},
                "R3", "2017-03-31", "Met"),
        # Code inconsistent with its descriptor number (1.6. implies 20.6): warned, kept.
        _review(KENYA_ECF, {"economic_code": "20.5", "economic_descriptor": TREASURY["economic_descriptor"],
                            "description": "Publish the audited accounts"}, "R3", "2017-03-31", "M"),
        # Ghana (upper case, no arrangement number, text reviews): not met, then waived.
        _review(GHANA_PRGF, BUDGET_LAW, "First Review", "2009-12-31", "NM"),
        _review(GHANA_PRGF, BUDGET_LAW, "Second Review", "2010-06-30", "Waived"),
        # Prior action: no review type, no condition type; both read from the test date text.
        _review(GHANA_PRGF, {"economic_code": "20.1", "description": "Raise the VAT rate to 15 percent"},
                None, None, "M", test_date_text="Second Review Prior action"),
        # MONA's "still outstanding" code: mapped to EXCLUDED.
        _review(GHANA_PRGF, {"economic_code": "20.2", "description": "Computerize customs"},
                "Second Review", "2010-06-30", "PC", approval_date="to be confirmed"),
        # Ukraine: recent years, for the temporal holdout.
        _review(UKRAINE_SBA, {"economic_code": "25.1", "description": "Adopt the bank resolution law"},
                "R1", "2021-12-31", "Reprogrammed"),
        _review(UKRAINE_SBA, {"economic_code": "25.3", "description": "Launch the securities depository"},
                "R2", "2022-06-30", "MET"),
    ]
    for row_number, row in enumerate(file_1, start=2):
        row.update(source_file="mona_export_2018.xlsx", source_row=row_number)
    file_2 = [
        # The same R2 and R3 assessments again, in a later export: one assessment per review.
        _review(KENYA_ECF, TREASURY, "R2", "2016-06-30", "NM"),
        _review(KENYA_ECF, TREASURY, "R3", "2016-12-31", "M"),
        # A paper row re-exported in title case: the same condition as the upper-case one.
        {"country": "Sierra Leone", "economic_code": "20.7",
         "economic_descriptor": "1.7. Fiscal transparency (publication, parliamentary oversight)",
         "description": _paper_rows()[6]["description"], "test_date": "2019-09-30",
         "test_date_text": "09/30/2019", "status": "M"},
    ]
    for row_number, row in enumerate(file_2, start=2):
        row.update(source_file="mona_export_2019.csv", source_row=row_number)
    # A workbook whose second sheet repeats a row of the first (same review, same row number), with
    # status spellings the label map must know after normalization.
    modified = {"economic_code": "20.2", "description": "Strengthen the large taxpayers office"}
    sheet_1 = [
        _review(KENYA_ECF, modified, "R4", "2017-06-30", "Implemented with modifications"),
        _review(KENYA_ECF, {"economic_code": "20.5", "description": "Publish the debt report"},
                "R4", "2017-06-30", "Not-met."),
        _review(KENYA_ECF, {"economic_code": "25.2", "description": "Sell the state insurer"},
                "R4", "2017-06-30", "Superseded"),
        _review(KENYA_ECF, {"economic_code": "27.1", "description": "Unbundle the power utility"},
                "R4", "2017-12-31", "Not yet due"),
    ]
    for row_number, row in enumerate(sheet_1, start=2):
        row.update(source_file="mona_export_2020.xlsx", source_sheet="ECF", source_row=row_number)
    sheet_2 = [_review(KENYA_ECF, modified, "R4", "2017-06-30", "Implemented with modifications",
                       source_file="mona_export_2020.xlsx", source_sheet="ECF (copy)", source_row=2)]
    return file_1 + file_2 + sheet_1 + sheet_2


def _insert_raw_rows(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    ingested_at = {PAPER_SAMPLE.name: datetime(2024, 1, 1), "mona_export_2018.xlsx": datetime(2024, 2, 1),
                   "mona_export_2019.csv": datetime(2024, 3, 1), "mona_export_2020.xlsx": datetime(2024, 4, 1)}
    columns = [*CANONICAL_COLUMNS, *PROVENANCE_COLUMNS]
    values = []
    for row in rows:
        row = {**row, "source_sha256": hashlib.sha256(row["source_file"].encode()).hexdigest(),
               "ingested_at": ingested_at[row["source_file"]]}
        values.append([row.get(column) for column in columns])
    placeholders = ", ".join("?" for _ in columns)
    con.executemany(f"insert into {RAW_CONDITIONS} ({', '.join(columns)}) values ({placeholders})", values)


def _dbt(*args: str, tmp: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DBT), *args, "--project-dir", str(DBT_PROJECT), "--profiles-dir", str(DBT_PROJECT),
         "--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs"), "--no-use-colors"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Raw rows loaded, `dbt build` run once; yields (read-only connection, raw rows, run results)."""
    tmp = tmp_path_factory.mktemp("dbt")
    database = tmp / "warehouse.duckdb"
    rows = _paper_rows() + _export_rows()
    with duckdb.connect(str(database)) as con:
        create_raw_tables(con)
        _insert_raw_rows(con, rows)
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    result = _dbt("build", "--vars", json.dumps(dbt_vars(DATA, database)), tmp=tmp, env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    run_results = json.loads((tmp / "target" / "run_results.json").read_text())
    con = duckdb.connect(str(database), read_only=True)
    yield con, rows, run_results
    con.close()


def _frame(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    return con.sql(sql).df()


def _records(con: duckdb.DuckDBPyConnection, sql: str, parameters: list | None = None) -> list[dict]:
    """Rows as dicts with SQL NULL as None (pandas would turn a NULL text into NaN)."""
    cursor = con.execute(sql, parameters or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _labeled(con, description: str) -> dict:
    records = _records(con, "select * from main.int_mona__labeled where description = ?", [description])
    assert len(records) == 1, description
    return records[0]


def test_build_passes_with_only_the_expected_warnings(built):
    _, _, run_results = built
    # unique_id: `test.rlxf_mona.<name>.<hash>`, `model.rlxf_mona.<name>`, `unit_test.rlxf_mona.<model>.<name>`
    statuses = {
        result["unique_id"].split(".")[3 if result["unique_id"].startswith("unit_test.") else 2]: result["status"]
        for result in run_results["results"]
    }
    assert {name for name, status in statuses.items() if status not in ("pass", "success", "warn")} == set()
    assert {name for name, status in statuses.items() if status == "warn"} == EXPECTED_WARNINGS
    # The label-collapse unit test ran and passed.
    assert statuses["int_mona__labeled_collapses_statuses_into_labels"] == "pass"
    assert statuses["mona_splits_one_split_per_arrangement"] == "pass"


def test_staging_keeps_every_raw_row_and_collapses_whitespace_like_python(built):
    con, rows, _ = built
    staged = _frame(con, "select source_file, source_row, description from main.stg_mona__conditions")
    assert len(staged) == len(rows)
    expected = {(row["source_file"], row["source_row"]): " ".join(row["description"].split()) for row in rows}
    assert {(r.source_file, r.source_row): r.description for r in staged.itertuples()} == expected


def test_upper_case_countries_are_title_cased_and_grouped_with_title_case_exports(built):
    con, _, _ = built
    countries = set(_frame(con, "select distinct country from main.stg_mona__conditions")["country"])
    assert {"Gabon", "Sierra Leone", "Ghana", "Ukraine", "Kenya", "Uruguay"} <= countries
    assert not any(country == country.upper() for country in countries)
    sierra_leone = _frame(con, "select n_rows from main.int_mona__latest_status where country = 'Sierra Leone'")
    assert sierra_leone["n_rows"].tolist() == [2]


def test_latest_status_is_the_last_assessed_review(built):
    con, _, _ = built
    treasury = _labeled(con, TREASURY["description"])
    # R1 blank, R2 NM, R3 M, and R2/R3 again in a later export.
    assert (treasury["status_code"], treasury["review_sequence"], treasury["label"]) == ("M", 3, "MET")
    assert treasury["status_history"] == "NM > M"
    assert (treasury["n_rows"], treasury["n_reviews"]) == (5, 3)
    arrears = _labeled(con, ARREARS["description"])
    # The blank R3 (not yet assessed) does not hide the R2 assessment.
    assert (arrears["status_code"], arrears["review_sequence"], arrears["label"]) == ("DELAYED", 2, "NON_MET")
    assert arrears["status_history"] == "NOT MET > DELAYED"
    ghana = _labeled(con, " ".join(BUDGET_LAW["description"].split()))
    assert (ghana["review_sequence"], ghana["status_code"], ghana["label"]) == (2, "WAIVED", "NON_MET")


def test_unknown_and_unassessed_statuses_are_excluded_not_non_met(built):
    con, _, _ = built
    unknown = _labeled(con, "Recapitalize the central bank")
    assert (unknown["label"], unknown["label_reason"]) == ("EXCLUDED", "unknown_status")
    never_assessed = _labeled(con, "Privatize the state savings bank")
    assert never_assessed["status_code"] is None
    assert (never_assessed["label"], never_assessed["label_reason"]) == ("EXCLUDED", "not_assessed")
    outstanding = _labeled(con, "Computerize customs")
    assert (outstanding["label"], outstanding["label_reason"]) == ("EXCLUDED", "not_assessed")
    examples = set(_frame(con, "select description from main.mona_examples")["description"])
    assert not {"Recapitalize the central bank", "Privatize the state savings bank", "Computerize customs"} & examples


def test_economic_code_and_area_complete_each_other(built):
    con, _, _ = built
    derived = _labeled(con, "Enact the banking law")
    assert float(derived["economic_code"]) == 25.1
    assert derived["economic_area"] == "Financial sector legal reforms, regulation, and supervision"
    assert derived["label"] == "MET"  # "Partially met"
    from_seed = _labeled(con, "Restructure the power utility")
    assert (from_seed["economic_area"], from_seed["economic_descriptor_number"]) == (
        "Public enterprise restructuring and privatization", "8.1.")
    budget = _labeled(con, " ".join(BUDGET_LAW["description"].split()))
    assert float(budget["economic_code"]) == 20.8
    assert budget["economic_area"] == "Budget preparation (e.g., submission or approval)"


def test_paper_prior_actions_are_typed_from_the_test_date_text(built):
    con, _, _ = built
    prior_actions = _frame(con, """
        select condition_type, review_sequence, test_date, test_date_text
        from main.stg_mona__conditions where country in ('Paraguay', 'Moldova')""")
    assert prior_actions["condition_type"].tolist() == ["PA", "PA"]
    assert prior_actions["review_sequence"].tolist() == [2, 2]
    assert prior_actions["test_date"].isna().all()
    gabon = _labeled(con, "Strengthen treasury cash management by establishing a annual treasury cash plan")
    assert (gabon["country"], float(gabon["economic_code"]), gabon["test_year"], gabon["label"]) == (
        "Gabon", 20.6, 2007, "MET")


def test_reward_text_is_the_python_reward_input_text(built):
    con, _, _ = built
    examples = _records(con, "select * from main.mona_examples")
    assert len(examples) == 10 + 12  # the paper's rows, and the MET / NON_MET conditions above
    for example in examples:
        assert example["reward_text"] == reward_input_text(
            example["country"], example["arrangement_type"], example["economic_area"], example["description"])
        assert example["is_met"] == (1 if example["label"] == "MET" else 0)
    paraguay = next(example for example in examples if example["country"] == "Paraguay")
    assert paraguay["reward_text"].startswith(
        "Country: Paraguay; Type of arrangement: Unknown; Economic classification: Revenue administration")
    ghana = next(example for example in examples
                 if example["country"] == "Ghana" and example["economic_area"].startswith("Budget preparation"))
    assert ghana["reward_text"] == (
        "Country: Ghana; Type of arrangement: PRGF; Economic classification: Budget preparation (e.g., "
        "submission or approval); Condition: Submit the 2010 budget law to Parliament")


def test_splits_are_group_aware_and_a_function_of_the_arrangement_key(built):
    con, _, _ = built
    splits = _frame(con, "select * from main.mona_splits")
    assert (splits.groupby("arrangement_key")["split"].nunique() == 1).all()
    assert splits.loc[splits["country"] == "Kenya", "arrangement_key"].unique().tolist() == ["1001"]
    assert splits.loc[splits["country"] == "Ghana", "arrangement_key"].unique().tolist() == ["Ghana:2009"]

    train_cut = round(1000 * DATA.split_train_share)
    validation_cut = round(1000 * (DATA.split_train_share + DATA.split_validation_share))

    def expected_split(arrangement_key: str) -> str:
        bucket = int(hashlib.md5(arrangement_key.encode()).hexdigest()[:8], 16) % 1000
        return "train" if bucket < train_cut else "validation" if bucket < validation_cut else "test"

    assert splits["split"].tolist() == [expected_split(key) for key in splits["arrangement_key"]]


def test_temporal_holdout_flags_the_latest_three_years(built):
    con, _, _ = built
    splits = _frame(con, "select test_year, is_temporal_holdout from main.mona_splits")
    assert splits["test_year"].max() == 2022
    assert DATA.temporal_holdout_years == 3
    expected = splits["test_year"].fillna(0) > 2022 - DATA.temporal_holdout_years
    assert splits["is_temporal_holdout"].tolist() == expected.tolist()
    assert set(splits.loc[splits["is_temporal_holdout"], "test_year"]) == {2021, 2022}


def test_rows_repeated_across_sheets_collapse_like_repeated_reviews(built):
    con, _, _ = built
    staged = _records(con, "select source_sheet, source_row, raw_row_id from main.stg_mona__conditions "
                           "where source_file = 'mona_export_2020.xlsx' and source_row = 2 order by 1")
    # Same file, same row number on two sheets: two raw rows, two keys.
    assert [(r["source_sheet"], r["source_row"]) for r in staged] == [("ECF", 2), ("ECF (copy)", 2)]
    assert staged[0]["raw_row_id"] != staged[1]["raw_row_id"]
    condition = _labeled(con, "Strengthen the large taxpayers office")
    assert (condition["n_rows"], condition["n_reviews"]) == (2, 1)
    assert condition["status_history"] == "IMPLEMENTED WITH MODIFICATIONS"  # one assessment, not two


def test_status_spellings_are_normalized_before_the_label_map(built):
    con, _, _ = built
    # Regression: 'Implemented with modifications' ended EXCLUDED as an unknown status.
    modified = _labeled(con, "Strengthen the large taxpayers office")
    assert (modified["status_code"], modified["label"], modified["label_reason"]) == (
        "IMPLEMENTED WITH MODIFICATIONS", "NON_MET", "mapped")
    not_met = _labeled(con, "Publish the debt report")
    assert (not_met["status_raw"], not_met["status_code"], not_met["label"]) == ("Not-met.", "NOT MET", "NON_MET")
    assert _labeled(con, "Sell the state insurer")["label"] == "NON_MET"
    not_yet_due = _labeled(con, "Unbundle the power utility")
    assert (not_yet_due["label"], not_yet_due["label_reason"]) == ("EXCLUDED", "not_assessed")


MONA_STATUS_FORMS = {  # MONA's short and long forms (issue #13), and the label each must get
    "M": "MET", "Met": "MET", "PM": "MET", "Partially met": "MET",
    "NM": "NON_MET", "Not met": "NON_MET", "Implemented with delay": "NON_MET", "Met with delay": "NON_MET",
    "Implemented with modifications": "NON_MET", "Modified": "NON_MET", "W": "NON_MET", "Waived": "NON_MET",
    "D": "NON_MET", "Delayed": "NON_MET", "R": "NON_MET", "Reprogrammed": "NON_MET", "Replaced": "NON_MET",
    "Cancelled": "NON_MET", "Canceled": "NON_MET", "Superseded": "NON_MET", "Not implemented": "NON_MET",
    "PC": "EXCLUDED", "Not yet due": "EXCLUDED", "Pending": "EXCLUDED", "N/A": "EXCLUDED",
}


def test_every_mona_status_form_is_in_the_label_map(built):
    con, _, _ = built
    seed = dict(con.execute("select status_code, label from main.status_label_map").fetchall())
    assert {form: seed.get(form.upper()) for form in MONA_STATUS_FORMS} == MONA_STATUS_FORMS


def test_dbt_vars_are_the_profile_values(built):
    """Settings parity: the vars dbt ran with are the profile's, and dbt_project.yml sets none of its own."""
    _, _, run_results = built
    used = run_results["args"]["vars"]
    used = json.loads(used) if isinstance(used, str) else used
    assert {key: used[key] for key in ("split_train_share", "split_validation_share", "temporal_holdout_years")} \
        == {"split_train_share": DATA.split_train_share, "split_validation_share": DATA.split_validation_share,
            "temporal_holdout_years": DATA.temporal_holdout_years}
    assert "vars" not in yaml.safe_load((DBT_PROJECT / "dbt_project.yml").read_text())
    assert DATA.split_targets == pytest.approx({"train": 0.7, "validation": 0.1, "test": 0.2})


def test_a_build_without_the_profile_vars_names_the_missing_var(tmp_path):
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    only_the_path = json.dumps({"duckdb_path": str(tmp_path / "w.duckdb")})
    result = _dbt("compile", "--select", "mona_splits", "--vars", only_the_path, tmp=tmp_path, env=env)
    assert result.returncode != 0
    assert "split_train_share" in result.stdout + result.stderr


def test_dbt_tests_catch_what_the_ge_suite_used_to(built, tmp_path):
    """A condition in two splits, an arrangement in two splits and an empty text fail dbt's tests on
    mona_splits (they were Great Expectations expectations that repeated dbt tests, issue #16)."""
    con, _, _ = built
    database = Path(con.execute("select path from duckdb_databases() where database_name = current_database()")
                    .fetchone()[0])
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(database.read_bytes())
    with duckdb.connect(str(corrupt)) as writer:
        rows = writer.execute("select condition_id, arrangement_key, split from main.mona_splits "
                              "where arrangement_key = '1001' order by condition_id").fetchall()
        first, second, third = rows[0][0], rows[1][0], rows[2][0]
        other = "test" if rows[0][2] != "test" else "train"
        writer.execute("update main.mona_splits set split = ? where condition_id = ?", [other, first])
        writer.execute("update main.mona_splits set condition_id = ? where condition_id = ?", [first, second])
        writer.execute("update main.mona_splits set reward_text = '', description = '' where condition_id = ?",
                       [third])
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    result = _dbt("test", "--select", "mona_splits", "--vars", json.dumps(dbt_vars(DATA, corrupt)),
                  tmp=tmp_path, env=env)
    assert result.returncode != 0
    run_results = json.loads((tmp_path / "target" / "run_results.json").read_text())
    failed = {r["unique_id"].split(".")[2] for r in run_results["results"] if r["status"] == "fail"}
    assert {"unique_mona_splits_condition_id", "mona_splits_one_split_per_arrangement",
            "mona_splits_reward_text_not_empty", "mona_splits_description_not_empty"} <= failed


def test_status_code_and_economic_code_rules_agree_with_python(built):
    """The two rules that must also live in SQL (macros status_code, economic_code_for_number) give
    Python's results (ml.data.taxonomy) on every staged row; mapped labels are the seed's via Python."""
    con, _, _ = built
    staged = _records(con, "select distinct status_raw, status_code, economic_descriptor_number, "
                           "expected_economic_code from main.stg_mona__conditions")
    assert [(row["status_raw"], row["status_code"]) for row in staged] == [
        (row["status_raw"], status_code(row["status_raw"])) for row in staged]
    derived = [row for row in staged if row["expected_economic_code"] is not None]
    assert derived
    assert [float(row["expected_economic_code"]) for row in derived] == [
        economic_code_for_number(row["economic_descriptor_number"]) for row in derived]
    labeled = _records(con, "select status_raw, label from main.int_mona__labeled where label_reason = 'mapped'")
    assert labeled and all(row["label"] == status_label(row["status_raw"]) for row in labeled)
