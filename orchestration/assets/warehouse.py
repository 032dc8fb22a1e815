"""The dbt project on DuckDB as Dagster assets: staging, intermediate and mart models, with dbt tests
surfacing as asset checks. dbt's vars come from the run's profile (ml.data.warehouse.dbt_vars)."""


import json
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from ml.data.warehouse import dbt_vars, take_turn
from orchestration.resources import DUCKDB_POOL, RlxfSettings, dbt_project


class MonaDbtTranslator(DagsterDbtTranslator):
    """Keys and groups only: the dbt source gets the key of the Python ingestion asset."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey(f"{dbt_resource_props['source_name']}_{dbt_resource_props['name']}")
        return dg.AssetKey(dbt_resource_props["name"])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "warehouse"


@dbt_assets(manifest=dbt_project.manifest_path, project=dbt_project,
            dagster_dbt_translator=MonaDbtTranslator(), pool=DUCKDB_POOL)
def mona_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, rlxf: RlxfSettings):
    warehouse = rlxf.data_home().warehouse
    with take_turn(warehouse, log=context.log.info):
        yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars(rlxf.get_profile().data, warehouse))],
                           context=context).stream()
