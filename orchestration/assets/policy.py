"""The policy: base LLaMA-architecture model, the paper's prompts, SFT warm start, RL-tuned adapter."""

import dagster as dg
import pandas as pd
from pydantic import Field

from ml.io import atomic_write
from ml.policy.pipeline import POLICY_ADAPTER_NAME, policy_prompt_table, prepare_base_policy, train_sft_stage
from ml.reward.rl_reward import RL_REWARD_NAME
from orchestration.assets.reward import TRAINING_TAGS
from orchestration.resources import MlflowRegistry, RlxfSettings
from orchestration.rl_training import METADATA_TYPES, RLTrainingRequest, launch_command, train_policy_adapter


def prompts_path(rlxf: RlxfSettings):
    return rlxf.data_home().exports / "policy_prompts.parquet"


def sft_dir(rlxf: RlxfSettings):
    return rlxf.data_home().models / "policy" / "sft"


@dg.asset(group_name="policy", kinds={"pytorch", "transformers", "safetensors"},
          description="The base LLaMA-architecture causal LM, loaded offline and cached as safetensors "
                      "(demo: the packaged SmolLM2-135M-Instruct GGUF, converted once).")
def base_policy(context: dg.AssetExecutionContext, rlxf: RlxfSettings) -> dg.MaterializeResult:
    info = prepare_base_policy(rlxf.get_profile().policy, rlxf.model_cache_dir(), progress=context.log.info)
    return dg.MaterializeResult(metadata={**info, "cache": dg.MetadataValue.path(str(rlxf.model_cache_dir()))})


@dg.asset(group_name="policy", kinds={"python", "parquet"}, deps=["validated_splits"],
          description="The paper's prompt over each (country, arrangement, area) of the splits: train prompts "
                      "for RL, validation prompts for checkpoint selection, test prompts held out for evaluation.")
def policy_prompts(context: dg.AssetExecutionContext, rlxf: RlxfSettings) -> dg.MaterializeResult:
    home, profile = rlxf.data_home(), rlxf.get_profile()
    prompts = policy_prompt_table(home.exports / "splits", profile.policy, seed=profile.data.seed)
    path = prompts_path(rlxf)
    atomic_write(path, lambda tmp: prompts.to_parquet(tmp, index=False))
    counts = prompts["split"].value_counts().to_dict()
    context.log.info(f"{len(prompts):,} prompts: {counts}")
    return dg.MaterializeResult(metadata={
        "prompts_train": counts.get("train", 0), "prompts_validation": counts.get("validation", 0),
        "prompts_test": counts.get("test", 0), "example": prompts["prompt"].iloc[0],
        "path": dg.MetadataValue.path(str(path))})


@dg.asset(group_name="policy", kinds={"pytorch", "peft"}, deps=["base_policy", "validated_splits"],
          op_tags=TRAINING_TAGS,
          description="Optional LoRA warm start (ml/policy/sft.py) on historically MET conditions as answers to "
                      "their prompts; merged into the base it becomes PPO's reference policy. Off when the profile's "
                      "`sft_enabled` is false.")
def sft_adapter(context: dg.AssetExecutionContext, rlxf: RlxfSettings) -> dg.MaterializeResult:
    profile = rlxf.get_profile()
    if not profile.policy.sft_enabled:
        return dg.MaterializeResult(metadata={"enabled": False})
    result = train_sft_stage(rlxf.data_home().exports / "splits", profile.policy, rlxf.model_cache_dir(),
                             sft_dir(rlxf), seed=profile.data.seed, progress=context.log.info)
    losses = pd.DataFrame(result.pop("loss_history"), columns=["step", "loss"])
    return dg.MaterializeResult(metadata={"enabled": True, **result,
                                          "loss_curve": dg.MetadataValue.md(losses.to_markdown(index=False))})


class RLRunConfig(dg.Config):
    """Choices for one run, set in the launchpad: the profile's otherwise."""

    algorithm: str = Field(default="", description="ppo, grpo or rloo for this run (empty: the profile's)")


@dg.asset(group_name="policy", kinds={"pytorch", "peft", "mlflow"},
          deps=["policy_prompts", "sft_adapter", "rl_reward"], op_tags=TRAINING_TAGS,
          description="RL from experience feedback on a LoRA adapter: the profile's algorithm (PPO, ml/policy/ppo.py; "
                      f"or TRL's GRPO / RLOO) against the newest `{RL_REWARD_NAME}`. The registered adapter is the "
                      "checkpoint with the best judged reward on validation prompts (gold P(MET) x P(asked area)) "
                      f"within the KL budget; registered as `{POLICY_ADAPTER_NAME}` (promotion: evaluation_report).")
def ppo_adapter(context: dg.AssetExecutionContext, config: RLRunConfig, rlxf: RlxfSettings,
                mlflow: MlflowRegistry, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    # The profile travels as its name and overrides, which the launched processes apply as this one does.
    request = RLTrainingRequest(home=str(rlxf.data_home().root), profile=rlxf.profile,
                                profile_file=rlxf.profile_file, overrides=rlxf.overrides, algorithm=config.algorithm,
                                model_cache=str(rlxf.model_cache_dir()), tracking_uri=mlflow.tracking_uri,
                                dagster_run_id=context.run_id)
    distributed = rlxf.distributed_settings()
    if distributed.num_processes > 1:
        # accelerate launch on N processes; rank 0 streams logs and reports the same metadata.
        return pipes.run(command=launch_command(request, distributed), context=context).get_materialize_result()
    metadata = train_policy_adapter(request, progress=context.log.info)
    return dg.MaterializeResult(metadata={key: _typed(METADATA_TYPES.get(key), value)
                                          for key, value in metadata.items()})


def _typed(kind: str | None, value):
    if kind == "md":
        return dg.MetadataValue.md(value)
    if kind == "path":
        return dg.MetadataValue.path(value)
    return value
