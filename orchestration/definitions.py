"""The one Definitions object of the project (loaded by workspace.yaml and `dagster dev`)."""


import dagster as dg

from orchestration.assets.ingestion import raw_mona_conditions
from orchestration.assets.splits import validated_splits
from orchestration.assets.warehouse import mona_dbt_models
from orchestration.checks.data_quality import great_expectations_suite
from orchestration.resources import build_resources

data_platform_job = dg.define_asset_job(
    "mona_data_platform",
    selection=dg.AssetSelection.assets(raw_mona_conditions, validated_splits, mona_dbt_models),
    description="MONA exports -> DuckDB raw -> dbt models and tests -> GE suite -> validated splits.",
)

full_pipeline_job = dg.define_asset_job(
    "rlxf_full_pipeline",
    selection=dg.AssetSelection.all(),
    description="The whole graph, from the landing folder to the last report.",
)


def build_definitions(resources: dict[str, object] | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=[raw_mona_conditions, mona_dbt_models, validated_splits],
        asset_checks=[great_expectations_suite],
        jobs=[data_platform_job, full_pipeline_job],
        resources=resources or build_resources(),
    )


defs = build_definitions()
