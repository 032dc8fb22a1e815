"""Shared pieces of the benchmark scripts: the measured matmul peak, JSON output, the demo data."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"


def matmul_peak_flops(size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32,
                      device: str = "cpu") -> float:
    """FLOP/s of a plain torch matmul on this machine, now: the denominator of model-FLOPs utilisation."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.matmul(a, b)  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()  # a CUDA matmul returns before it has run
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def machine() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2, default=float),
                    encoding="utf-8")
    print(f"wrote {path}")
    return path


def ensure_split_snapshot(profile: str, home: Path) -> Path:
    """The profile's validated split snapshot, running the data platform job when it is missing."""
    snapshot = home / "exports" / "splits"
    if not (snapshot / "manifest.json").exists():
        env = dict(os.environ, RLXF_PROFILE=profile, RLXF_HOME=str(home),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-m", "orchestration.definitions",
                        "-j", "mona_data_platform"], cwd=REPO, env=env, check=True, capture_output=True)
    return snapshot
