"""Answers to the held-out prompts from every policy, scored by the RL reward's parts and both judges.

Produces the `answers` table the report is built from: one row per (policy, prompt, sample) with the
condition cut out of the answer, its proxy and gold P(MET), the gold side's P(asked area | answer),
the judged reward (gold P(MET) x P(asked area)), its length, the log-probability of its least likely token
(a slip of sampling below `ml.evaluation.metrics.SLIP_BELOW`) and two KL estimates, all computed by
`ml.policy.sampling` from the generated token ids at the sampling temperature, exactly as RL computes
them: `kl_to_reference` (to the policy's own RL reference: the SFT policy for an RL stack, the base
for SFT) and `kl_to_base`. The per-answer KL of y ~ pi is log pi(y|x) - log pi_ref(y|x) (the k1
estimator, unbiased for KL(pi || pi_ref) in expectation). Two reference policies need no model:
`random` (a historical condition drawn at random, ignoring the prompt) and `historical` (the real MET
conditions recorded for the prompt's country, arrangement and area, where they exist).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.config import PolicySettings
from ml.policy.pipeline import load_policy, prompt_records
from ml.policy.prompts import KEY_COLUMNS, answer_to_condition
from ml.policy.sampling import (
    SampledBatch,
    answer_lengths,
    answer_logprob_sums,
    answer_logprobs,
    decode_answers,
    generate_batches,
    logprob_sums,
)
from ml.reward.rl_reward import RLReward
from ml.reward.topic import area_key, covered_keys

Progress = Callable[[str], None]
ANSWER_COLUMNS = ["policy", "prompt_id", "country", "arrangement_type", "economic_area", "prompt", "answer",
                  "proxy_reward", "gold_reward", "gold_p_area", "judged_reward", "kl_to_reference", "kl_to_base",
                  "n_tokens", "least_token_logprob"]


def sample_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame,
                  settings: PolicySettings, samples: int, seed: int) -> list[SampledBatch]:
    """`samples` answers per prompt from `model`, as token ids, with the prompt passes kept."""
    texts = [r["prompt_text"] for r in prompt_records(prompts, tokenizer)]
    return generate_batches(model, tokenizer, texts, max_new_tokens=settings.max_new_tokens,
                            temperature=settings.temperature, n_per_prompt=samples, seed=seed,
                            max_prompt_tokens=settings.max_prompt_tokens, keep_prefill=True)


def model_answers(name: str, model: PreTrainedModel, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  prompts: pd.DataFrame, settings: PolicySettings, samples: int, seed: int,
                  reference_is_base: bool = False, batches: list[SampledBatch] | None = None,
                  base_batches: list[SampledBatch] | None = None) -> pd.DataFrame:
    """`samples` answers per prompt from `model`, with their KL to its RL reference (the same network
    with its last adapter off, when it has one; else the base) and to `base`. `reference_is_base`: that
    network is the base (a single adapter on it, as SFT's), so its pass is the base's. `batches`: the
    answers already sampled by `sample_policy`; `base_batches`: the base's own, whose prompt passes the
    base's scoring of these answers reuses (the prompts are the same)."""
    temperature = settings.temperature
    batches = batches if batches is not None else sample_policy(model, tokenizer, prompts, settings, samples, seed)
    raw = decode_answers(tokenizer, batches)
    token_lp = answer_logprobs(model, batches, temperature, prompts_sampled_by_model=batches)
    policy_lp = logprob_sums(token_lp)
    base_lp = policy_lp if model is base else answer_logprob_sums(base, batches, temperature,
                                                                  prompts_sampled_by_model=base_batches)
    with model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext():
        reference_lp = (answer_logprob_sums(model, batches, temperature)
                        if isinstance(model, PeftModel) and not reference_is_base else base_lp)
    frame = prompts.loc[prompts.index.repeat(samples), ["prompt_id", *KEY_COLUMNS, "prompt"]].reset_index(drop=True)
    return frame.assign(policy=name, answer=[answer_to_condition(a) for a in raw],
                        kl_to_reference=policy_lp - reference_lp, kl_to_base=policy_lp - base_lp,
                        n_tokens=answer_lengths(batches), least_token_logprob=[row.min() for row in token_lp])


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
    return pd.concat([random_rows, historical], ignore_index=True).assign(
        kl_to_reference=np.nan, kl_to_base=np.nan, n_tokens=np.nan, least_token_logprob=np.nan)


def score_answers(answers: pd.DataFrame, reward: RLReward) -> pd.DataFrame:
    records = answers[KEY_COLUMNS].to_dict("records")
    parts = reward.components(records, answers["answer"].fillna("").astype(str).tolist())
    return answers.assign(proxy_reward=parts["proxy_p_met"].to_numpy(), gold_reward=parts["gold_p_met"].to_numpy(),
                          gold_p_area=parts["gold_p_area"].to_numpy(), judged_reward=parts["judged_reward"].to_numpy())


def collect_answers(prompts: pd.DataFrame, corpus: pd.DataFrame,
                    policies: dict[str, Callable[[], PreTrainedModel] | None], settings: PolicySettings,
                    cache_dir: Path, reward: RLReward, samples: int = 2, seed: int = 0,
                    progress: Progress = print, base_referenced: frozenset[str] = frozenset()) -> pd.DataFrame:
    """`policies` maps a name to a function that loads that policy (None = the base model itself); each
    is loaded when its turn comes, so one tuned policy at a time is in memory. `base_referenced`: the
    policies whose RL reference is the base model (one adapter on it)."""
    base, tokenizer = load_policy(None, settings, cache_dir)
    frames = [reference_answers(prompts, corpus, samples, seed)]
    # The base's prompt passes, kept from its own answers: every other policy's answers to the same
    # prompts are scored by the base too (their KL to it), and that pass over long grounded prompts is
    # the larger part of the scoring.
    base_batches = (sample_policy(base, tokenizer, prompts, settings, samples, seed)
                    if any(load is None for load in policies.values()) else None)
    for name, load in policies.items():
        model = base if load is None else load()
        frames.append(model_answers(name, model, base, tokenizer, prompts, settings, samples, seed,
                                    reference_is_base=name in base_referenced,
                                    batches=base_batches if load is None else None, base_batches=base_batches))
        progress(f"{name}: {len(prompts) * samples} answers generated")
    answers = pd.concat(frames, ignore_index=True)
    return score_answers(answers, reward)[ANSWER_COLUMNS]


def attainable_ceiling(prompts: pd.DataFrame, corpus: pd.DataFrame, reward: RLReward, per_area: int = 60,
                       seed: int = 0) -> pd.Series:
    """Per prompt_id, the best judged reward among real conditions of the asked area or its sub-areas
    (`covered_keys`; up to `per_area` distinct training conditions of each area, MET ones first), each
    re-scored as if proposed in that prompt's country and arrangement: how high a policy that picked the
    best historical condition for every prompt would score."""
    usable = corpus.dropna(subset=["description"]).assign(_key=corpus["economic_area"].map(area_key))
    # A seeded order with the MET conditions first, one row per distinct condition of an area.
    usable = usable.sample(frac=1.0, random_state=seed).sort_values("is_met", ascending=False, kind="stable")
    usable = usable.drop_duplicates(["_key", "description"])
    candidates = usable.groupby("_key")["description"].apply(lambda d: d.head(per_area).tolist()).to_dict()
    records, texts, owners = [], [], []
    for prompt in prompts.itertuples(index=False):
        area_texts = [t for key in sorted(covered_keys(prompt.economic_area)) for t in candidates.get(key, [])]
        for text in area_texts:
            records.append({c: getattr(prompt, c) for c in KEY_COLUMNS})
            texts.append(str(text))
            owners.append(prompt.prompt_id)
    if not texts:
        return pd.Series(dtype=float)
    return pd.Series(reward.judged_conditions(records, texts), index=owners).groupby(level=0).max()
