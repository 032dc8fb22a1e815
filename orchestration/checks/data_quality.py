"""Data-quality gate before training: the Great Expectations distribution gates over the dbt split table."""


import dagster as dg

from ml.data.splits import load_split_tables
from ml.data.validation import validate_splits
from ml.data.warehouse import take_turn
from orchestration.resources import DUCKDB_POOL, RlxfSettings


@dg.asset_check(
    asset="mona_splits",
    name="great_expectations_suite",
    blocking=True,
    pool=DUCKDB_POOL,  # reads DuckDB: not while another run writes it
    description="Great Expectations 1.x suite of the profile's distribution gates: minimum rows, class "
                "balance, split shares, share of unknown statuses (the structural rules are dbt tests). A "
                "failure stops `validated_splits` and everything downstream.",
)
def great_expectations_suite(context: dg.AssetCheckExecutionContext, rlxf: RlxfSettings) -> dg.AssetCheckResult:
    warehouse = rlxf.data_home().warehouse
    with take_turn(warehouse, log=context.log.info):
        splits, labeled = load_split_tables(warehouse)
    validation = validate_splits(splits, labeled, rlxf.get_profile().data)
    return dg.AssetCheckResult(
        passed=validation.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**validation.to_metadata(), "expectations": dg.MetadataValue.md(validation.to_markdown())},
    )
