"""Supervised warm start: a LoRA adapter trained on historically MET conditions.

Before RL, the policy learns the register of MONA conditions ("Submit to parliament a budget that
...") from conditions that were actually met, prompted exactly as RL will prompt it. The loss is the
mean negative log-likelihood of the condition's tokens and its EOS, never the prompt's.

Most prompts (one per country, arrangement and area) have several MET conditions, so a batch holds
whole prompts with all their conditions and scores them through `ml.policy.sampling.answer_token_stats`:
each prompt runs forward (and backward) once and its KV cache is shared by its conditions. With a
grounded prompt three times as long as a condition, that is about half the FLOPs of a trainer that
runs every (prompt, condition) pair on its own (TRL's SFTTrainer, used here before), and the same
log-probability path PPO and the evaluation use. The adapter is saved as safetensors; the caller's
base model is handed back without the LoRA layers, so the same base can be reused for RL or evaluation.

At any world size (ml/distributed.py) every rank draws the same steps of whole prompts, runs its share
of each step's prompts, and divides its summed NLL by the step's global token count; the gradients
summed over ranks are then the one-process gradient of the same step. Rank 0 reports and saves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from ml import distributed
from ml.config import PolicySettings
from ml.policy.base import apply_lora
from ml.policy.prompts import chat_text
from ml.policy.sampling import answer_token_stats, encode_prompts, eos_token_ids

log = logging.getLogger(__name__)

ADAPTER_FOLDER = "adapter"
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class SFTResult:
    adapter_dir: Path
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) per optimizer step
    seconds: float = 0.0
    steps: int = 0
    n_examples: int = 0
    tokens: int = 0  # condition tokens trained on (EOS included)

    @property
    def first_loss(self) -> float:
        return self.train_loss[0][1] if self.train_loss else math.nan

    @property
    def last_loss(self) -> float:
        return self.train_loss[-1][1] if self.train_loss else math.nan


def completion_ids(tokenizer: PreTrainedTokenizerBase, description: str, eos_id: int) -> list[int]:
    """The condition's tokens and the EOS that ends the answer (so the model also learns to stop).
    Without a chat template the prompt ends in "Proposed condition:" and the answer follows a space."""
    plain = not getattr(tokenizer, "chat_template", None)
    text = (" " if plain else "") + str(description).strip()
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id]


def train_sft_adapter(base_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: pd.DataFrame,
                      settings: PolicySettings, output_dir: Path, seed: int = 0,
                      progress: Callable[[str], None] = log.info, batch_size: int = 8,
                      max_steps: int | None = None, max_answer_tokens: int = 64) -> SFTResult:
    """Train a LoRA adapter on every one of `examples` (columns prompt, description) and save it under
    `output_dir/adapter`. Epochs and learning rate come from `settings`; a step takes whole prompts
    until it holds about `batch_size` conditions; `max_steps` caps the run. The example budget
    (`settings.sft_max_examples`) is drawn before, by `build_sft_examples`, as whole combinations."""
    if examples.empty:
        raise ValueError("no SFT examples: the split has no MET conditions with a description")
    rng = np.random.default_rng(seed)
    eos_id = eos_token_ids(base_model, tokenizer)[0] if tokenizer.eos_token_id is None else tokenizer.eos_token_id
    groups = [(prompt, [completion_ids(tokenizer, d, eos_id)[:max_answer_tokens] for d in rows["description"]])
              for prompt, rows in examples.groupby("prompt", sort=True)]
    per_group = len(examples) / len(groups)
    groups_per_step = max(1, round(batch_size / per_group))
    steps_per_epoch = math.ceil(len(groups) / groups_per_step)
    total = max_steps if max_steps is not None else max(1, math.ceil(settings.sft_epochs * steps_per_epoch))

    dist = distributed.current()
    report = dist.reporter(progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # LoRA's A matrices and dropout
        model = apply_lora(base_model, settings)
        dist.shard_model(model)  # FSDP launches only; the caller's model then stays sharded
        device = next(model.parameters()).device
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.sft_learning_rate, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, 0, total)
        losses: list[tuple[int, float]] = []
        tokens, step, started = 0, 0, time.perf_counter()
        model.train()
        try:
            while step < total:  # epochs: every prompt once, in a new random order each time
                order = [groups[i] for i in rng.permutation(len(groups))]
                for start in range(0, len(order), groups_per_step):
                    if step >= total:
                        break
                    batch = order[start:start + groups_per_step]
                    n_tokens = sum(len(ids) for _, group in batch for ids in group)  # over all ranks
                    local = batch[dist.shard_of(len(batch))]
                    optimizer.zero_grad(set_to_none=True)
                    # More ranks than prompts in this step: this rank adds nothing, but still runs the
                    # forward and backward passes (FSDP needs every rank in them) on a prompt, weighted 0.
                    weight = 1.0 if local else 0.0
                    loss = _step(model, tokenizer, local or batch[:1], settings, device) * weight / n_tokens
                    loss.backward()
                    dist.sum_gradients(trainable)
                    loss = dist.sum(loss.detach())
                    torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    tokens += n_tokens
                    losses.append((step, float(loss.item())))
                    elapsed = time.perf_counter() - started
                    report(f"sft step {step}/{total}: loss={loss.item():.4g}, "
                           f"learning_rate={scheduler.get_last_lr()[0]:.4g}, answer tokens/s={tokens / elapsed:.0f}, "
                           f"ETA {elapsed / step * (total - step):.0f}s")
            adapter_dir = Path(output_dir) / ADAPTER_FOLDER
            weights = dist.full_weights({name: p for name, p in model.named_parameters() if p.requires_grad})
            if dist.is_main:  # every rank holds the same adapter
                model.save_pretrained(str(adapter_dir), safe_serialization=True, state_dict=weights)
            dist.barrier()
        finally:
            # Take the LoRA layers back out of the caller's model (also after a failure): the adapter
            # lives on disk.
            model.unload()
    return SFTResult(adapter_dir=adapter_dir, train_loss=losses, seconds=round(time.perf_counter() - started, 2),
                     steps=step, n_examples=len(examples), tokens=tokens)


def _step(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, batch: list[tuple[str, list[list[int]]]],
          settings: PolicySettings, device: torch.device) -> torch.Tensor:
    """Summed NLL of every condition token in the batch, each prompt run once for all its conditions."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [chat_text(tokenizer, prompt) for prompt, _ in batch],
                                             settings.max_prompt_tokens, device=device)
    answers = [ids for _, group in batch for ids in group]
    width = max(len(ids) for ids in answers)
    responses = torch.full((len(answers), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(answers), width), dtype=torch.long)
    for row, ids in enumerate(answers):
        responses[row, :len(ids)] = torch.tensor(ids)
        response_mask[row, :len(ids)] = 1
    responses, response_mask = responses.to(device), response_mask.to(device)
    stats = answer_token_stats(model, prompt_ids, prompt_mask, responses, response_mask, 1.0,
                               answers_per_prompt=[len(group) for _, group in batch])
    return -(stats.logprobs * response_mask).sum()
