"""Reward models: the proxy P(MET) classifier that PPO optimises and the gold one that judges it."""

import dagster as dg

from ml.reward.pipeline import (
    GOLD_REWARD_MODEL_NAME,
    REGISTERED_NAMES,
    REWARD_MODEL_NAME,
    build_rl_reward,
    load_registered_reward,
    register_rl_reward,
    reward_ref,
)
from ml.reward.rl_reward import RL_REWARD_NAME
from orchestration.assets.training import TRAINING_TAGS, materialize_training
from orchestration.resources import MlflowRegistry, RlxfSettings


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
def reward_model(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry,
                 pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    return materialize_training(context, "reward:proxy", rlxf, mlflow, pipes)


@dg.asset(
    group_name="reward_model",
    kinds={"pytorch", "transformers", "mlflow"},
    deps=["validated_splits"],
    op_tags=TRAINING_TAGS,
    description="The same recipe on the disjoint half b of the training split with another seed. It only "
                "judges the policy (held-out gold reward) and is never optimised against. Registered as "
                f"`{REGISTERED_NAMES['gold']}`.",
)
def gold_reward_model(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry,
                      pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    return materialize_training(context, "reward:gold", rlxf, mlflow, pipes)


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
        "mlflow_model": f"{RL_REWARD_NAME} v{version}", **spec.options(),
        "reward_model_version": proxy["version"], "gold_model_version": gold["version"],
        **{k: v for k, v in spec.info.items() if v is not None}})
