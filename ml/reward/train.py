"""Fine-tune the reward encoder on the training split: a calibrated P(MET) classifier and its timings.

`train_reward_model` is a plain torch loop (no HF Trainer), so every choice is visible: AdamW with
linear warmup and decay, class-weighted cross-entropy (MONA is ~65% MET and macro-F1 is what the
paper reports), batches grouped by token length so dynamic padding wastes little, gradient clipping,
validation macro-F1 every `eval_every_steps` with early stopping and the best weights kept, then a
temperature fitted on validation logits. It counts the padded token positions it trained on, so a
benchmark can compute model-FLOPs utilisation = 6 * params * tokens / seconds.

The same loop runs at any world size (ml/distributed.py): every rank draws the same global batches,
runs forward and backward on its own share of each, and the gradients are summed over ranks; the loss
is divided by the global batch's class-weight total, so the summed gradient is the one-process
gradient of the same global batch. Validation runs on rank 0 and its numbers are broadcast, so every
rank takes the same early-stopping decision.

`split_train_halves` divides the training split by arrangement into two disjoint halves: the proxy
reward model (what PPO optimises) trains on one, the gold model (what judges the policy, never
trained against) on the other, as in reward-overoptimisation studies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from ml import distributed
from ml.config import RewardSettings
from ml.reward.calibration import fit_temperature
from ml.reward.encoder import autocast_dtype, describe_encoder, load_encoder, pad_batch, tokenize
from ml.reward.model import RewardModel, for_scoring, texts_for_rows
from ml.reward.negatives import with_relevance_negatives

Progress = Callable[[str], None]
MAX_GRAD_NORM = 1.0
# Length grouping: shuffle, then sort by length within buckets of this many batches; big enough that
# a batch pads little, small enough that batch composition still changes from epoch to epoch.
BUCKET_BATCHES = 50


@dataclass
class TrainedReward:
    model: PreTrainedModel  # best weights (by validation macro-F1), in eval mode
    tokenizer: PreTrainedTokenizerBase
    temperature: float  # fitted on validation logits after training
    max_length: int
    history: list[dict[str, float]]  # one entry per evaluation: step, epoch, loss, lr, val_* metrics
    steps: int  # optimizer steps taken (fewer than planned when stopped early)
    planned_steps: int
    best_step: int
    best_val_macro_f1: float  # NaN without validation rows
    stopped_early: bool
    train_seconds: float  # forward, backward and optimizer steps only; validation excluded
    eval_seconds: float
    tokens_processed: int  # padded token positions run forward and backward
    n_params: int
    n_params_non_embedding: int
    device: str
    dtype: str  # the precision trained and evaluated in ("auto" resolved)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_processed / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def model_flops(self) -> float:
        """Training FLOPs by the 6 * N * tokens rule (N without embeddings, which cost no matmul)."""
        return 6.0 * self.n_params_non_embedding * self.tokens_processed

    def reward_model(self, batch_size: int = 64) -> RewardModel:
        return RewardModel(for_scoring(self.model, torch.device(self.device)), self.tokenizer,
                           temperature=self.temperature, max_length=self.max_length, batch_size=batch_size,
                           device=self.device, dtype=self.dtype)


def train_reward_model(train: pd.DataFrame, validation: pd.DataFrame, settings: RewardSettings, seed: int,
                       progress: Progress | None = None) -> TrainedReward:
    """Train `settings.base_model` on `train` (rows with the four text fields and `is_met`), early-stop
    and calibrate on `validation`; `progress` receives one line per evaluation."""
    dist = distributed.current()
    # Progress lines come from rank 0 only: the other ranks would print the same numbers.
    report = dist.reporter(progress or (lambda _line: None))
    if train.empty:
        raise ValueError("cannot train a reward model on an empty training split")
    torch.manual_seed(seed)  # dropout draws from the global generator
    rng = np.random.default_rng(seed)
    if 0 < settings.max_train_examples < len(train):
        train = train.sample(n=settings.max_train_examples, random_state=seed)
    train = with_relevance_negatives(train, settings.cross_area_negatives, settings.vague_negatives, seed,
                                     keep_closing_clause=settings.vague_keeps_closing_clause)

    model, tokenizer = load_encoder(settings.base_model, seed=seed)
    # Under a launcher each rank trains on its own device (cuda:<local rank> on a GPU node).
    device_setting = settings.device if dist.world_size == 1 else str(dist.device)
    scorer = RewardModel(model, tokenizer, max_length=settings.max_length, batch_size=settings.batch_size * 2,
                         device=device_setting, dtype=settings.dtype)
    device = scorer.device
    sequences = tokenize(tokenizer, texts_for_rows(train), settings.max_length)
    lengths = np.array([len(s) for s in sequences])
    labels = torch.tensor(train["is_met"].to_numpy(dtype=np.int64))
    val_texts, val_labels = texts_for_rows(validation), validation["is_met"].to_numpy(dtype=np.int64)

    batches_per_epoch = math.ceil(len(sequences) / settings.batch_size)
    planned_steps = settings.epochs * batches_per_epoch
    optimizer = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(settings.warmup_ratio * planned_steps),
                                                planned_steps)
    weight = class_weights(labels.numpy()) if settings.class_weighting else torch.ones(2)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight.to(device) if settings.class_weighting else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    precision = autocast_dtype(scorer.dtype)  # settings.dtype with "auto" resolved for this device

    history: list[dict[str, float]] = []
    best = _BestWeights(patience=settings.early_stopping_patience)
    step, tokens, train_seconds, eval_seconds, stopped_early = 0, 0, 0.0, 0.0, False
    window_losses: list[float] = []

    model.train()
    for epoch in range(settings.epochs):
        for global_index in length_grouped_batches(lengths, settings.batch_size, rng):
            started = time.perf_counter()
            # 1. this rank's rows of the global batch, padded to their own longest sequence
            batch_index = global_index[dist.shard_of(len(global_index))]
            optimizer.zero_grad(set_to_none=True)
            n_tokens = torch.zeros(())
            if len(batch_index):
                batch = pad_batch([sequences[i] for i in batch_index], tokenizer.pad_token_id)
                batch = {key: value.to(device) for key, value in batch.items()}
                # 2. forward and class-weighted loss: CrossEntropyLoss(weight)'s mean, sum(w l) / sum(w),
                #    rescaled from this rank's sum(w) to the global batch's, so the ranks' parts add up
                #    to the global mean (the factor is exactly 1 in a single process)
                with torch.autocast(device.type, dtype=precision) if precision else nullcontext():
                    logits = model(**batch).logits
                loss = loss_fn(logits.float(), labels[batch_index].to(device))
                loss = loss * (weight[labels[batch_index]].sum() / weight[labels[global_index]].sum()).item()
                # 3. backward
                loss.backward()
                n_tokens = torch.tensor(batch["input_ids"].numel())
            else:
                loss = torch.zeros((), device=device)  # more ranks than rows: this rank adds nothing
            # 4. sum gradients over ranks, clip, step
            dist.sum_gradients(trainable)
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += int(dist.sum(n_tokens).item())
            window_losses.append(dist.sum(loss.detach()).item())  # .item() syncs the GPU: the timing is honest
            train_seconds += time.perf_counter() - started
            # 5. validate every eval_every_steps steps and at the very end (on rank 0, the numbers sent
            #    to every rank); stop when patience runs out
            if step % settings.eval_every_steps == 0 or step == planned_steps:
                started = time.perf_counter()
                metrics = _validation_metrics(scorer, val_texts, val_labels) if dist.is_main else None
                entry = {"step": step, "epoch": epoch, "loss": float(np.mean(window_losses)),
                         "learning_rate": scheduler.get_last_lr()[0], **dist.from_main(metrics)}
                eval_seconds += time.perf_counter() - started
                window_losses.clear()
                history.append(entry)
                report(_progress_line(entry, planned_steps, step / train_seconds))
                stopped_early = "val_macro_f1" in entry and best.update(entry["val_macro_f1"], step, model)
                if stopped_early:
                    break
        if stopped_early:
            break

    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    temperature = fit_temperature(scorer.logits(val_texts), val_labels) if len(val_labels) else 1.0
    info = describe_encoder(model)
    result = TrainedReward(
        model=model, tokenizer=tokenizer, temperature=temperature, max_length=settings.max_length,
        history=history, steps=step, planned_steps=planned_steps, best_step=best.step if best.state else step,
        best_val_macro_f1=best.f1 if best.state else float("nan"), stopped_early=stopped_early,
        train_seconds=train_seconds, eval_seconds=eval_seconds, tokens_processed=tokens,
        n_params=info.n_params, n_params_non_embedding=info.n_params_non_embedding,
        device=str(device), dtype=scorer.dtype)
    report(f"done {step}/{planned_steps} steps in {_duration(train_seconds)} "
           f"({result.tokens_per_second:.0f} tokens/s), best val_macro_f1 {result.best_val_macro_f1:.3f} "
           f"at step {result.best_step}, temperature {temperature:.3f}")
    return result


@dataclass
class _BestWeights:
    """Early stopping on validation macro-F1, with a copy of the weights of the best evaluation."""

    patience: int
    f1: float = -math.inf
    step: int = 0
    state: dict[str, torch.Tensor] | None = None
    evals_without_gain: int = 0

    def update(self, f1: float, step: int, model: PreTrainedModel) -> bool:
        """Record one evaluation; True when `patience` evaluations in a row brought no gain."""
        if f1 > self.f1:
            self.f1, self.step, self.evals_without_gain = f1, step, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.evals_without_gain += 1
        return self.evals_without_gain >= self.patience


def split_train_halves(train: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two disjoint halves of `train` with no arrangement in both (conditions of one program are
    alike, so splitting inside one would leak); arrangements are dealt in a seeded random order to
    whichever half has fewer rows, which keeps the halves within one arrangement of equal size."""
    sizes = train.groupby("arrangement_key", sort=True).size()
    if len(sizes) < 2:
        raise ValueError(f"need at least two arrangements to split in halves, got {len(sizes)}")
    rng = np.random.default_rng(seed)
    half_of: dict[object, int] = {}
    rows = [0, 0]
    for key in sizes.index[rng.permutation(len(sizes))]:
        half = int(rows[1] < rows[0])
        half_of[key] = half
        rows[half] += int(sizes[key])
    in_b = train["arrangement_key"].map(half_of).astype(bool)
    return train[~in_b].reset_index(drop=True), train[in_b].reset_index(drop=True)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices per batch for one epoch: shuffled, sorted by length within buckets of
    BUCKET_BATCHES batches, cut into batches, and the batches shuffled."""
    order = rng.permutation(len(lengths))
    bucket = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), bucket):
        chunk = order[start:start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def class_weights(labels: np.ndarray, n_classes: int = 2) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set gets weight 1 for every class."""
    counts = np.maximum(np.bincount(labels, minlength=n_classes), 1)
    return torch.as_tensor(len(labels) / (n_classes * counts), dtype=torch.float32)


def _parameter_groups(model: PreTrainedModel, weight_decay: float) -> list[dict]:
    # Biases and LayerNorm gains (the 1-D parameters) are not decayed, as in BERT's recipe.
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _validation_metrics(scorer: RewardModel, texts: list[str], labels: np.ndarray) -> dict[str, float]:
    if not len(labels):
        return {}
    scorer.model.eval()
    logits = scorer.logits(texts)
    scorer.model.train()
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(labels)).item()
    predicted = logits.argmax(axis=1)
    return {"val_loss": loss, "val_accuracy": float(accuracy_score(labels, predicted)),
            "val_macro_f1": float(f1_score(labels, predicted, average="macro", labels=[0, 1], zero_division=0))}


def _progress_line(entry: dict[str, float], planned_steps: int, steps_per_second: float) -> str:
    line = f"step {entry['step']}/{planned_steps} loss {entry['loss']:.3f}"
    if "val_macro_f1" in entry:
        line += f" val_macro_f1 {entry['val_macro_f1']:.3f}"
    remaining = (planned_steps - entry["step"]) / steps_per_second if steps_per_second else 0.0
    return line + f" {steps_per_second:.1f} it/s ETA {_duration(remaining)}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
