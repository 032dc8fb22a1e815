"""The evaluation report: does the tuned policy carry the lessons of experience, or game its reward?"""

import dagster as dg

from ml.evaluation.pipeline import run_evaluation
from ml.policy.pipeline import POLICY_ADAPTER_NAME
from orchestration.assets.policy import sft_dir
from orchestration.assets.training import TRAINING_TAGS
from orchestration.resources import MlflowRegistry, RlxfSettings
from orchestration.training_launch import promotion_metadata

HEADLINE_KEYS = ("judged_reward", "share_of_ceiling", "gold_p_met", "proxy_p_met", "on_topic_rate",
                 "on_topic_rate_knn", "kl_to_reference", "kl_to_base", "distinct_2", "copy_share")


@dg.asset(
    group_name="evaluation",
    kinds={"python", "mlflow", "html"},
    deps=["ppo_adapter", "policy_prompts", "rl_reward"],
    op_tags=TRAINING_TAGS,
    check_specs=[dg.AssetCheckSpec("tuned_policy_beats_base_on_gold", asset="evaluation_report"),
                 dg.AssetCheckSpec("no_overoptimisation", asset="evaluation_report")],
    description="Base vs SFT vs the RL-tuned policy vs random and historical policies on held-out prompts: judged "
                "reward (gold P(MET) x P(asked area)) as a share of the attainable, proxy and gold P(MET) with CIs, "
                "on-topic rate by two judges, KL to the RL reference and to base, diversity, copies, significance "
                f"tests, Table-3 samples, training curves. Decides `{POLICY_ADAPTER_NAME}`'s champion by a paired "
                "bootstrap of the held-out judged reward against the champion's on the same prompts and samples.",
)
def evaluation_report(context: dg.AssetExecutionContext, rlxf: RlxfSettings, mlflow: MlflowRegistry):
    home, profile = rlxf.data_home(), rlxf.get_profile()
    with mlflow.open(home, context.run_id, profile) as registry:
        run = run_evaluation(home, profile, registry, rlxf.model_cache_dir(),
                             sft_dir(rlxf) if profile.policy.sft_enabled else None, progress=context.log.info)
    headline = run.report.headline
    tuned = profile.policy.algorithm
    table = {f"{policy}_{key}": headline[f"{policy}_{key}"] for policy in ("base", "sft", tuned, "random", "historical")
             for key in HEADLINE_KEYS if f"{policy}_{key}" in headline}
    gold_gain = headline.get(f"{tuned}_vs_base_judged_gain", float("nan"))
    overoptimised = run.evaluation.overoptimised()
    return dg.MaterializeResult(
        metadata={**table, **promotion_metadata(run.decision),
                  "mlflow_model": f"{POLICY_ADAPTER_NAME} v{run.candidate_version}",
                  "mlflow_alias": run.decision.alias, "seconds": round(run.seconds, 1),
                  "report": dg.MetadataValue.md(run.report.md.read_text(encoding="utf-8")),
                  "report_html": dg.MetadataValue.path(str(run.report.html))},
        check_results=[
            # A tuned policy worse than its base is a warning, not a failure (project_llm_fine_tune).
            dg.AssetCheckResult(check_name="tuned_policy_beats_base_on_gold", passed=bool(gold_gain > 0),
                                severity=dg.AssetCheckSeverity.WARN, metadata={"judged_reward_gain": gold_gain}),
            dg.AssetCheckResult(check_name="no_overoptimisation", passed=not overoptimised,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"flagged": ", ".join(overoptimised) or "none"}),
        ])
