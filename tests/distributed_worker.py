"""One small training run at whatever world size it is launched with, for tests/unit/test_distributed.py.

`python tests/distributed_worker.py reward OUT --base DIR` trains the tiny reward model;
`... sft OUT` the tiny policy's SFT adapter; `... ppo OUT` the tiny PPO policy; `... batch OUT` the RL
reward's batch statistics over a shard of one global batch; `... grpo OUT --kind grpo|rloo` the tiny
policy through TRL's GRPO or RLOO (ml.policy.rl, as `train_rl_stage` runs it), where each rank also
writes what it saw: OUT/rank.<rank>.json (its reward calls, progress lines, evaluations, adapter saves,
steps and final LoRA weights). Run it plainly for one process, or under
`accelerate launch --multi_gpu --num_processes N` (gloo on CPU) for N, with `--use_fsdp --fsdp_version 2`
instead of `--multi_gpu` for FSDP. Rank 0 writes OUT/result.json
(the per-step losses) and OUT/weights.safetensors (the trained weights: every parameter of the
reward model, the LoRA adapter and value head of the policy, the kept adapter of GRPO/RLOO), which the
test compares across world sizes. `--pause-at-step K` makes rank 0 stop for good before it reports
step K (after the checkpoint of step K - 1 is written), so a test can SIGKILL the run at a known
point; each rank then writes its process id to OUT/pid.<rank>.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml import distributed  # noqa: E402
from ml.config import RewardSettings  # noqa: E402


def train_reward(out: Path, base: Path) -> None:
    from ml.reward import train_reward_model
    from tests.unit.test_reward import make_rows

    settings = RewardSettings(base_model=str(base), max_length=48, epochs=2, batch_size=16, learning_rate=3e-3,
                              warmup_ratio=0.1, eval_every_steps=4, early_stopping_patience=100)
    result = train_reward_model(make_rows(96, 1, "train", 500), make_rows(20, 2, "validation", 600), settings, seed=0)
    write(out, result.history, result.model.state_dict())


def train_sft(out: Path) -> None:
    from safetensors.torch import load_file

    from ml.config import PolicySettings
    from ml.policy.sft import train_sft_adapter
    from tests.unit.test_ppo import PROMPTS, WORDS, make_policy, make_tokenizer

    tokenizer = make_tokenizer()
    base = make_policy(tokenizer).unload()  # the seeded tiny Llama without its test adapter
    # Prompts with one to three conditions each, so a step's prompts carry unequal token counts.
    examples = pd.DataFrame([{"prompt": p["prompt_text"], "description": " ".join(WORDS[i + j: i + j + 2 + i % 3])}
                             for i, p in enumerate(PROMPTS) for j in range(1 + i % 3)])
    # No LoRA dropout: its masks are drawn per process.
    settings = PolicySettings(base_model="tiny-llama", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                              lora_target_modules=("q_proj", "v_proj"), max_prompt_tokens=32, sft_epochs=2.0,
                              sft_learning_rate=1e-2)
    result = train_sft_adapter(base, tokenizer, examples, settings, out / "sft", seed=0, batch_size=5)
    history = [{"step": step, "loss": loss} for step, loss in result.train_loss]
    write(out, history, load_file(str(result.adapter_dir / "adapter_model.safetensors")),
          local_share=local_share({name: p for name, p in base.named_parameters()}))


def train_ppo(out: Path, checkpoint_dir: Path | None, pause_at_step: int | None, steps: int,
              mini_batch_size: int) -> None:
    from ml.policy.ppo import PPOConfig, PPOTrainer
    from tests.unit.test_ppo import LEARNING, PROMPTS, make_policy, make_tokenizer, met_share

    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if pause_at_step is not None and line.startswith(f"step {pause_at_step}/"):
            (out / "paused").touch()
            time.sleep(600)  # until the test kills the run

    if pause_at_step is not None:  # the launcher starts ranks in their own sessions: the test kills each
        (out / f"pid.{distributed.current().rank}").write_text(str(os.getpid()))
    tokenizer = make_tokenizer()
    # Reward normalisation, whitening, the adaptive KL controller and the early-stop KL all on: the
    # statistics that must be computed over all ranks.
    config = PPOConfig(**{**LEARNING, "steps": steps, "batch_size": 8, "mini_batch_size": mini_batch_size,
                          "answers_per_prompt": 2,
                          "target_kl": 1.0, "kl_horizon": 100, "early_stop_kl": 0.08, "reward_normalization": True,
                          "checkpoint_every": 1})
    trainer = PPOTrainer(make_policy(tokenizer), tokenizer, config, met_share, PROMPTS,
                         checkpoint_dir=checkpoint_dir, progress=progress)
    result = trainer.train()
    # Under FSDP each rank holds a shard of each weight: gathered whole (every rank takes part).
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    write(out, result.history, distributed.current().full_weights(trainable), lines=lines,
          local_share=local_share(trainable))


def train_group(out: Path, kind: str, steps: int, rank0_seconds: float | None) -> None:
    """TRL's GRPO/RLOO on the tiny policy through `ml.policy.rl.train_rl`, with an evaluation every 2
    steps. `rank0_seconds` gives rank 0 that time budget and every other rank an unreachable one: their
    clocks disagree for sure, so only rank 0's broadcast decision stops them all on the same step."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner
    from safetensors.torch import load_file

    from ml.config import GroupRLSettings, PolicySettings
    from ml.policy.rl import RLJob, train_rl
    from tests.unit.test_ppo import PROMPTS, make_policy, make_tokenizer, met_share

    dist = distributed.current()
    tokenizer = make_tokenizer()
    base = make_policy(tokenizer).unload()  # the seeded tiny Llama without its test adapter
    seen: dict[str, list] = {"reward_calls": [], "evaluations": [], "saves": [], "lora_b_at_unload": [],
                             "progress": []}
    save_pretrained, unload = PeftModel.save_pretrained, BaseTuner.unload  # PeftModel.unload is BaseTuner's

    def counted_save(self, save_directory, *args, **kwargs):
        seen["saves"].append(str(save_directory))
        return save_pretrained(self, save_directory, *args, **kwargs)

    def recorded_unload(self, *args, **kwargs):  # this rank's trained LoRA B, just before it is removed
        seen["lora_b_at_unload"].append(sum(float(p.detach().abs().sum()) for name, p in self.named_parameters()
                                            if "lora_B" in name))
        return unload(self, *args, **kwargs)

    # Every adapter write, by whichever rank makes it; every rank's replica at the end.
    PeftModel.save_pretrained, BaseTuner.unload = counted_save, recorded_unload

    def reward(records: list[dict], answers: list[str]) -> list[float]:
        seen["reward_calls"].append({"prompt_ids": [r["prompt_id"] for r in records], "answers": len(answers),
                                     "countries": [r["country"] for r in records]})
        return met_share(records, answers)

    def evaluate(model: torch.nn.Module, step: int) -> dict:
        seen["evaluations"].append(step)
        size = sum(float(p.detach().abs().sum()) for name, p in model.named_parameters() if "lora_B" in name)
        return {"judged_reward": size, "kl_to_reference": 0.0}  # a toy metric that grows as the adapter moves

    # 3 prompts x 4 answers a step: at two processes 6 answers a rank, the second prompt's group split
    # between the ranks. No LoRA dropout: its masks are drawn per process.
    settings = PolicySettings(
        base_model="tiny-llama", device="cpu", lora_r=4, lora_alpha=8, lora_dropout=0.0,
        lora_target_modules=("q_proj", "v_proj"), max_prompt_tokens=32, max_new_tokens=6, temperature=1.0,
        group_rl=GroupRLSettings(steps=steps, prompts_per_step=3, num_generations=4, learning_rate=3e-2,
                                 beta=0.04, eval_every=2))
    records = [{**p, "prompt_id": f"p{i}"} for i, p in enumerate(PROMPTS)]
    budget = None if rank0_seconds is None else (rank0_seconds if dist.is_main else 1e9)
    job = RLJob(model=base, tokenizer=tokenizer, train_records=records, reward=reward,
                evaluate=evaluate, settings=settings, work_dir=out / "work", seed=0, max_seconds=budget,
                progress=seen["progress"].append)
    result = train_rl(kind, job)
    (out / f"rank.{dist.rank}.json").write_text(json.dumps({**seen, "steps": result.steps,
                                                            "history": result.history}))
    if dist.is_main:
        (out / "group.json").write_text(json.dumps({
            "world_size": dist.world_size, "steps": result.steps, "best_step": result.best_step,
            "eval_history": result.eval_history, "adapter_dir": str(result.adapter_dir)}))
    write(out, result.history, load_file(str(result.adapter_dir / "adapter_model.safetensors")))


def batch_statistics(out: Path) -> None:
    """The RL reward's batch designs on each rank's shard of one global batch of scores."""
    from ml.reward.rl_reward import _standardise, batch_min, batch_opening_share, batch_share

    dist = distributed.current()
    scores = np.linspace(0.0, 1.0, 8) ** 2
    mine = scores[dist.shard(len(scores))]
    standardised = dist.cat(torch.tensor(_standardise(mine))).tolist()
    share = batch_share(mine > 0.3)
    lowest = batch_min(mine[::-1] + 0.5 * dist.rank)  # rank 0 holds the global batch's lowest score
    # Rank 0's shard opens with Prepare only, rank 1's with Prepare once: 5 of the 8 answers in all.
    answers = ["Prepare a plan"] * 4 + ["Prepare a law", "Submit a law", "Adopt a budget", "Submit a budget"]
    opening = dist.cat(torch.tensor(batch_opening_share(answers[dist.shard(len(answers))]))).tolist()
    if dist.is_main:
        (out / "result.json").write_text(json.dumps({"world_size": dist.world_size, "standardised": standardised,
                                                     "share": share, "lowest": lowest, "opening": opening}))


def local_share(parameters: dict[str, torch.Tensor]) -> float:
    """The share of the parameters' elements this rank holds: 1 unless FSDP sharded them."""
    held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in parameters.values())
    return held / sum(p.numel() for p in parameters.values())


def write(out: Path, history: list[dict], weights: dict[str, torch.Tensor], **extra) -> None:
    dist = distributed.current()
    if dist.is_main:
        (out / "result.json").write_text(json.dumps({"world_size": dist.world_size, "sharded": dist.sharded,
                                                     "history": history, **extra}))
        save_file({name: t.contiguous() for name, t in weights.items()}, str(out / "weights.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["reward", "sft", "ppo", "batch", "grpo"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, help="the reward encoder's folder")
    parser.add_argument("--checkpoint-dir", type=Path)
    parser.add_argument("--pause-at-step", type=int)
    parser.add_argument("--steps", type=int, default=4, help="PPO / GRPO / RLOO steps")
    # One prompt per minibatch by default: at two processes one rank then holds none of each minibatch
    # and must still join the sums, the path a larger minibatch only sometimes takes.
    parser.add_argument("--mini-batch-size", type=int, default=1, help="PPO prompts per minibatch")
    parser.add_argument("--kind", choices=["grpo", "rloo"], default="grpo", help="TRL's algorithm (grpo mode)")
    parser.add_argument("--rank0-seconds", type=float, help="grpo mode: rank 0's time budget (others: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # two processes on two shared cores
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "reward":
        train_reward(args.out, args.base)
    elif args.what == "sft":
        train_sft(args.out)
    elif args.what == "batch":
        batch_statistics(args.out)
    elif args.what == "grpo":
        train_group(args.out, args.kind, args.steps, args.rank0_seconds)
    else:
        train_ppo(args.out, args.checkpoint_dir, args.pause_at_step, args.steps, args.mini_batch_size)


if __name__ == "__main__":
    main()
