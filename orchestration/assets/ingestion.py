"""Ingestion: MONA exports in the landing folder -> DuckDB raw tables."""


import dagster as dg

from ml.data.ingest import ingest_landing, landing_files
from ml.data.landing import seed_landing
from ml.data.warehouse import take_turn
from orchestration.resources import DUCKDB_POOL, RlxfSettings


@dg.asset(
    group_name="ingestion",
    kinds={"duckdb", "python"},
    pool=DUCKDB_POOL,
    description="Every MONA export in the landing folder loaded into DuckDB `raw.mona_conditions` with "
                "provenance (file, sha256, sheet, row, ingested_at). A file already handled (by sha256) is "
                "not read again; a file that cannot be read or loaded is quarantined with its reason and the "
                "others still load; rows that cannot be used go to `raw.rejected_rows`.",
)
def raw_mona_conditions(context: dg.AssetExecutionContext, rlxf: RlxfSettings) -> dg.MaterializeResult:
    home = rlxf.data_home()
    with take_turn(home.warehouse, log=context.log.info):
        seeded = seed_landing(home, rlxf.get_profile().data) if rlxf.seeds_synthetic_data() else []
        for path in seeded:
            context.log.warning(f"landing folder {home.landing} was empty: seeded with {path.name} (synthetic data "
                                f"of profile {rlxf.profile})")
        if not landing_files(home.landing):
            context.log.warning(f"landing folder {home.landing} holds no MONA export (.xlsx, .csv)")
        report = ingest_landing(home.landing, home.warehouse, home.quarantine, progress=context.log.info)
        for outcome in report.outcomes:
            for warning in outcome.warnings:
                context.log.warning(f"{outcome.file}: {warning}")
            if outcome.status in ("quarantined", "unreadable"):
                context.log.warning(f"{outcome.status} {outcome.file}: {outcome.reason}")
    files = report.to_frame()
    return dg.MaterializeResult(metadata={
        "rows_loaded": report.rows_loaded,
        "rows_rejected": report.rows_rejected,
        "total_raw_rows": report.total_rows,
        "files_loaded": len(report.with_status("loaded")),
        "files_already_loaded": len(report.with_status("already_loaded")),
        "files_quarantined": len(report.with_status("quarantined")),
        "files_already_quarantined": len(report.with_status("already_quarantined")),
        "synthetic_files_seeded": dg.MetadataValue.json([path.name for path in seeded]),
        "files": dg.MetadataValue.md(files.drop(columns="sha256").to_markdown(index=False) if len(files) else "none"),
        "warehouse": dg.MetadataValue.path(str(home.warehouse)),
        "quarantine": dg.MetadataValue.path(str(home.quarantine)),
    })
