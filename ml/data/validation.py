"""The data-quality gate before training: a Great Expectations 1.x suite over the dbt splits.

`validate_splits` validates four tables, each as its own GX batch in one fresh ephemeral context:

- `mona_splits` (dbt mart, one row per condition): required columns, enough rows, key columns not
  null, condition ids unique (so no condition sits in two splits), labels / `is_met` / split names
  in their sets, non-empty reward text and description, and a class balance (mean of `is_met`)
  within bounds.
- `arrangement_splits` (derived here with pandas: one row per `arrangement_key`, `n_splits` = the
  number of distinct splits it appears in): `n_splits` is exactly 1, so the split is group-aware.
- `split_shares` (derived: one row per split, with its share of rows, target share and absolute
  deviation): every split present, every deviation within `split_share_tolerance`.
- `int_mona__labeled`: share of statuses missing from the label map (`label_reason ==
  'unknown_status'`) at most `max_unknown_status_share`.

Every check is a GX expectation; the Python here only builds the derived tables and turns GX's
results into short texts (`ExpectationOutcome.observed`) that say what failed on which values, for
the Dagster asset check's metadata. No Dagster import: `orchestration/` calls this.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pandas as pd

from ml.config import DataSettings

SPLIT_TARGETS: Mapping[str, float] = MappingProxyType({"train": 0.7, "validation": 0.1, "test": 0.2})

SPLITS_TABLE = "mona_splits"
ARRANGEMENTS_TABLE = "arrangement_splits"
SHARES_TABLE = "split_shares"
LABELED_TABLE = "int_mona__labeled"

LABELS = ("MET", "NON_MET")
LABEL_REASONS = ("mapped", "not_assessed", "unknown_status")
UNKNOWN_STATUS_REASON = "unknown_status"
MIN_TEXT_LENGTH = 3
# Set and mean expectations skip nulls, so the columns they read are checked for nulls first.
NOT_NULL_COLUMNS = ("condition_id", "arrangement_key", "label", "is_met", "split")
SPLITS_COLUMNS = (
    "condition_id", "arrangement_key", "country", "arrangement_type", "economic_area",
    "description", "reward_text", "label", "is_met", "split", "is_temporal_holdout", "test_year",
)

_N_EXAMPLES = 5  # unexpected values shown per failed expectation
_MAX_VALUE_CHARS = 40


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, in words a person reads in the Dagster UI."""

    table: str  # "mona_splits", "split_shares", "arrangement_splits", "int_mona__labeled"
    expectation: str  # GX expectation type, e.g. "expect_column_values_to_be_unique"
    column: str | None
    success: bool
    observed: str  # observed value, or unexpected count and a few examples

    def label(self) -> str:
        column = f"({self.column})" if self.column else ""
        return f"{self.table}.{self.expectation}{column}"


@dataclass(frozen=True)
class SplitValidation:
    success: bool
    outcomes: tuple[ExpectationOutcome, ...]

    def failures(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.success]

    def to_markdown(self) -> str:
        failed = len(self.failures())
        lines = [
            f"**{'PASSED' if self.success else 'FAILED'}**: {len(self.outcomes) - failed} of "
            f"{len(self.outcomes)} expectations passed, {failed} failed.",
            "",
            "| status | table | expectation | column | observed |",
            "|---|---|---|---|---|",
        ]
        for o in self.outcomes:
            status = "✅ pass" if o.success else "❌ FAIL"
            cells = [status, o.table, o.expectation, o.column or "", o.observed]
            lines.append("| " + " | ".join(_md_cell(cell) for cell in cells) + " |")
        return "\n".join(lines)

    def to_metadata(self) -> dict:
        failures = self.failures()
        return {
            "success": bool(self.success),
            "n_expectations": len(self.outcomes),
            "n_failed": len(failures),
            "failed": [f"{o.label()}: {o.observed}" for o in failures],
        }


def validate_splits(
    splits: pd.DataFrame,
    labeled: pd.DataFrame,
    settings: DataSettings,
    split_targets: Mapping[str, float] = SPLIT_TARGETS,
) -> SplitValidation:
    """Run the GX suite over the splits and the labeled table; never raises on bad data."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # otherwise GX waits on the closed network
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name="mona")

    low_met, high_met = settings.met_share_bounds
    split_names = list(split_targets)
    tables: list[tuple[str, pd.DataFrame, list[Any], list[str]]] = [
        (
            SPLITS_TABLE,
            splits,
            [
                gxe.ExpectTableColumnsToMatchSet(column_set=list(SPLITS_COLUMNS), exact_match=False),
                gxe.ExpectTableRowCountToBeBetween(min_value=settings.min_examples),
                *(gxe.ExpectColumnValuesToNotBeNull(column=column) for column in NOT_NULL_COLUMNS),
                gxe.ExpectColumnValuesToBeUnique(column="condition_id"),
                gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(LABELS)),
                gxe.ExpectColumnValuesToBeInSet(column="is_met", value_set=[0, 1]),
                gxe.ExpectColumnValuesToBeInSet(column="split", value_set=split_names),
                gxe.ExpectColumnValuesToNotBeNull(column="reward_text"),
                gxe.ExpectColumnValueLengthsToBeBetween(column="reward_text", min_value=MIN_TEXT_LENGTH),
                gxe.ExpectColumnValuesToNotBeNull(column="description"),
                gxe.ExpectColumnValueLengthsToBeBetween(column="description", min_value=MIN_TEXT_LENGTH),
                gxe.ExpectColumnMeanToBeBetween(column="is_met", min_value=low_met, max_value=high_met),
            ],
            ["condition_id", "split"],
        ),
        (
            ARRANGEMENTS_TABLE,
            arrangement_splits(splits),
            [gxe.ExpectColumnValuesToBeBetween(column="n_splits", min_value=1, max_value=1)],
            ["arrangement_key", "splits"],
        ),
        (
            SHARES_TABLE,
            split_shares(splits, split_targets),
            [
                gxe.ExpectColumnValuesToBeBetween(column="n_rows", min_value=1),
                gxe.ExpectColumnValuesToBeBetween(
                    column="abs_deviation", min_value=0.0, max_value=settings.split_share_tolerance
                ),
            ],
            ["split", "share", "target"],
        ),
        (
            LABELED_TABLE,
            labeled_status(labeled),
            [
                gxe.ExpectColumnValuesToBeInSet(column="label_reason", value_set=list(LABEL_REASONS)),
                gxe.ExpectColumnMeanToBeBetween(
                    column="is_unknown_status", min_value=0.0, max_value=settings.max_unknown_status_share
                ),
            ],
            ["condition_id"],
        ),
    ]

    outcomes: list[ExpectationOutcome] = []
    for table, frame, expectations, index_columns in tables:
        outcomes.extend(_validate_table(gx, source, table, frame, expectations, index_columns))
    return SplitValidation(success=all(o.success for o in outcomes), outcomes=tuple(outcomes))


# ----------------------------------------------------------------------------------- derived tables


def arrangement_splits(splits: pd.DataFrame) -> pd.DataFrame:
    """One row per arrangement: how many distinct splits hold its conditions, and which."""
    columns = ["arrangement_key", "n_splits", "splits"]
    if not {"arrangement_key", "split"} <= set(splits.columns) or splits.empty:
        return pd.DataFrame({"arrangement_key": pd.Series(dtype=object),
                             "n_splits": pd.Series(dtype="int64"), "splits": pd.Series(dtype=object)})
    grouped = splits.groupby("arrangement_key", dropna=False)["split"]
    frame = pd.DataFrame({
        "n_splits": grouped.nunique(dropna=False),
        "splits": grouped.agg(lambda s: ",".join(sorted("null" if pd.isna(v) else str(v)
                                                        for v in s.unique()))),
    }).reset_index()
    return frame[columns].sort_values(["n_splits", "arrangement_key"], ascending=[False, True],
                                      ignore_index=True)


def split_shares(splits: pd.DataFrame, split_targets: Mapping[str, float] = SPLIT_TARGETS) -> pd.DataFrame:
    """One row per split (every target split, plus any unexpected one): rows, share, target, |dev|."""
    counts = (splits["split"].astype(object).where(splits["split"].notna(), "<null>").value_counts()
              if "split" in splits.columns else pd.Series(dtype="int64"))
    names = list(split_targets) + sorted(str(n) for n in counts.index if n not in split_targets)
    total = int(counts.sum())
    rows = []
    for name in names:
        n_rows = int(counts.get(name, 0))
        share = n_rows / total if total else 0.0
        target = float(split_targets.get(name, 0.0))
        rows.append({"split": name, "n_rows": n_rows, "share": share, "target": target,
                     "abs_deviation": abs(share - target)})
    return pd.DataFrame(rows, columns=["split", "n_rows", "share", "target", "abs_deviation"])


def labeled_status(labeled: pd.DataFrame) -> pd.DataFrame:
    """The labeled table with a 0/1 `is_unknown_status` column (status missing from the label map)."""
    frame = labeled.copy()
    reason = frame["label_reason"] if "label_reason" in frame.columns else pd.Series(
        [None] * len(frame), index=frame.index, dtype=object)
    frame["is_unknown_status"] = (reason == UNKNOWN_STATUS_REASON).fillna(False).astype("int64")
    return frame


# ---------------------------------------------------------------------------------------- GX runs


def _validate_table(gx, source, table: str, frame: pd.DataFrame, expectations: Sequence[Any],
                    index_columns: Sequence[str]) -> list[ExpectationOutcome]:
    asset = source.add_dataframe_asset(name=table)
    batch = asset.add_batch_definition_whole_dataframe(name=f"{table}_whole").get_batch(
        batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=f"{table}_suite")
    for order, expectation in enumerate(expectations):
        expectation.meta = {"order": order}
        suite.add_expectation(expectation)
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
    present_index = [c for c in index_columns if c in frame.columns]
    if present_index:
        result_format["unexpected_index_column_names"] = present_index
    result = batch.validate(suite, result_format=result_format)
    ordered = sorted(result.results, key=lambda r: (r.expectation_config.meta or {}).get("order", 0))
    outcomes = []
    for res in ordered:
        config = res.expectation_config
        outcomes.append(ExpectationOutcome(
            table=table,
            expectation=config.type,
            column=config.kwargs.get("column"),
            success=bool(res.success),
            observed=_observed(config.type, dict(config.kwargs), res.result or {}, res.exception_info),
        ))
    return outcomes


def _exception_message(exception_info: Any) -> str | None:
    if not exception_info:
        return None
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    for info in infos:
        info = info if isinstance(info, Mapping) else getattr(info, "to_json_dict", lambda: {})()
        if info.get("raised_exception"):
            lines = str(info.get("exception_message") or "exception").strip().splitlines()
            message = lines[0] if lines else "exception"
            return message.removeprefix("Error: ")[:200]
    return None


def _observed(kind: str, kwargs: dict, result: dict, exception_info: Any) -> str:
    error = _exception_message(exception_info)
    if error:
        return f"error: {error}"
    column = kwargs.get("column")
    if kind == "expect_table_columns_to_match_set":
        details = result.get("details", {}).get("mismatched", {})
        missing = details.get("missing") or []
        return f"missing columns: {_fmt_list(missing)}" if missing else "all required columns present"
    if "unexpected_count" in result and "element_count" in result:
        return _observed_unexpected(column, result)
    if "observed_value" in result:
        observed = result["observed_value"]
        if kind == "expect_table_row_count_to_be_between":
            return f"{observed} rows; expected {_fmt_range(kwargs)}"
        if kind == "expect_column_mean_to_be_between":
            return f"mean({column}) = {_fmt(observed)}; expected {_fmt_range(kwargs)}"
        return f"observed {_fmt(observed)}"
    return ", ".join(f"{k}={_fmt(v)}" for k, v in result.items()) or "no result"


def _observed_unexpected(column: str | None, result: dict) -> str:
    unexpected, total = int(result.get("unexpected_count") or 0), int(result.get("element_count") or 0)
    if unexpected == 0:
        return f"0 of {total} rows unexpected"
    text = f"{unexpected} of {total} rows unexpected ({100.0 * unexpected / total:.1f}%)" if total \
        else f"{unexpected} rows unexpected"
    examples: list[str] = []
    index_rows = result.get("partial_unexpected_index_list") or []
    if index_rows and isinstance(index_rows[0], Mapping):
        for row in index_rows:
            value = f"{column}={_fmt(row.get(column))}" if column in row else ""
            others = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != column)
            example = f"{value} ({others})" if value and others else (value or others)
            if example not in examples:
                examples.append(example)
    else:
        for value in result.get("partial_unexpected_list") or []:
            example = f"{column}={_fmt(value)}" if column else _fmt(value)
            if example not in examples:
                examples.append(example)
    if examples:
        more = ", …" if len(examples) > _N_EXAMPLES or unexpected > len(examples) else ""
        text += "; e.g. " + "; ".join(examples[:_N_EXAMPLES]) + more
    return text


# ------------------------------------------------------------------------------------- formatting


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalar -> Python
        except (ValueError, AttributeError):
            pass
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "null" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, str):
        shown = value if len(value) <= _MAX_VALUE_CHARS else value[: _MAX_VALUE_CHARS - 1] + "…"
        return repr(shown)
    try:
        if pd.isna(value):
            return "null"
    except (TypeError, ValueError):
        pass
    return str(value)


def _fmt_list(values: Sequence[Any]) -> str:
    return "[" + ", ".join(_fmt(v) for v in values) + "]"


def _fmt_range(kwargs: dict) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"between {_fmt(low)} and {_fmt(high)}"
    if low is not None:
        return f">= {_fmt(low)}"
    if high is not None:
        return f"<= {_fmt(high)}"
    return "any value"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
