"""One way for every training asset to run its task: in the step's process at world size 1, else
`accelerate launch` on N processes through Dagster Pipes (orchestration/training_launch.py)."""

import dagster as dg

from orchestration.resources import MlflowRegistry, RlxfSettings
from orchestration.training_launch import Outcome, TrainingRequest, launch_command, run_task

TRAINING_TAGS = {"rlxf/compute": "training"}  # the executor runs one training step at a time


def materialize_training(context: dg.AssetExecutionContext, task: str, rlxf: RlxfSettings, mlflow: MlflowRegistry,
                         pipes: dg.PipesSubprocessClient, algorithm: str = "") -> dg.MaterializeResult:
    # The profile travels as its name and overrides, which the launched processes apply as this one does.
    request = TrainingRequest(task=task, home=str(rlxf.data_home().root), profile=rlxf.profile,
                              profile_file=rlxf.profile_file, overrides=rlxf.overrides,
                              model_cache=str(rlxf.model_cache_dir()), tracking_uri=mlflow.tracking_uri,
                              dagster_run_id=context.run_id, algorithm=algorithm)
    distributed = rlxf.distributed_settings()
    if distributed.num_processes > 1:
        # accelerate launch on N processes; rank 0 streams logs and reports the same checks and metadata.
        return pipes.run(command=launch_command(request, distributed), context=context).get_materialize_result()
    return materialize_result(run_task(request, progress=context.log.info))


def materialize_result(outcome: Outcome) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={key: _typed(outcome.types.get(key), value) for key, value in outcome.metadata.items()},
        check_results=[dg.AssetCheckResult(check_name=check.name, passed=check.passed, metadata=check.metadata)
                       for check in outcome.checks] or None)


def _typed(kind: str | None, value):
    if kind == "md":
        return dg.MetadataValue.md(value)
    if kind == "path":
        return dg.MetadataValue.path(value)
    return value
