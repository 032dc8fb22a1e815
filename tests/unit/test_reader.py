"""MONA reader on the paper's real rows and on the broken inputs real exports come in."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
from openpyxl import Workbook

from ml.data.reader import MonaReadError, read_mona_file
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
    assert (row.country, row.economic_code, row.description, row.status) == ("Ghana", "20.2", "Adopt a revenue law", "Met")
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
