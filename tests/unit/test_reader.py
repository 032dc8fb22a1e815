"""MONA reader on the paper's real rows and on the broken inputs real exports come in."""

from __future__ import annotations

import codecs
import datetime as dt
import json
import re
import shutil
import sys

import pytest
from openpyxl import Workbook

from ml.data.reader import MAX_DESCRIPTION_CHARS, WHITESPACE_RUN, MonaReadError, read_mona_file
from ml.data.schema import CANONICAL_COLUMNS


def test_reads_the_papers_sample(paper_sample_csv):
    mona = read_mona_file(paper_sample_csv)
    rows = mona.rows
    assert len(rows) == 10 and mona.rejected.empty
    assert set(CANONICAL_COLUMNS) <= set(rows.columns)
    gabon = rows.iloc[0]
    assert (gabon.country, gabon.economic_code, gabon.status) == ("GABON", "20.6", "M")
    assert gabon.test_date == "2007-09-15" and gabon.test_date_text == "09/15/2007"
    assert gabon.source_row == 2  # header is row 1
    # Prior actions carry review text instead of a date: text kept, date null.
    paraguay = rows[rows.country == "PARAGUAY"].iloc[0]
    assert paraguay.test_date is None and paraguay.test_date_text == "Second Review Prior action"
    assert rows.economic_code.tolist()[5] == "22.0"
    assert sorted(rows.status.unique()) == ["M", "NM"]


def test_header_variants_map_to_one_schema(tmp_path):
    path = tmp_path / "variants.csv"
    path.write_text("CountryName,economic_code,Condition Description,Status,Test Date,Arrangement Type,Region\n"
                    "Ghana,20.2,Adopt a revenue law,Met,2015-03-31,ECF,Africa\n", encoding="utf-8")
    row = read_mona_file(path).rows.iloc[0]
    assert (row.country, row.economic_code, row.description, row.status) == (
        "Ghana", "20.2", "Adopt a revenue law", "Met")
    assert row.test_date == "2015-03-31" and row.arrangement_type == "ECF"
    # Columns the schema does not know are kept, not dropped.
    assert '"Region": "Africa"' in row.extra_columns


def test_missing_required_column_names_file_and_column(tmp_path):
    path = tmp_path / "no_status.csv"
    path.write_text("Country Name,Economic Code,Description\nGhana,20.2,Adopt a law\n", encoding="utf-8")
    with pytest.raises(MonaReadError) as caught:
        read_mona_file(path)
    assert "no_status.csv" in str(caught.value) and "status" in str(caught.value)
    assert caught.value.missing_columns == ("status",)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(MonaReadError, match="empty.csv: file is empty"):
        read_mona_file(path)


def test_not_an_excel_file_with_xlsx_name(tmp_path, paper_sample_csv):
    path = tmp_path / "MONA_StructuralConditions.xlsx"
    shutil.copy(paper_sample_csv, path)
    with pytest.raises(MonaReadError, match="MONA_StructuralConditions.xlsx: not a valid Excel workbook"):
        read_mona_file(path)


def test_latin1_csv(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("Country Name,Economic Descriptor,Description,PC Status\n"
                     "Côte d'Ivoire,1.2. Revenue administration,Réforme fiscale,M\n".encode("latin-1"))
    row = read_mona_file(path).rows.iloc[0]
    assert row.country == "Côte d'Ivoire" and row.description == "Réforme fiscale"


def test_workbook_with_title_row_extra_sheet_and_excel_dates(tmp_path):
    workbook = Workbook()
    notes = workbook.active
    notes.title = "Notes"
    notes.append(["This workbook lists structural conditions"])
    sheet = workbook.create_sheet("Description")
    sheet.append(["MONA - Structural Conditions"])  # title row above the header
    sheet.append(["Arrangement Number", "Country Name", "Economic Code", "Economic Descriptor", "Description",
                  "TestDate", "PC Status"])
    sheet.append([612, "Kenya", 20.2, "1.2. Revenue administration, including customs",
                  "Adopt the tax procedures act", 42004, "NM"])  # Excel serial number for 2014-12-31
    sheet.append([612, "Kenya", 22, "3. Civil service and public employment reforms, and wages",
                  "Complete a payroll audit", dt.datetime(2015, 6, 30), "Met"])
    sheet.append([612, "Kenya", 20.8, "1.8. Budget preparation", "Submit the budget",
                  "First Review Prior action", "M"])
    sheet.append([None] * 7)  # trailing blank row, as spreadsheets have
    path = tmp_path / "MONA_StructuralConditions.xlsx"
    workbook.save(path)

    mona = read_mona_file(path)
    assert mona.sheet == "Description" and mona.header_row == 2
    rows = mona.rows
    assert len(rows) == 3
    assert rows.test_date.tolist() == ["2014-12-31", "2015-06-30", None]
    assert rows.test_date_text.tolist()[2] == "First Review Prior action"
    assert rows.economic_code.tolist() == ["20.2", "22.0", "20.8"]
    assert rows.arrangement_number.tolist() == ["612"] * 3
    assert rows.source_row.tolist() == [3, 4, 5]


def test_bad_rows_are_reported_with_row_and_column_and_kept_aside(tmp_path):
    path = tmp_path / "some_bad_rows.csv"
    path.write_text("Country Name,Economic Code,Description,PC Status,TestDate\n"
                    "Ghana,20.2,Adopt a revenue law,M,03/31/2015\n"
                    ",20.2,A condition without a country,M,03/31/2015\n"
                    "Ghana,twenty,Establish a unit,NM,13/45/2015\n"
                    "Ghana,20.6,Unknown status here,ZZ,06/30/2016\n", encoding="utf-8")
    mona = read_mona_file(path)
    assert mona.rows.description.tolist() == ["Adopt a revenue law", "Unknown status here"]
    # An unknown status is not the reader's business: dbt maps it to EXCLUDED and counts it.
    assert mona.rows.status.tolist() == ["M", "ZZ"]
    rejected = mona.rejected[["source_row", "column_name"]].values.tolist()
    assert rejected == [[3, "country"], [4, "economic_code"]]
    assert "A condition without a country" in mona.rejected.raw_values.iloc[0]
    assert any("13/45/2015" in warning for warning in mona.warnings)


def test_no_header_anywhere(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("just,some,numbers\n1,2,3\n", encoding="utf-8")
    with pytest.raises(MonaReadError, match="notes.csv: no header row found"):
        read_mona_file(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "conditions.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(MonaReadError, match="unsupported file type"):
        read_mona_file(path)


# ---------------------------------------------------------------------------------------------
# Issue #13: encodings decided per file, every matching sheet read, duplicate headers, limits.

HEADER = "Country Name,Economic Descriptor,Description,PC Status,TestDate\n"


def strict_loads(text):
    """json.loads that refuses NaN / Infinity, as strict parsers (and PostgreSQL, jq) do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_utf8_file_with_one_stray_latin1_byte_is_not_decoded_as_latin1(tmp_path):
    # Regression: the whole file used to be decoded as Latin-1 ("CÃ´te d'Ivoire" reached the warehouse).
    path = tmp_path / "mostly_utf8.csv"
    path.write_bytes((HEADER + "Côte d'Ivoire,1.2. Revenue administration,Adopt a law,M,01/31/2010\n").encode()
                     + "São Tomé,1.2. Revenue administration,Adopt a tax code,NM,01/31/2010\n".encode("latin-1")
                     + "Türkiye,1.2. Revenue administration,Publish a report,M,01/31/2011\n".encode())
    mona = read_mona_file(path)
    assert mona.rows.country.tolist() == ["Côte d'Ivoire", "Türkiye"]
    assert not any("Ã" in value for value in mona.rows.country)
    # The row with the stray bytes is set aside with its row number, its bytes kept as \xNN.
    assert mona.rejected[["source_row", "column_name"]].values.tolist() == [[3, "country"]]
    assert "not UTF-8" in mona.rejected.problem.iloc[0]
    assert strict_loads(mona.rejected.raw_values.iloc[0])["country"] == "S\\xe3o Tom\\xe9"
    assert mona.encoding.startswith("utf-8")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_byte_order_mark_decides_the_encoding(tmp_path, encoding):
    path = tmp_path / f"{encoding}.csv"
    text = HEADER + "Côte d'Ivoire,1.2. Revenue administration,Réforme fiscale,M,01/31/2010\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    path.write_bytes(data)
    mona = read_mona_file(path)
    assert (mona.rows.country.iloc[0], mona.rows.description.iloc[0]) == ("Côte d'Ivoire", "Réforme fiscale")
    assert mona.rejected.empty


def test_excel_unicode_text_is_utf16_with_tabs(tmp_path):
    # Regression: Excel's "Unicode text" was quarantined with "Expected 5 fields", nothing about encoding.
    path = tmp_path / "unicode_text.csv"
    path.write_bytes(("Country Name\tEconomic Descriptor\tDescription\tPC Status\n"
                      "Côte d'Ivoire\t1.2. Revenue administration\tAdopt, by decree, a tax code\tM\n").encode("utf-16"))
    mona = read_mona_file(path)
    assert mona.rows[["country", "description"]].values.tolist() == [["Côte d'Ivoire", "Adopt, by decree, a tax code"]]
    assert mona.encoding == "utf-16" and any("tabs" in warning for warning in mona.warnings)


def test_cp1252_only_file_is_decoded_as_cp1252_with_a_warning(tmp_path):
    path = tmp_path / "windows.csv"
    path.write_bytes((HEADER + "São Tomé and Príncipe,1.2. Revenue administration,Adopt the “tax” code,M,"
                      "01/31/2010\n").encode("cp1252"))
    mona = read_mona_file(path)
    assert mona.rows.country.iloc[0] == "São Tomé and Príncipe"
    assert mona.rows.description.iloc[0] == "Adopt the “tax” code"  # cp1252, not Latin-1, quotes
    assert mona.encoding == "cp1252" and any("cp1252" in warning for warning in mona.warnings)


def test_utf16_without_byte_order_mark_names_the_problem(tmp_path):
    path = tmp_path / "no_bom.csv"
    path.write_bytes((HEADER + "Ghana,1.2. Revenue administration,Adopt a law,M,01/31/2010\n").encode("utf-16-le"))
    with pytest.raises(MonaReadError, match="no_bom.csv: contains NUL bytes: UTF-16"):
        read_mona_file(path)


def _workbook(path, sheets):
    workbook = Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    workbook.save(path)


MONA_HEADER = ["Country Name", "Economic Code", "Description", "Review Type", "PC Status"]


def test_every_sheet_with_a_mona_header_is_read_and_the_others_are_named(tmp_path):
    # Regression: a second sheet of conditions was silently ignored.
    path = tmp_path / "two_sheets.xlsx"
    _workbook(path, {
        "Notes": [["Structural conditions, two programs"]],
        "ECF 2015": [MONA_HEADER, ["Kenya", 20.2, "Adopt the tax procedures act", "R1", "NM"],
                     ["Kenya", 20.6, "Audit the treasury", "R1", "M"]],
        "EFF 2019": [["Title row"], MONA_HEADER, ["Kenya", 25.1, "Enact the banking law", "R2", "M"],
                     ["Kenya", 20.2, "Adopt the tax procedures act", "R1", "NM"]],  # repeated on both sheets
        "Summary": [["Country Name", "Description", "Met", "Not met"], ["Kenya", "all", 2, 1]],
    })
    mona = read_mona_file(path)
    assert mona.sheets == ("ECF 2015", "EFF 2019")
    assert mona.rows[["source_sheet", "source_row", "description"]].values.tolist() == [
        ["ECF 2015", 2, "Adopt the tax procedures act"], ["ECF 2015", 3, "Audit the treasury"],
        ["EFF 2019", 3, "Enact the banking law"], ["EFF 2019", 4, "Adopt the tax procedures act"]]
    assert [name.split(":")[0] for name in mona.skipped_sheets] == ["'Notes'", "'Summary'"]
    assert mona.skipped_sheets[1].startswith("'Summary': missing required column(s): status")
    assert any("sheets skipped" in warning and "'Notes'" in warning for warning in mona.warnings)


def test_a_duplicated_required_column_is_an_error_naming_it(tmp_path):
    # Regression: the first 'PC Status' was kept, the second dropped without a word (blank + NM -> EXCLUDED).
    path = tmp_path / "two_statuses.csv"
    path.write_text("Country Name,Economic Descriptor,Description,PC Status,TestDate,PC Status\n"
                    "Ghana,1.2. Revenue administration,Adopt a law,,01/31/2010,NM\n", encoding="utf-8")
    with pytest.raises(MonaReadError) as caught:
        read_mona_file(path)
    assert str(caught.value).startswith("two_statuses.csv: column 'PC Status' appears twice (columns D and F)")


def test_two_spellings_of_one_required_column_are_an_error_too(tmp_path):
    path = tmp_path / "status_and_pc_status.xlsx"
    _workbook(path, {"Data": [["Country Name", "Economic Code", "Description", "Status", "PC Status"],
                              ["Ghana", 20.2, "Adopt a law", "M", "NM"]]})
    with pytest.raises(MonaReadError, match=r"'Status' \(D\), 'PC Status' \(E\) all name the required status "
                                            r"column \(sheet 'Data'\)"):
        read_mona_file(path)


def test_a_duplicated_optional_column_keeps_both_values(tmp_path):
    path = tmp_path / "two_comments.csv"
    path.write_text("Country Name,Economic Code,Description,PC Status,Comments,Comments\n"
                    "Ghana,20.2,Adopt a law,M,first note,second note\n", encoding="utf-8")
    mona = read_mona_file(path)
    row = mona.rows.iloc[0]
    assert row.comments == "first note"
    assert strict_loads(row.extra_columns) == {"Comments (column F)": "second note"}
    assert any("'Comments' appears again in column(s) F" in warning for warning in mona.warnings)


def test_description_over_the_bound_is_a_rejected_row(tmp_path):
    # Regression: a 1 MB description passed every check into the training split.
    path = tmp_path / "huge_cell.csv"
    path.write_text(HEADER + "Ghana,1.2. Revenue administration,Adopt a law,M,01/31/2010\n"
                    + "Ghana,1.2. Revenue administration," + "x" * 1_000_000 + ",M,01/31/2010\n"
                    + "Ghana,1.2. Revenue administration," + "y" * MAX_DESCRIPTION_CHARS + ",NM,01/31/2010\n",
                    encoding="utf-8")
    mona = read_mona_file(path)
    assert mona.rows.source_row.tolist() == [2, 4]  # exactly at the bound is accepted
    assert mona.rejected[["source_row", "column_name"]].values.tolist() == [[3, "description"]]
    assert f"{MAX_DESCRIPTION_CHARS:,}" in mona.rejected.problem.iloc[0]


def test_rejected_raw_values_are_strict_json_with_nulls_not_nan(tmp_path):
    # Regression: raw_values held NaN for empty cells, which strict JSON parsers refuse.
    path = tmp_path / "gaps.csv"
    path.write_text("Country Name,Economic Descriptor,Economic Code,Description,PC Status,Region\n"
                    ",1.2. Revenue administration,,Adopt a law,M,\n"
                    "Ghana,,,Adopt a law,NM,West\n", encoding="utf-8")
    mona = read_mona_file(path)
    assert len(mona.rejected) == 2
    for raw in mona.rejected.raw_values:
        values = strict_loads(raw)
        assert all(isinstance(value, str) for value in values.values()), values


def test_csv_row_with_cells_beyond_the_header_is_rejected_not_misaligned(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text(HEADER + "Ghana,1.2. Revenue administration,Adopt a law,M,01/31/2010\n"
                    "Ghana,1.2. Revenue administration,Adopt, by decree, a law,NM,01/31/2010\n"
                    "Kenya,1.2. Revenue administration,Publish the budget,M\n", encoding="utf-8")
    mona = read_mona_file(path)
    assert mona.rows.country.tolist() == ["Ghana", "Kenya"]  # a short row is fine
    assert mona.rejected[["source_row", "column_name"]].values.tolist() == [[3, "F"]]  # one row, one record
    assert strict_loads(mona.rejected.raw_values.iloc[0])["G"] == "01/31/2010"


def test_text_is_kept_as_read_and_whitespace_only_cells_are_blank(tmp_path):
    # The reader spells out str.isspace()'s characters so that pandas hands the regex to pyarrow.
    pattern = re.compile(WHITESPACE_RUN)
    assert [c for c in range(sys.maxunicode + 1) if bool(pattern.fullmatch(chr(c))) != chr(c).isspace()] == []
    # raw.* keeps text exactly as read (issue #16); dbt staging collapses it like Python's str.split()
    # (tests/integration/test_dbt.py).
    description = " Submit\tthe  2010 budget\u00a0law to\u2003Parliament\x1c now\u3000"
    path = tmp_path / "spaces.csv"
    path.write_text(HEADER + f'Ghana,1.2. Revenue administration,"{description}",M,01/31/2010\n'
                    + 'Kenya ,1.2. Revenue administration,Adopt a law,"\u00a0 ", 01/31/2010 \n', encoding="utf-8")
    rows = read_mona_file(path).rows
    assert rows.description.iloc[0] == description
    assert (rows.country.iloc[1], rows.status.iloc[1], rows.test_date.iloc[1]) == ("Kenya ", None, "2010-01-31")
