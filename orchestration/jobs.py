"""Jobs: the data platform alone, the whole graph, and retraining from raw data down."""

import dagster as dg

data_platform_job = dg.define_asset_job(
    "mona_data_platform",
    selection=dg.AssetSelection.groups("ingestion", "warehouse"),
    description="MONA exports -> DuckDB raw -> dbt models and tests -> GE suite -> validated splits.",
)

full_pipeline_job = dg.define_asset_job(
    "rlxf_full_pipeline",
    selection=dg.AssetSelection.all(),
    description="The whole graph, from the landing folder to the last report.",
)

retraining_job = dg.define_asset_job(
    "rlxf_retraining",
    # Seeds are upstream of the models, not of raw data: include the warehouse group so a first
    # run on an empty data home builds them too.
    selection=dg.AssetSelection.keys("raw_mona_conditions").downstream() | dg.AssetSelection.groups("warehouse"),
    description="Ingest new MONA reviews, rebuild the warehouse, retrain, evaluate and promote.",
)
