"""The data-quality gate before training: a Great Expectations 1.x suite of distribution gates.

dbt tests own the structural rules of the split table (keys not null and unique, labels and split
names in their sets, non-empty texts, no arrangement in two splits, label reasons); this suite keeps
what depends on the profile's thresholds and on the data as a whole. `validate_splits` runs five
expectations, each table its own GX batch in one fresh ephemeral context:

- `mona_splits` (dbt mart, one row per condition): at least `min_examples` rows; the share of MET
  (mean of `is_met`) within `met_share_bounds`.
- `split_shares` (derived here: one row per split, its share of rows, target share and absolute
  deviation): every split present, every deviation within `split_share_tolerance` of the profile's
  targets (`DataSettings.split_targets`, the same values dbt split with).
- `int_mona__labeled`: share of statuses missing from the label map (`label_reason ==
  'unknown_status'`) at most `max_unknown_status_share`.

Each outcome carries the expectation's own description and GX's result description
(`ExpectationValidationResult.describe_dict()`: observed value, unexpected rows with their index
columns), for the Dagster asset check's metadata. No Dagster import: `orchestration/` calls this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ml.config import DataSettings
from ml.markdown import markdown_table

SPLITS_TABLE = "mona_splits"
SHARES_TABLE = "split_shares"
LABELED_TABLE = "int_mona__labeled"
UNKNOWN_STATUS_REASON = "unknown_status"


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result: what it checks, and GX's description of what it found."""

    table: str  # "mona_splits", "split_shares", "int_mona__labeled"
    expectation: str  # GX expectation type, e.g. "expect_column_mean_to_be_between"
    column: str | None
    success: bool
    description: str  # the expectation's own description
    result: Mapping[str, Any]  # GX's describe_dict(): "result" and, when it raised, "exception_info"

    @property
    def observed(self) -> str:
        return json.dumps(self.result, sort_keys=True, default=str)

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
        table = pd.DataFrame([{"status": "pass" if o.success else "FAIL", "expectation": o.label(),
                               "description": o.description, "observed": o.observed} for o in self.outcomes])
        return (f"**{'PASSED' if self.success else 'FAILED'}**: {len(self.outcomes) - failed} of "
                f"{len(self.outcomes)} expectations passed, {failed} failed.\n\n"
                + markdown_table(table, code_columns=("observed",)))

    def to_metadata(self) -> dict:
        failures = self.failures()
        return {
            "success": bool(self.success),
            "n_expectations": len(self.outcomes),
            "n_failed": len(failures),
            "failed": [f"{o.label()}: {o.description}: {o.observed}" for o in failures],
        }


def validate_splits(splits: pd.DataFrame, labeled: pd.DataFrame, settings: DataSettings) -> SplitValidation:
    """Run the GX suite over the splits and the labeled table; never raises on bad data."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # otherwise GX waits on the closed network
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name="mona")

    low_met, high_met = settings.met_share_bounds
    tolerance = settings.split_share_tolerance
    tables: list[tuple[str, pd.DataFrame, list[Any], list[str]]] = [
        (SPLITS_TABLE, splits, [
            gxe.ExpectTableRowCountToBeBetween(
                min_value=settings.min_examples, description=f"At least {settings.min_examples} examples."),
            gxe.ExpectColumnMeanToBeBetween(
                column="is_met", min_value=low_met, max_value=high_met,
                description=f"Class balance: the share of MET lies between {low_met} and {high_met}."),
        ], []),
        (SHARES_TABLE, split_shares(splits, settings.split_targets), [
            gxe.ExpectColumnValuesToBeBetween(
                column="n_rows", min_value=1, description="Every split holds examples."),
            gxe.ExpectColumnValuesToBeBetween(
                column="abs_deviation", min_value=0.0, max_value=tolerance,
                description=f"Every split's share lies within {tolerance} of its target."),
        ], ["split", "share", "target"]),
        (LABELED_TABLE, labeled_status(labeled), [
            gxe.ExpectColumnMeanToBeBetween(
                column="is_unknown_status", min_value=0.0, max_value=settings.max_unknown_status_share,
                description=f"At most {settings.max_unknown_status_share} of the conditions have a status "
                            "missing from the status_label_map seed."),
        ], []),
    ]

    outcomes: list[ExpectationOutcome] = []
    for table, frame, expectations, index_columns in tables:
        outcomes.extend(_validate_table(gx, source, table, frame, expectations, index_columns))
    return SplitValidation(success=all(o.success for o in outcomes), outcomes=tuple(outcomes))


def split_shares(splits: pd.DataFrame, split_targets: Mapping[str, float]) -> pd.DataFrame:
    """One row per split (every target split, plus any unexpected one): rows, share, target, |dev|."""
    counts = splits["split"].astype(object).where(splits["split"].notna(), "<null>").value_counts()
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
    return labeled.assign(is_unknown_status=(labeled["label_reason"] == UNKNOWN_STATUS_REASON).astype("int64"))


def _validate_table(gx, source, table: str, frame: pd.DataFrame, expectations: Sequence[Any],
                    index_columns: Sequence[str]) -> list[ExpectationOutcome]:
    asset = source.add_dataframe_asset(name=table)
    batch = asset.add_batch_definition_whole_dataframe(name=f"{table}_whole").get_batch(
        batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=f"{table}_suite")
    for expectation in expectations:
        suite.add_expectation(expectation)
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
    if index_columns:
        result_format["unexpected_index_column_names"] = list(index_columns)
    result = batch.validate(suite, result_format=result_format)
    # GX returns results in its own order: report them in the order the suite states them.
    order = [expectation.id for expectation in suite.expectations]
    outcomes = []
    for res in sorted(result.results, key=lambda r: order.index(r.expectation_config.id)):
        described = res.describe_dict()
        config = res.expectation_config
        outcomes.append(ExpectationOutcome(
            table=table,
            expectation=config.type,
            column=config.kwargs.get("column"),
            success=bool(res.success),
            description=config.description or "",
            result={key: described[key] for key in ("result", "exception_info") if key in described},
        ))
    return outcomes
