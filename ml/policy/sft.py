"""Supervised warm start: a LoRA adapter trained on historically MET conditions (TRL SFTTrainer).

Before RL, the policy learns the register of MONA conditions ("Submit to parliament a budget that
...") from conditions that were actually met, prompted exactly as RL will prompt it. The dataset is
prompt-completion, so the loss covers the condition only, never the prompt. The adapter is saved as
safetensors; the caller's base model is handed back without the LoRA layers, so the same base can
be reused for RL or evaluation.
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
from trl import SFTConfig, SFTTrainer

from ml.config import PolicySettings
from ml.policy.base import lora_config, trainer_runtime_args
from ml.policy.prompts import chat_text

log = logging.getLogger(__name__)

ADAPTER_FOLDER = "adapter"


@dataclass(frozen=True)
class SFTResult:
    adapter_dir: Path
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) as logged
    seconds: float = 0.0
    steps: int = 0
    n_examples: int = 0

    @property
    def first_loss(self) -> float:
        return self.train_loss[0][1] if self.train_loss else math.nan

    @property
    def last_loss(self) -> float:
        return self.train_loss[-1][1] if self.train_loss else math.nan


class LogLinesCallback(TrainerCallback):
    """Forwards each logged metrics row as one line (to a Dagster log, a CLI, or `logging`)."""

    def __init__(self, label: str, progress: Callable[[str], None]) -> None:
        self.label = label
        self.progress = progress

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {key: value for key, value in (logs or {}).items() if isinstance(value, (int, float))}
        shown = ", ".join(f"{key}={value:.4g}" for key, value in sorted(numbers.items()))
        self.progress(f"{self.label} step {state.global_step}/{state.max_steps}: {shown}")


def sft_dataset(tokenizer: PreTrainedTokenizerBase, examples: pd.DataFrame) -> Dataset:
    """Prompt-completion rows: the prompt rendered as generation will render it, the condition as
    the completion (TRL appends EOS, so the model also learns to stop after one condition)."""
    plain = not getattr(tokenizer, "chat_template", None)
    return Dataset.from_dict({
        "prompt": [chat_text(tokenizer, prompt) for prompt in examples["prompt"]],
        # Without a chat template the prompt ends in "Proposed condition:"; the answer follows a space.
        "completion": [(" " if plain else "") + str(description).strip() for description in examples["description"]],
    })


def train_sft_adapter(base_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: pd.DataFrame,
                      settings: PolicySettings, output_dir: Path, seed: int = 0,
                      progress: Callable[[str], None] = log.info, batch_size: int = 8,
                      max_steps: int | None = None, max_length: int = 256) -> SFTResult:
    """Train a LoRA adapter on `examples` (columns prompt, description) and save it under
    `output_dir/adapter`. Epochs and learning rate come from `settings`; `max_steps` caps the run.
    `max_length` (prompt + condition tokens) stays within the tiny Llama's 256 positions."""
    if examples.empty:
        raise ValueError("no SFT examples: the split has no MET conditions with a description")
    output_dir = Path(output_dir)
    if len(examples) > settings.sft_max_examples:
        examples = examples.sample(n=settings.sft_max_examples, random_state=seed)
    dataset = sft_dataset(tokenizer, examples)
    config = SFTConfig(
        output_dir=str(output_dir / "trainer"),
        num_train_epochs=settings.sft_epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=batch_size,
        learning_rate=settings.sft_learning_rate,
        max_length=max_length,
        completion_only_loss=True,
        packing=False,
        seed=seed,
        data_seed=seed,
        **trainer_runtime_args(settings),
    )
    trainer = SFTTrainer(model=base_model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(settings), callbacks=[LogLinesCallback("sft", progress)])
    trainer.remove_callback(PrinterCallback)  # its stdout dicts duplicate the lines sent to `progress`
    adapter_dir = output_dir / ADAPTER_FOLDER
    started = time.perf_counter()
    try:
        trainer.train()
        trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
    finally:
        # Take the LoRA layers back out of the caller's model (also after a failure): the adapter
        # lives on disk.
        trainer.model.unload()
    seconds = time.perf_counter() - started
    losses = [(int(row["step"]), float(row["loss"])) for row in trainer.state.log_history if "loss" in row]
    return SFTResult(adapter_dir=adapter_dir, train_loss=losses, seconds=round(seconds, 2),
                     steps=int(trainer.state.global_step), n_examples=len(dataset))
