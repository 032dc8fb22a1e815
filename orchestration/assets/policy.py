"""The policy: base LLaMA-architecture model, the paper's prompts, SFT warm start, RL-tuned adapter."""

import dagster as dg
import pandas as pd

from ml.policy.pipeline import POLICY_ADAPTER_NAME, policy_prompt_table, prepare_base_policy, train_rl_stage, \
    train_sft_stage
from ml.reward.pipeline import GOLD_REWARD_MODEL_NAME, REWARD_MODEL_NAME, load_champion_reward
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
    tmp = path.with_suffix(".tmp")
    prompts.to_parquet(tmp, index=False)
    tmp.replace(path)
    counts = prompts["split"].value_counts().to_dict()
    context.log.info(f"{len(prompts):,} prompts: {counts}")
    return dg.MaterializeResult(metadata={
        "prompts_train": counts.get("train", 0), "prompts_validation": counts.get("validation", 0),
        "prompts_test": counts.get("test", 0), "example": prompts["prompt"].iloc[0],
        "path": dg.MetadataValue.path(str(path))})


@dg.asset(group_name="policy", kinds={"pytorch", "trl", "peft"}, deps=["base_policy", "validated_splits"],
          op_tags=TRAINING_TAGS,
          description="Optional LoRA warm start (TRL SFTTrainer) on historically MET conditions as answers to their "
                      "prompts; merged into the base it becomes PPO's reference policy. Off when the profile's "
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


@dg.asset(group_name="policy", kinds={"pytorch", "peft", "mlflow"},
          deps=["policy_prompts", "sft_adapter", "reward_model", "gold_reward_model"], op_tags=TRAINING_TAGS,
          description="RL from experience feedback: PPO (ml/policy/ppo.py; or TRL GRPO) on a LoRA adapter with reward "
                      "= champion reward model's P(MET) x P(asked area | answer)^topic_weight. The registered adapter "
                      "is the checkpoint at the held-out gold reward's peak; registered as "
                      f"`{POLICY_ADAPTER_NAME}` (promotion: evaluation_report).")
def ppo_adapter(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    home, profile = rlxf.data_home(), rlxf.get_profile()
    settings = profile.policy
    with mlflow.open(home) as registry:
        proxy, proxy_version = load_champion_reward(registry, REWARD_MODEL_NAME, home.models / "registry")
        gold, gold_version = load_champion_reward(registry, GOLD_REWARD_MODEL_NAME, home.models / "registry")
        use_sft = settings.sft_enabled and (sft_dir(rlxf) / "policy_stack.json").exists()
        run = train_rl_stage(home.exports / "splits", pd.read_parquet(prompts_path(rlxf)), settings,
                             rlxf.model_cache_dir(), sft_dir(rlxf) if use_sft else None, proxy, gold,
                             {"proxy": proxy_version, "gold": gold_version}, registry,
                             work_dir=home.models / "policy" / settings.algorithm, profile=profile.name,
                             seed=profile.data.seed, reward_seed=profile.reward.seed, progress=context.log.info)
    curve = pd.DataFrame(run.history)[["step", "score_mean", "kl", "kl_coef", "entropy"]] \
        if run.history and "score_mean" in run.history[0] else pd.DataFrame(run.history)
    return dg.MaterializeResult(metadata={
        "algorithm": run.algorithm, "mlflow_model": f"{POLICY_ADAPTER_NAME} v{run.version}",
        "mlflow_run_id": run.run_id, "best_step": run.best_step, "best_gold_reward": run.best_gold,
        "reward_model_version": proxy_version, "gold_model_version": gold_version, "sft_warm_start": use_sft,
        "train_seconds": round(run.seconds, 1),
        "eval_history": dg.MetadataValue.md(pd.DataFrame(run.eval_history).to_markdown(index=False)),
        "training_curve": dg.MetadataValue.md(curve.round(4).to_markdown(index=False)),
        "policy": dg.MetadataValue.path(str(run.stack_dir))})
