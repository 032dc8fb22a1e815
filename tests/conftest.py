"""Shared fixtures: the paper's real MONA rows (from ../shared, as CI has them) and temp data homes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The project runs offline; never let a test reach a model hub or send analytics.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def paper_sample_csv() -> Path:
    path = SHARED_FIXTURES / "mona_table2_sample.csv"
    if not path.exists():
        pytest.fail(f"missing {path}: tests need ../shared/fixtures beside the repository")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a test module of tiny models, whose matmuls are too small to split: on a
    busy 2-core machine two OpenMP threads spin-wait on each other whenever another process holds a
    core (a reward training step took 150 ms against 15 ms; test_sft_grpo.py 51 s against 13 s)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
