"""The policy: base LLaMA-architecture model, the paper's prompts, SFT warm start, RL-tuned adapter."""

import dagster as dg
from pydantic import Field

from ml.io import atomic_write
from ml.policy.pipeline import POLICY_ADAPTER_NAME, policy_prompt_table, prepare_base_policy
from ml.reward.rl_reward import RL_REWARD_NAME
from orchestration.assets.training import TRAINING_TAGS, materialize_training
from orchestration.resources import MlflowRegistry, RlxfSettings


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
def sft_adapter(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry,
                pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    return materialize_training(context, "sft", rlxf, mlflow, pipes)


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
    return materialize_training(context, "rl", rlxf, mlflow, pipes, algorithm=config.algorithm)
