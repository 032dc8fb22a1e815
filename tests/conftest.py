"""Shared fixtures: the paper's real MONA rows (from ../shared, as CI has them) and temp data homes."""

from __future__ import annotations

import os
import sys
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
DBT_PROJECT = REPO_ROOT / "dbt_project"
# dbt and dagster-dbt from this venv, also when it is not activated (`.venv/bin/pytest`), as the Makefile.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_sessionstart(session):
    """The dbt prepare step for a bare `pytest` (`make test` runs it as `make dbt-manifest`): the dbt
    assets load dbt's manifest when orchestration/ is imported, so write it when it is missing or
    older than the dbt project."""
    manifest = DBT_PROJECT / "target" / "manifest.json"
    sources = [path for path in DBT_PROJECT.rglob("*")
               if path.is_file() and not {"target", "logs"} & set(path.relative_to(DBT_PROJECT).parts)]
    if manifest.exists() and manifest.stat().st_mtime >= max(path.stat().st_mtime for path in sources):
        return
    from orchestration.resources import dbt_project

    dbt_project.preparer.prepare(dbt_project)


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
