"""The validated split snapshot that model training reads."""


import dagster as dg

from ml.data.splits import export_splits, load_split_tables
from ml.data.warehouse import take_turn
from orchestration.resources import DUCKDB_POOL, RlxfSettings


@dg.asset(
    group_name="warehouse",
    kinds={"parquet", "python"},
    deps=["mona_splits"],
    pool=DUCKDB_POOL,  # reads DuckDB: not while another run writes it
    description="Train/validation/test snapshot (parquet + manifest with a content hash) of `mona_splits`. "
                "Runs only after the blocking Great Expectations suite on `mona_splits` passed, so the "
                "previous snapshot stays in place when new data fails validation.",
)
def validated_splits(context: dg.AssetExecutionContext, rlxf: RlxfSettings) -> dg.MaterializeResult:
    home = rlxf.data_home()
    with take_turn(home.warehouse, log=context.log.info):
        splits, _labeled = load_split_tables(home.warehouse)
    snapshot = export_splits(splits, home.exports / "splits")
    context.log.info(f"exported {snapshot.total} examples: {snapshot.rows}")
    counts = splits.groupby(["split", "label"]).size().unstack(fill_value=0)
    return dg.MaterializeResult(metadata={
        "rows_train": snapshot.rows["train"],
        "rows_validation": snapshot.rows["validation"],
        "rows_test": snapshot.rows["test"],
        "met_share": snapshot.met_share,
        "temporal_holdout_rows": int(splits["is_temporal_holdout"].sum()),
        "content_hash": snapshot.content_hash,
        "labels_by_split": dg.MetadataValue.md(counts.to_markdown()),
        "snapshot": dg.MetadataValue.path(str(snapshot.folder)),
    })
