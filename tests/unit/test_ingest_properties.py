"""Property: whatever malformed MONA exports land next to a good one, ingestion never raises, loads the
good file, and loads or quarantines every other file with a reason, leaving the warehouse consistent.

Hypothesis builds the exports from a small valid one and damages them the ways real ones are damaged:
truncated zips, random damage to a workbook's XML, wrong or mixed encodings, ragged rows, duplicated and
missing headers, huge cells, binary garbage. `make test` runs a fixed set of examples (profile "ci");
`HYPOTHESIS_PROFILE=explore` runs more, new ones each time.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook

from ml.data.ingest import ingest_landing

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", max_examples=300, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PRINTABLE = st.characters(min_codepoint=32, max_codepoint=0x24F)  # what a worksheet cell can hold
HEADER = ["Country Name", "Economic Code", "Economic Descriptor", "Description", "TestDate", "PC Status", "Comments"]
ROWS = [
    ["Côte d'Ivoire", "20.2", "1.2. Revenue administration, including customs", "Adopt the tax code", "03/31/2015",
     "M", ""],
    ["São Tomé and Príncipe", "20.6", "1.6. Expenditure auditing, accounting, and financial controls",
     "Audit the treasury accounts", "06/30/2016", "NM", "late"],
    ["Ghana", "22", "3. Civil service and public employment reforms, and wages", "Complete a payroll audit",
     "Second Review Prior action", "Partially met", ""],
    ["Kenya", "25.1", "6.1. Financial sector legal reforms, regulation, and supervision", "Enact the banking law",
     "12/31/2017", "", "not yet due"],
]


def csv_text(header, rows, separator=","):
    def cell(value):
        value = str(value)
        return f'"{value}"' if any(c in value for c in f'{separator}"\n') else value
    return "".join(separator.join(cell(v) for v in row) + "\n" for row in [header, *rows])


def workbook_bytes(sheets):
    workbook = Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets:
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append([None if v == "" else v for v in row])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


@st.composite
def table(draw):
    """A MONA table with header damage: a column dropped or duplicated, rows ragged, a huge cell."""
    header, rows = list(HEADER), [list(row) for row in draw(st.lists(st.sampled_from(ROWS), min_size=1, max_size=6))]
    damage = draw(st.sampled_from(["none", "drop_column", "duplicate_column", "ragged", "huge_cell", "blank_rows"]))
    column = draw(st.integers(0, len(header) - 1))
    if damage == "drop_column":
        del header[column]
        rows = [row[:column] + row[column + 1:] for row in rows]
    elif damage == "duplicate_column":
        header.append(header[column])
        rows = [row + [draw(st.sampled_from(["", "NM", "x"]))] for row in rows]
    elif damage == "ragged":
        target = draw(st.integers(0, len(rows) - 1))
        rows[target] = rows[target] + draw(st.lists(st.text(PRINTABLE, max_size=5), min_size=1, max_size=3))
        if draw(st.booleans()):
            rows[-1] = rows[-1][: draw(st.integers(1, len(header)))]
    elif damage == "huge_cell":
        rows[draw(st.integers(0, len(rows) - 1))][column] = "x" * draw(st.integers(2_001, 120_000))
    elif damage == "blank_rows":
        rows += [[""] * len(header)] * draw(st.integers(1, 3))
    return header, rows


@st.composite
def csv_export(draw):
    header, rows = draw(table())
    separator = draw(st.sampled_from([",", ",", "\t", ";"]))
    text = csv_text(header, rows, separator)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "cp1252", "mixed"]))
    if encoding == "mixed":  # UTF-8 with Latin-1 bytes in some rows
        lines = text.splitlines(keepends=True)
        data = b"".join(line.encode("latin-1" if i and draw(st.booleans()) else "utf-8", errors="replace")
                        for i, line in enumerate(lines))
    else:
        data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):  # truncated, or with random bytes spliced in
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=40)) if draw(st.booleans()) else data[:cut]
    return ".csv", data


def fraction(draw):
    # Positions as fractions: a workbook's bytes vary with the time it is saved, the draws must not.
    return draw(st.floats(0, 1))


def damage_zip(draw, data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    index = min(int(fraction(draw) * len(members)), len(members) - 1)
    info, content = members[index]
    start = int(fraction(draw) * len(content))
    end = min(len(content), start + draw(st.integers(0, 200)))
    members[index] = (info, content[:start] + draw(st.binary(max_size=30)) + content[end:])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, content in members:
            archive.writestr(info, content)
    return buffer.getvalue()


@st.composite
def xlsx_export(draw):
    header, rows = draw(table())
    sheets = [("Notes", [["MONA structural conditions"]]), ("Data", [["Title row"], header, *rows])]
    if draw(st.booleans()):
        sheets.append(("More", [header, *rows[:1]]))
    data = workbook_bytes(sheets)
    damage = draw(st.sampled_from(["none", "xml", "truncate", "not_a_workbook", "garbage"]))
    if damage == "xml":
        data = damage_zip(draw, data)
    elif damage == "truncate":
        data = data[: int(fraction(draw) * (len(data) - 1))]
    elif damage == "not_a_workbook":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("readme.txt", "hello")
        data = buffer.getvalue()
    elif damage == "garbage":
        data = draw(st.binary(min_size=1, max_size=300))
    return ".xlsx", data


GOOD = csv_text(HEADER, ROWS).encode("utf-8")


@given(st.lists(st.one_of(csv_export(), xlsx_export()), min_size=1, max_size=5))
def test_no_export_stops_the_others_and_every_file_gets_an_outcome_with_a_reason(exports):
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        landing = home / "landing"
        landing.mkdir()
        (landing / "good.csv").write_bytes(GOOD)
        names = []
        for i, (suffix, data) in enumerate(exports):
            names.append(f"export_{i}{suffix}")
            (landing / names[-1]).write_bytes(data)

        report = ingest_landing(landing, home / "warehouse.duckdb", home / "quarantine", progress=lambda _: None)

        outcomes = {o.file: o for o in report.outcomes}
        good = outcomes.pop("good.csv")
        assert (good.status, good.rows_loaded, good.rows_rejected) in {
            ("loaded", len(ROWS), 0), ("already_loaded", 0, 0)}  # a damaged export may equal it byte for byte
        assert set(outcomes) == set(names)
        for name, outcome in outcomes.items():
            assert outcome.status in ("loaded", "already_loaded", "quarantined", "already_quarantined"), outcome
            if outcome.status == "already_quarantined":  # the same bytes as an export quarantined just before
                assert outcome.reason.startswith(f"{name}: same bytes as export_"), outcome
            elif outcome.status == "quarantined":
                assert outcome.reason.startswith(f"{name}: "), outcome
                assert (home / "quarantine" / f"{name}.reason.txt").exists()
                assert not (landing / name).exists()
            elif outcome.rows_rejected:
                assert "row" in outcome.reason and "column" in outcome.reason, outcome

        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        try:
            # Each loaded file has exactly the rows recorded for it; the good file's rows are there.
            unmatched = con.execute("""select count(*) from raw.ingested_files f where rows_loaded !=
                (select count(*) from raw.mona_conditions c where c.source_sha256 = f.source_sha256)""")
            assert unmatched.fetchone() == (0,)
            countries = {c for (c,) in con.execute("select country from raw.mona_conditions").fetchall()}
            assert {row[0] for row in ROWS} <= countries
            assert not any("Ã" in country for country in countries)  # never UTF-8 read as Latin-1
            for (raw,) in con.execute("select raw_values from raw.rejected_rows").fetchall():
                json.loads(raw, parse_constant=lambda constant: (_ for _ in ()).throw(ValueError(constant)))
        finally:
            con.close()
