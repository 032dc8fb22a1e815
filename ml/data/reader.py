"""Read one MONA structural-conditions export (.xlsx or .csv) into the canonical schema.

Real exports vary: the IMF workbook has several sheets and a title row above the header, CSVs come in
UTF-8 (with or without a byte-order mark), UTF-16 (Excel's "Unicode text") or Windows-1252/Latin-1,
separated by commas, tabs or semicolons,
headers are spelled several ways, test dates are `MM/DD/YYYY`, ISO, Excel serial numbers or review
text ("Second Review Prior action"). The reader finds the header row of every sheet, maps the headers
(ml.data.schema), normalizes dates to ISO text, and separates rows it cannot use, each with its sheet,
row number and column, so that nothing is silently dropped or mis-read. Cell text is kept exactly as
read (a blank cell is None); trimming and collapsing whitespace is dbt staging's:

- The encoding of a CSV is decided from its bytes: a byte-order mark, else strict UTF-8, else
  Windows-1252 only when no byte sequence in the file is UTF-8. A file that is UTF-8 except for a few
  rows is not decoded as Latin-1 as a whole: those rows are rejected with their row numbers.
- Every sheet whose header row names MONA's required columns is read; the other sheets are named in
  the warnings. Each row keeps its sheet.
- A required column named twice is an error naming both columns; any other column named twice keeps
  its first occurrence and stores the second in `extra_columns`, with a warning.
- A description longer than MAX_DESCRIPTION_CHARS, or any cell longer than MAX_CELL_CHARS, is a
  rejected row, as is a CSV row with cells beyond the header (its cells would be misaligned).

A file it cannot use at all raises `MonaReadError`, whose message names the file (and the sheet, row
or column where known) and the problem.
"""

from __future__ import annotations

import codecs
import datetime as dt
import io
import json
import math
import re
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
# The longest description in the IMF's MONA file is about 1,500 characters: longer text is a broken
# export (a whole file pasted into a cell), and would reach the reward model's training split.
MAX_DESCRIPTION_CHARS = 2_000
MAX_CELL_CHARS = 32_767  # Excel's own limit for a cell: longer text cannot come from a MONA export

_MDY = re.compile(r"^\d{1,2}/\d{1,2}/\d{4}$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}")
_SERIAL = re.compile(r"^\d{5}(\.0+)?$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
# A byte sequence that is valid multi-byte UTF-8: its presence says the file was written as UTF-8.
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
# Bytes of a "mixed" file that are not UTF-8 are parsed as private-use characters U+F780..U+F7FF
# (byte 0x80..0xFF), so their rows can be found after parsing and reported, never loaded.
_UNDECODED = re.compile("[\uf780-\uf7ff]")
_UNDECODED_FROM_SURROGATE = {0xDC00 + byte: 0xF700 + byte for byte in range(0x80, 0x100)}
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
# Exactly the characters str.isspace() accepts, spelled out: pandas runs `\s` through Python's `re` one
# cell at a time (RE2's `\s` differs), this class through pyarrow's vectorized RE2 (1M rows: 10+ s less).
# It finds blank cells; the text itself is stored as read.
WHITESPACE_RUN = "[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"


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
    rows: pd.DataFrame  # CANONICAL_COLUMNS + source_sheet, source_row; text values, None where empty
    rejected: pd.DataFrame  # source_sheet, source_row, column_name, problem, raw_values (JSON)
    sheets: tuple[str, ...]  # workbook sheets read, in order; () for a CSV
    header_row: int  # 1-based row number of the header in the file / first sheet read
    encoding: str  # how a CSV was decoded ("utf-8", "utf-16", "cp1252", ...); "xlsx" for workbooks
    warnings: tuple[str, ...] = field(default=())
    skipped_sheets: tuple[str, ...] = field(default=())  # "'Notes': no header row found", ...

    @property
    def sheet(self) -> str | None:
        return ", ".join(self.sheets) or None


def read_mona_file(path: Path | str) -> MonaFile:
    path = Path(path)
    if not path.exists():
        raise MonaReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise MonaReadError(path, "file is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".xlsx", ".xlsm"):
        return _read_workbook(path)
    if suffix == ".xls":
        raise MonaReadError(path, "legacy .xls workbooks are not supported; save the file as .xlsx or .csv")
    raise MonaReadError(path, f"unsupported file type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}")


# ---------------------------------------------------------------------------------------------
# CSV: encoding from evidence, then a grid of text cells


def decide_encoding(path: Path, data: bytes) -> tuple[str, bool]:
    """(encoding, mixed): how the bytes of a CSV export are to be decoded.

    A byte-order mark decides; else strict UTF-8; else, when no multi-byte UTF-8 sequence occurs
    anywhere, Windows-1252 (Latin-1 for the five bytes cp1252 leaves undefined). A file with both
    UTF-8 sequences and invalid bytes is "mixed": UTF-8, with the rows holding invalid bytes rejected.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                codecs.decode(data, encoding)
            except UnicodeDecodeError as error:
                raise MonaReadError(path, f"starts with a {encoding.upper()} byte-order mark but is not valid "
                                          f"{encoding.upper()} ({error.reason} at byte {error.start})") from None
            return encoding, False
    if b"\x00" in data[:4096]:
        raise MonaReadError(path, "contains NUL bytes: UTF-16/UTF-32 text without a byte-order mark, or not a "
                                  "text file; save it from Excel as 'CSV UTF-8'")
    try:
        codecs.decode(data, "utf-8")
        return "utf-8", False
    except UnicodeDecodeError:
        pass
    if _UTF8_MULTIBYTE.search(data):
        return "utf-8", True
    try:
        codecs.decode(data, "cp1252")
        return "cp1252", False
    except UnicodeDecodeError:
        return "latin-1", False


def _read_csv(path: Path) -> MonaFile:
    data = path.read_bytes()
    encoding, mixed = decide_encoding(path, data)
    warnings = []
    if encoding in ("utf-8", "utf-8-sig") and not mixed:
        # Valid UTF-8: let pandas' C parser decode the bytes itself (no second copy as text).
        def buffer():
            return io.BytesIO(data)
        parser_encoding = "utf-8-sig"
    else:
        text = data.decode(encoding, errors="surrogateescape" if mixed else "strict")
        if mixed:
            text = text.translate(_UNDECODED_FROM_SURROGATE)
        elif encoding in ("cp1252", "latin-1"):
            warnings.append(f"decoded as {encoding}: the file holds no UTF-8 byte sequence")

        def buffer():
            return io.StringIO(text)
        parser_encoding = None
    separator = _separator(path, buffer, parser_encoding)
    if separator != ",":
        warnings.append(f"columns separated by {_SEPARATOR_NAMES[separator]}")
    table = _parse_csv(path, buffer, parser_encoding, separator)
    header_index = _find_header_row(path, table.head(HEADER_SEARCH_ROWS).values.tolist())
    # A row with cells beyond the header cannot be aligned with the columns: reject it.
    mona = _to_canonical(path, table, header_index, sheet=None, reject_beyond_header=True, mixed=mixed)
    return MonaFile(path=path, rows=mona.rows, rejected=mona.rejected, sheets=(), header_row=header_index + 1,
                    encoding=encoding + (" (mixed: rows with other bytes rejected)" if mixed else ""),
                    warnings=tuple(warnings) + mona.warnings)


_SEPARATOR_NAMES = {",": "commas", "\t": "tabs", ";": "semicolons"}


def _separator(path: Path, buffer, encoding: str | None) -> str:
    """Commas, else tabs (Excel's "Unicode text"), else semicolons (Excel where the decimal mark is a
    comma): the first with which the header row is found in the first rows. Commas when none is."""
    for separator in _SEPARATOR_NAMES:
        try:
            head = pd.read_csv(buffer(), header=None, sep=separator, dtype=str, keep_default_na=False,
                               encoding=encoding, nrows=HEADER_SEARCH_ROWS, on_bad_lines="skip",
                               skip_blank_lines=False)
            _find_header_row(path, head.values.tolist())
            return separator
        except (MonaReadError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError):
            continue
    return ","


def _parse_csv(path: Path, buffer, encoding: str | None, separator: str = ",") -> pd.DataFrame:
    """All cells as text, no header assumed (the header row is found afterwards).

    A row with more cells than those before it makes pandas' C parser stop; it is parsed again with
    room for the widest row, and the row is rejected later with its row number.
    """
    width = None
    for _ in range(10):
        try:
            table = pd.read_csv(buffer(), header=None, names=range(width) if width else None, dtype=str,
                                sep=separator, keep_default_na=False, encoding=encoding,
                                skip_blank_lines=False, on_bad_lines="error")
            return table
        except pd.errors.EmptyDataError:
            raise MonaReadError(path, "file has no rows") from None
        except pd.errors.ParserError as error:
            ragged = _RAGGED.search(str(error))
            if not ragged:
                raise MonaReadError(path, f"not a readable CSV file: {error}") from None
            width = int(ragged.group(3))
    raise MonaReadError(path, "rows have too many different numbers of cells to be a table")


# ---------------------------------------------------------------------------------------------
# Workbooks: every sheet whose header matches


def _read_workbook(path: Path) -> MonaFile:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # a damaged workbook fails in zipfile, XML parsing, openpyxl alike
        raise MonaReadError(path, f"not a valid Excel workbook ({type(error).__name__}: {error})") from None
    parts, skipped, header_rows = [], [], []
    best_error: MonaReadError | None = None
    try:
        for worksheet in workbook.worksheets:
            try:
                rows = worksheet.iter_rows(values_only=True)
                head = [list(row) for _, row in zip(range(HEADER_SEARCH_ROWS), rows)]
                try:
                    header_index = _find_header_row(path, head, sheet=worksheet.title)
                except MonaReadError as error:
                    skipped.append(f"{worksheet.title!r}: {error.problem.replace(f' (sheet {worksheet.title!r})', '')}")
                    if best_error is None or len(error.missing_columns) < len(best_error.missing_columns):
                        best_error = error
                    continue
                body = head + [list(row) for row in rows]
            except MonaReadError:
                raise
            except Exception as error:
                raise MonaReadError(path, f"sheet {worksheet.title!r} cannot be read; its XML is damaged "
                                          f"({type(error).__name__}: {error})") from None
            width = max((len(row) for row in body), default=0)
            grid = [[_cell_text(value) for value in row] + [""] * (width - len(row)) for row in body]
            parts.append(_to_canonical(path, pd.DataFrame(grid, dtype=object), header_index, worksheet.title))
            header_rows.append(header_index + 1)
    finally:
        workbook.close()
    if not parts:
        if best_error is None:
            raise MonaReadError(path, "workbook has no sheets")
        if len(skipped) == 1:
            raise best_error
        raise MonaReadError(path, "no sheet has MONA's columns: " + "; ".join(skipped),
                            missing_columns=best_error.missing_columns)
    warnings = [warning for part in parts for warning in part.warnings]
    if skipped:
        warnings.append("sheets skipped: " + "; ".join(skipped))
    return MonaFile(path=path, rows=pd.concat([p.rows for p in parts], ignore_index=True),
                    rejected=pd.concat([p.rejected for p in parts], ignore_index=True),
                    sheets=tuple(p.sheets[0] for p in parts), header_row=header_rows[0], encoding="xlsx",
                    warnings=tuple(warnings), skipped_sheets=tuple(skipped))


def _cell_text(value: object) -> str:
    """Workbook cells as the text a CSV export would hold (dates as ISO, whole numbers without .0)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
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


def column_letter(position: int) -> str:
    """Spreadsheet letter of a 0-based column position (0 -> A, 27 -> AB), as Excel shows a CSV too."""
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def _map_headers(path: Path, headers: list[str], where: str) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """(canonical column -> position, extra header -> position, warnings).

    A required column named twice cannot be resolved without guessing which one holds the data (a
    blank first `PC Status` next to `NM` in a second would silently become EXCLUDED): an error. Any
    other column named twice keeps its first occurrence; the second goes to `extra_columns`.
    """
    positions: dict[str, list[int]] = {}
    extra: dict[str, int] = {}
    for position, header in enumerate(headers):
        column = canonical_column(header)
        if column:
            positions.setdefault(column, []).append(position)
        else:  # an unknown header, or cells under a blank one: kept, not dropped
            extra[header or f"column {column_letter(position)}"] = position
    warnings = []
    for column, found in positions.items():
        if len(found) < 2:
            continue
        names = [headers[p] for p in found]
        letters = [column_letter(p) for p in found]
        if column in REQUIRED_COLUMNS + REQUIRED_ONE_OF:
            if len(set(names)) == 1:
                problem = f"column {names[0]!r} appears {_times(len(found))} (columns {' and '.join(letters)})"
            else:
                problem = ("columns " + ", ".join(f"{n!r} ({x})" for n, x in zip(names, letters))
                           + f" all name the required {column} column")
            raise MonaReadError(path, f"{problem}{where}; keep one of them")
        for name, position, letter in zip(names[1:], found[1:], letters[1:]):
            extra[f"{name} (column {letter})"] = position
        warnings.append(f"column {names[0]!r}{where} appears again in column(s) {', '.join(letters[1:])}: "
                        f"the first is used, the others are kept in extra_columns")
    return {column: found[0] for column, found in positions.items()}, extra, warnings


def _times(n: int) -> str:
    return {2: "twice", 3: "three times"}.get(n, f"{n} times")


# ---------------------------------------------------------------------------------------------
# Canonical rows


def _to_canonical(path: Path, table: pd.DataFrame, header_index: int, sheet: str | None,
                  reject_beyond_header: bool = False, mixed: bool = False) -> MonaFile:
    where = f" (sheet {sheet!r})" if sheet else ""
    # A header row shorter than the rows below it has missing (NaN) cells at its end.
    headers = ["" if pd.isna(cell) else str(cell).strip() for cell in table.iloc[header_index].tolist()]
    body = table.iloc[header_index + 1:].reset_index(drop=True)
    body.columns = range(body.shape[1])
    # Row numbers as a person sees them in the file: 1-based, counting the title and header rows.
    source_row = np.arange(header_index + 2, header_index + 2 + len(body))

    width = max((p + 1 for p, header in enumerate(headers) if header), default=0)
    mapped, extra, warnings = _map_headers(path, headers[:width], where)
    beyond = list(range(width, body.shape[1]))

    cells = {column: _clean(body[position]) for column, position in mapped.items()}
    extra_cells = {header: _clean(body[position]) for header, position in extra.items()}
    beyond_cells = {column_letter(p): _clean(body[p]) for p in beyond}
    # Trailing blank rows are common in spreadsheets: drop rows with no value at all.
    non_empty = np.zeros(len(body), dtype=bool)
    for series in [*cells.values(), *extra_cells.values(), *beyond_cells.values()]:
        non_empty |= series.notna().to_numpy()
    keep = np.flatnonzero(non_empty)

    def kept(series: pd.Series) -> pd.Series:
        return series.iloc[keep].reset_index(drop=True)

    cells = {column: kept(series) for column, series in cells.items()}
    extra_cells = {header: kept(series) for header, series in extra_cells.items()}
    beyond_cells = {letter: kept(series) for letter, series in beyond_cells.items()}
    beyond_cells = {letter: series for letter, series in beyond_cells.items() if series.notna().any()}
    source_row = source_row[keep]

    if beyond_cells and not reject_beyond_header:
        # A workbook cell outside the header is a note someone typed: keep it, as a named extra column.
        extra_cells.update({f"column {letter}": series for letter, series in beyond_cells.items()})
        warnings.append(f"cells without a header{where} in column(s) {', '.join(beyond_cells)} are kept in "
                        f"extra_columns")
        beyond_cells = {}

    rows = pd.DataFrame({column: cells.get(column, pd.Series([None] * len(keep), dtype=object))
                         for column in CANONICAL_COLUMNS if column not in ("test_date_text", "extra_columns")})
    if "test_date" in cells:
        rows["test_date_text"] = cells["test_date"]
        rows["test_date"], bad_dates = _parse_dates(cells["test_date"])
        if bad_dates.any():
            examples = ", ".join(f"row {r}: {v!r}" for r, v in
                                 zip(source_row[bad_dates][:3], cells["test_date"][bad_dates][:3]))
            warnings.append(f"{int(bad_dates.sum())} test date(s){where} kept as text only ({examples})")
    else:
        rows["test_date_text"] = None
    if "approval_date" in cells:
        parsed, unparsed = _parse_dates(cells["approval_date"])
        rows["approval_date"] = _nulls_as_none(parsed.where(~unparsed, cells["approval_date"]))
    if "economic_code" in cells:
        rows["economic_code"] = _format_codes(cells["economic_code"])
    rows["extra_columns"] = _extra_json(extra_cells, len(keep)) if extra_cells else None
    rows["source_sheet"] = sheet
    rows["source_row"] = source_row.astype("int64")

    problems = _row_problems(rows, {**cells, **extra_cells}, beyond_cells, width, mixed)
    rejected = _rejected_frame(rows, problems, extra_cells, beyond_cells)
    good = rows.loc[~rows["source_row"].isin(rejected["source_row"])].reset_index(drop=True)
    return MonaFile(path=path, rows=good, rejected=rejected, sheets=(sheet,) if sheet else (),
                    header_row=header_index + 1, encoding="", warnings=tuple(warnings))


def _clean(series: pd.Series) -> pd.Series:
    """Cells as text exactly as read; empty or whitespace-only cells become None. Collapsing and
    trimming whitespace is dbt staging's (the collapse_whitespace macro), so raw.* loses nothing."""
    text = series.fillna("").astype(str)
    blank = (text == "") | text.str.fullmatch(WHITESPACE_RUN)
    return text.astype(object).where(~blank, None)


def _nulls_as_none(series: pd.Series) -> pd.Series:
    """Object text column with None, never NaN, for missing values (NaN is not valid JSON or text)."""
    return series.astype(object).where(series.notna(), None)


def _parse_dates(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """ISO date text for MM/DD/YYYY, ISO and Excel-serial values; None for review text.

    Returns the parsed series and a mask of values that look like a date but are not valid
    (e.g. 13/45/2020), so the caller can report them.
    """
    text = values.fillna("").astype(str).str.strip()
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
    numeric = pd.to_numeric(codes.str.strip(), errors="coerce")
    formatted = numeric.map(lambda v: f"{v:.1f}" if pd.notna(v) and math.isfinite(v) else None).astype(object)
    # Keep what cannot be read as a number: the row check reports it with its row number.
    return _nulls_as_none(formatted.where(formatted.notna(), codes))


def strict_json(record: dict) -> str:
    """JSON that strict parsers accept: NaN and missing values as null, never `NaN`."""
    clean = {key: None if isinstance(value, float) and not math.isfinite(value) else value
             for key, value in record.items()}
    return json.dumps(clean, ensure_ascii=False, allow_nan=False, default=str)


def _extra_json(extra: dict[str, pd.Series], n: int) -> pd.Series:
    frame = pd.DataFrame(extra)
    records = frame.to_dict(orient="records") if len(frame.columns) else [{}] * n
    return pd.Series([strict_json({k: v for k, v in record.items() if pd.notna(v)}) for record in records],
                     dtype=object)


def _row_problems(rows: pd.DataFrame, texts: dict[str, pd.Series], beyond: dict[str, pd.Series], width: int,
                  mixed: bool) -> list[tuple[np.ndarray, str, str]]:
    """(mask, column, problem) for rows that cannot become a condition; `texts` are the file's cells by
    column (canonical name or extra header), as read."""
    problems = []
    if mixed:  # bytes that are not UTF-8 in an otherwise UTF-8 file: report the row, never guess its text
        for column, series in texts.items():
            bad = series.fillna("").str.contains(_UNDECODED).to_numpy()
            if bad.any():
                problems.append((bad, column, "bytes that are not UTF-8 in a file that is otherwise UTF-8 "
                                              "(the rest of the file is loaded as UTF-8)"))
    # One problem per row, named by the first column beyond the header that holds a value.
    earlier = np.zeros(len(rows), dtype=bool)
    for letter, series in beyond.items():
        here = series.notna().to_numpy()
        problems.append((here & ~earlier, letter, f"cells beyond the header's {width} columns, from column "
                                                  f"{letter}: a delimiter inside an unquoted cell?"))
        earlier |= here
    for column in ("country", "description"):
        problems.append((rows[column].isna().to_numpy(), column, f"{column} is empty"))
    no_area = (rows["economic_descriptor"].isna() & rows["economic_code"].isna()).to_numpy()
    problems.append((no_area, "economic_descriptor", "neither economic descriptor nor economic code given"))
    code = rows["economic_code"].fillna("").astype(str).str.strip()
    bad_code = ((code != "") & ~code.str.match(_NUMBER)).to_numpy()
    problems.append((bad_code, "economic_code", "economic code is not a number"))
    for column, series in texts.items():
        length = series.fillna("").str.len().to_numpy()
        if column == "description" and (length > MAX_DESCRIPTION_CHARS).any():
            problems.append((length > MAX_DESCRIPTION_CHARS, column,
                             f"description is longer than {MAX_DESCRIPTION_CHARS:,} characters"))
        elif (length > MAX_CELL_CHARS).any():
            problems.append((length > MAX_CELL_CHARS, column, f"cell is longer than {MAX_CELL_CHARS:,} characters"))
    return problems


def _shown(value: object) -> object:
    """A cell as stored in `raw_values`: undecodable bytes written as \\xNN, so nothing is lost."""
    if isinstance(value, str) and _UNDECODED.search(value):
        return _UNDECODED.sub(lambda m: f"\\x{ord(m.group()) - 0xF700:02x}", value)
    return value


def _rejected_frame(rows: pd.DataFrame, problems: list[tuple[np.ndarray, str, str]],
                    extra: dict[str, pd.Series], beyond: dict[str, pd.Series]) -> pd.DataFrame:
    records = []
    for mask, column, problem in problems:
        for index in np.flatnonzero(mask):
            row = rows.iloc[index]
            raw = {k: _shown(v) for k, v in row.items()
                   if k not in ("source_row", "source_sheet", "extra_columns") and pd.notna(v)}
            raw.update({k: _shown(s.iloc[index]) for k, s in [*extra.items(), *beyond.items()]
                        if pd.notna(s.iloc[index])})
            records.append({"source_sheet": row["source_sheet"], "source_row": int(row["source_row"]),
                            "column_name": column, "problem": problem, "raw_values": strict_json(raw)})
    frame = pd.DataFrame(records, columns=["source_sheet", "source_row", "column_name", "problem", "raw_values"])
    return frame.sort_values(["source_row", "column_name"], kind="stable").reset_index(drop=True)
