"""The alignment evaluation of the tuned policies: numbers, tests and a report.

`evaluate_policies` measures every policy's scored answers (proxy and gold reward with CIs, KL,
length, diversity, on-topic rate, novelty), tests tuned vs base and vs random, flags over-optimisation
and picks Table-3-style samples; `write_report` writes report.md and a self-contained report.html with
the plots and the promotion decision. `metrics` holds the statistics, `synthetic_inputs` inputs with a
known answer.
"""

from ml.evaluation.metrics import (
    ALPHA,
    BootstrapResult,
    MeanCI,
    OveroptimisationFlag,
    WelchResult,
    distinct_n,
    mean_ci,
    overoptimisation_flag,
    paired_bootstrap,
    top_opening,
    welch_test,
)
from ml.evaluation.plots import save_plots
from ml.evaluation.report import ReportFiles, write_report
from ml.evaluation.summary import (
    POLICY_ORDER,
    SCENARIOS,
    PolicyEvaluation,
    evaluate_policies,
    scenario_of,
    scenario_samples,
)
from ml.evaluation.synthetic import EvaluationInputs, synthetic_inputs
from ml.reward.topic import AreaClassifier
from ml.similarity import NoveltyIndex

__all__ = [
    "ALPHA",
    "POLICY_ORDER",
    "SCENARIOS",
    "AreaClassifier",
    "BootstrapResult",
    "EvaluationInputs",
    "MeanCI",
    "NoveltyIndex",
    "OveroptimisationFlag",
    "PolicyEvaluation",
    "ReportFiles",
    "WelchResult",
    "distinct_n",
    "evaluate_policies",
    "mean_ci",
    "overoptimisation_flag",
    "paired_bootstrap",
    "save_plots",
    "scenario_of",
    "scenario_samples",
    "synthetic_inputs",
    "top_opening",
    "welch_test",
    "write_report",
]
