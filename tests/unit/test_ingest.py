"""Ingestion into a real DuckDB file: provenance, idempotence, quarantine, rejected rows."""

from __future__ import annotations

import shutil

import duckdb
import pytest

from ml.data.ingest import ingest_landing
from ml.data.warehouse import WarehouseError, connect


@pytest.fixture()
def home(tmp_path, paper_sample_csv):
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copy(paper_sample_csv, landing / paper_sample_csv.name)
    return tmp_path


def ingest(home):
    return ingest_landing(home / "landing", home / "warehouse.duckdb", home / "quarantine", progress=lambda _: None)


def raw_rows(home, sql="select count(*) from raw.mona_conditions"):
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_loads_rows_with_provenance(home):
    report = ingest(home)
    assert report.rows_loaded == 10 and report.total_rows == 10
    rows = raw_rows(home, "select source_file, source_row, length(source_sha256), ingested_at is not null, country "
                          "from raw.mona_conditions order by source_row")
    assert rows[0] == ("mona_table2_sample.csv", 2, 64, True, "GABON")
    assert [row[1] for row in rows] == list(range(2, 12))


def test_same_file_twice_is_a_no_op(home):
    ingest(home)
    shutil.copy(home / "landing" / "mona_table2_sample.csv", home / "landing" / "copy_of_sample.csv")
    report = ingest(home)
    assert [o.status for o in report.outcomes] == ["already_loaded", "already_loaded"]
    assert report.rows_loaded == 0 and raw_rows(home) == [(10,)]


def test_changed_file_is_new_data(home):
    ingest(home)
    path = home / "landing" / "mona_table2_sample.csv"
    path.write_text(path.read_text(encoding="utf-8") + "KENYA,20.2,1.2. Revenue administration,New condition,1,"
                    "06/30/2020,NM\n", encoding="utf-8")
    report = ingest(home)
    assert report.rows_loaded == 11 and raw_rows(home) == [(21,)]  # raw keeps every export, dbt dedupes


def test_bad_file_is_quarantined_with_reason_and_good_files_still_load(home):
    bad = home / "landing" / "broken.csv"
    bad.write_text("Country Name,Description\nGhana,Adopt a law\n", encoding="utf-8")
    original = bad.read_bytes()
    report = ingest(home)
    assert [(o.file, o.status) for o in report.outcomes] == [("broken.csv", "quarantined"),
                                                             ("mona_table2_sample.csv", "loaded")]
    assert not bad.exists()
    kept = home / "quarantine" / "broken.csv"
    assert kept.read_bytes() == original  # the bad file is kept intact
    reason = (home / "quarantine" / "broken.csv.reason.txt").read_text(encoding="utf-8")
    assert "broken.csv: missing required column(s)" in reason and "status" in reason
    assert raw_rows(home) == [(10,)]


def test_rejected_rows_are_stored_with_row_and_column(home):
    (home / "landing" / "partial.csv").write_text(
        "Country Name,Economic Code,Description,PC Status\nGhana,20.2,Adopt a law,M\n,20.2,No country,NM\n",
        encoding="utf-8")
    report = ingest(home)
    partial = next(o for o in report.outcomes if o.file == "partial.csv")
    assert (partial.rows_loaded, partial.rows_rejected) == (1, 1)
    assert "row 3 column country" in partial.reason
    assert raw_rows(home, "select source_file, source_row, column_name from raw.rejected_rows") == [
        ("partial.csv", 3, "country")]


def test_locked_or_missing_warehouse_gives_clear_error(tmp_path):
    with pytest.raises(WarehouseError, match="does not exist"):
        connect(tmp_path / "nowhere.duckdb", read_only=True)
    with pytest.raises(WarehouseError, match="cannot open DuckDB warehouse .*missing_dir"):
        connect(tmp_path / "missing_dir" / "w.duckdb")


def test_warehouse_locked_by_another_process_names_the_path(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); "
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WarehouseError, match=f"cannot open DuckDB warehouse {path}"):
            connect(path)
    finally:
        holder.kill()
        holder.wait()
