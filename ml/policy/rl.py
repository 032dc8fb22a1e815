"""RL algorithms behind one interface: PPO (`ml/policy/ppo.py`, the readable reference) and TRL's GRPO
and RLOO.

Each algorithm takes an `RLJob` (the reference policy, its prompts, the training reward, an
evaluation of the current policy on held-out prompts) and returns an `RLResult`: the LoRA adapter of
the best evaluation (by `job.metric`, within the KL budget when one is set), with the training and
evaluation histories. The caller (`ml.policy.pipeline.train_rl_stage`, the benchmarks) never needs to
know which algorithm ran; `ALGORITHMS` maps a profile's `algorithm` to its implementation.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from ml import distributed
from ml.config import GroupRLSettings, PolicySettings, PPOSettings
from ml.io import atomic_folder
from ml.policy.base import apply_lora
from ml.policy.ppo import PPOConfig, PPOTrainer, RewardFn

Evaluate = Callable[[torch.nn.Module, int], dict]
"""(the current policy, adapter on; the step) -> metrics, among them the job's `metric` and
`kl_to_reference` (nats per answer)."""


@dataclass
class RLJob:
    model: PreTrainedModel  # the reference policy: the base, or the base with the SFT adapter merged
    tokenizer: PreTrainedTokenizerBase
    train_records: list[dict]  # prompt records: prompt_text (rendered) + country, arrangement_type, economic_area
    reward: RewardFn  # the training reward
    evaluate: Evaluate | None
    settings: PolicySettings
    work_dir: Path  # checkpoints (PPO resumes from them) and the trainers' scratch space
    seed: int
    metric: str = "judged_reward"  # evaluate()'s key that picks the adapter to keep (higher is better)
    max_seconds: float | None = None  # equal-time comparisons: stop after this much training time
    progress: Callable[[str], None] = print
    log_metrics: Callable[[dict, int], None] | None = None


@dataclass
class RLResult:
    algorithm: str
    adapter_dir: Path  # the kept LoRA adapter (safetensors)
    history: list[dict] = field(default_factory=list)  # per training step
    eval_history: list[dict] = field(default_factory=list)  # per evaluation: step + evaluate()'s metrics
    best_step: int | None = None
    best_metric: float | None = None
    steps: int = 0
    seconds: float = 0.0  # training time, evaluations excluded


def time_budget(job_seconds: float | None, settings: PPOSettings | GroupRLSettings) -> dict[str, float | int | None]:
    """`max_seconds` and `min_steps` of a run: the profile's, unless the job has its own time budget
    (`RLJob.max_seconds`), which is for comparisons at equal time and so sets no step floor."""
    if job_seconds is not None:
        return {"max_seconds": job_seconds, "min_steps": 0}
    return {"max_seconds": settings.max_seconds, "min_steps": settings.min_steps}


def train_ppo(job: RLJob) -> RLResult:
    config = PPOConfig.for_policy(job.settings, job.seed, best_metric=job.metric,
                                  **time_budget(job.max_seconds, job.settings.ppo))
    trainer = PPOTrainer(apply_lora(job.model, job.settings), job.tokenizer, config, job.reward, job.train_records,
                         checkpoint_dir=job.work_dir / "checkpoints", progress=job.progress,
                         log_metrics=job.log_metrics,
                         evaluate=(lambda t, step: job.evaluate(t.policy, step)) if job.evaluate else None)
    result = trainer.train()
    best = result.best_checkpoint or result.last_checkpoint
    return RLResult("ppo", best / "adapter", result.history, result.eval_history, result.best_step,
                    result.best_metric, result.final_step, trainer.training_seconds)


def train_grpo(job: RLJob) -> RLResult:
    return _train_trl("grpo", job)


def train_rloo(job: RLJob) -> RLResult:
    return _train_trl("rloo", job)


ALGORITHMS: dict[str, Callable[[RLJob], RLResult]] = {"ppo": train_ppo, "grpo": train_grpo, "rloo": train_rloo}


def train_rl(algorithm: str, job: RLJob) -> RLResult:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown RL algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    if algorithm != "ppo" and distributed.current().sharded:
        # Their evaluation and adapter saving run on rank 0 alone, which a sharded model cannot do.
        raise ValueError(f"{algorithm} does not run with sharded weights (FSDP) yet: launch it data-parallel "
                         "(distributed.fsdp = false, no FSDP accelerate config), or use algorithm ppo")
    return ALGORITHMS[algorithm](job)


# ---------------------------------------------------------------------------------------------
# TRL's GRPO and RLOO


class EvaluateAndKeepBest(TrainerCallback):
    """Evaluates the policy at step 0, every `every` steps and at the end, and saves the adapter of
    the best evaluation: what PPOTrainer does for PPO, for a TRL trainer. An evaluation whose
    `kl_to_reference` is over `max_kl` cannot become best. Sampling for the evaluation uses its own
    seeded generator, so training's RNG is untouched. Under a launcher rank 0 evaluates (the others
    wait), every rank gets its numbers and so agrees on the best, and rank 0 alone saves it."""

    def __init__(self, evaluate: Evaluate, every: int, best_dir: Path, metric: str, max_kl: float | None,
                 progress: Callable[[str], None]):
        self.evaluate, self.every, self.best_dir, self.metric = evaluate, every, Path(best_dir), metric
        self.max_kl, self.progress = max_kl, progress
        self.history: list[dict] = []
        self.seconds = 0.0  # time spent evaluating and saving: not training time
        self.best_step: int | None = None
        self.best_metric: float | None = None

    def run(self, model: torch.nn.Module, step: int) -> None:
        if any(row["step"] == step for row in self.history):
            return
        started = time.perf_counter()
        try:
            self._evaluate(model, step)
        finally:
            self.seconds += time.perf_counter() - started

    def _evaluate(self, model: torch.nn.Module, step: int) -> None:
        dist = distributed.current()
        was_training = model.training
        model.eval()
        scores = dist.from_main(dict(self.evaluate(model, step)) if dist.is_main else None)
        model.train(was_training)
        self.history.append({"step": step, **scores})
        value = scores.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return
        kl = scores.get("kl_to_reference")
        if self.max_kl is not None and kl is not None and kl > self.max_kl:
            self.progress(f"eval step {step}: KL {kl:.2f} over the budget of {self.max_kl:g} nats, not a candidate")
            return
        if self.best_metric is None or float(value) > self.best_metric:
            self.best_step, self.best_metric = step, float(value)
            if dist.is_main:
                atomic_folder(self.best_dir, lambda staging: model.save_pretrained(
                    str(staging), safe_serialization=True, selected_adapters=["default"]))
            self.progress(f"eval step {step}: best {self.metric} {float(value):.4f}")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.run(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.every and state.global_step % self.every == 0:
            self.run(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.run(model, state.global_step)


def _train_trl(kind: str, job: RLJob) -> RLResult:
    from ml.policy.grpo import train_group_rl  # TRL import is slow: only when it runs

    group = job.settings.group_rl
    dist = distributed.current()
    progress = dist.reporter(job.progress)
    best_dir = job.work_dir / "best_adapter"
    if dist.is_main:  # the one rank that writes it (the others never read it)
        shutil.rmtree(best_dir, ignore_errors=True)
    keeper = EvaluateAndKeepBest(job.evaluate, group.eval_every, best_dir, job.metric, group.best_max_kl,
                                 progress) if job.evaluate else None
    started = time.perf_counter()
    trained = train_group_rl(kind, job.model, job.tokenizer, pd.DataFrame(job.train_records), job.reward,
                             job.settings, job.work_dir / kind, seed=job.seed, progress=progress,
                             **time_budget(job.max_seconds, group), callbacks=[keeper] if keeper else [])
    if job.log_metrics is not None:
        for row in trained.history:
            job.log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))
    kept = best_dir if keeper is not None and keeper.best_step is not None else trained.adapter_dir
    return RLResult(kind, kept, trained.history, keeper.history if keeper else [],
                    keeper.best_step if keeper else trained.steps, keeper.best_metric if keeper else None,
                    trained.steps, trained.seconds if trained.seconds else time.perf_counter() - started)

