"""Ingestion: MONA exports in the landing folder -> DuckDB raw tables."""


import dagster as dg

from ml.data.ingest import ingest_landing
from ml.data.landing import seed_landing
from orchestration.resources import RlxfSettings


@dg.asset(
    group_name="ingestion",
    kinds={"duckdb", "python"},
    description="Every MONA export in the landing folder loaded into DuckDB `raw.mona_conditions` with "
                "provenance (file, sha256, row, ingested_at). Same file twice is a no-op; unreadable files "
                "move to quarantine with a reason; rows that cannot be used go to `raw.rejected_rows`.",
)
def raw_mona_conditions(context: dg.AssetExecutionContext, rlxf: RlxfSettings) -> dg.MaterializeResult:
    home = rlxf.data_home()
    for path in seed_landing(home, rlxf.get_profile().data):
        context.log.info(f"landing folder seeded with {path.name}")
    report = ingest_landing(home.landing, home.warehouse, home.quarantine, progress=context.log.info)
    files = report.to_frame()
    quarantined = report.with_status("quarantined")
    for outcome in quarantined:
        context.log.warning(f"quarantined {outcome.file}: {outcome.reason}")
    return dg.MaterializeResult(metadata={
        "rows_loaded": report.rows_loaded,
        "rows_rejected": report.rows_rejected,
        "total_raw_rows": report.total_rows,
        "files_loaded": len(report.with_status("loaded")),
        "files_already_loaded": len(report.with_status("already_loaded")),
        "files_quarantined": len(quarantined),
        "files": dg.MetadataValue.md(files.drop(columns="sha256").to_markdown(index=False) if len(files) else "none"),
        "warehouse": dg.MetadataValue.path(str(home.warehouse)),
        "quarantine": dg.MetadataValue.path(str(home.quarantine)),
    })
