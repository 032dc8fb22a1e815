"""Benchmark continuous retraining (issue #6): time from a new MONA file landing to new champions.

A data home is first trained on its profile's default data; then a new export lands, the landing
sensor is evaluated, and the retraining job it requests runs (ingest, dbt, GE, reward models, SFT,
PPO, evaluation and promotion). Prints and writes the seconds from the file's arrival to the end of
that run, and the champion decisions.

    .venv/bin/python bench/bench_retraining.py [--profile smoke] [--rows 600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg
from common import write_result

from ml.config import get_profile
from ml.data.landing import seed_landing
from ml.data.synthetic import write_synthetic_export
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME
from ml.policy.tiny import shared_cache_dir
from ml.registry import Registry
from ml.reward.pipeline import GOLD_REWARD_MODEL_NAME, REWARD_MODEL_NAME
from orchestration.definitions import build_definitions
from orchestration.resources import RlxfSettings, build_resources
from orchestration.sensors import mona_landing_sensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--rows", type=int, default=600, help="rows of the new export")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlxf-retrain-") as tmp:
        home = DataHome(Path(tmp) / "home").ensure()
        settings = RlxfSettings(profile=args.profile, home=str(home.root),
                                model_cache=str(shared_cache_dir()) if args.profile == "smoke" else "")
        defs = build_definitions(build_resources(settings))
        instance = dg.DagsterInstance.ephemeral()
        seed_landing(home, get_profile(args.profile).data)
        start = time.perf_counter()
        assert defs.resolve_job_def("rlxf_full_pipeline").execute_in_process(instance=instance).success
        first_run = time.perf_counter() - start
        context = dg.build_sensor_context(instance=instance, resources={"rlxf": settings})
        mona_landing_sensor(context)  # the first files are known
        cursor = context.cursor

        landed = time.perf_counter()
        write_synthetic_export(home.landing, home.truth, args.rows, seed=4242, fmt="csv")
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"rlxf": settings})
        request = mona_landing_sensor(context)
        assert isinstance(request, dg.RunRequest)
        result = defs.resolve_job_def("rlxf_retraining").execute_in_process(instance=instance, tags=request.tags)
        seconds = time.perf_counter() - landed
        assert result.success
        with Registry.for_home(home.root) as registry:
            decisions = {name: registry.versions(name)[-1].tags.get("promotion.decision")
                         for name in (REWARD_MODEL_NAME, GOLD_REWARD_MODEL_NAME, POLICY_ADAPTER_NAME)}
    print(f"{args.profile}: first full run {first_run:.0f} s; new file -> new champions decided in {seconds:.0f} s; "
          f"decisions {decisions}")
    write_result(f"retraining_{args.profile}", {"profile": args.profile, "first_run_seconds": first_run,
                                                "file_to_champions_seconds": seconds, "decisions": decisions})


if __name__ == "__main__":
    main()
