"""Batched answer generation for a causal LM policy (base, SFT or RL-tuned adapter).

Used by the evaluation (greedy and sampled answers per prompt) and by anything that needs rollouts
outside a TRL trainer. Prompts are left-padded so every row's continuation starts in the same
column, and only the newly generated tokens are decoded.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_texts: list[str],
                     max_new_tokens: int, do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                     num_return_sequences: int = 1, batch_size: int = 16, seed: int | None = None,
                     max_prompt_tokens: int | None = None) -> list[str]:
    """Answers to already-rendered prompts (see `ml.policy.prompts.chat_text`), in prompt order:
    `num_return_sequences` consecutive answers per prompt. `seed` makes sampling reproducible without
    touching the caller's global RNG; `max_prompt_tokens` truncates long prompts from the left, so
    the end of the prompt (where the answer starts) is kept."""
    if not prompt_texts:
        return []
    # Padding and truncation sides are tokenizer state shared with trainers; set them for this call only.
    saved_sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    rng = torch.random.fork_rng(devices=_cuda_devices(model)) if seed is not None else contextlib.nullcontext()
    answers: list[str] = []
    try:
        with rng, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompt_texts), batch_size):
                batch = tokenizer(prompt_texts[start:start + batch_size], return_tensors="pt", padding=True,
                                  truncation=max_prompt_tokens is not None,
                                  max_length=max_prompt_tokens).to(model.device)
                output = model.generate(**batch, max_new_tokens=max_new_tokens,
                                        num_return_sequences=num_return_sequences, pad_token_id=pad_id,
                                        **sampling)  # (B * num_return_sequences, T_prompt + T_new)
                new_tokens = output[:, batch["input_ids"].shape[1]:]
                answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = saved_sides
        model.train(was_training)
    return [answer.strip() for answer in answers]


def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_texts: list[str],
                   max_new_tokens: int, batch_size: int = 16, max_prompt_tokens: int | None = None) -> list[str]:
    """The policy's single most likely answer per prompt (deterministic; used for Table-3 samples)."""
    return generate_answers(model, tokenizer, prompt_texts, max_new_tokens, do_sample=False, batch_size=batch_size,
                            max_prompt_tokens=max_prompt_tokens)


def _cuda_devices(model: PreTrainedModel) -> list[int]:
    device = model.device
    return [device.index or 0] if device.type == "cuda" else []
