"""One training code path at any world size (issue #17): two processes (gloo on CPU, launched by
`accelerate launch` as the Dagster asset launches them) train the tiny reward model, the tiny policy's
SFT adapter and the tiny PPO policy to the same losses and weights as one process with the same global
batch, and a two-process PPO run killed with SIGKILL resumes from its checkpoint and ends where an
uninterrupted run ends.

Each run is a subprocess of tests/distributed_worker.py; the one-process run goes through the same
script without a launcher.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ml.reward.encoder import load_encoder

pytestmark = pytest.mark.integration
WORKER = Path(__file__).resolve().parents[1] / "distributed_worker.py"
# Losses and weights agree to float32 rounding: sums over ranks add the same numbers in another order.
ATOL = 1e-5


def command(world_size: int, *args: str, fsdp: bool = False) -> list[str]:
    if world_size == 1:
        return [sys.executable, str(WORKER), *args]
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # accelerate's FSDP plugin flags, as an accelerate config with distributed_type FSDP would set them.
    mode = ["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]
    return [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(world_size),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), str(WORKER), *args]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(world_size: int, *args: str, fsdp: bool = False) -> None:
    done = subprocess.run(command(world_size, *args, fsdp=fsdp), env=environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def result(out: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    return json.loads((out / "result.json").read_text())["history"], load_file(str(out / "weights.safetensors"))


def assert_same_training(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    history_one, weights_one = result(one)
    history_two, weights_two = result(two)
    assert len(history_one) == len(history_two) > 0
    for a, b in zip(history_one, history_two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], abs=ATOL), (a["step"], key)
    assert weights_one.keys() == weights_two.keys()
    moved = 0
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, atol=ATOL, rtol=0, msg=name)
        moved += int(tensor.abs().sum() > 0)
    assert moved > 0  # the comparison is between trained weights, not between zeros


@pytest.fixture(scope="module")
def ppo_one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppo1")
    run(1, "ppo", str(out))
    return out


def test_two_processes_train_the_reward_model_like_one(tmp_path):
    # Dropout masks are drawn per process, so the comparison is made without dropout.
    model, tokenizer = load_encoder("tiny-bert", seed=0)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    run(1, "reward", str(tmp_path / "one"), "--base", str(tmp_path / "base"))
    run(2, "reward", str(tmp_path / "two"), "--base", str(tmp_path / "base"))
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    assert_same_training(tmp_path / "one", tmp_path / "two", ("loss", "val_loss", "val_macro_f1"))


def test_two_processes_train_the_sft_adapter_like_one(tmp_path):
    run(1, "sft", str(tmp_path / "one"))
    run(2, "sft", str(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    assert_same_training(tmp_path / "one", tmp_path / "two", ("loss",))


def test_the_reward_designs_batch_statistics_are_over_every_ranks_answers(tmp_path):
    # "normalize_then_sum" standardises over the batch and "constraint" moves its multiplier by the batch's
    # on-topic share: two ranks holding half the batch each must see the whole batch's statistics.
    run(1, "batch", str(tmp_path / "one"))
    run(2, "batch", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("one", "two"))
    assert two["world_size"] == 2
    scores = np.linspace(0.0, 1.0, 8) ** 2
    np.testing.assert_allclose(two["standardised"], (scores - scores.mean()) / scores.std(), atol=1e-12)
    np.testing.assert_allclose(two["standardised"], one["standardised"], atol=1e-12)
    assert two["share"] == one["share"] == np.mean(scores > 0.3)


PPO_KEYS = ("reward_mean", "score_mean", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "approx_kl",
            "clipfrac", "explained_variance", "ppo_updates", "answer_length")


def test_two_processes_train_the_ppo_policy_like_one(ppo_one_process, tmp_path):
    run(2, "ppo", str(tmp_path))
    assert json.loads((tmp_path / "result.json").read_text())["world_size"] == 2
    assert_same_training(ppo_one_process, tmp_path, PPO_KEYS)
    history, _ = result(tmp_path)
    # The all-reduced decisions were exercised: the controller moved β and the early-stop KL cut the
    # updates short (2 epochs x 8 one-prompt minibatches when it never fires).
    assert history[-1]["kl_coef"] != history[0]["kl_coef"]
    assert any(row["ppo_updates"] < 16 for row in history)


def test_two_process_ppo_killed_with_sigkill_resumes_and_completes(ppo_one_process, tmp_path):
    checkpoints, killed, resumed = tmp_path / "checkpoints", tmp_path / "killed", tmp_path / "resumed"
    killed.mkdir()
    # Rank 0 stops before reporting step 3, after step 2's checkpoint; the whole launch is then killed.
    process = subprocess.Popen(command(2, "ppo", str(killed), "--checkpoint-dir", str(checkpoints),
                                       "--pause-at-step", "3"),
                               env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "paused").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it paused"
            time.sleep(0.5)
    finally:
        # The launcher, then every rank (accelerate's launcher starts them in sessions of their own).
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for pid_file in killed.glob("pid.*"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert len(list(killed.glob("pid.*"))) == 2
    assert not (killed / "result.json").exists()
    assert json.loads((checkpoints / "last" / "state.json").read_text())["step"] == 2

    run(2, "ppo", str(resumed), "--checkpoint-dir", str(checkpoints))
    history, _ = result(resumed)
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert_same_training(ppo_one_process, resumed, PPO_KEYS)


def test_fsdp_shards_the_sft_adapter_over_two_processes_and_trains_it_like_one(tmp_path):
    """accelerate's FSDP plugin (FSDP2): each rank holds half of every weight, and the training is
    still that of one process with the same global batch."""
    run(1, "sft", str(tmp_path / "one"))
    run(2, "sft", str(tmp_path / "two"), fsdp=True)
    sharded = json.loads((tmp_path / "two" / "result.json").read_text())
    assert sharded["world_size"] == 2 and sharded["sharded"]
    assert sharded["local_share"] == pytest.approx(0.5, abs=0.01)
    assert_same_training(tmp_path / "one", tmp_path / "two", ("loss",))


def test_fsdp_trains_the_ppo_policy_like_one_process_and_its_checkpoint_resumes_without_fsdp(ppo_one_process,
                                                                                           tmp_path):
    """Two FSDP processes run PPO's first two steps (sampling kept in step across ranks, whole weights
    gathered for the checkpoint); the checkpoint, whole and keyed by parameter name, resumes in one
    unsharded process, and the four steps are those of the uninterrupted one-process run."""
    checkpoints, first, resumed = tmp_path / "checkpoints", tmp_path / "first", tmp_path / "resumed"
    run(2, "ppo", str(first), "--steps", "2", "--checkpoint-dir", str(checkpoints), fsdp=True)
    sharded = json.loads((first / "result.json").read_text())
    assert sharded["sharded"] and sharded["local_share"] < 0.6  # the value head's bias is not split
    run(1, "ppo", str(resumed), "--steps", "4", "--checkpoint-dir", str(checkpoints))
    lines = json.loads((resumed / "result.json").read_text())["lines"]
    assert any(line.startswith("resumed from") and "at step 2/4" in line for line in lines)
    assert_same_training(ppo_one_process, resumed, PPO_KEYS)
