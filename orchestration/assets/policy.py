"""The policy: base LLaMA-architecture model, the paper's prompts, SFT warm start, RL-tuned adapter."""

from dataclasses import replace

import dagster as dg
import pandas as pd
from pydantic import Field

from ml.io import atomic_write
from ml.policy.pipeline import POLICY_ADAPTER_NAME, policy_prompt_table, prepare_base_policy, train_rl_stage, \
    train_sft_stage
from ml.reward.pipeline import load_rl_reward
from ml.reward.rl_reward import RL_REWARD_NAME
from orchestration.assets.reward import TRAINING_TAGS
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
                mlflow: MlflowRegistry) -> dg.MaterializeResult:
    home, profile = rlxf.data_home(), rlxf.get_profile()
    if config.algorithm:  # this run's choice, also in the settings MLflow records
        profile = replace(profile, policy=replace(profile.policy, algorithm=config.algorithm))
    settings = profile.policy
    with mlflow.open(home, context.run_id, profile) as registry:
        reward, reward_version = load_rl_reward(registry, None)
        use_sft = settings.sft_enabled and (sft_dir(rlxf) / "policy_stack.json").exists()
        run = train_rl_stage(home.exports / "splits", pd.read_parquet(prompts_path(rlxf)), settings,
                             rlxf.model_cache_dir(), sft_dir(rlxf) if use_sft else None, reward, reward_version,
                             registry, work_dir=home.models / "policy" / settings.algorithm, profile=profile.name,
                             seed=profile.data.seed, progress=context.log.info)
    history = pd.DataFrame(run.history)
    curve = history[[c for c in ("step", "score_mean", "reward", "kl", "kl_coef", "entropy") if c in history]]
    return dg.MaterializeResult(metadata={
        "algorithm": run.algorithm, "mlflow_model": f"{POLICY_ADAPTER_NAME} v{run.version}",
        "mlflow_run_id": run.run_id, "best_step": run.best_step, "best_validation_judged_reward": run.best_judged,
        "rl_reward_version": reward_version, "reward_design": reward.spec.design,
        "reward_model_version": reward.spec.proxy["version"], "gold_model_version": reward.spec.gold["version"],
        "sft_warm_start": use_sft, "train_seconds": round(run.seconds, 1),
        "eval_history": dg.MetadataValue.md(pd.DataFrame(run.eval_history).round(4).to_markdown(index=False)),
        "training_curve": dg.MetadataValue.md(curve.round(4).to_markdown(index=False)),
        "policy": dg.MetadataValue.path(str(run.stack_dir))})
