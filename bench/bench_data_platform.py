"""Benchmark the data platform.

1. Generate N synthetic MONA rows, ingest them, `dbt build` them: wall time, rows/s and peak memory per
   stage. Target (issue #2): ingest + dbt build of 1,000,000 rows under 60 s, memory under 4 GiB, 2 cores.
2. Ingest 1,000 files at once, good and bad mixed (issue #13): CSVs and workbooks, some with rejected
   rows or other encodings, some corrupt (broken workbook XML, zips that are no workbook, duplicated
   status column, empty, binary): files/s, and that every good file loaded and every bad one was
   quarantined; then the same folder again (every file already handled).
3. The landing sensor's tick with 10,000 files in the landing folder (issue #13): the first tick (every
   file new, each hashed once), a tick with the cursor's cache (nothing hashed), and the steady state after
   ingestion (the manifest describes every file).

Prints and writes JSON (bench/results/data_platform.json).

    .venv/bin/python bench/bench_data_platform.py [--rows 1000000] [--files 1000] [--sensor-files 10000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
from openpyxl import Workbook  # noqa: E402

from ml.config import get_profile  # noqa: E402
from ml.data.ingest import ingest_landing  # noqa: E402
from ml.data.synthetic import generate_mona, write_synthetic_export  # noqa: E402
from ml.data.warehouse import dbt_vars  # noqa: E402
from ml.paths import DBT_PROJECT_DIR, DataHome  # noqa: E402
from orchestration.resources import RlxfSettings  # noqa: E402
from orchestration.sensors import mona_landing_sensor  # noqa: E402


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def quiet(_: str) -> None:
    pass


def bench_rows(rows: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rlxf-bench-") as tmp:
        tmp = Path(tmp)
        landing, warehouse = tmp / "landing", tmp / "warehouse.duckdb"
        stages = {}

        start = time.perf_counter()
        export, _ = write_synthetic_export(landing, tmp / "truth", rows, seed=seed, fmt="csv")
        stages["generate"] = {"seconds": time.perf_counter() - start}
        print(f"generate  {rows:>9,} rows  {stages['generate']['seconds']:6.1f} s  "
              f"({export.stat().st_size / 2**20:.0f} MiB csv)", flush=True)

        start = time.perf_counter()
        report = ingest_landing(landing, warehouse, tmp / "quarantine", progress=quiet)
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
                        "--target-path", str(tmp / "target"), "--log-path", str(tmp / "logs"),
                        "--vars", json.dumps(dbt_vars(get_profile("demo").data, warehouse))],
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
    print(f"ingest + dbt build: {total:.1f} s (target < 60 s), peak memory {peak:,.0f} MiB (target < 4096 MiB)")
    return {"rows": rows, "stages": stages, "ingest_plus_dbt_seconds": total, "peak_rss_mib": peak,
            "meets_targets": total < 60 and peak < 4096}


# ---------------------------------------------------------------------------------------------
# Many files at once


def _xlsx(frame) -> bytes:
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Description")
    sheet.append(list(frame.columns))
    for row in frame.itertuples(index=False, name=None):
        sheet.append([None if value == "" else value for value in row])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def write_mixed_files(landing: Path, n_files: int, rows_per_file: int, seed: int) -> dict[str, int]:
    """n_files exports cut from one synthetic export: 70% good CSV, 10% good workbooks, 10% CSV in other
    encodings or with rejected rows, 10% corrupt. Returns how many of each kind were written."""
    export = generate_mona(n_files * rows_per_file, seed=seed).export
    landing.mkdir(parents=True, exist_ok=True)
    counts = {"good_csv": 0, "good_xlsx": 0, "odd_csv": 0, "corrupt": 0}
    for i in range(n_files):
        part = export.iloc[i * rows_per_file:(i + 1) * rows_per_file]
        kind = ("good_csv", "good_csv", "good_csv", "good_csv", "good_csv", "good_csv", "good_csv",
                "good_xlsx", "odd_csv", "corrupt")[i % 10]
        counts[kind] += 1
        name = landing / f"export_{i:05d}"
        if kind == "good_csv":
            part.to_csv(name.with_suffix(".csv"), index=False)
        elif kind == "good_xlsx":
            name.with_suffix(".xlsx").write_bytes(_xlsx(part))
        elif kind == "odd_csv":  # cp1252, UTF-16 or a rejected row: loads, with warnings
            text = part.to_csv(index=False)
            variant = (i // 10) % 3
            if variant == 0:
                name.with_suffix(".csv").write_bytes(text.encode("cp1252", errors="replace"))
            elif variant == 1:
                name.with_suffix(".csv").write_bytes(text.replace(",", "\t").encode("utf-16"))
            else:
                name.with_suffix(".csv").write_text(text + ",,,,,,,,,No country,,,,\n", encoding="utf-8")
        else:
            variant = (i // 10) % 5
            if variant == 0:  # workbook whose XML is cut in half
                data = _xlsx(part)
                with zipfile.ZipFile(io.BytesIO(data)) as source:
                    items = [(info, source.read(info)) for info in source.infolist()]
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as target:
                    for info, content in items:
                        target.writestr(info, content[: len(content) // 2] if info.filename == "xl/workbook.xml"
                                        else content)
                name.with_suffix(".xlsx").write_bytes(buffer.getvalue())
            elif variant == 1:  # a zip that is no workbook
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as archive:
                    archive.writestr("notes.txt", f"not a workbook {i}")
                name.with_suffix(".xlsx").write_bytes(buffer.getvalue())
            elif variant == 2:  # the status column twice
                part.assign(**{"PC Status ": part["PC Status"]}).rename(
                    columns={"PC Status ": "PC Status"}).to_csv(name.with_suffix(".csv"), index=False)
            elif variant == 3:
                name.with_suffix(".csv").write_bytes(b"")
            else:
                name.with_suffix(".csv").write_bytes(bytes(range(256)) + str(i).encode())
    return counts


def bench_many_files(n_files: int, rows_per_file: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rlxf-bench-files-") as tmp:
        tmp = Path(tmp)
        counts = write_mixed_files(tmp / "landing", n_files, rows_per_file, seed)
        n_written = sum(counts.values())
        start = time.perf_counter()
        report = ingest_landing(tmp / "landing", tmp / "warehouse.duckdb", tmp / "quarantine", progress=quiet)
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = ingest_landing(tmp / "landing", tmp / "warehouse.duckdb", tmp / "quarantine", progress=quiet)
        second = time.perf_counter() - start
    outcomes = {status: len(report.with_status(status))
                for status in ("loaded", "quarantined", "already_quarantined", "unreadable")}
    outcomes["quarantined"] += outcomes.pop("already_quarantined")  # corrupt files with equal bytes (empty ones)
    expected = {"loaded": counts["good_csv"] + counts["good_xlsx"] + counts["odd_csv"],
                "quarantined": counts["corrupt"]}
    result = {"files": n_written, "rows_per_file": rows_per_file, "kinds": counts, "seconds": first,
              "files_per_s": n_written / first, "rows_loaded": report.rows_loaded,
              "rows_rejected": report.rows_rejected,
              "outcomes": outcomes, "every_file_as_expected": all(outcomes[k] == v for k, v in expected.items()),
              "second_run_seconds": second,
              "second_run_all_already_handled": all(o.status.startswith("already_") for o in again.outcomes)}
    print(f"ingest {n_written:,} files at once ({counts}): {first:.1f} s = {n_written / first:.0f} files/s; "
          f"{outcomes}; {report.rows_loaded:,} rows loaded, {report.rows_rejected} rejected; "
          f"as expected: {result['every_file_as_expected']}; again (all handled): {second:.1f} s", flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# Sensor tick


def bench_sensor(n_files: int, distinct: int) -> dict:
    """`distinct` different contents among the n_files: ingesting them all for the steady-state tick then
    takes seconds, not the minutes of reading 10,000 files; the tick itself never reads contents."""
    with tempfile.TemporaryDirectory(prefix="rlxf-bench-sensor-") as tmp:
        home = DataHome(Path(tmp) / "home").ensure()
        header = "Country Name,Economic Code,Description,PC Status\n"
        for i in range(n_files):
            (home.landing / f"review_{i:05d}.csv").write_text(f"{header}Ghana,20.2,Condition {i % distinct},M\n",
                                                              encoding="utf-8")
        settings = RlxfSettings(profile="smoke", home=str(home.root))
        timings = {}
        with dg.DagsterInstance.ephemeral() as instance:
            def tick(name: str, cursor: str | None) -> tuple[object, str]:
                context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"rlxf": settings})
                start = time.perf_counter()
                result = mona_landing_sensor(context)
                timings[name] = time.perf_counter() - start
                print(f"sensor tick, {n_files:,} files, {name}: {timings[name]:.2f} s ({type(result).__name__}, "
                      f"cursor {len(context.cursor or ''):,} bytes)", flush=True)
                return result, context.cursor

            first, cursor = tick("first tick, every file new (hashed once)", None)
            assert isinstance(first, dg.RunRequest)
            _, cursor = tick("next tick, cursor cache (nothing hashed)", cursor)
            start = time.perf_counter()
            report = ingest_landing(home.landing, home.warehouse, home.quarantine, progress=quiet)
            ingest_seconds = time.perf_counter() - start
            print(f"ingest {n_files:,} small files ({distinct} distinct): {ingest_seconds:.1f} s", flush=True)
            after, cursor_after = tick("after ingestion, manifest (steady state)", cursor)
            assert isinstance(after, dg.SkipReason) and len(report.with_status("loaded")) == distinct
            steady, _ = tick("steady state, no cursor (e.g. make ui after make demo)", None)
            assert isinstance(steady, dg.SkipReason)
    return {"files": n_files, "distinct_contents": distinct, "tick_seconds": timings, "ingest_seconds": ingest_seconds,
            "steady_state_cursor_bytes": len(cursor_after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of part 1; 0 skips it")
    parser.add_argument("--files", type=int, default=1_000, help="files of part 2; 0 skips it")
    parser.add_argument("--rows-per-file", type=int, default=50)
    parser.add_argument("--sensor-files", type=int, default=10_000, help="files of part 3; 0 skips it")
    parser.add_argument("--sensor-distinct", type=int, default=200, help="different contents among them")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "data_platform.json"))
    args = parser.parse_args()

    result = {"benchmark": "data_platform"}
    if args.rows:
        rows = bench_rows(args.rows, args.seed)
        result.update({key: rows[key] for key in ("rows", "stages", "ingest_plus_dbt_seconds", "peak_rss_mib")})
        result["targets"] = {"ingest_plus_dbt_seconds": 60, "peak_rss_mib": 4096}
        result["meets_targets"] = rows["meets_targets"]
    if args.files:
        result["many_files"] = bench_many_files(args.files, args.rows_per_file, args.seed)
    if args.sensor_files:
        result["sensor"] = bench_sensor(args.sensor_files, args.sensor_distinct)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
