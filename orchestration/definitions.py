"""The one Definitions object of the project (loaded by workspace.yaml and `dagster dev`)."""


import dagster as dg

from orchestration.assets.evaluation import evaluation_report
from orchestration.assets.ingestion import raw_mona_conditions
from orchestration.assets.policy import base_policy, policy_prompts, ppo_adapter, sft_adapter
from orchestration.assets.reward import gold_reward_model, reward_model, rl_reward
from orchestration.assets.splits import validated_splits
from orchestration.assets.warehouse import mona_dbt_models
from orchestration.checks.data_quality import great_expectations_suite
from orchestration.jobs import data_platform_job, full_pipeline_job, retraining_job
from orchestration.resources import build_resources
from orchestration.schedules import weekly_retraining_schedule
from orchestration.sensors import mona_landing_sensor


def build_definitions(resources: dict[str, object] | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=[raw_mona_conditions, mona_dbt_models, validated_splits, reward_model, gold_reward_model, rl_reward,
                base_policy, policy_prompts, sft_adapter, ppo_adapter, evaluation_report],
        asset_checks=[great_expectations_suite],
        jobs=[data_platform_job, full_pipeline_job, retraining_job],
        sensors=[mona_landing_sensor],
        schedules=[weekly_retraining_schedule],
        resources=resources or build_resources(),
        # One training step at a time: two trainings on a 2-core laptop only fight over the cores.
        # Steps fork from a server that imported this module once (torch, transformers, dbt, MLflow):
        # spawned, every step paid that import again, 12-18 s each on 2 cores. The module is
        # named: with Dagster's default preload, steps of `dagster job execute -m` still imported it each.
        executor=dg.multiprocess_executor.configured(
            {"tag_concurrency_limits": [{"key": "rlxf/compute", "value": "training", "limit": 1}],
             "start_method": {"forkserver": {"preload_modules": ["orchestration.definitions"]}}}),
    )


defs = build_definitions()
