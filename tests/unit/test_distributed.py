"""One training code path at any world size (issue #17): two processes (gloo on CPU, launched by
`accelerate launch` as the Dagster asset launches them) train the tiny reward model, the tiny policy's
SFT adapter and the tiny PPO policy to the same losses and weights as one process with the same global
batch, and a two-process PPO run killed with SIGKILL resumes from its checkpoint and ends where an
uninterrupted run ends. TRL's GRPO and RLOO train at two processes on the same global batches as at one
(their sampling is per rank, so not to the same weights).

Each run is a subprocess of tests/distributed_worker.py; the one-process run goes through the same
script without a launcher.
"""

from __future__ import annotations

import json
import math
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
    # "normalize_then_sum" standardises over the batch, "constraint" moves its multiplier by the batch's
    # on-topic share, a quoted precedent gets the batch's lowest reward and the opening penalty is an
    # opening's share of the batch: two ranks holding half the batch each must see the whole batch's statistics.
    run(1, "batch", str(tmp_path / "one"))
    run(2, "batch", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("one", "two"))
    assert two["world_size"] == 2
    scores = np.linspace(0.0, 1.0, 8) ** 2
    np.testing.assert_allclose(two["standardised"], (scores - scores.mean()) / scores.std(), atol=1e-12)
    np.testing.assert_allclose(two["standardised"], one["standardised"], atol=1e-12)
    assert two["share"] == one["share"] == np.mean(scores > 0.3)
    assert two["lowest"] == one["lowest"] == 0.0  # on rank 1, its own batch's lowest is 0.5 + 0.25 ** 2
    # The opening penalty's shares count every rank's first words (rank 1 alone sees one Prepare of four).
    assert two["opening"] == one["opening"] == pytest.approx([5 / 8] * 5 + [2 / 8, 1 / 8, 2 / 8])


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


def rank_records(out: Path, world_size: int) -> list[dict]:
    return [json.loads((out / f"rank.{rank}.json").read_text()) for rank in range(world_size)]


def assert_rank_0_alone_reported_and_saved(out: Path, ranks: list[dict], steps: int) -> None:
    """Rank 0 alone reported progress and wrote adapters (the final one once); every rank ran the same
    steps and ended with the same LoRA weights (DDP averaged the gradients of different answers)."""
    assert ranks[0]["progress"] and not any(rank["progress"] for rank in ranks[1:])
    assert not any(rank["saves"] for rank in ranks[1:])
    assert json.loads((out / "result.json").read_text())["world_size"] == len(ranks)
    assert sum(path.endswith("/adapter") for path in ranks[0]["saves"]) == 1
    assert [rank["steps"] for rank in ranks] == [steps] * len(ranks)
    b_sums = [rank["lora_b_at_unload"] for rank in ranks]
    assert all(len(sums) == 1 for sums in b_sums) and b_sums[0][0] > 0  # the LoRA weights moved
    assert all(sums == pytest.approx(b_sums[0], rel=1e-6) for sums in b_sums)
    _, weights = result(out)
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in weights.items())


def test_two_processes_train_grpo_on_the_same_global_batches_as_one(tmp_path):
    """GRPO at 2 processes is the run at 1 with each step's answers split between the ranks: the same
    prompts in the same order (TRL's seeded sampler), 3 prompts x 4 answers per step in all, a
    prompt's group split between ranks where it falls so, evaluations on rank 0 at the same steps.

    Losses and weights are not compared for equality, unlike PPO's: TRL seeds each rank's sampling
    with seed + rank (grpo_trainer.py `set_seed(args.seed, device_specific=True)`) and samples a
    rank's answers as one batch, so the answers at 2 processes are other draws than at 1."""
    run(1, "grpo", str(tmp_path / "one"))
    run(2, "grpo", str(tmp_path / "two"))
    (one,), two = rank_records(tmp_path / "one", 1), rank_records(tmp_path / "two", 2)
    assert_rank_0_alone_reported_and_saved(tmp_path / "two", two, steps=4)
    assert one["steps"] == 4 and len(one["reward_calls"]) == 4

    for step, whole in enumerate(one["reward_calls"]):
        halves = [rank["reward_calls"][step] for rank in two]
        assert whole["answers"] == 12 and [half["answers"] for half in halves] == [6, 6]
        # Rank r scores the r-th contiguous half of the global batch, with each answer's own metadata.
        assert halves[0]["prompt_ids"] + halves[1]["prompt_ids"] == whole["prompt_ids"]
        assert halves[0]["countries"] + halves[1]["countries"] == whole["countries"]
    assert two[0]["reward_calls"][0]["prompt_ids"][-1] == two[1]["reward_calls"][0]["prompt_ids"][0]  # split group

    history_one, _ = result(tmp_path / "one")
    history_two, _ = result(tmp_path / "two")
    assert [row["step"] for row in history_two] == [row["step"] for row in history_one] == [1, 2, 3, 4]
    assert two[1]["history"] == history_two  # every rank logs the same gathered rows
    assert all(math.isfinite(row[key]) for row in history_two
               for key in ("train_reward_mean", "kl_per_token_to_reference", "loss"))
    assert one["evaluations"] == two[0]["evaluations"] == [0, 2, 4] and two[1]["evaluations"] == []
    group_one, group_two = (json.loads((tmp_path / name / "group.json").read_text()) for name in ("one", "two"))
    assert [row["step"] for row in group_two["eval_history"]] == [row["step"] for row in group_one["eval_history"]]
    assert group_two["best_step"] is not None


def test_two_process_rloo_stops_every_rank_on_rank_0s_time_budget(tmp_path):
    """RLOO at 2 processes, rank 0 given no training time and rank 1 all the time it wants: rank 0's
    decision is broadcast, so both stop after step 1 (a rank stepping on alone would hang in TRL's
    reward gather), and the run still ends with one adapter written by rank 0."""
    run(2, "grpo", str(tmp_path), "--kind", "rloo", "--rank0-seconds", "0")
    ranks = rank_records(tmp_path, 2)
    assert_rank_0_alone_reported_and_saved(tmp_path, ranks, steps=1)
    assert [len(rank["reward_calls"]) for rank in ranks] == [1, 1]
