"""Read one MONA structural-conditions export (.xlsx or .csv) into the canonical schema.

Real exports vary: the IMF workbook has several sheets and a title row above the header, CSVs come in
UTF-8 or Latin-1, headers are spelled several ways, test dates are `MM/DD/YYYY`, ISO, Excel serial
numbers or review text ("Second Review Prior action"). The reader finds the header row, maps the
headers (ml.data.schema), normalizes dates to ISO text, and separates rows it cannot use, each with
its row number and column, so that nothing is silently dropped.

A file it cannot use at all raises `MonaReadError`, whose message names the file and the problem.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml.data.schema import (
    CANONICAL_COLUMNS,
    HEADER_ALIASES,
    REQUIRED_COLUMNS,
    REQUIRED_ONE_OF,
    canonical_column,
)

SUPPORTED_SUFFIXES = (".csv", ".xlsx", ".xlsm")
HEADER_SEARCH_ROWS = 30  # a header further down than this is not a MONA export
EXCEL_EPOCH = pd.Timestamp("1899-12-30")  # Excel's day 0 (it counts 1900 as a leap year)
EXCEL_SERIAL_RANGE = (20_000, 80_000)  # 1954 .. 2119: numbers in this range are dates

_MDY = re.compile(r"^\d{1,2}/\d{1,2}/\d{4}$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}")
_SERIAL = re.compile(r"^\d{5}(\.0+)?$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class MonaReadError(ValueError):
    """A file that cannot be ingested: unreadable, empty, or missing required columns."""

    def __init__(self, path: Path, problem: str, missing_columns: tuple[str, ...] = ()):
        self.path = Path(path)
        self.problem = problem
        self.missing_columns = missing_columns
        super().__init__(f"{self.path.name}: {problem}")


@dataclass(frozen=True)
class MonaFile:
    """The usable rows of one export plus the rows set aside, with where they came from."""

    path: Path
    rows: pd.DataFrame  # CANONICAL_COLUMNS + source_row, text values, None where empty
    rejected: pd.DataFrame  # source_row, column_name, problem, raw_values (JSON)
    sheet: str | None
    header_row: int  # 1-based row number of the header in the file / sheet
    warnings: tuple[str, ...] = field(default=())


def read_mona_file(path: Path | str) -> MonaFile:
    path = Path(path)
    if not path.exists():
        raise MonaReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise MonaReadError(path, "file is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table, sheet, header_index = _read_csv(path), None, None
    elif suffix in (".xlsx", ".xlsm"):
        table, sheet, header_index = _read_workbook(path)
    elif suffix == ".xls":
        raise MonaReadError(path, "legacy .xls workbooks are not supported; save the file as .xlsx or .csv")
    else:
        raise MonaReadError(path, f"unsupported file type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}")

    if header_index is None:
        header_index = _find_header_row(path, table.head(HEADER_SEARCH_ROWS).values.tolist())
    return _to_canonical(path, table, header_index, sheet)


# ---------------------------------------------------------------------------------------------
# Raw cell grids


def _read_csv(path: Path) -> pd.DataFrame:
    """All cells as text, no header assumed (the header row is found afterwards)."""
    last_error: Exception | None = None
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return pd.read_csv(path, header=None, dtype=str, keep_default_na=False, encoding=encoding,
                               skip_blank_lines=False, on_bad_lines="error")
        except UnicodeDecodeError as error:
            last_error = error
        except pd.errors.EmptyDataError:
            raise MonaReadError(path, "file has no rows") from None
        except pd.errors.ParserError as error:
            raise MonaReadError(path, f"not a readable CSV file: {error}") from error
    raise MonaReadError(path, f"cannot decode as UTF-8 or Latin-1: {last_error}")


def _read_workbook(path: Path) -> tuple[pd.DataFrame, str, int]:
    """The first sheet whose header row has the required columns (the IMF file has one per view)."""
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as error:
        raise MonaReadError(path, f"not a valid Excel workbook ({type(error).__name__}: {error})") from error
    try:
        best_error: MonaReadError | None = None
        for worksheet in workbook.worksheets:
            rows = worksheet.iter_rows(values_only=True)
            head = [list(row) for _, row in zip(range(HEADER_SEARCH_ROWS), rows)]
            try:
                header_index = _find_header_row(path, head, sheet=worksheet.title)
            except MonaReadError as error:
                if best_error is None or len(error.missing_columns) < len(best_error.missing_columns or "x" * 99):
                    best_error = error
                continue
            body = head + [list(row) for row in rows]
            width = max((len(row) for row in body), default=0)
            grid = [[_cell_text(value) for value in row] + [""] * (width - len(row)) for row in body]
            return pd.DataFrame(grid, dtype=object), worksheet.title, header_index
        if best_error is None:
            raise MonaReadError(path, "workbook has no sheets")
        raise best_error
    finally:
        workbook.close()


def _cell_text(value: object) -> str:
    """Workbook cells as the text a CSV export would hold (dates as ISO, whole numbers without .0)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Header detection and mapping


def _find_header_row(path: Path, head: list[list[object]], sheet: str | None = None) -> int:
    """Index of the first row whose cells name every required column."""
    where = f" (sheet {sheet!r})" if sheet else ""
    best_missing: tuple[str, ...] | None = None
    for index, row in enumerate(head):
        columns = {canonical_column(cell) for cell in row if cell not in (None, "")}
        columns.discard(None)
        if len(columns) < 2:
            continue
        missing = _missing_required(columns)
        if not missing:
            return index
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    if best_missing is None:
        raise MonaReadError(
            path,
            f"no header row found in the first {HEADER_SEARCH_ROWS} rows{where}; "
            f"expected columns such as 'Country Name', 'Economic Descriptor', 'Description', 'PC Status'",
            missing_columns=REQUIRED_COLUMNS + REQUIRED_ONE_OF,
        )
    readable = ", ".join(_readable(column) for column in best_missing)
    raise MonaReadError(path, f"missing required column(s){where}: {readable}", missing_columns=best_missing)


def _missing_required(columns: set[str]) -> tuple[str, ...]:
    missing = tuple(column for column in REQUIRED_COLUMNS if column not in columns)
    if not columns.intersection(REQUIRED_ONE_OF):
        missing += (" or ".join(REQUIRED_ONE_OF),)
    return missing


def _readable(column: str) -> str:
    return " or ".join(f"{name} (e.g. {HEADER_ALIASES[name][0]!r})" if name in HEADER_ALIASES else name
                       for name in column.split(" or "))


# ---------------------------------------------------------------------------------------------
# Canonical rows


def _to_canonical(path: Path, table: pd.DataFrame, header_index: int, sheet: str | None) -> MonaFile:
    headers = [str(cell).strip() for cell in table.iloc[header_index].tolist()]
    body = table.iloc[header_index + 1:].reset_index(drop=True)
    body.columns = range(body.shape[1])
    # Row numbers as a person sees them in the file: 1-based, counting the title and header rows.
    source_row = np.arange(header_index + 2, header_index + 2 + len(body))

    mapped: dict[str, int] = {}
    extra: dict[str, int] = {}
    for position, header in enumerate(headers):
        column = canonical_column(header)
        if column and column not in mapped:
            mapped[column] = position
        elif header:
            extra[header] = position

    cells = {column: _clean(body[position]) for column, position in mapped.items()}
    # Trailing blank rows are common in spreadsheets: drop rows with no value at all.
    non_empty = np.zeros(len(body), dtype=bool)
    for series in list(cells.values()) + [_clean(body[p]) for p in extra.values()]:
        non_empty |= series.notna().to_numpy()
    keep = np.flatnonzero(non_empty)
    cells = {column: series.iloc[keep].reset_index(drop=True) for column, series in cells.items()}
    source_row = source_row[keep]

    rows = pd.DataFrame({column: cells.get(column, pd.Series([None] * len(keep), dtype=object))
                         for column in CANONICAL_COLUMNS if column not in ("test_date_text", "extra_columns")})
    warnings: list[str] = []
    if "test_date" in cells:
        rows["test_date_text"] = cells["test_date"]
        rows["test_date"], bad_dates = _parse_dates(cells["test_date"])
        if bad_dates.any():
            examples = ", ".join(f"row {r}: {v!r}" for r, v in
                                 zip(source_row[bad_dates][:3], cells["test_date"][bad_dates][:3]))
            warnings.append(f"{int(bad_dates.sum())} test date(s) kept as text only ({examples})")
    else:
        rows["test_date_text"] = None
    if "approval_date" in cells:
        parsed, unparsed = _parse_dates(cells["approval_date"])
        rows["approval_date"] = parsed.where(~unparsed, cells["approval_date"])
    if "economic_code" in cells:
        rows["economic_code"] = _format_codes(cells["economic_code"])
    rows["extra_columns"] = _extra_json(body.iloc[keep].reset_index(drop=True), extra) if extra else None
    rows["source_row"] = source_row.astype("int64")

    problems = _row_problems(rows)
    rejected = _rejected_frame(rows, problems)
    good = rows.loc[~rows["source_row"].isin(rejected["source_row"])].reset_index(drop=True)
    return MonaFile(path=path, rows=good, rejected=rejected, sheet=sheet, header_row=header_index + 1,
                    warnings=tuple(warnings))


def _clean(series: pd.Series) -> pd.Series:
    """Trimmed text with internal whitespace collapsed; empty cells become None."""
    text = series.astype(object).where(series.notna(), "").astype(str)
    text = text.str.replace(r"\s+", " ", regex=True).str.strip()
    return text.where(text != "", None).astype(object)


def _parse_dates(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """ISO date text for MM/DD/YYYY, ISO and Excel-serial values; None for review text.

    Returns the parsed series and a mask of values that look like a date but are not valid
    (e.g. 13/45/2020), so the caller can report them.
    """
    text = values.fillna("").astype(str)
    result = pd.Series([None] * len(text), dtype=object)

    mdy = text.str.match(_MDY)
    parsed = pd.to_datetime(text.where(mdy), format="%m/%d/%Y", errors="coerce")
    iso = text.str.match(_ISO)
    parsed = parsed.fillna(pd.to_datetime(text.where(iso).str.slice(0, 10), format="%Y-%m-%d", errors="coerce"))
    serial = text.str.match(_SERIAL)
    days = pd.to_numeric(text.where(serial), errors="coerce")
    days = days.where((days >= EXCEL_SERIAL_RANGE[0]) & (days <= EXCEL_SERIAL_RANGE[1]))
    parsed = parsed.fillna(EXCEL_EPOCH + pd.to_timedelta(days, unit="D"))

    ok = parsed.notna().to_numpy()
    result[ok] = parsed[ok].dt.strftime("%Y-%m-%d").to_numpy()
    looks_like_date = (mdy | iso | serial).to_numpy()
    return result, looks_like_date & ~ok


def _format_codes(codes: pd.Series) -> pd.Series:
    """Economic codes as one-decimal text ("22" and "22.0" are the same code)."""
    numeric = pd.to_numeric(codes, errors="coerce")
    formatted = numeric.map(lambda v: f"{v:.1f}" if pd.notna(v) else None).astype(object)
    # Keep what cannot be read as a number: the row check reports it with its row number.
    return formatted.where(numeric.notna(), codes)


def _extra_json(body: pd.DataFrame, extra: dict[str, int]) -> pd.Series:
    frame = pd.DataFrame({header: _clean(body[position]) for header, position in extra.items()})
    records = frame.to_dict(orient="records")
    return pd.Series([json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False) or None
                      for record in records], dtype=object)


def _row_problems(rows: pd.DataFrame) -> list[tuple[np.ndarray, str, str]]:
    """(mask, column, problem) for rows that cannot become a condition."""
    problems = []
    for column in ("country", "description"):
        problems.append((rows[column].isna().to_numpy(), column, f"{column} is empty"))
    no_area = (rows["economic_descriptor"].isna() & rows["economic_code"].isna()).to_numpy()
    problems.append((no_area, "economic_descriptor", "neither economic descriptor nor economic code given"))
    code = rows["economic_code"].fillna("").astype(str)
    bad_code = ((code != "") & ~code.str.match(_NUMBER)).to_numpy()
    problems.append((bad_code, "economic_code", "economic code is not a number"))
    return problems


def _rejected_frame(rows: pd.DataFrame, problems: list[tuple[np.ndarray, str, str]]) -> pd.DataFrame:
    records = []
    for mask, column, problem in problems:
        for index in np.flatnonzero(mask):
            row = rows.iloc[index]
            raw = {k: v for k, v in row.items() if k != "source_row" and v is not None}
            records.append({"source_row": int(row["source_row"]), "column_name": column, "problem": problem,
                            "raw_values": json.dumps(raw, ensure_ascii=False, default=str)})
    frame = pd.DataFrame(records, columns=["source_row", "column_name", "problem", "raw_values"])
    return frame.sort_values(["source_row", "column_name"], kind="stable").reset_index(drop=True)
