"""Benchmark the data platform: generate N synthetic MONA rows, ingest them, `dbt build` them.

Prints and writes JSON (bench/results/data_platform.json) with wall time, rows/s and peak memory per
stage. Target (issue #2): ingest + dbt build of 1,000,000 rows under 60 s, memory under 4 GiB, 2 cores.

    .venv/bin/python bench/bench_data_platform.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml.data.ingest import ingest_landing  # noqa: E402
from ml.data.synthetic import write_synthetic_export  # noqa: E402
from ml.paths import DBT_PROJECT_DIR  # noqa: E402


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "data_platform.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rlxf-bench-") as tmp:
        tmp = Path(tmp)
        landing, warehouse = tmp / "landing", tmp / "warehouse.duckdb"
        stages = {}

        start = time.perf_counter()
        export, _ = write_synthetic_export(landing, tmp / "truth", args.rows, seed=args.seed, fmt="csv")
        stages["generate"] = {"seconds": time.perf_counter() - start}
        print(f"generate  {args.rows:>9,} rows  {stages['generate']['seconds']:6.1f} s  "
              f"({export.stat().st_size / 2**20:.0f} MiB csv)", flush=True)

        start = time.perf_counter()
        report = ingest_landing(landing, warehouse, tmp / "quarantine", progress=lambda _: None)
        seconds = time.perf_counter() - start
        stages["ingest"] = {"seconds": seconds, "rows": report.rows_loaded, "rows_per_s": report.rows_loaded / seconds,
                            "peak_rss_mib": peak_rss_mib(resource.RUSAGE_SELF)}
        print(f"ingest    {report.rows_loaded:>9,} rows  {seconds:6.1f} s  "
              f"{report.rows_loaded / seconds:>10,.0f} rows/s  peak {stages['ingest']['peak_rss_mib']:,.0f} MiB",
              flush=True)

        env = dict(os.environ, RLXF_DUCKDB_PATH=str(warehouse))
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("dbt")), "build", "--quiet",
                        "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
                        "--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs")],
                       check=True, env=env)
        seconds = time.perf_counter() - start
        stages["dbt_build"] = {"seconds": seconds, "rows": report.rows_loaded,
                               "rows_per_s": report.rows_loaded / seconds,
                               "peak_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN)}
        print(f"dbt build {report.rows_loaded:>9,} rows  {seconds:6.1f} s  "
              f"{report.rows_loaded / seconds:>10,.0f} rows/s  peak {stages['dbt_build']['peak_rss_mib']:,.0f} MiB",
              flush=True)

    total = stages["ingest"]["seconds"] + stages["dbt_build"]["seconds"]
    peak = max(stages["ingest"]["peak_rss_mib"], stages["dbt_build"]["peak_rss_mib"])
    result = {
        "benchmark": "data_platform", "rows": args.rows, "stages": stages,
        "ingest_plus_dbt_seconds": total, "peak_rss_mib": peak,
        "targets": {"ingest_plus_dbt_seconds": 60, "peak_rss_mib": 4096},
        "meets_targets": total < 60 and peak < 4096,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"ingest + dbt build: {total:.1f} s (target < 60 s), peak memory {peak:,.0f} MiB (target < 4096 MiB)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
