"""Critic-free RL through TRL: GRPO (`GRPOTrainer`) and RLOO (`RLOOTrainer`) on a LoRA adapter.

Both sample `num_generations` answers per prompt and use each answer's reward relative to the others
of its group as the advantage (GRPO: standardised within the group; RLOO: minus the mean of the
other answers), so neither needs a value head. What is set on purpose:

- the reward is a plain callable `(records, answers) -> rewards` (the same `RewardFn` PPO uses),
  never a model: given a model, TRL would score `logits[:, 0]`, which for our classifier is NON_MET;
- `beta` (the KL penalty against the reference policy) must be > 0: GRPO's default is 0, which would
  let the policy drift into reward hacking. With LoRA the reference is the same network with the
  adapter switched off, so no second model is held in memory;
- the adapter is created by TRL from `peft_config` on the caller's (SFT-merged) model, never loaded
  with `is_trainable=False` (a frozen PEFT model with beta != 0 trains nothing, silently: trl#6700),
  and the run fails if no LoRA weight moved;
- sampling is pinned neutral: top-k, top-p, min-p and repetition penalty off, whatever the model's
  `generation_config` says, so the log-probabilities TRL computes are those of the sampling
  distribution (softmax(logits / temperature));
- at any world size (`accelerate launch`, ml/distributed.py) a step holds `prompts_per_step` prompts in
  all, split evenly over the ranks: TRL's sampler draws the same global prompts on every rank, each rank
  generates and scores its contiguous share, and TRL gathers the rewards before computing each group's
  advantages, so a group may straddle two ranks. The time budget stops every rank on rank 0's clock;
  rank 0 alone logs and writes the adapter.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PrinterCallback, TrainerCallback

from ml import distributed
from ml.config import PolicySettings, time_budget_spent
from ml.policy.base import lora_config, trainer_runtime_args
from ml.policy.prompts import KEY_COLUMNS
from ml.policy.sft import ADAPTER_FOLDER

log = logging.getLogger(__name__)

KINDS = ("grpo", "rloo")
# What the reward callable receives per answer: enough to build the reward model's input text.
METADATA_COLUMNS = ["prompt_id", *KEY_COLUMNS]
# Per-step diagnostics kept from TRL's log rows (TRL name -> our name, saying which reward and which KL).
HISTORY_KEYS = {"reward": "train_reward_mean", "reward_std": "train_reward_std", "kl": "kl_per_token_to_reference",
                "loss": "loss", "completions/mean_length": "completion_length", "entropy": "entropy",
                "floored_share": "floored_share"}

RewardFn = Callable[[list[dict], list[str]], list[float]]


@dataclass(frozen=True)
class GroupRLResult:
    adapter_dir: Path  # the adapter at the end of training
    history: list[dict] = field(default_factory=list)  # one row per step: step, reward, reward_std, kl, ...
    seconds: float = 0.0  # training time, evaluation callbacks excluded
    steps: int = 0

    @property
    def final_reward(self) -> float:
        return self.history[-1]["train_reward_mean"] if self.history else math.nan


class LogLinesCallback(TrainerCallback):
    """Forwards each logged metrics row as one line (to a Dagster log, a CLI, or `logging`)."""

    def __init__(self, label: str, progress: Callable[[str], None]) -> None:
        self.label = label
        self.progress = progress

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {key: value for key, value in (logs or {}).items() if isinstance(value, (int, float))}
        shown = ", ".join(f"{key}={value:.4g}" for key, value in sorted(numbers.items()))
        self.progress(f"{self.label} step {state.global_step}/{state.max_steps}: {shown}")


class TimeBudgetCallback(TrainerCallback):
    """Stops training once `max_seconds` of training time are spent (time spent in the callbacks
    listed in `excluded`, e.g. evaluations, does not count) and at least `min_steps` steps are done:
    compares algorithms at equal time.

    Under a launcher each rank's clock reads differently, so rank 0's decision is broadcast and every
    rank stops after the same step (a rank that stopped alone would leave the others waiting in a
    collective)."""

    def __init__(self, max_seconds: float | None, excluded: Sequence[TrainerCallback] = (),
                 min_steps: int = 0) -> None:
        self.max_seconds, self.excluded, self.min_steps = max_seconds, list(excluded), min_steps
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        spent = time.perf_counter() - self.started
        return spent - sum(getattr(callback, "seconds", 0.0) for callback in self.excluded)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_seconds is None:
            return control
        # from_main is the plain value at world size 1; the same call on every rank and every step otherwise.
        if distributed.current().from_main(time_budget_spent(self.seconds, state.global_step, self.max_seconds,
                                                             self.min_steps)):
            control.should_training_stop = True
        return control


def group_reward(reward_fn: RewardFn) -> Callable[..., list[float]]:
    """Adapt `reward_fn(metadata records, answers)` to TRL's `(prompts, completions, **columns)`:
    TRL passes every dataset column, repeated once per generation, as a keyword list.

    A reward with floor rules (`RLReward.last_floored`) has the share of answers they floored logged as
    `floored_share` through TRL's `log_metric` (averaged over the ranks), as PPO logs it."""

    def reward(prompts: list[str], completions: list[str], log_metric: Callable[[str, float], None] | None = None,
               **columns) -> list[float]:
        records = [{"prompt_text": prompts[i],  # the quote rule reads the precedents the prompt shows
                    **{name: columns[name][i] for name in METADATA_COLUMNS if name in columns}}
                   for i in range(len(completions))]
        scores = [float(score) for score in reward_fn(records, [c.strip() for c in completions])]
        if log_metric is not None:
            log_metric("floored_share", float(np.mean(getattr(reward_fn, "last_floored", [0.0] * len(scores)))))
        return scores

    reward.__name__ = "rl_reward"  # TRL names the logged reward column after the function
    return reward


def group_dataset(prompts: pd.DataFrame) -> Dataset:
    """The rendered prompt (column `prompt_text`, as generation renders it) plus the metadata the
    reward needs."""
    columns = {"prompt": list(prompts["prompt_text"])}
    for name in METADATA_COLUMNS:
        if name in prompts:
            columns[name] = [None if pd.isna(value) else str(value) for value in prompts[name]]
    return Dataset.from_dict(columns)


def neutral_sampling(model: PreTrainedModel) -> None:
    """Pin the model's generation defaults to plain temperature sampling, so nothing a hub model's
    `generation_config` carries (top-k, top-p, repetition penalty) reaches TRL's sampling."""
    config = model.generation_config
    config.top_k, config.top_p, config.min_p, config.repetition_penalty = 0, 1.0, None, 1.0
    config.typical_p, config.no_repeat_ngram_size = 1.0, 0


def train_group_rl(kind: str, base_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame,
                   reward_fn: RewardFn, settings: PolicySettings, output_dir: Path, seed: int = 0,
                   progress: Callable[[str], None] = log.info, max_seconds: float | None = None,
                   callbacks: Sequence[TrainerCallback] = (), min_steps: int = 0) -> GroupRLResult:
    """Run GRPO or RLOO (`kind`) with `settings.group_rl` over `prompts` (records with `prompt_text`
    and the metadata columns) and save the adapter under `output_dir/adapter`. The caller's model is
    handed back without LoRA layers.

    Under a launcher every rank calls this with the same arguments: the `prompts_per_step` x
    `num_generations` answers of a step are split evenly over the ranks (an error if they do not
    divide), `reward_fn` is called on each rank with that rank's answers and their records, and rank 0
    alone reports `progress` and writes the adapter (every rank returns the same history)."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    group = settings.group_rl
    if group.beta <= 0:
        raise ValueError("beta must be > 0: without the KL penalty the policy is free to reward-hack")
    if prompts.empty:
        raise ValueError(f"no prompts to train {kind.upper()} on")
    dist = distributed.current()
    # TRL counts the batch in completions, per rank; the global batch (per rank x ranks, no gradient
    # accumulation) stays whole groups of `num_generations` for `prompts_per_step` prompts at any world size.
    answers_per_step = group.prompts_per_step * group.num_generations
    if answers_per_step % dist.world_size:
        raise ValueError(f"{kind.upper()}: prompts_per_step x num_generations = {group.prompts_per_step} x "
                         f"{group.num_generations} = {answers_per_step} answers per step do not split evenly over "
                         f"{dist.world_size} processes; change prompts_per_step or the number of processes")
    progress = dist.reporter(progress)
    output_dir = Path(output_dir)
    common = dict(
        output_dir=str(output_dir / "trainer"),
        max_steps=group.steps,
        per_device_train_batch_size=answers_per_step // dist.world_size,
        gradient_accumulation_steps=1,
        num_generations=group.num_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=0, top_p=1.0, repetition_penalty=1.0,
        learning_rate=group.learning_rate,
        beta=group.beta,
        num_iterations=group.num_iterations,
        epsilon=group.epsilon,
        mask_truncated_completions=group.mask_truncated_completions,
        # Dropout would make the policy's and the reference's log-probs differ for identical weights.
        disable_dropout=True,
        log_completions=False,
        seed=seed,
        data_seed=seed,
        **trainer_runtime_args(settings),
    )
    config, trainer_class = (
        (GRPOConfig(**common, loss_type=group.grpo_loss_type, scale_rewards=group.grpo_scale_rewards), GRPOTrainer)
        if kind == "grpo" else (RLOOConfig(**common), RLOOTrainer))
    neutral_sampling(base_model)
    budget = TimeBudgetCallback(max_seconds, excluded=callbacks, min_steps=min_steps)
    trainer = trainer_class(model=base_model, reward_funcs=group_reward(reward_fn), args=config,
                            train_dataset=group_dataset(prompts), processing_class=tokenizer,
                            peft_config=lora_config(settings),
                            callbacks=[LogLinesCallback(kind, progress), budget, *callbacks])
    trainer.remove_callback(PrinterCallback)  # its stdout dicts duplicate the lines sent to `progress`
    adapter_dir = output_dir / ADAPTER_FOLDER
    try:
        trainer.train()
        model = _peft_model(trainer)
        # DDP keeps the replicas equal, so every rank reaches the same verdict.
        moved = any(p.abs().sum() > 0 for name, p in model.named_parameters() if "lora_B" in name)
        if not moved:
            raise RuntimeError(f"{kind.upper()} trained nothing: every LoRA B matrix is still zero")
        if dist.is_main:
            model.save_pretrained(str(adapter_dir), safe_serialization=True, selected_adapters=["default"])
        dist.barrier()  # no rank returns before the adapter is on disk
    finally:
        _peft_model(trainer).unload()  # hand the caller's base model back without LoRA layers, even on failure
    history = [{"step": int(row["step"]), **{ours: float(row[theirs]) for theirs, ours in HISTORY_KEYS.items()
                                             if theirs in row}}
               for row in trainer.state.log_history if "reward" in row]  # the per-step rows
    return GroupRLResult(adapter_dir=adapter_dir, history=history, seconds=round(budget.seconds, 2),
                         steps=int(trainer.state.global_step))


def _peft_model(trainer) -> PreTrainedModel:
    """The PEFT model itself. HF's Trainer keeps it as `trainer.model` with the DDP wrapper apart
    (`trainer.model_wrapped`); unwrapping costs nothing and also holds where accelerate wraps in place."""
    return trainer.accelerator.unwrap_model(trainer.model)


__all__ = ["GroupRLResult", "KINDS", "TimeBudgetCallback", "group_dataset", "group_reward", "neutral_sampling",
           "train_group_rl"]
