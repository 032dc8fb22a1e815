"""report.html in a real browser: headless Chromium opens it from disk and shows the headline table.

String checks on the HTML cannot tell whether a browser parses the page as intended (a stray `<` in
model output could swallow the table); this renders it. Needs Debian's `chromium` package, which the
project's Makefile installs before tests; without it the tests skip and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from ml.evaluation import evaluate_policies, synthetic_inputs, write_report

TIMEOUT_S = 60
# Headless, offline and quiet: no sandbox (tests run as root in CI containers), no GPU, no network
# side-traffic (QUIC, component updates, sync), /tmp instead of a small /dev/shm.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


def find_chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: `apt-get install -y chromium`; `make test` installs it)")
    return binary


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    inputs = synthetic_inputs(seed=0)
    evaluation = evaluate_policies(inputs.answers, inputs.corpus, n_boot=200)
    folder = tmp_path_factory.mktemp("report")
    return write_report(evaluation, folder, inputs.training_curves, inputs.promotion).html


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s: {' '.join(command)}")


def test_dumped_dom_shows_the_headline_table_with_every_policy(chromium, report, tmp_path):
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", report.as_uri()).stdout
    match = re.search(r'<table id="headline">(.*?)</table>', dom, flags=re.S)
    assert match, "no headline table in the rendered DOM"
    table = match.group(1)
    for policy in ("base", "sft", "ppo", "random", "historical"):
        assert f"<td>{policy}</td>" in table
    assert all(f"{name} (95% CI)" in table for name in ("judged reward", "gold P(MET)", "proxy P(MET)"))
    assert dom.count("data:image/png;base64,") == 3
    assert "<script" not in dom


def test_screenshot_is_a_rendered_page(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path / "profile", "--window-size=1280,1800", f"--screenshot={shot}", report.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (1800, 1280)
    # A blank or error page is almost all one colour; the report has text, tables and coloured boxes.
    not_white = (pixels < 0.95).any(axis=-1).mean()
    colours = len(np.unique((pixels * 31).astype(np.uint8).reshape(-1, 3), axis=0))
    assert not_white > 0.03 and colours > 50
