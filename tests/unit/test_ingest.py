"""Ingestion into a real DuckDB file: provenance, idempotence, quarantine (also on read-only and full
folders), rejected rows, per-file isolation, the manifest the sensor reads."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import zipfile

import duckdb
import pytest
from openpyxl import Workbook

from ml.data.ingest import _handled_in_warehouse, file_sha256, ingest_landing, read_manifest
from ml.data.warehouse import WarehouseError, connect, take_turn


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


@contextlib.contextmanager
def locked_by_another_process(path, seconds: float):
    """Another process holds DuckDB's lock on `path` for `seconds`, then exits."""
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); "
                               f"print('locked', flush=True); time.sleep({seconds})"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_warehouse_locked_by_another_process_names_the_path(tmp_path):
    path = tmp_path / "locked.duckdb"
    with locked_by_another_process(path, 60), pytest.raises(WarehouseError,
                                                             match=f"cannot open DuckDB warehouse {path}"):
        connect(path)


def test_a_step_waits_for_a_lock_another_process_is_about_to_release(tmp_path):
    # Regression: the concurrency pool handed the warehouse to the next run's ingestion while the process
    # of the step before still held DuckDB's lock, and the ingestion failed.
    path = tmp_path / "busy.duckdb"
    with locked_by_another_process(path, 1.5) as holder:
        with pytest.raises(WarehouseError, match="lock"):
            connect(path, wait_seconds=0.2)  # still held: the wait is bounded
        con = connect(path, wait_seconds=30)
        assert holder.poll() is not None  # it opened only once the holder had gone
        con.close()



def test_a_step_waits_for_the_turn_another_process_holds_and_gets_it_when_that_process_is_killed(tmp_path):
    # Regression: two runs' steps claimed the pool's one slot at the same moment, both got it on the
    # SQLite instance, and both used the warehouse at once.
    path = tmp_path / "w.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from ml.data.warehouse import take_turn\n"
                               f"with take_turn({str(path)!r}, log=lambda line: print(line, flush=True)):\n"
                               "    time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert "this step's turn" in holder.stdout.readline()
        lines = []  # this thread is the other run's step

        def take():
            with take_turn(path, log=lines.append):
                lines.append("used the warehouse")

        thread = threading.Thread(target=take)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and lines == ["DuckDB warehouse w.duckdb: waiting for a step of another run to "
                                               "finish with it"]
        holder.send_signal(signal.SIGKILL)  # killed outright: the OS releases its lock
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert lines[1].startswith("DuckDB warehouse w.duckdb: this step's turn (waited ")
        assert lines[2:] == ["used the warehouse", "DuckDB warehouse w.duckdb: turn over"]
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------
# Issue #13: no file can stop the others; quarantine that is safe on read-only or full folders.

GOOD_ROWS = "Country Name,Economic Code,Description,PC Status\nGhana,20.2,Adopt a law,M\nKenya,20.6,Audit,NM\n"


def write_workbook(path):
    workbook = Workbook()
    workbook.active.append(["Country Name", "Economic Code", "Description", "PC Status"])
    workbook.active.append(["Ghana", 20.2, "Adopt a law", "M"])
    workbook.save(path)


def damage_member(path, member, damage):
    """Rewrite one member of a zip (an .xlsx) through `damage(bytes) -> bytes`."""
    with zipfile.ZipFile(path) as source:
        items = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in items:
            target.writestr(info, damage(data) if info.filename == member else data)


@contextlib.contextmanager
def read_only(folder):
    """Make `folder` read-only for this process: chmod for a normal user; root ignores file modes, so
    for root a read-only bind mount of the folder onto itself."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def full(folder, size_kib=64):
    """A folder on a filesystem of `size_kib` KiB (root: a tmpfs), so larger writes fail with ENOSPC;
    for a normal user, a read-only folder, which fails the same writes."""
    if os.geteuid() != 0:
        with read_only(folder):
            yield
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a tmpfs")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_corrupt_workbooks_are_quarantined_and_the_good_files_still_load(home):
    landing = home / "landing"
    # Regression: a workbook whose XML is broken raised ParseError out of the reader and stopped everything;
    # so did a zip that is not a workbook (KeyError: no '[Content_Types].xml').
    write_workbook(landing / "broken_xml.xlsx")
    damage_member(landing / "broken_xml.xlsx", "xl/workbook.xml", lambda data: data[: len(data) // 2])
    write_workbook(landing / "broken_sheet.xlsx")
    damage_member(landing / "broken_sheet.xlsx", "xl/worksheets/sheet1.xml",
                  lambda data: data.replace(b"</row>", b"<", 1))
    with zipfile.ZipFile(landing / "not_a_workbook.xlsx", "w") as archive:
        archive.writestr("readme.txt", "hello")
    (landing / "good.csv").write_text(GOOD_ROWS, encoding="utf-8")

    report = ingest(home)
    status = {o.file: o.status for o in report.outcomes}
    assert status == {"broken_xml.xlsx": "quarantined", "broken_sheet.xlsx": "quarantined",
                      "not_a_workbook.xlsx": "quarantined", "good.csv": "loaded",
                      "mona_table2_sample.csv": "loaded"}
    reasons = {o.file: o.reason for o in report.outcomes}
    assert reasons["broken_xml.xlsx"].startswith("broken_xml.xlsx: not a valid Excel workbook (ParseError")
    assert reasons["broken_sheet.xlsx"].startswith("broken_sheet.xlsx: sheet 'Sheet' cannot be read")
    assert reasons["not_a_workbook.xlsx"].startswith("not_a_workbook.xlsx: not a valid Excel workbook (KeyError")
    for name in ("broken_xml.xlsx", "broken_sheet.xlsx", "not_a_workbook.xlsx"):
        assert (home / "quarantine" / name).exists() and not (landing / name).exists()
        assert reasons[name] in (home / "quarantine" / f"{name}.reason.txt").read_text(encoding="utf-8")
    assert raw_rows(home) == [(12,)]


def test_read_only_landing_folder_keeps_the_bad_file_reports_it_and_never_retries_it(home):
    landing = home / "landing"
    bad = landing / "no_status.csv"
    bad.write_text("Country Name,Economic Code,Description\nGhana,20.2,Adopt a law\n", encoding="utf-8")
    with read_only(landing):
        # Regression: unlink raised "Read-only file system" out of ingestion, and copies piled up without reasons.
        first = ingest(home)
        second = ingest(home)
    assert [(o.file, o.status) for o in first.outcomes] == [("mona_table2_sample.csv", "loaded"),
                                                           ("no_status.csv", "quarantined")]
    reason = first.outcomes[1].reason
    assert "missing required column" in reason and "could not be removed from the landing folder" in reason
    assert bad.exists()  # nothing lost
    copies = sorted(path.name for path in (home / "quarantine").iterdir())
    assert copies == ["no_status.csv", "no_status.csv.reason.txt"]
    assert [(o.file, o.status) for o in second.outcomes] == [("mona_table2_sample.csv", "already_loaded"),
                                                            ("no_status.csv", "already_quarantined")]
    assert sorted(path.name for path in (home / "quarantine").iterdir()) == copies  # no copy piles up
    assert raw_rows(home, "select source_file, left_in_landing, reason like '%missing required%' "
                          "from raw.quarantined_files") == [("no_status.csv", True, True)]


def test_full_quarantine_folder_leaves_no_partial_copy_and_records_the_reason(home):
    landing, quarantine = home / "landing", home / "quarantine"
    quarantine.mkdir()
    bad = landing / "big_but_bad.csv"
    bad.write_text("Country Name,Economic Code,Description\n" + "Ghana,20.2,Adopt a law\n" * 20_000,
                   encoding="utf-8")  # ~480 KiB: larger than the 64 KiB quarantine filesystem
    with full(quarantine):
        report = ingest(home)
        assert list(quarantine.iterdir()) == []  # no orphan copy, no reason file without its copy
    outcome = next(o for o in report.outcomes if o.file == bad.name)
    assert outcome.status == "quarantined" and "could not be copied" in outcome.reason
    assert bad.exists()
    assert raw_rows(home, "select quarantined_to, left_in_landing from raw.quarantined_files") == [(None, True)]
    assert next(o for o in ingest(home).outcomes if o.file == bad.name).status == "already_quarantined"


def test_a_copy_left_by_an_interrupted_quarantine_is_reused(home):
    landing, quarantine = home / "landing", home / "quarantine"
    bad = landing / "bad.xls"
    bad.write_bytes(b"\xd0\xcf\x11\xe0 legacy workbook")
    quarantine.mkdir()
    shutil.copy(bad, quarantine / "bad.xls")  # a run killed after copying, before removing the original
    report = ingest(home)
    assert next(o for o in report.outcomes if o.file == "bad.xls").status == "quarantined"
    assert sorted(p.name for p in quarantine.iterdir()) == ["bad.xls", "bad.xls.reason.txt"]
    assert not bad.exists()


def test_a_different_file_of_a_quarantined_name_gets_its_own_copy(home):
    landing, quarantine = home / "landing", home / "quarantine"
    (landing / "bad.csv").write_text("Country Name,Description\nGhana,Adopt a law\n", encoding="utf-8")
    ingest(home)
    (landing / "bad.csv").write_text("Country Name,Description\nKenya,Audit\n", encoding="utf-8")
    ingest(home)
    names = sorted(p.name for p in quarantine.iterdir())
    assert len(names) == 4 and "bad.csv" in names and "bad.csv.reason.txt" in names
    assert {p.read_text(encoding="utf-8").splitlines()[1] for p in quarantine.glob("bad*.csv")} == {
        "Ghana,Adopt a law", "Kenya,Audit"}


def test_manifest_lists_every_handled_file_for_the_sensor(home):
    landing = home / "landing"
    (landing / "bad.csv").write_text("Country Name,Description\nGhana,Adopt a law\n", encoding="utf-8")
    bad_sha = file_sha256(landing / "bad.csv")
    ingest(home)
    manifest = read_manifest(home / "warehouse.duckdb")
    good_sha = file_sha256(landing / "mona_table2_sample.csv")
    assert manifest.handled == {good_sha: "loaded", bad_sha: "quarantined"}
    stat = (landing / "mona_table2_sample.csv").stat()
    assert manifest.landing == {"mona_table2_sample.csv": (stat.st_size, stat.st_mtime_ns, good_sha)}
    assert not [p for p in home.iterdir() if p.name.endswith(".partial")]
    # The manifest agrees with DuckDB, which it summarizes.
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        assert _handled_in_warehouse(con) == manifest.handled
    finally:
        con.close()


def test_workbook_sheets_load_with_their_sheet_in_the_provenance(home):
    workbook = Workbook()
    first = workbook.active
    first.title = "2015"
    first.append(["Country Name", "Economic Code", "Description", "PC Status"])
    first.append(["Ghana", 20.2, "Adopt a law", "M"])
    second = workbook.create_sheet("2016")
    second.append(["Country Name", "Economic Code", "Description", "PC Status"])
    second.append(["Ghana", 20.6, "Audit the treasury", ""])
    second.append(["", 20.6, "No country", "M"])
    workbook.save(home / "landing" / "reviews.xlsx")
    report = ingest(home)
    outcome = next(o for o in report.outcomes if o.file == "reviews.xlsx")
    assert (outcome.rows_loaded, outcome.rows_rejected) == (2, 1)
    assert "sheet '2016' row 3 column country" in outcome.reason
    assert raw_rows(home, "select source_sheet, source_row, description from raw.mona_conditions "
                          "where source_file = 'reviews.xlsx' order by 1, 2") == [
        ("2015", 2, "Adopt a law"), ("2016", 2, "Audit the treasury")]
    assert raw_rows(home, "select source_sheet, source_row from raw.rejected_rows") == [("2016", 3)]
    assert raw_rows(home, "select sheet from raw.ingested_files where source_file = 'reviews.xlsx'") == [
        ("2015, 2016",)]


def test_a_row_with_two_problems_counts_as_one_rejected_row(home):
    (home / "landing" / "two_problems.csv").write_text(
        "Country Name,Economic Code,Description,PC Status\nGhana,20.2,Adopt a law,M\n,twenty,No country,NM\n",
        encoding="utf-8")
    outcome = next(o for o in ingest(home).outcomes if o.file == "two_problems.csv")
    assert (outcome.rows_loaded, outcome.rows_rejected) == (1, 1)
    assert raw_rows(home, "select source_row, column_name from raw.rejected_rows order by 2") == [
        (3, "country"), (3, "economic_code")]
    assert raw_rows(home, "select rows_rejected from raw.ingested_files where source_file = 'two_problems.csv'") == [
        (1,)]
