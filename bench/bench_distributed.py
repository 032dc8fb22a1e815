"""Time per training step at 1 and 2 processes on this machine's CPU: the cost of the collectives.

Runs tests/distributed_worker.py (the tiny PPO policy and the tiny reward model of the equality
tests) once in process and once under `accelerate launch --num_processes 2` (gloo), with the same
global batch, and reports the median PPO step time (the first step, which pays for warm-up, left out)
and each run's wall time. On a 2-core machine two processes share the cores with everything else, so
the figure is the overhead of the sharded loop and its all-reduces, not a speed-up. Writes
bench/results/distributed.json.
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


def launch(world_size: int, args: list[str]) -> float:
    """Wall seconds of one worker run at `world_size` processes."""
    if world_size == 1:
        command = [sys.executable, str(WORKER), *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
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
        for world_size in (1, 2):
            out = Path(scratch) / f"ppo{world_size}"
            wall = launch(world_size, ["ppo", str(out), "--steps", str(args.steps), "--mini-batch-size", "4"])
            history = json.loads((out / "result.json").read_text())["history"]
            step_seconds = [row["step_seconds"] for row in history[1:]]
            results[f"ppo_{world_size}_process"] = {
                "world_size": world_size, "steps": len(history), "global_prompts_per_step": 8,
                "answers_per_step": 16, "prompts_per_minibatch": 4,
                "median_step_seconds": statistics.median(step_seconds),
                "wall_seconds_with_startup": wall}
            print(f"PPO, {world_size} process(es): median step {statistics.median(step_seconds):.3f} s, "
                  f"run {wall:.1f} s with start-up")
    write_result("distributed", {"where": "CPU only (gloo), the development machine; no GPU measured",
                                 "command": "python bench/bench_distributed.py --steps " + str(args.steps),
                                 **results})


if __name__ == "__main__":
    main()
