"""Rollouts and per-token log-probabilities of a causal LM policy: the one path every stage shares.

PPO, RLOO, the evaluation (answers and their KL) and `rlxf recommend` all sample answers and score
answer tokens here, so the log-probabilities training optimises are the ones the report states:

- `encode_prompts` renders nothing: it tokenizes already-rendered prompts, left-padded, keeping the
  end of a prompt that is too long (where the answer starts).
- `sample_answers` prefills each distinct prompt once, copies its KV cache to the `n` answers drawn
  for it, and decodes with plain temperature sampling (or greedily). Rows that reached EOS leave the
  batch, so the cost follows the tokens actually generated. No top-k, top-p, repetition penalty or
  anything from a model's `generation_config` applies: the sampling distribution is exactly
  softmax(logits / temperature), the distribution `answer_token_stats` scores. Given `uniforms`
  (from `answer_uniforms`: one stream per answer, keyed by seed, step and the answer's place in the
  global batch) it samples by inverse CDF from those numbers instead of a shared RNG stream, so an
  answer is the same whichever process draws it and whichever other answers share its batch.
- `answer_token_stats` computes log pi(a_t | s_t) (at the sampling temperature), the entropy and
  optionally a value head's V(s_t) for every answer token, from the generated token ids (never from
  re-tokenized text). The prompt runs once per distinct prompt and its KV cache, gradients included,
  is shared by that prompt's answers: with n answers per prompt the prompt costs 1/n of a full
  forward per answer. Scoring answers with the network that sampled them (PPO's pi_old, the
  evaluation's policy), it can start from the sampling's own prompt pass (`Answers.prefill`) instead
  of running the prompts again: with grounded prompts that pass is about half of the scoring's cost.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedTokenizerBase

from ml import distributed


@dataclass
class Prefill:
    """The sampling network's pass over the prompts: their KV cache, the next-token logits (P, 1, V) and,
    if kept, the last layer's state at the last prompt position (P, 1, H)."""

    cache: DynamicCache
    logits: torch.Tensor
    states: torch.Tensor | None

    def select(self, rows: slice) -> Prefill:
        """A copy holding prompts `rows` only."""
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(torch.arange(self.logits.shape[0], device=self.logits.device)[rows])
        return Prefill(cache, self.logits[rows], None if self.states is None else self.states[rows])


@dataclass
class Answers:
    """Sampled answers: row i answers prompt i // n_per_prompt."""

    responses: torch.Tensor  # (N, R) token ids, pad after the first EOS
    response_mask: torch.Tensor  # (N, R) 1 up to and including the first EOS
    has_eos: torch.Tensor  # (N,) bool: the answer ended within the token budget
    n_per_prompt: int
    prefill: Prefill | None = None  # the prompts' pass, when sampling was asked to keep it


@dataclass
class TokenStats:
    logprobs: torch.Tensor  # (N, R) log pi(a_t | s_t) at the sampling temperature
    entropy: torch.Tensor | None  # (N, R) H(pi(. | s_t)), when asked for
    values: torch.Tensor | None  # (N, R) V(s_t), with a value head


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompt_texts: list[str], max_prompt_tokens: int = 0,
                   add_special_tokens: bool = True, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids (P, L) and mask (P, L); a prompt longer than `max_prompt_tokens` keeps
    its last tokens (0 = no limit)."""
    encoded = tokenizer(list(prompt_texts), padding=True, padding_side="left", add_special_tokens=add_special_tokens,
                        return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if max_prompt_tokens and ids.shape[1] > max_prompt_tokens:
        ids, mask = ids[:, -max_prompt_tokens:], mask[:, -max_prompt_tokens:]
        # Cut rows whose only padding was removed stay valid; rows that are all padding cannot happen.
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def eos_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation EOS ids (an
    instruct model's end-of-turn token is often only the latter)."""
    ids = {tokenizer.eos_token_id}
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    ids.discard(None)
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return sorted(ids)


def no_grad():
    """`torch.inference_mode()`, but plain no_grad under FSDP: the weights it gathers into reused buffers
    must stay usable by the training's forward passes outside inference mode."""
    return torch.no_grad() if distributed.current().sharded else torch.inference_mode()


def answer_mask(responses: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (N, R): 1 up to and including the first EOS, has_eos (N,)); a row without EOS keeps
    all R tokens."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))  # (N, R)
    has_eos = is_eos.any(dim=1)
    R = responses.shape[1]
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, R - 1, dtype=torch.long))
    mask = (torch.arange(R, device=responses.device).unsqueeze(0) <= first_eos.unsqueeze(1)).long()
    return mask, has_eos


def _prefill(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, hidden: bool):
    return model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                 cache=DynamicCache(), use_cache=True, logits_to_keep=1, output_hidden_states=hidden)


def answer_uniforms(seed: int, step: int, first_answer: int, n_answers: int, max_new_tokens: int) -> torch.Tensor:
    """(n_answers, max_new_tokens) uniform numbers in [0, 1) for answers first_answer.. of one
    step's global batch: each row comes from its own generator seeded by (seed, step, answer index)."""
    rows = []
    for answer in range(first_answer, first_answer + n_answers):
        key = int(np.random.SeedSequence([seed, step, answer]).generate_state(1, dtype=np.uint64)[0])
        rows.append(torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(key)))
    return torch.stack(rows)


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose CDF interval holds u, per row: probs (N, V), uniforms (N,) -> (N,). A token of
    probability 0 has an empty interval and is never drawn."""
    cdf = probs.cumsum(-1)
    u = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # scaled by the total: rounding leaves it near 1
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_answers(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *,
                   n_per_prompt: int, max_new_tokens: int, temperature: float, eos_ids: list[int],
                   pad_token_id: int, greedy: bool = False, generator: torch.Generator | None = None,
                   uniforms: torch.Tensor | None = None, keep_prefill: bool = False,
                   keep_states: bool = False) -> Answers:
    """n_per_prompt answers per prompt, sampled from softmax(logits / temperature) (argmax when
    `greedy`), each cut after its first EOS. Draws by inverse CDF from `uniforms` (N, max_new_tokens)
    when given, else from `generator` or torch's global RNG. `keep_prefill`: keep a copy of the prompt
    pass in `Answers.prefill` (with the last layer's states if `keep_states`, for a value head)."""
    if n_per_prompt < 1 or max_new_tokens < 1:
        raise ValueError("n_per_prompt and max_new_tokens must be >= 1")
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling (use greedy=True for the argmax)")
    was_training = model.training
    model.eval()
    try:
        # 1. Prefill each distinct prompt once, then give each of its answers a copy of the cache.
        output = _prefill(model, prompt_ids, prompt_mask, hidden=keep_prefill and keep_states)
        cache = output.cache
        logits = output.logits[:, -1]  # (P, V)
        prefill = (Prefill(copy.deepcopy(cache), output.logits[:, -1:],
                           output.hidden_states[-1][:, -1:] if keep_states else None) if keep_prefill else None)
        mask = prompt_mask
        next_position = mask.long().sum(-1)  # (P,) the first answer token's position
        if n_per_prompt > 1:
            cache.batch_repeat_interleave(n_per_prompt)
            logits = logits.repeat_interleave(n_per_prompt, dim=0)
            mask = mask.repeat_interleave(n_per_prompt, dim=0)
            next_position = next_position.repeat_interleave(n_per_prompt, dim=0)
        N = logits.shape[0]
        eos = torch.tensor(eos_ids, device=logits.device)
        responses = torch.full((N, max_new_tokens), pad_token_id, dtype=torch.long, device=logits.device)
        active = torch.arange(N, device=logits.device)  # rows still generating
        # Under FSDP every rank runs each forward pass (they gather the weights together): rows stay in
        # the batch after their EOS and decoding stops when every rank's rows are done.
        dist = distributed.current()
        finished = torch.zeros(N, dtype=torch.bool, device=logits.device)
        # 2. Decode; rows that produced EOS leave the batch (and the cache).
        for t in range(max_new_tokens):
            if greedy:
                tokens = logits.argmax(-1)
            else:
                probs = F.softmax(logits.float() / temperature, dim=-1)
                if uniforms is None:
                    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                else:
                    tokens = inverse_cdf_sample(probs, uniforms[active.cpu(), t])
            responses[active, t] = tokens
            if t == max_new_tokens - 1:
                break
            running = ~torch.isin(tokens, eos)
            if dist.sharded:
                finished |= ~running
                if dist.sum((~finished).sum()).item() == 0:
                    break
                running = torch.ones_like(running)
            if not running.all():
                if not running.any():
                    break
                keep = running.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                active, tokens, mask, next_position = active[keep], tokens[keep], mask[keep], next_position[keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            output = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask,
                           position_ids=next_position.unsqueeze(-1), cache=cache, use_cache=True)
            cache, logits = output.cache, output.logits[:, -1]
            next_position = next_position + 1
    finally:
        model.train(was_training)
    response_mask, has_eos = answer_mask(responses, eos_ids)
    return Answers(responses.masked_fill(response_mask == 0, pad_token_id), response_mask, has_eos, n_per_prompt,
                   prefill)


def trim_answers(responses: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns no answer uses, so scoring pays only for real tokens."""
    width = max(int(response_mask.sum(dim=1).max().item()), 1)
    return responses[:, :width], response_mask[:, :width]


def answer_token_stats(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       responses: torch.Tensor, response_mask: torch.Tensor, temperature: float, *,
                       entropy: bool = False, value_head: torch.nn.Module | None = None,
                       answers_per_prompt: torch.Tensor | None = None, prefill: Prefill | None = None
                       ) -> TokenStats:
    """log pi(a_t | s_t), optionally H(pi(. | s_t)) and V(s_t), for every answer token (N, R).

    Answers come grouped by prompt: N // P per prompt, or `answers_per_prompt[i]` for prompt i (SFT
    targets). Gradients flow when called outside no_grad (through the shared prompt cache too).
    Position t reads the state just before answer token t: the last prompt position for t = 0, answer
    token t - 1 after that. `prefill`: these prompts' pass by this same network (from sampling), used
    instead of running them again; never for another network, such as the reference."""
    P, N, R = prompt_ids.shape[0], responses.shape[0], responses.shape[1]
    if R == 1 and distributed.current().sharded:
        # FSDP: every rank must run the answer forward pass below, so a one-token batch gets a second,
        # masked column, cut off again.
        stats = answer_token_stats(model, prompt_ids, prompt_mask, F.pad(responses, (0, 1)),
                                   F.pad(response_mask, (0, 1)), temperature, entropy=entropy,
                                   value_head=value_head, answers_per_prompt=answers_per_prompt, prefill=prefill)
        return TokenStats(*(None if x is None else x[:, :1] for x in (stats.logprobs, stats.entropy, stats.values)))
    if answers_per_prompt is None:
        if N % P:
            raise ValueError(f"{N} answers cannot be split evenly over {P} prompts")
        repeats: int | torch.Tensor = N // P
    else:
        repeats = torch.as_tensor(answers_per_prompt, device=prompt_ids.device)
        if int(repeats.sum()) != N or len(repeats) != P:
            raise ValueError(f"answers_per_prompt {repeats.tolist()} does not match {P} prompts and {N} answers")
    hidden = value_head is not None
    if prefill is None:
        output = _prefill(model, prompt_ids, prompt_mask, hidden=hidden)
        cache = output.cache
        logits = output.logits[:, -1:]  # (P, 1, V)
        states = output.hidden_states[-1][:, -1:] if hidden else None  # (P, 1, H)
    else:
        if hidden and prefill.states is None:
            raise ValueError("a value head needs the prompt states: sample with keep_states=True")
        if prefill.logits.shape[0] != P:
            raise ValueError(f"the prefill holds {prefill.logits.shape[0]} prompts, not {P}")
        cache, logits = copy.deepcopy(prefill.cache), prefill.logits  # the copy is what the answers extend
        states = prefill.states if hidden else None
    mask, next_position = prompt_mask, prompt_mask.long().sum(-1, keepdim=True)  # (P, L), (P, 1)
    if not (isinstance(repeats, int) and repeats == 1):
        cache.batch_repeat_interleave(repeats)  # each prompt's keys and values, once per answer
        logits, mask, next_position = (x.repeat_interleave(repeats, dim=0) for x in (logits, mask, next_position))
        states = states.repeat_interleave(repeats, dim=0) if hidden else None
    if R > 1:
        # Answer tokens 0..R-2 predict tokens 1..R-1 (and give the states before them).
        inputs = responses[:, :-1]
        rest = model(input_ids=inputs, attention_mask=torch.cat([mask, response_mask[:, :-1]], dim=1),
                     position_ids=next_position + torch.arange(R - 1, device=inputs.device),
                     cache=cache, use_cache=True, output_hidden_states=hidden)
        logits = torch.cat([logits, rest.logits], dim=1)  # (N, R, V)
        if hidden:
            states = torch.cat([states, rest.hidden_states[-1]], dim=1)  # (N, R, H)
    logits = logits.float() / temperature
    log_softmax = F.log_softmax(logits, dim=-1)
    logprobs = log_softmax.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    token_entropy = -(log_softmax.exp() * log_softmax).sum(-1) if entropy else None
    values = value_head(states) if hidden else None
    return TokenStats(logprobs=logprobs, entropy=token_entropy, values=values)


# ---------------------------------------------------------------------------------------------
# Batched generation from rendered prompt texts (evaluation, recommend, evaluate callbacks)


@dataclass
class SampledBatch:
    """One batch of prompts and the answers sampled for them, as token ids."""

    prompt_ids: torch.Tensor  # (P, L)
    prompt_mask: torch.Tensor  # (P, L)
    answers: Answers  # (P * n, R)


def generate_batches(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompt_texts: list[str], *,
                     max_new_tokens: int, temperature: float = 1.0, n_per_prompt: int = 1, greedy: bool = False,
                     max_prompt_tokens: int = 0, seed: int | None = None, batch_size: int = 16,
                     keep_prefill: bool = False) -> list[SampledBatch]:
    """Answers to already-rendered prompts (`ml.policy.prompts.chat_text`), `batch_size` prompts at a
    time; `seed` makes sampling reproducible without touching the caller's RNG. `keep_prefill`: keep
    each batch's prompt pass, for `answer_logprob_sums(..., prompts_sampled_by_model=batches)`."""
    device = next(model.parameters()).device
    eos_ids, pad_id = eos_token_ids(model, tokenizer), tokenizer.pad_token_id
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    batches = []
    with no_grad():
        for start in range(0, len(prompt_texts), batch_size):
            ids, mask = encode_prompts(tokenizer, prompt_texts[start:start + batch_size], max_prompt_tokens,
                                       device=device)
            answers = sample_answers(model, ids, mask, n_per_prompt=n_per_prompt, max_new_tokens=max_new_tokens,
                                     temperature=temperature, eos_ids=eos_ids, pad_token_id=pad_id, greedy=greedy,
                                     generator=generator, keep_prefill=keep_prefill)
            batches.append(SampledBatch(ids, mask, answers))
    return batches


def decode_answers(tokenizer: PreTrainedTokenizerBase, batches: list[SampledBatch]) -> list[str]:
    """The answers' text (special tokens dropped), in prompt order: n consecutive answers per prompt."""
    texts = []
    for batch in batches:
        ids = [row[mask.bool()].tolist() for row, mask in zip(batch.answers.responses, batch.answers.response_mask)]
        texts.extend(text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True))
    return texts


def least_likely_words(tokenizer: PreTrainedTokenizerBase, batches: list[SampledBatch],
                       logprobs: list[np.ndarray]) -> list[tuple[str, float]]:
    """For each answer (`logprobs` from `answer_logprobs`), the word around its least likely token, and that
    token's log-probability: where a sampled answer may have slipped (`ml.evaluation.metrics.is_slip`);
    the word is "" for the EOS."""
    found = []
    rows = [row[mask.bool()].tolist() for batch in batches
            for row, mask in zip(batch.answers.responses, batch.answers.response_mask)]
    for ids, token_logprobs in zip(rows, logprobs):
        k = int(np.argmin(token_logprobs))
        text = tokenizer.decode(ids[:k + 1], skip_special_tokens=True)
        start = len(tokenizer.decode(ids[:k], skip_special_tokens=True))
        full = tokenizer.decode(ids, skip_special_tokens=True)
        if start >= len(text):  # a special token (EOS)
            found.append(("", float(token_logprobs[k])))
            continue
        end = len(text)
        while start > 0 and (full[start - 1].isalnum() or full[start - 1] in "-'") and not full[start].isspace():
            start -= 1
        while end < len(full) and (full[end].isalnum() or full[end] in "-'"):
            end += 1
        found.append((full[start:end].strip().strip("()[]{}.,;:\"'"), float(token_logprobs[k])))
    return found


def answer_logprobs(model: torch.nn.Module, batches: list[SampledBatch], temperature: float,
                    prompts_sampled_by_model: list[SampledBatch] | None = None) -> list[np.ndarray]:
    """log π(a_t | s_t) of each answer's tokens (its EOS included), at `temperature`, one array per answer.
    `prompts_sampled_by_model`: batches `model` itself sampled (unchanged since) from the same prompts,
    batched alike, whose kept prompt passes are reused: `batches` themselves when `model` sampled them, or
    the base's own answers when the base scores another policy's answers to the evaluation's prompts."""
    if prompts_sampled_by_model is not None and len(prompts_sampled_by_model) != len(batches):
        raise ValueError(f"{len(prompts_sampled_by_model)} sampled batches for {len(batches)} batches of answers")
    per_answer = []
    with no_grad():
        for i, batch in enumerate(batches):
            answers, prefill = batch.answers, None
            if prompts_sampled_by_model is not None:
                sampled = prompts_sampled_by_model[i]
                if sampled.answers.prefill is None:
                    raise ValueError("no prompt pass was kept: generate the batches with keep_prefill=True")
                if not (torch.equal(sampled.prompt_ids, batch.prompt_ids)
                        and torch.equal(sampled.prompt_mask, batch.prompt_mask)):
                    raise ValueError(f"batch {i} holds other prompts than the batch whose prompt pass was kept")
                prefill = sampled.answers.prefill
            responses, response_mask = trim_answers(answers.responses, answers.response_mask)
            stats = answer_token_stats(model, batch.prompt_ids, batch.prompt_mask, responses, response_mask,
                                       temperature, prefill=prefill)
            logprobs, mask = stats.logprobs.float().cpu().numpy(), response_mask.bool().cpu().numpy()
            per_answer.extend(row[keep] for row, keep in zip(logprobs, mask))
    return per_answer


def answer_logprob_sums(model: torch.nn.Module, batches: list[SampledBatch], temperature: float,
                        prompts_sampled_by_model: list[SampledBatch] | None = None) -> np.ndarray:
    """Σ_t log π(a_t | s_t) over each answer's tokens (its EOS included), at `temperature`: the
    per-answer log-likelihood whose difference between two policies is the KL estimate PPO uses."""
    return logprob_sums(answer_logprobs(model, batches, temperature, prompts_sampled_by_model))


def logprob_sums(per_answer: list[np.ndarray]) -> np.ndarray:
    """Each answer's log-likelihood from its per-token log-probabilities (`answer_logprobs`)."""
    return np.array([row.sum() for row in per_answer], dtype=float)


def answer_lengths(batches: list[SampledBatch]) -> np.ndarray:
    """Tokens per answer, its EOS included."""
    return np.concatenate([b.answers.response_mask.sum(-1).cpu().numpy() for b in batches]) if batches else np.zeros(0)


def generate_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompt_texts: list[str],
                     max_new_tokens: int, do_sample: bool = True, temperature: float = 1.0,
                     num_return_sequences: int = 1, batch_size: int = 16, seed: int | None = None,
                     max_prompt_tokens: int | None = None) -> list[str]:
    """The answers' text: `num_return_sequences` consecutive answers per prompt, sampled at
    `temperature` (greedy when not `do_sample`)."""
    batches = generate_batches(model, tokenizer, prompt_texts, max_new_tokens=max_new_tokens,
                               temperature=temperature, n_per_prompt=num_return_sequences, greedy=not do_sample,
                               max_prompt_tokens=max_prompt_tokens or 0, seed=seed, batch_size=batch_size)
    return decode_answers(tokenizer, batches)


def greedy_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompt_texts: list[str],
                   max_new_tokens: int, batch_size: int = 16, max_prompt_tokens: int | None = None) -> list[str]:
    """The policy's single most likely answer per prompt (deterministic; used for Table-3 samples)."""
    return generate_answers(model, tokenizer, prompt_texts, max_new_tokens, do_sample=False, batch_size=batch_size,
                            max_prompt_tokens=max_prompt_tokens)
