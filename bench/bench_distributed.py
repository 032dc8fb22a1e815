"""Time per training step at 1 and 2 processes on this machine's CPU: the cost of the collectives.

Runs tests/distributed_worker.py (the tiny PPO policy of the equality tests) once in process, once
under `accelerate launch --num_processes 2` data-parallel and once with the weights sharded (FSDP2,
`--use_fsdp --fsdp_version 2`), all gloo and with the same global batch, and reports the median PPO
step time (the first step, which pays for warm-up, left out), each run's wall time and the share of the
trainable weights each rank holds. On a 2-core machine two processes share the cores with everything
else, so the figure is the overhead of the distributed loop and its collectives, not a speed-up.
Writes bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result

WORKER = REPO / "tests" / "distributed_worker.py"


MODES = {"1_process": (1, []), "2_process": (2, ["--multi_gpu"]),
         "2_process_fsdp": (2, ["--use_fsdp", "--fsdp_version", "2"])}


def launch(world_size: int, mode: list[str], args: list[str]) -> float:
    """Wall seconds of one worker run at `world_size` processes, launched with the `mode` flags."""
    if world_size == 1:
        command = [sys.executable, str(WORKER), *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes",
                   str(world_size), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29533", str(WORKER), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="PPO steps per run")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (world_size, mode) in MODES.items():
            out = Path(scratch) / name
            wall = launch(world_size, mode, ["ppo", str(out), "--steps", str(args.steps), "--mini-batch-size", "4"])
            run = json.loads((out / "result.json").read_text())
            step_seconds = [row["step_seconds"] for row in run["history"][1:]]
            results[f"ppo_{name}"] = {
                "world_size": world_size, "sharded": run["sharded"], "steps": len(run["history"]),
                "global_prompts_per_step": 8, "answers_per_step": 16, "prompts_per_minibatch": 4,
                "median_step_seconds": statistics.median(step_seconds), "wall_seconds_with_startup": wall,
                "trainable_weights_share_per_rank": run["local_share"]}
            print(f"PPO, {name}: median step {statistics.median(step_seconds):.3f} s, run {wall:.1f} s with "
                  f"start-up, {run['local_share']:.0%} of the trainable weights on each rank")
    write_result("distributed", {"where": "CPU only (gloo), the development machine; no GPU measured",
                                 "command": "python bench/bench_distributed.py --steps " + str(args.steps),
                                 **results})


if __name__ == "__main__":
    main()
