"""RL alternative to PPO: a LoRA adapter tuned with TRL's GRPOTrainer against the reward model.

GRPO samples `num_generations` answers per prompt and uses each answer's reward relative to its
group as the advantage, so it needs no value head. Two TRL defaults are changed on purpose:

- the reward is a plain callable returning P(MET), never a model: given a model, TRL would score
  `logits[:, 0]`, which for our classifier is the NON_MET logit;
- `beta` (the KL penalty against the reference policy) defaults to 0 in TRL, which would let the
  policy drift into reward hacking; here it is on. With LoRA the reference policy is the same
  network with the adapter switched off, so no second model is held in memory.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from ml.config import PolicySettings
from ml.policy.base import load_adapter, lora_config, trainer_runtime_args
from ml.policy.prompts import KEY_COLUMNS, answer_to_condition, chat_text
from ml.policy.sft import ADAPTER_FOLDER, LogLinesCallback

log = logging.getLogger(__name__)

# What the reward callable receives per answer: enough to build the reward model's input text.
METADATA_COLUMNS = ["prompt_id", *KEY_COLUMNS]
# Per-step diagnostics kept from TRL's log rows (TRL name -> our name).
HISTORY_KEYS = {"reward": "reward", "reward_std": "reward_std", "kl": "kl", "loss": "loss",
                "completions/mean_length": "completion_length", "entropy": "entropy"}

RewardFn = Callable[[list[dict], list[str]], list[float]]


@dataclass(frozen=True)
class GRPOResult:
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)  # one row per step: step, reward, reward_std, kl, ...
    seconds: float = 0.0
    steps: int = 0

    @property
    def final_reward(self) -> float:
        return self.history[-1]["reward"] if self.history else math.nan


class TimeBudgetCallback(TrainerCallback):
    """Stops training once a wall-time budget is spent: compares algorithms at equal wall time."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.started >= self.max_seconds:
            control.should_training_stop = True
        return control


def grpo_reward(reward_fn: RewardFn) -> Callable[..., list[float]]:
    """Adapt `reward_fn(metadata records, conditions)` to TRL's `(prompts, completions, **columns)`:
    TRL passes every dataset column, repeated once per generation, as a keyword list."""

    def p_met(prompts: list[str], completions: list[str], **columns) -> list[float]:
        records = [{name: columns[name][i] for name in METADATA_COLUMNS if name in columns}
                   for i in range(len(completions))]
        conditions = [answer_to_condition(completion) for completion in completions]
        return [float(score) for score in reward_fn(records, conditions)]

    return p_met


def grpo_dataset(tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame) -> Dataset:
    """The rendered prompt (as generation renders it) plus the metadata the reward needs."""
    columns = {"prompt": [chat_text(tokenizer, prompt) for prompt in prompts["prompt"]]}
    for name in METADATA_COLUMNS:
        columns[name] = [None if pd.isna(value) else str(value) for value in prompts[name]]
    return Dataset.from_dict(columns)


def train_grpo_adapter(base_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame,
                       reward_fn: RewardFn, settings: PolicySettings, output_dir: Path, steps: int, seed: int = 0,
                       beta: float = 0.04, num_generations: int = 4, progress: Callable[[str], None] = log.info,
                       prompts_per_step: int = 2, learning_rate: float = 5e-5, temperature: float = 1.0,
                       init_adapter_dir: Path | None = None, max_seconds: float | None = None) -> GRPOResult:
    """Run `steps` GRPO updates over `prompts` (from `build_policy_prompts`) and save the adapter
    under `output_dir/adapter`.

    Each step samples `num_generations` answers for each of `prompts_per_step` prompts. A fresh LoRA
    adapter is trained unless `init_adapter_dir` (e.g. the SFT adapter) is given; in that case TRL's
    reference policy is a frozen copy of that adapter, so the KL is measured against the SFT policy
    as in the paper's RLHF recipe. The caller's base model is handed back without LoRA layers.
    """
    if beta <= 0:
        raise ValueError("beta must be > 0: without the KL penalty the policy is free to reward-hack")
    if prompts.empty:
        raise ValueError("no prompts to train GRPO on")
    output_dir = Path(output_dir)
    config = GRPOConfig(
        output_dir=str(output_dir / "trainer"),
        max_steps=steps,
        # TRL counts the batch in completions: whole groups of `num_generations` per prompt.
        per_device_train_batch_size=prompts_per_step * num_generations,
        num_generations=num_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=temperature,
        learning_rate=learning_rate,
        beta=beta,
        # Dropout would make the policy's and the reference's log-probs differ for identical weights.
        disable_dropout=True,
        log_completions=False,
        seed=seed,
        data_seed=seed,
        **trainer_runtime_args(settings),
    )
    if init_adapter_dir is not None:
        model, peft_config = load_adapter(base_model, init_adapter_dir, is_trainable=True), None
    else:
        model, peft_config = base_model, lora_config(settings)
    trainer = GRPOTrainer(model=model, reward_funcs=grpo_reward(reward_fn), args=config,
                          train_dataset=grpo_dataset(tokenizer, prompts), processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[LogLinesCallback("grpo", progress)]
                          + ([TimeBudgetCallback(max_seconds)] if max_seconds else []))
    trainer.remove_callback(PrinterCallback)  # its stdout dicts duplicate the lines sent to `progress`
    adapter_dir = output_dir / ADAPTER_FOLDER
    started = time.perf_counter()
    try:
        trainer.train()
        # Only the trained adapter: with an initial adapter TRL also holds its frozen "ref" copy.
        trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True, selected_adapters=["default"])
    finally:
        trainer.model.unload()  # hand the caller's base model back without LoRA layers, even on failure
    seconds = time.perf_counter() - started
    history = [{"step": int(row["step"]), **{ours: float(row[theirs]) for theirs, ours in HISTORY_KEYS.items()
                                             if theirs in row}}
               for row in trainer.state.log_history if "reward" in row]
    return GRPOResult(adapter_dir=adapter_dir, history=history, seconds=round(seconds, 2),
                      steps=int(trainer.state.global_step))
