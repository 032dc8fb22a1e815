"""Reward models: the proxy P(MET) classifier that PPO optimises and the gold one that judges it."""

import dagster as dg

from ml.registry import PromotionDecision
from ml.reward.pipeline import (
    GOLD_REWARD_MODEL_NAME,
    REGISTERED_NAMES,
    REWARD_MODEL_NAME,
    RewardRun,
    build_rl_reward,
    load_registered_reward,
    register_rl_reward,
    reward_ref,
    train_and_register_reward,
)
from ml.reward.rl_reward import RL_REWARD_NAME
from orchestration.resources import MlflowRegistry, RlxfSettings

TRAINING_TAGS = {"rlxf/compute": "training"}  # the executor runs one training step at a time


def train_role(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry,
               role: str) -> RewardRun:
    home, profile = rlxf.data_home(), rlxf.get_profile()
    with mlflow.open(home, context.run_id, profile) as registry:
        return train_and_register_reward(
            role, home.exports / "splits", home.truth, profile.reward, registry,
            work_dir=home.models / "reward" / role, profile=profile.name, promotion=profile.promotion,
            progress=context.log.info)


def promotion_metadata(decision: PromotionDecision) -> dict:
    """The champion decision: `promotion` (in words), the test, its interval and p-value, both figures."""
    fields = decision.fields()
    return {"promotion": fields.pop("reason"), **{f"promotion_{key}": value for key, value in fields.items()}}


def reward_metadata(run: RewardRun) -> dict:
    evaluation = run.evaluation
    return {
        "test_accuracy": evaluation.metrics["accuracy"],
        "test_macro_f1": evaluation.metrics["macro_f1"],
        "test_roc_auc": evaluation.metrics["roc_auc"],
        "test_ece": evaluation.metrics["ece"],
        "baseline_tfidf_lr_accuracy": evaluation.baselines["tfidf_lr"]["accuracy"],
        "baseline_majority_accuracy": evaluation.baselines["majority"]["accuracy"],
        "bayes_optimal_accuracy": evaluation.bayes_optimal_accuracy,
        "train_rows": run.train_rows,
        "train_seconds": run.metrics["train_seconds"],
        "mlflow_model": f"{run.registered_name} v{run.version}",
        "mlflow_alias": run.decision.alias,
        **promotion_metadata(run.decision),
        "mlflow_run_id": run.run_id,
        "split_hash": run.split_hash,
        "metrics": dg.MetadataValue.md(evaluation.to_markdown()),
        **{f"plot_{name}": dg.MetadataValue.path(str(path)) for name, path in run.plots.items()},
    }


@dg.asset(
    group_name="reward_model",
    kinds={"pytorch", "transformers", "mlflow"},
    deps=["validated_splits"],
    op_tags=TRAINING_TAGS,
    check_specs=[dg.AssetCheckSpec("macro_f1_above_threshold", asset="reward_model")],
    description="BERT classifier of P(MET) trained on half a of the training split; PPO's reward. Registered "
                f"in MLflow as `{REGISTERED_NAMES['proxy']}`, an MLflow Model (pyfunc: conditions -> P(MET)); "
                "`champion` moves only when a paired bootstrap of macro-F1 on the same test split says it is better.",
)
def reward_model(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry):
    run = train_role(context, rlxf, mlflow, "proxy")
    threshold = rlxf.get_profile().reward.min_macro_f1
    macro_f1 = run.evaluation.metrics["macro_f1"]
    return dg.MaterializeResult(metadata=reward_metadata(run), check_results=[dg.AssetCheckResult(
        check_name="macro_f1_above_threshold", passed=bool(macro_f1 >= threshold),
        metadata={"test_macro_f1": macro_f1, "threshold": threshold})])


@dg.asset(
    group_name="reward_model",
    kinds={"pytorch", "transformers", "mlflow"},
    deps=["validated_splits"],
    op_tags=TRAINING_TAGS,
    description="The same recipe on the disjoint half b of the training split with another seed. It only "
                "judges the policy (held-out gold reward) and is never optimised against. Registered as "
                f"`{REGISTERED_NAMES['gold']}`.",
)
def gold_reward_model(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry):
    return dg.MaterializeResult(metadata=reward_metadata(train_role(context, rlxf, mlflow, "gold")))


@dg.asset(
    group_name="reward_model",
    kinds={"python", "scikitlearn", "mlflow"},
    deps=["reward_model", "gold_reward_model", "validated_splits"],
    description="The RL reward as one versioned artifact: which reward-model versions it uses, the proxy's and the "
                "gold side's area classifiers, and how the training reward combines them (the profile's "
                f"`reward_design`). Registered as `{RL_REWARD_NAME}`; RL training, the evaluation and `rlxf "
                "recommend` load it instead of refitting anything.",
)
def rl_reward(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    home, profile = rlxf.data_home(), rlxf.get_profile()
    with mlflow.open(home, context.run_id, profile) as registry:
        refs = {}
        for name in (REWARD_MODEL_NAME, GOLD_REWARD_MODEL_NAME):
            champion = registry.champion_version(name)
            if champion is None:
                raise LookupError(f"{name} has no champion yet: materialize the reward models first")
            refs[name] = reward_ref(name, champion.version)
        proxy, gold = (refs[REWARD_MODEL_NAME], refs[GOLD_REWARD_MODEL_NAME])
        reward = build_rl_reward(home.exports / "splits", profile.policy, profile.reward.seed,
                                 (load_registered_reward(registry, proxy), proxy),
                                 (load_registered_reward(registry, gold), gold))
        version = register_rl_reward(reward, registry, home.models / "reward", profile.name)
    spec = reward.spec
    context.log.info(f"{RL_REWARD_NAME} v{version}: {spec.design} over {proxy['name']} v{proxy['version']} "
                     f"(judged by {gold['name']} v{gold['version']})")
    return dg.MaterializeResult(metadata={
        "mlflow_model": f"{RL_REWARD_NAME} v{version}", "design": spec.design, "topic_weight": spec.topic_weight,
        "reward_model_version": proxy["version"], "gold_model_version": gold["version"],
        **{k: v for k, v in spec.info.items() if v is not None}})
