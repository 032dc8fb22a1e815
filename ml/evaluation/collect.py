"""Answers to the held-out prompts from every policy, scored by the proxy and the gold reward models.

Produces the `answers` table the report is built from: one row per (policy, prompt, sample) with the
cleaned condition, its proxy and gold P(MET), its length and its KL to the base policy. The KL of an
answer y sampled from π is estimated as log π(y|x) - log π_base(y|x) (the k1 estimator, unbiased for
KL(π || π_base) in expectation). Two reference policies need no model: `random` (a historical
condition drawn at random, ignoring the prompt) and `historical` (the real MET conditions recorded
for the prompt's country, arrangement and area, where they exist).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.config import PolicySettings
from ml.policy.generate import generate_answers
from ml.policy.pipeline import load_policy, prompt_records
from ml.policy.prompts import KEY_COLUMNS, answer_to_condition
from ml.reward.model import RewardModel

Progress = Callable[[str], None]
ANSWER_COLUMNS = ["policy", "prompt_id", "country", "arrangement_type", "economic_area", "prompt", "answer",
                  "proxy_reward", "gold_reward", "kl_to_base", "n_tokens"]


@torch.inference_mode()
def answer_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_texts: list[str],
                    answers: list[str], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log-probabilities of each answer's tokens given its prompt, and the answer lengths."""
    totals, lengths = [], []
    for start in range(0, len(answers), batch_size):
        prompts, outs = prompt_texts[start:start + batch_size], answers[start:start + batch_size]
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in outs]
        width = max(len(p) + len(a) for p, a in zip(prompt_ids, answer_ids))
        pad = tokenizer.pad_token_id
        ids = torch.full((len(outs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(outs), width), dtype=torch.long)
        target = torch.zeros((len(outs), width), dtype=torch.bool)
        for row, (p, a) in enumerate(zip(prompt_ids, answer_ids)):
            sequence = p + a
            ids[row, width - len(sequence):] = torch.tensor(sequence)  # left padding, as in generation
            mask[row, width - len(sequence):] = 1
            target[row, width - len(a):] = True
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                       position_ids=positions.to(model.device)).logits.float().cpu()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        selected = target[:, 1:]
        totals.extend((logprobs * selected).sum(-1).tolist())
        lengths.extend(selected.sum(-1).tolist())
    return np.array(totals), np.array(lengths)


def model_answers(name: str, model: PreTrainedModel, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  prompts: pd.DataFrame, settings: PolicySettings, samples: int, seed: int,
                  temperature: float) -> pd.DataFrame:
    records = prompt_records(prompts, tokenizer)
    texts = [r["prompt_text"] for r in records]
    raw = generate_answers(model, tokenizer, texts, settings.max_new_tokens, temperature=temperature,
                           num_return_sequences=samples, seed=seed, max_prompt_tokens=settings.max_prompt_tokens)
    repeated = [text for text in texts for _ in range(samples)]
    policy_lp, lengths = answer_logprobs(model, tokenizer, repeated, raw)
    base_lp, _ = answer_logprobs(base, tokenizer, repeated, raw) if model is not base else (policy_lp, None)
    frame = prompts.loc[prompts.index.repeat(samples), ["prompt_id", *KEY_COLUMNS, "prompt"]].reset_index(drop=True)
    return frame.assign(policy=name, answer=[answer_to_condition(a) for a in raw],
                        kl_to_base=policy_lp - base_lp if model is not base else np.nan, n_tokens=lengths)


def reference_answers(prompts: pd.DataFrame, corpus: pd.DataFrame, samples: int, seed: int) -> pd.DataFrame:
    """`random`: any historical condition; `historical`: the MET conditions of the same combination."""
    rng = np.random.default_rng(seed)
    base = prompts.loc[prompts.index.repeat(samples), ["prompt_id", *KEY_COLUMNS, "prompt"]].reset_index(drop=True)
    random_rows = base.assign(policy="random", answer=corpus["description"].to_numpy()[
        rng.integers(0, len(corpus), len(base))])
    met = corpus[corpus["is_met"] == 1]
    keyed = met.groupby([met[c].fillna("") for c in KEY_COLUMNS])["description"].apply(list).to_dict()
    rows = []
    for prompt in prompts.itertuples(index=False):
        found = keyed.get(tuple("" if pd.isna(getattr(prompt, c)) else getattr(prompt, c) for c in KEY_COLUMNS), [])
        for text in rng.permutation(found)[:samples] if found else []:
            rows.append({"prompt_id": prompt.prompt_id, **{c: getattr(prompt, c) for c in KEY_COLUMNS},
                         "prompt": prompt.prompt, "policy": "historical", "answer": text})
    historical = pd.DataFrame(rows, columns=[*base.columns, "policy", "answer"])
    return pd.concat([random_rows, historical], ignore_index=True).assign(kl_to_base=np.nan, n_tokens=np.nan)


def score_answers(answers: pd.DataFrame, proxy: RewardModel, gold: RewardModel) -> pd.DataFrame:
    rows = answers.rename(columns={"answer": "description"})[[*KEY_COLUMNS, "description"]]
    return answers.assign(proxy_reward=proxy.score(rows), gold_reward=gold.score(rows))


def collect_answers(prompts: pd.DataFrame, corpus: pd.DataFrame, policies: dict[str, Path | None],
                    settings: PolicySettings, cache_dir: Path, proxy: RewardModel, gold: RewardModel,
                    samples: int = 2, seed: int = 0, temperature: float = 0.8,
                    progress: Progress = print) -> pd.DataFrame:
    """`policies` maps a name to a saved policy stack folder (None = the base model itself)."""
    base, tokenizer = load_policy(None, settings, cache_dir)
    frames = [reference_answers(prompts, corpus, samples, seed)]
    for name, folder in policies.items():
        model = base if folder is None else load_policy(folder, settings, cache_dir)[0]
        frames.append(model_answers(name, model, base, tokenizer, prompts, settings, samples, seed, temperature))
        progress(f"{name}: {len(prompts) * samples} answers generated")
    answers = pd.concat(frames, ignore_index=True)
    return score_answers(answers, proxy, gold)[ANSWER_COLUMNS]
