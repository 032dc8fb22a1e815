"""Benchmark the evaluation report (issue #5) on a trained data home: wall time of one report
(target < 3 min on the demo profile) and its headline figures.

    .venv/bin/python bench/bench_evaluation.py [--profile demo] [--home .rlxf/demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import REPO, write_result

from ml.config import get_profile
from ml.evaluation.pipeline import run_evaluation
from ml.paths import DataHome
from ml.registry import Registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--home", default=None)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    home = DataHome(Path(args.home) if args.home else REPO / ".rlxf" / args.profile)
    sft = home.models / "policy" / "sft"
    with Registry.for_home(home.root) as registry:
        run = run_evaluation(home, profile, registry, home.models / "base_policy", sft if sft.exists() else None,
                             progress=print)
    keys = [k for k in run.report.headline if k.split("_")[0] in ("base", "sft", "ppo", "random", "historical")
            and k.endswith(("judged_reward", "gold_p_met", "proxy_p_met", "kl_to_base", "on_topic_rate"))]
    headline = {k: run.report.headline[k] for k in keys}
    print(f"report in {run.seconds:.0f} s (target < 180 s): {run.report.html}")
    for key, value in headline.items():
        print(f"  {key:<32} {value:.3f}")
    write_result("evaluation", {"profile": args.profile, "seconds": run.seconds, "headline": headline,
                                "decision": run.decision.reason, "report": str(run.report.html)})


if __name__ == "__main__":
    main()
