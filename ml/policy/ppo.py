"""PPO for the policy's LoRA adapter against a reward function: RLXF's reinforcement-learning step.

Produces a tuned LoRA adapter (and its value head), a per-step history of diagnostics with stable
names, and the best adapter by a held-out gold reward, the guard against over-optimising the proxy
reward model. TRL 1.16 no longer ships a PPO trainer, so PPO lives here on torch + peft, written after
cleanrl's `ppo.py` and TRL's removed PPO trainer (Ziegler et al. 2019, "Fine-Tuning Language Models
from Human Preferences"; Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO").

One episode is one answer. The state is the prompt plus the answer so far, the action the next token.
Every answer token earns -kl_coef * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)), and the last one also
earns the answer's score (the reward model's P(MET), after penalties and normalisation). The reference
policy pi_ref is the same network with the LoRA adapter switched off, so no second copy of the model is
held in memory, and at step 0 (LoRA's B matrices are zero) policy and reference are identical.

At any world size (ml/distributed.py) every rank draws the same global batch of prompts and samples,
scores and evaluates its own contiguous shard of it; answers are sampled from per-answer random
streams keyed by (seed, step, index in the global batch), so the rollout does not depend on the
sharding. Reward normalisation, advantage whitening, the KL the controller sees and the early-stopping
KL are computed over all ranks, and each minibatch loss is divided by the minibatch's global token
count and the gradients summed over ranks: every rank takes the same decisions and holds the same
weights, equal (within float rounding) to a one-process run with the same global batch. Evaluation
runs on rank 0 and its result is broadcast; rank 0 alone writes checkpoints, and every rank resumes
from them, at any world size.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from ml import distributed
from ml.config import PPOSettings, time_budget_spent
from ml.io import atomic_folder
from ml.policy.sampling import (
    Answers,
    Prefill,
    answer_mask,
    answer_token_stats,
    answer_uniforms,
    encode_prompts,
    eos_token_ids,
    sample_answers,
    trim_answers,
)

if TYPE_CHECKING:
    from ml.config import PolicySettings

logger = logging.getLogger(__name__)

RewardFn = Callable[[list[dict], list[str]], list[float]]
"""(prompt records as the caller passed them, decoded answers) -> one scalar reward per answer."""


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


Total = Callable[[torch.Tensor], torch.Tensor]
"""A sum over processes (Distributed.sum); the identity when every element is in this process."""


def _local(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None,
                total: Total = _local) -> torch.Tensor:
    """Mean of `values` over the elements where `mask` is 1 (over all processes' elements when
    `total` sums over them; axis=None only)."""
    if axis is None:
        return total((values * mask).sum()) / total(mask.sum())
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, total: Total = _local) -> torch.Tensor:
    """Variance of `values` over the elements where `mask` is 1 (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(values, mask, total=total)
    variance = masked_mean((values - mean) ** 2, mask, total=total)
    if unbiased:
        n = total(mask.sum())
        if n < 2:
            raise ValueError("masked_var needs at least two masked-in elements for the unbiased estimate")
        variance = variance * n / (n - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  total: Total = _local) -> torch.Tensor:
    """(x - mean) / std over the masked-in elements; with `shift_mean=False` the mean is kept."""
    mean, var = masked_mean(values, mask, total=total), masked_var(values, mask, total=total)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position: (..., V), (...) -> (...)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logprobs, -1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) = logsumexp(z) - sum_i p_i z_i per position: (..., V) -> (...)."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16) over answer tokens.

        δ_t = r_t + γ V(s_{t+1}) - V(s_t)
        Â_t = δ_t + γλ Â_{t+1}        (= Σ_l (γλ)^l δ_{t+l})
        R_t = Â_t + V(s_t)            (the value target, a TD(λ) return)

    rewards, values, mask: (B, T); `mask` is 1 on the answer tokens, a prefix of each row. The value
    after an answer's last token is 0: the episode ends there. Returns (advantages, returns), both
    zero outside the mask.
    """
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    lastgaelam = torch.zeros_like(rewards[:, 0])  # (B,)
    advantages_reversed = []
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t < T - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask  # (B, T)
    returns = advantages + values  # (B, T)
    return advantages, returns


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor, mask: torch.Tensor,
                       total: Total = _local) -> float:
    """1 - Var[y_true - y_pred] / Var[y_true] over the mask: 1 = perfect values, <= 0 = no better than
    a constant (cleanrl's diagnostic); nan when the targets do not vary."""
    var_y = masked_var(y_true, mask, unbiased=False, total=total)
    if var_y == 0:
        return float("nan")
    return float(1 - masked_var(y_true - y_pred, mask, unbiased=False, total=total) / var_y)


def truncate_after_eos(responses: torch.Tensor, eos_token_ids: list[int],
                       pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each generated row after its first EOS (the EOS is kept: it is the action that ends the
    answer). responses: (B, R). Returns the padded responses (B, R), the answer mask (B, R) that is 1
    up to and including the first EOS, and has_eos (B,); a row without EOS keeps all R tokens."""
    mask, has_eos = answer_mask(responses, eos_token_ids)
    return responses.masked_fill(mask == 0, pad_token_id), mask, has_eos


def apply_answer_penalties(scores: torch.Tensor, is_empty: torch.Tensor, is_truncated: torch.Tensor,
                           empty_answer_penalty: float, truncated_answer_penalty: float) -> torch.Tensor:
    """Subtract the configured penalties (they add up when both apply): an empty answer says nothing,
    and an answer still running at max_new_tokens is cut mid-sentence."""
    return scores - empty_answer_penalty * is_empty.float() - truncated_answer_penalty * is_truncated.float()


# --------------------------------------------------------------------------------------------------
# Configuration and small stateful pieces
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PPOConfig(PPOSettings):
    """Hyperparameters of one PPO run: the profile's knobs (`ml.config.PPOSettings`, where each is defined
    with its default) plus what the policy and the run decide."""

    max_prompt_tokens: int = 128  # longer prompts keep their last tokens (0 = no limit)
    add_special_tokens: bool = True  # let the tokenizer add BOS; False when prompt_text already has it
    max_new_tokens: int = 40  # answer budget; an answer without EOS within it counts as truncated
    # Sampling is softmax(logits / temperature) and nothing else (no top-k, top-p or repetition
    # penalty, nothing from the model's generation_config): the distribution the logprobs score.
    temperature: float = 1.0
    seed: int = 0  # seeds torch, numpy and python at the start of a fresh run
    best_metric: str = "judged_reward"  # evaluate()'s key that picks checkpoint_dir/best (higher is better)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise ValueError(f"PPOConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError("PPOConfig.temperature must be > 0: PPO needs the sampling distribution's logprobs")

    @property
    def num_mini_batches(self) -> int:
        return math.ceil(self.batch_size / self.mini_batch_size)

    @property
    def answers_per_step(self) -> int:
        return self.batch_size * self.answers_per_prompt

    @classmethod
    def for_policy(cls, settings: PolicySettings, seed: int, **changes: Any) -> PPOConfig:
        """The profile's PPO run: its `ppo` knobs with the policy's answer and prompt budgets and
        temperature, then `changes` (e.g. the metric or a time budget of one run)."""
        return cls(**{**asdict(settings.ppo), "max_new_tokens": settings.max_new_tokens,
                      "max_prompt_tokens": settings.max_prompt_tokens, "temperature": settings.temperature,
                      "seed": seed, **changes})


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float):
        self.kl_coef = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


class AdaptiveKLController:
    """Ziegler et al. 2019, Sec. 2.2: a proportional controller that steers the KL to `target`.

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
        β_{t+1} = β_t (1 + K_β e_t),   K_β = n_steps / horizon
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.kl_coef = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.kl_coef *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


class RunningMoments:
    """Running mean and variance of the scores (Chan et al.'s parallel update), for normalisation."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        n = x.numel()
        batch_mean, batch_var = x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / math.sqrt(self.var + 1e-8)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])


# --------------------------------------------------------------------------------------------------
# Policy with a value head
# --------------------------------------------------------------------------------------------------


class ValueHead(nn.Module):
    """V(s_t): a linear map of the last hidden state, in float32 whatever the model's dtype."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        # V = 0 at the start: the first advantages are the returns themselves, for any backbone scale.
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return self.summary(hidden_states.float()).squeeze(-1)


class PolicyWithValueHead(nn.Module):
    """A peft LoRA causal LM sharing its trunk with a value head (TRL's CausalLMWithValueHead).

    The reference policy is the same module with the adapter disabled, so KL(π || π_ref) costs a
    forward pass, not a second model in memory.
    """

    def __init__(self, policy: PeftModel, value_head: ValueHead | None = None):
        super().__init__()
        self.policy = policy
        hidden_size = policy.get_base_model().config.get_text_config().hidden_size
        device = next(policy.parameters()).device
        self.value_head = (value_head or ValueHead(hidden_size)).to(device)

    def response_outputs(self, queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor,
                         response_mask: torch.Tensor, temperature: float, prefill: Prefill | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log π(a_t|s_t), the entropy of π(·|s_t) and V(s_t) for every answer token: each (N, R).

        `queries` (P, L) are the distinct prompts; answer row i answers prompt i // (N // P). `prefill`:
        the sampling's pass over these prompts, with the current weights (π_old in the rollout)."""
        stats = answer_token_stats(self.policy, queries, query_mask, responses, response_mask, temperature,
                                   entropy=True, value_head=self.value_head, prefill=prefill)
        return stats.logprobs, stats.entropy, stats.values

    @torch.no_grad()
    def reference_logprobs(self, queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor,
                           response_mask: torch.Tensor, temperature: float) -> torch.Tensor:
        """log π_ref(a_t|s_t): (N, R), the same weights with the LoRA adapter off = the base policy."""
        with self.policy.disable_adapter():
            return answer_token_stats(self.policy, queries, query_mask, responses, response_mask,
                                      temperature).logprobs


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of sampled answers with everything PPO needs from the sampling policy π_old."""

    prompts: list[dict]  # one record per answer (a prompt's record repeated for each of its answers)
    queries: torch.Tensor  # (P, L) the distinct prompts' ids, left-padded
    query_mask: torch.Tensor  # (P, L)
    responses: torch.Tensor  # (B, R) answer ids, padded after the first EOS; B = P * answers_per_prompt
    response_mask: torch.Tensor  # (B, R) 1 up to and including the first EOS
    answers: list[str]  # decoded answers, without special tokens
    is_empty: torch.Tensor  # (B,) bool
    is_truncated: torch.Tensor  # (B,) bool: no EOS within max_new_tokens
    raw_scores: torch.Tensor  # (B,) reward_fn's output
    is_floored: torch.Tensor  # (B,) bool: a rule of reward_fn put the answer at its batch's floor
    scores: torch.Tensor  # (B,) after penalties and normalisation: the reward on the last token
    logprobs: torch.Tensor  # (B, R) log π_old(a_t|s_t)
    ref_logprobs: torch.Tensor  # (B, R) log π_ref(a_t|s_t)
    values: torch.Tensor  # (B, R) V_old(s_t)
    entropy: torch.Tensor  # (B, R) H(π_old(·|s_t))
    generation_seconds: float


@dataclass
class PPOResult:
    history: list[dict[str, float]]  # one stats dict per step (see PPOTrainer.step)
    eval_history: list[dict[str, Any]]  # {"step": s, **evaluate(...)} per evaluation
    best_step: int | None  # step of the best evaluation by config.best_metric
    best_metric: float | None
    final_step: int
    last_checkpoint: Path | None  # checkpoint_dir/last, resumable
    best_checkpoint: Path | None  # checkpoint_dir/best: adapter + value head of best_step


class PPOTrainer:
    """PPO on a LoRA adapter. `train()` runs `config.steps` iterations, resuming from
    `checkpoint_dir/last` when it exists.

    `prompts` are dicts with `prompt_text` plus any metadata; the dicts go to `reward_fn` unchanged
    with the decoded answers. `evaluate(trainer, step)` runs at step 0, every `config.eval_every`
    steps and at the last step, and returns numbers (it can sample with `trainer.generate_answers`);
    the adapter with the highest `config.best_metric` is kept in `checkpoint_dir/best`. Evaluation
    cannot disturb training: the RNG state is restored after it. A finished run's checkpoint_dir
    makes `train()` return its saved result without training again.
    """

    def __init__(self, policy_model: PeftModel, tokenizer: PreTrainedTokenizerBase, config: PPOConfig,
                 reward_fn: RewardFn, prompts: list[dict], checkpoint_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None,
                 log_metrics: Callable[[dict, int], None] | None = None,
                 evaluate: Callable[[PPOTrainer, int], dict] | None = None):
        if not prompts:
            raise ValueError("PPOTrainer needs at least one prompt")
        if any("prompt_text" not in p for p in prompts):
            raise ValueError("every prompt record needs a 'prompt_text'")
        self.policy = policy_model
        self.tokenizer = tokenizer
        self.config = config
        self.reward_fn = reward_fn
        self.prompts = prompts
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.dist = distributed.current()
        if config.batch_size % self.dist.world_size:
            raise ValueError(f"PPOConfig.batch_size {config.batch_size} must be a multiple of the "
                             f"{self.dist.world_size} processes")
        # Every rank holds the same numbers: only rank 0 reports them.
        self.progress = self.dist.reporter(progress or logger.info)
        self.log_metrics = log_metrics if self.dist.is_main else None
        self.evaluate = evaluate

        self.model = PolicyWithValueHead(policy_model)
        self.dist.shard_model(self.model.policy, self.model.value_head)  # FSDP launches only
        self.device = next(policy_model.parameters()).device
        self.trainable_params = [p for p in self.model.parameters() if p.requires_grad]
        if not any(p.requires_grad for p in policy_model.parameters()):
            raise ValueError("the policy has no trainable (LoRA) parameters")
        self.optimizer = torch.optim.Adam(self.trainable_params, lr=config.learning_rate, eps=1e-5)
        self.kl_ctl: AdaptiveKLController | FixedKLController = (
            AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
            if config.target_kl is not None else FixedKLController(config.init_kl_coef))
        self.reward_stats = RunningMoments()

        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token (ml.policy.base.ensure_padding sets one)")
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_ids = eos_token_ids(policy_model, tokenizer)

        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.eval_history: list[dict[str, Any]] = []
        self.best_step: int | None = None
        self.best_metric: float | None = None

    # ---- rollout -----------------------------------------------------------------------------------

    def sample_prompts(self) -> list[dict]:
        """batch_size prompts, without replacement when there are enough (global torch RNG)."""
        n, B = len(self.prompts), self.config.batch_size
        indices = torch.randperm(n)[:B] if n >= B else torch.randint(n, (B,))
        return [self.prompts[i] for i in indices.tolist()]

    def generate(self, prompts: list[dict], do_sample: bool = True, answers_per_prompt: int | None = None,
                 uniforms: torch.Tensor | None = None, keep_prefill: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, Answers]:
        """Left-padded queries (P, L), their mask (P, L) and the answers (P * n rows), n per prompt
        (config.answers_per_prompt unless given; greedy answers when not do_sample; drawn from
        `uniforms` (P * n, max_new_tokens) when given, else from the global RNG). `keep_prefill`: keep
        the prompt pass, with the states the value head reads."""
        queries, query_mask = encode_prompts(self.tokenizer, [p["prompt_text"] for p in prompts],
                                             self.config.max_prompt_tokens, self.config.add_special_tokens,
                                             device=self.device)
        answers = sample_answers(self.policy, queries, query_mask,
                                 n_per_prompt=answers_per_prompt or self.config.answers_per_prompt,
                                 max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature,
                                 eos_ids=self.eos_token_ids, pad_token_id=self.pad_token_id, greedy=not do_sample,
                                 uniforms=uniforms, keep_prefill=keep_prefill, keep_states=keep_prefill)
        return queries, query_mask, answers

    def decode(self, responses: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
        ids = [row[mask.bool()].tolist() for row, mask in zip(responses, response_mask)]
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def generate_answers(self, prompts: list[dict], do_sample: bool = True) -> list[str]:
        """One answer of the current policy per prompt, batch_size prompts at a time (for evaluate
        callbacks); greedy when not do_sample."""
        answers = []
        for i in range(0, len(prompts), self.config.batch_size):
            _, _, raw = self.generate(prompts[i:i + self.config.batch_size], do_sample=do_sample, answers_per_prompt=1)
            responses, response_mask, _ = truncate_after_eos(raw.responses, self.eos_token_ids, self.pad_token_id)
            answers.extend(self.decode(responses, response_mask))
        return answers

    @torch.no_grad()
    def rollout(self, prompts: list[dict], first_prompt: int = 0) -> Rollout:
        """Steps 1-3 of a PPO iteration: sample, score and evaluate answers under π_old and π_ref.
        `prompts` are this rank's shard of the step's global batch, starting at `first_prompt`."""
        config = self.config
        self.model.eval()  # no dropout: the ratio π/π_old must be exactly 1 before the first update

        # 1. Sample answers_per_prompt answers per prompt, each from its own random stream, cut each
        #    after its first EOS, and drop the columns no answer reached.
        start = time.perf_counter()
        n = config.answers_per_prompt
        uniforms = answer_uniforms(config.seed, self.step_count, first_prompt * n, len(prompts) * n,
                                   config.max_new_tokens)
        queries, query_mask, sampled = self.generate(prompts, uniforms=uniforms, keep_prefill=True)
        generation_seconds = time.perf_counter() - start
        responses, response_mask, has_eos = truncate_after_eos(sampled.responses, self.eos_token_ids,
                                                               self.pad_token_id)
        responses, response_mask = trim_answers(responses, response_mask)
        answers = self.decode(responses, response_mask)
        prompts = [record for record in prompts for _ in range(n)]  # one record per answer

        # 2. Score the answers, penalise empty and truncated ones, normalise with running statistics.
        raw_scores = torch.tensor(self.reward_fn(prompts, answers), dtype=torch.float32)
        if raw_scores.shape != (len(prompts),):
            raise ValueError(f"reward_fn returned {tuple(raw_scores.shape)} rewards for {len(prompts)} answers")
        is_empty = torch.tensor([not answer for answer in answers])
        # A reward with floor rules (quotes, copies: `RLReward`) says which answers they floored.
        is_floored = torch.as_tensor(getattr(self.reward_fn, "last_floored", np.zeros(len(answers), dtype=bool)))
        is_truncated = ~has_eos.cpu()
        scores = apply_answer_penalties(raw_scores, is_empty, is_truncated,
                                        config.empty_answer_penalty, config.truncated_answer_penalty)
        if config.reward_normalization:
            self.reward_stats.update(self.dist.cat(scores))  # every rank's scores, in global order
            scores = self.reward_stats.normalize(scores).float()

        # 3. Logprobs, entropies and values of the sampling policy (from the prompt pass sampling
        #    kept), and reference logprobs (adapter off), mini_batch_size prompts (with their answers)
        #    at a time to bound memory.
        chunks = []
        R = responses.shape[1]
        for i in range(0, len(queries), config.mini_batch_size):
            part, answer_part = slice(i, i + config.mini_batch_size), slice(i * n, (i + config.mini_batch_size) * n)
            width = max(int(response_mask[answer_part].sum(dim=1).max().item()), 1)  # this chunk's longest answer
            args = (queries[part], query_mask[part], responses[answer_part, :width],
                    response_mask[answer_part, :width], config.temperature)
            prefill = sampled.prefill.select(part) if sampled.prefill is not None else None
            outputs = (*self.model.response_outputs(*args, prefill=prefill), self.model.reference_logprobs(*args))
            chunks.append([F.pad(x, (0, R - width)) for x in outputs])  # zeros where no answer reaches
        logprobs, entropy, values, ref_logprobs = (torch.cat(parts) for parts in zip(*chunks))

        return Rollout(prompts=prompts, queries=queries, query_mask=query_mask, responses=responses,
                       response_mask=response_mask, answers=answers, is_empty=is_empty, is_truncated=is_truncated,
                       raw_scores=raw_scores, is_floored=is_floored, scores=scores.to(self.device), logprobs=logprobs,
                       ref_logprobs=ref_logprobs, values=values, entropy=entropy,
                       generation_seconds=generation_seconds)

    # ---- one PPO iteration -------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One PPO iteration; returns its stats (names are stable: they are logged and documented).

        reward_mean/std: the per-answer reward PPO optimises (after penalties and normalisation);
        score_mean/std: reward_fn's raw output; kl: mean over answers of Σ_t (log π - log π_ref);
        kl_coef: β used this step; entropy: mean token entropy of π on its own samples;
        policy_loss, value_loss, approx_kl, clipfrac: means over the minibatch updates;
        explained_variance: of the returns by the rollout values; answer_length: tokens before EOS;
        truncated_share, empty_share; floored_share: answers a floor rule of reward_fn put at its batch's
        lowest reward (0 for a reward without `last_floored`); tokens_per_s_rollout (generation), tokens_per_s_update;
        ratio_mean_first_minibatch: mean π/π_old before any update (1 by construction);
        ppo_updates: minibatch updates done before any early stop; step_seconds.
        """
        config = self.config
        dist = self.dist
        start = time.perf_counter()
        kl_coef = self.kl_ctl.kl_coef

        # 1.-3. Sample answers for this rank's shard of the global batch, score them, evaluate them
        #       under π_old and π_ref.
        global_prompts = self.sample_prompts()
        shard = dist.shard(len(global_prompts))
        ro = self.rollout(global_prompts[shard], first_prompt=shard.start)
        mask = ro.response_mask.float()  # (B, R), B = this rank's answers
        B, R = ro.responses.shape

        # 4. Per-token rewards (Ziegler et al. 2019, Eq. 2: R(x, y) = r(x, y) - β log π(y|x)/π_ref(y|x)):
        #    the KL penalty on every answer token, with the k1 estimator log π - log π_ref (unbiased
        #    for KL(π || π_ref) under samples from π), plus the score on the last token.
        kl = (ro.logprobs - ro.ref_logprobs) * mask  # (B, R)
        non_score_reward = -kl_coef * kl  # (B, R)
        rewards = non_score_reward.clone()  # (B, R)
        last_token = ro.response_mask.sum(dim=1) - 1  # (B,)
        rewards[torch.arange(B, device=self.device), last_token] += ro.scores

        # 5. Advantages and returns by GAE; whiten the advantages over all ranks' answer tokens.
        advantages, returns = compute_gae(rewards, ro.values, mask, config.gamma, config.lam)  # (B, R) each
        if config.whiten_advantages and dist.sum(mask.sum()) > 1:
            advantages = masked_whiten(advantages, mask, total=dist.sum) * mask

        # 6. ppo_epochs passes over shuffled minibatches of the global rollout (the model stays in eval
        #    mode: with dropout the ratio would not be 1 at θ = θ_old). Every rank draws the same
        #    permutation of global prompts and works on those of each minibatch that are its own; each
        #    loss term is its tokens' sum over the minibatch's global token count, so the gradients
        #    summed over ranks are those of the whole minibatch.
        update_start = time.perf_counter()
        mb_stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "approx_kl": [], "clipfrac": []}
        ratio_mean_first_minibatch = float("nan")
        updated_tokens, early_stopped = 0, False
        n_prompts = len(global_prompts)
        n = config.answers_per_prompt  # a minibatch takes whole prompts with all their answers
        for epoch in range(config.ppo_epochs):
            b_groups = torch.randperm(n_prompts)
            for start_index in range(0, n_prompts, config.mini_batch_size):
                mb_global = b_groups[start_index:start_index + config.mini_batch_size]
                on_this_rank = (mb_global >= shard.start) & (mb_global < shard.stop)
                mb_groups = (mb_global[on_this_rank] - shard.start).to(self.device)
                has_rows = len(mb_groups) > 0
                if not has_rows:
                    # None of this minibatch's prompts is on this rank. It still runs the forward and
                    # backward passes (FSDP needs every rank in them) on its first prompt, masked out,
                    # so it adds zeros to the gradients.
                    mb_groups = torch.zeros(1, dtype=torch.long, device=self.device)
                mb_inds = (mb_groups.unsqueeze(1) * n + torch.arange(n, device=self.device)).flatten()
                # Only as many answer columns as this minibatch's longest answer: padding costs compute.
                width = max(int(ro.response_mask[mb_inds].sum(dim=1).max().item()), 1)
                mb_mask = mask[mb_inds, :width] * has_rows  # (b, r)
                count = dist.sum(mb_mask.sum())  # the minibatch's answer tokens on all ranks
                mb_advantages, mb_returns = advantages[mb_inds, :width], returns[mb_inds, :width]  # (b, r)
                mb_old_logprobs, mb_old_values = ro.logprobs[mb_inds, :width], ro.values[mb_inds, :width]  # (b, r)

                new_logprobs, new_entropy, new_values = self.model.response_outputs(
                    ro.queries[mb_groups], ro.query_mask[mb_groups], ro.responses[mb_inds, :width],
                    ro.response_mask[mb_inds, :width], config.temperature)  # (b, r) each
                logratio = new_logprobs - mb_old_logprobs
                ratio = torch.exp(logratio)  # r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t)

                def minibatch_mean(values: torch.Tensor, mask=mb_mask, count=count) -> torch.Tensor:
                    return (values * mask).sum() / count  # this rank's share of the global mean

                with torch.no_grad():
                    # k3 estimator of KL(π_old || π_θ): E[(r - 1) - log r], unbiased and >= 0
                    # (Schulman, "Approximating KL Divergence", 2020).
                    approx_kl = dist.sum(minibatch_mean((ratio - 1) - logratio)).item()
                    clipfrac = dist.sum(minibatch_mean(((ratio - 1).abs() > config.cliprange).float())).item()
                    if epoch == 0 and start_index == 0:
                        ratio_mean_first_minibatch = dist.sum(minibatch_mean(ratio)).item()
                if config.early_stop_kl is not None and approx_kl > config.early_stop_kl:
                    early_stopped = True  # the previous updates already moved π far enough from π_old
                    break

                # Clipped surrogate objective, PPO paper Eq. 7, as a loss to minimise:
                # L^CLIP = -E_t[min(r_t Â_t, clip(r_t, 1-ε, 1+ε) Â_t)] = E_t[max(-r_t Â_t, -clip(r_t) Â_t)].
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - config.cliprange, 1 + config.cliprange)
                pg_loss = minibatch_mean(torch.max(pg_loss1, pg_loss2))

                # Clipped value loss: the larger of the plain and the clipped squared errors.
                v_clipped = mb_old_values + torch.clamp(new_values - mb_old_values,
                                                        -config.cliprange_value, config.cliprange_value)
                v_loss_unclipped = (new_values - mb_returns) ** 2
                v_loss_clipped = (v_clipped - mb_returns) ** 2
                v_loss = 0.5 * minibatch_mean(torch.max(v_loss_unclipped, v_loss_clipped))

                entropy_loss = minibatch_mean(new_entropy)
                loss = pg_loss - config.ent_coef * entropy_loss + config.vf_coef * v_loss

                self.optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    loss.backward()
                dist.sum_gradients(self.trainable_params)
                nn.utils.clip_grad_norm_(self.trainable_params, config.max_grad_norm)
                self.optimizer.step()

                updated_tokens += int(mb_mask.sum().item())
                mb_stats["policy_loss"].append(dist.sum(pg_loss.detach()).item())
                mb_stats["value_loss"].append(dist.sum(v_loss.detach()).item())
                mb_stats["approx_kl"].append(approx_kl)
                mb_stats["clipfrac"].append(clipfrac)
            if early_stopped:
                break
        update_seconds = time.perf_counter() - update_start

        # Ziegler's controller sees the mean per-answer KL of this rollout, over all ranks.
        answer_kl = dist.cat(kl.sum(dim=1))  # (global B,)
        mean_kl = answer_kl.mean().item()
        self.kl_ctl.update(mean_kl, n_steps=len(answer_kl))

        answer_tokens = ro.response_mask.sum().item()
        answer_lengths = dist.cat((ro.response_mask.sum(dim=1) - (~ro.is_truncated).long().to(self.device)).float())
        scores, raw_scores = dist.cat(ro.scores), dist.cat(ro.raw_scores)
        is_truncated, is_empty = dist.cat(ro.is_truncated.float()), dist.cat(ro.is_empty.float())
        is_floored = dist.cat(ro.is_floored.float())
        many = len(scores) > 1
        return {
            "reward_mean": scores.mean().item(),
            "reward_std": scores.std().item() if many else 0.0,
            "score_mean": raw_scores.mean().item(),
            "score_std": raw_scores.std().item() if many else 0.0,
            "non_score_reward": (-kl_coef * answer_kl).mean().item(),
            "kl": mean_kl,
            "kl_coef": kl_coef,
            "entropy": masked_mean(ro.entropy, mask, total=dist.sum).item(),
            "policy_loss": _mean(mb_stats["policy_loss"]),
            "value_loss": _mean(mb_stats["value_loss"]),
            "clipfrac": _mean(mb_stats["clipfrac"]),
            "approx_kl": _mean(mb_stats["approx_kl"]),
            "explained_variance": explained_variance(ro.values, returns, mask, total=dist.sum),
            "answer_length": answer_lengths.mean().item(),
            "truncated_share": is_truncated.mean().item(),
            "empty_share": is_empty.mean().item(),
            "floored_share": is_floored.mean().item(),
            "ratio_mean_first_minibatch": ratio_mean_first_minibatch,
            "ppo_updates": float(len(mb_stats["policy_loss"])),
            "tokens_per_s_rollout": answer_tokens / max(ro.generation_seconds, 1e-9),
            "tokens_per_s_update": updated_tokens / max(update_seconds, 1e-9),
            "step_seconds": time.perf_counter() - start,
        }

    # ---- the loop ----------------------------------------------------------------------------------

    def train(self) -> PPOResult:
        config = self.config
        saved_config = self._resume()
        if saved_config is not None:
            changed = sorted(k for k, v in asdict(config).items() if k in saved_config and saved_config[k] != v)
            self.progress(f"resumed from {self._last_dir()} at step {self.step_count}/{config.steps}"
                          + (f" (config changed: {', '.join(changed)})" if changed else ""))
        else:
            _seed_everything(config.seed)
            if self.evaluate is not None and config.eval_every:
                self._run_evaluation(0)
        self.model.eval()

        session_seconds: list[float] = []
        saved_step = self.step_count
        while self.step_count < config.steps and not self._out_of_time():
            stats = self.step()
            self.step_count += 1
            step = self.step_count
            stats["step"] = step
            self.history.append(stats)
            session_seconds.append(stats["step_seconds"])
            last = step == config.steps or self._out_of_time()
            if step % config.log_every == 0 or last:
                per_step = sum(session_seconds) / len(session_seconds)
                eta = (config.steps - step) * per_step
                if config.max_seconds is not None:
                    eta = min(eta, max(config.max_seconds - self.training_seconds,
                                       (config.min_steps - step) * per_step, 0.0))
                self.progress(_progress_line(stats, step, config.steps, eta))
                if self.log_metrics is not None:
                    self.log_metrics(stats, step)
            evaluation_due = config.eval_every and (step % config.eval_every == 0 or last)
            if self.evaluate is not None and evaluation_due:
                self._run_evaluation(step)
            if self.checkpoint_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                self.save_checkpoint()
                saved_step = step
        if self.checkpoint_dir is not None and saved_step != self.step_count:
            self.save_checkpoint()

        best_dir = self.checkpoint_dir / "best" if self.checkpoint_dir is not None else None
        return PPOResult(history=list(self.history), eval_history=list(self.eval_history),
                         best_step=self.best_step, best_metric=self.best_metric, final_step=self.step_count,
                         last_checkpoint=self._last_dir() if self.checkpoint_dir is not None else None,
                         best_checkpoint=best_dir if best_dir is not None and best_dir.exists() else None)

    @property
    def training_seconds(self) -> float:
        """Time spent in PPO steps so far (evaluations and checkpoints excluded), across resumes."""
        return float(sum(row["step_seconds"] for row in self.history))

    def _out_of_time(self) -> bool:
        config = self.config
        return time_budget_spent(self.training_seconds, self.step_count, config.max_seconds, config.min_steps)

    def _run_evaluation(self, step: int) -> None:
        rng_state = _get_rng_state()  # evaluation may sample; training must not notice
        # Rank 0 evaluates (the others wait) and every rank gets its numbers, to agree on the best.
        # Under FSDP every rank runs the (seeded, hence identical) evaluation: each forward pass needs all.
        evaluates_here = self.dist.is_main or self.dist.sharded
        result = self.dist.from_main(dict(self.evaluate(self, step)) if evaluates_here else None)
        _set_rng_state(rng_state)
        self.model.eval()
        recent_kl = self._recent_kl(step)
        self.eval_history.append({"step": step, **result, "kl_since_previous_eval": recent_kl})
        metric = result.get(self.config.best_metric)
        if metric is None or not math.isfinite(float(metric)):
            return
        if self.config.best_max_kl is not None and recent_kl > self.config.best_max_kl:
            self.progress(f"eval step {step}: KL {recent_kl:.2f} over the budget of {self.config.best_max_kl:g} "
                          f"nats, not a candidate for best")
            return
        if self.best_metric is None or float(metric) > self.best_metric:
            self.best_step, self.best_metric = step, float(metric)
            if self.checkpoint_dir is not None:
                self._save_weights_atomically(self.checkpoint_dir / "best", extra={
                    "step": step, "metric": self.config.best_metric, "value": float(metric), "evaluation": result})
            self.progress(f"eval step {step}: best {self.config.best_metric} {float(metric):.4f}")

    def _recent_kl(self, step: int) -> float:
        """Mean KL per answer of the steps since the previous evaluation (0 at step 0)."""
        previous = max((e["step"] for e in self.eval_history if e["step"] < step), default=0)
        kls = [row["kl"] for row in self.history if previous < row["step"] <= step]
        return float(np.mean(kls)) if kls else 0.0

    # ---- checkpoints -------------------------------------------------------------------------------

    def _last_dir(self) -> Path:
        return self.checkpoint_dir / "last"

    def save_checkpoint(self) -> Path:
        """checkpoint_dir/last: adapter, value head, optimizer, controller, reward stats, RNG, history.

        Swapped in whole (ml.io.atomic_folder), so a crash leaves the previous one. Every rank holds the
        same state (under FSDP each a shard of it, gathered here), so rank 0 alone writes it; the others
        wait until it is there."""
        if self.checkpoint_dir is None:
            raise ValueError("no checkpoint_dir")
        state = {
            "step": self.step_count,
            "kl_controller": self.kl_ctl.state_dict(),
            "reward_stats": self.reward_stats.state_dict(),
            "history": self.history,
            "eval_history": self.eval_history,
            "best_step": self.best_step,
            "best_metric": self.best_metric,
            "config": asdict(self.config),
            # A reward with state of its own (the constraint design's Lagrange multiplier) resumes too.
            "reward_state": self.reward_fn.state_dict() if hasattr(self.reward_fn, "state_dict") else None,
        }
        optimizer_state = self.dist.optimizer_state(self.model, self.optimizer)

        def write_training_state(folder: Path) -> None:
            torch.save(optimizer_state, folder / "optimizer.pt")
            torch.save(_get_rng_state(), folder / "rng_state.pt")

        return self._save_weights_atomically(self._last_dir(), extra=state, write=write_training_state)

    def _save_weights_atomically(self, final: Path, extra: dict,
                                 write: Callable[[Path], None] | None = None) -> Path:
        """Every rank calls (FSDP gathers the weights); rank 0 writes, the others wait for it."""
        adapter = self.dist.full_weights({name: p for name, p in self.policy.named_parameters() if p.requires_grad})
        value_head = self.dist.full_weights(dict(self.model.value_head.named_parameters()))

        def write_checkpoint(folder: Path) -> None:
            self.policy.save_pretrained(str(folder / "adapter"), state_dict=adapter)
            save_file(value_head, str(folder / "value_head.safetensors"))
            if write is not None:
                write(folder)
            (folder / "state.json").write_text(json.dumps(extra, indent=1, default=_json_default))

        if self.dist.is_main:
            atomic_folder(final, write_checkpoint)
        self.dist.barrier()
        return final

    def _resume(self) -> dict | None:
        """Load checkpoint_dir/last; returns the saved config, or None when there is nothing to resume."""
        if self.checkpoint_dir is None:
            return None
        folder = self._last_dir()
        interrupted = folder.with_name(folder.name + ".old")
        if not folder.exists() and interrupted.exists():
            # A save by the two-rename code before ml.io, cut between its renames: the previous
            # complete checkpoint, put back in place.
            interrupted.rename(folder)
        if not folder.exists():
            return None
        state = json.loads((folder / "state.json").read_text())
        device = str(self.device)
        adapter_weights = load_peft_weights(str(folder / "adapter"), device="cpu")
        # The adapter file names each LoRA weight without the adapter's name (peft's format).
        adapter_name = f".{self.policy.active_adapter}"
        self.dist.load_weights({name.replace(adapter_name, ""): p for name, p in self.policy.named_parameters()
                                if p.requires_grad}, adapter_weights)
        self.dist.load_weights(dict(self.model.value_head.named_parameters()),
                               load_file(str(folder / "value_head.safetensors")))
        # weights_only: tensors, numbers and containers only, never arbitrary pickled objects.
        self.dist.load_optimizer_state(self.model, self.optimizer,
                                       torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.step_count = int(state["step"])
        self.history = state["history"]
        self.eval_history = state["eval_history"]
        self.best_step, self.best_metric = state["best_step"], state["best_metric"]
        if state.get("reward_state") is not None and hasattr(self.reward_fn, "load_state_dict"):
            self.reward_fn.load_state_dict(state["reward_state"])
        _set_rng_state(torch.load(folder / "rng_state.pt", weights_only=True))
        return state["config"]


# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _get_rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and plain numbers: loadable with
    torch.load(weights_only=True), no pickled objects."""
    _, np_keys, np_pos, np_has_gauss, np_cached_gaussian = np.random.get_state()
    py_version, py_internal, py_gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_cached_gaussian),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss_next": py_gauss_next,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python_internal"].tolist()), state["python_gauss_next"]))


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _progress_line(stats: dict[str, float], step: int, steps: int, eta_seconds: float) -> str:
    """`step 12/60 reward 0.61±0.12 kl 1.3 ent 2.1 pl -0.01 vl 0.04 clip 0.05 len 23 ETA 4m`; the
    reward shown is reward_fn's raw score (P(MET)), readable across runs unlike the normalised one."""
    return (f"step {step}/{steps} reward {stats['score_mean']:.2f}±{stats['score_std']:.2f} "
            f"kl {stats['kl']:.1f} ent {stats['entropy']:.1f} pl {stats['policy_loss']:.2f} "
            f"vl {stats['value_loss']:.2f} clip {stats['clipfrac']:.2f} len {stats['answer_length']:.0f} "
            f"ETA {_format_duration(eta_seconds)}")


def _format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


__all__ = [
    "AdaptiveKLController", "FixedKLController", "PPOConfig", "PPOResult", "PPOTrainer", "PolicyWithValueHead",
    "RewardFn", "Rollout", "RunningMoments", "ValueHead", "apply_answer_penalties", "compute_gae",
    "entropy_from_logits", "explained_variance", "logprobs_from_logits", "masked_mean", "masked_var",
    "masked_whiten", "truncate_after_eos",
]
