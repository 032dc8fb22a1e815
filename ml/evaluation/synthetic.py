"""Evaluation inputs with a known answer, for tests and for previewing the report without models.

`synthetic_inputs` builds what the caller normally produces by generating and scoring answers: a
training corpus of conditions in a handful of economic areas, held-out prompts, every policy's
answers with proxy and gold rewards drawn around chosen means, PPO training curves and a promotion
decision. The means are parameters, so a test knows what the report must say: with `ppo_gold_gain=0`
PPO gains on the proxy only (over-optimisation); with a positive one the gold reward confirms it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Economic area -> words its conditions use: enough for the area classifier to tell them apart.
AREA_WORDS: dict[str, tuple[str, ...]] = {
    "Revenue measures, excluding trade policy": ("tax", "vat", "excise", "revenue", "exemptions"),
    "Expenditure measures, including arrears clearance": ("arrears", "spending", "expenditure", "payments",
                                                          "wage bill"),
    "Budget preparation (e.g., submission or approval)": ("budget", "parliament", "appropriation",
                                                          "medium-term framework", "budget law"),
    "Trade policy (excluding customs reforms)": ("tariff", "import", "export", "quota", "trade regime"),
    "Exchange system and restrictions": ("exchange rate", "currency", "foreign exchange", "surrender",
                                         "multiple currency practice"),
    "Financial sector legal reforms, regulation, and supervision": ("bank", "supervision", "prudential",
                                                                    "capital adequacy", "banking law"),
    "Central bank operations and reforms": ("central bank", "monetary", "reserves", "open market",
                                            "central bank law"),
    "Pension reforms": ("pension", "retirement age", "contribution", "pension fund", "benefits"),
    "Public enterprise restructuring and privatization": ("state-owned enterprise", "privatization",
                                                          "enterprise", "restructuring plan", "divestiture"),
}
VERBS = ("Adopt", "Submit", "Implement", "Approve", "Publish", "Prepare", "Complete", "Establish")
OBJECTS = ("action plan", "decree", "strategy", "audit", "reform", "regulation", "report", "law")
COUNTRIES = ("GABON", "URUGUAY", "KENYA", "PAKISTAN", "JAMAICA", "GEORGIA", "ZAMBIA", "EGYPT")
ARRANGEMENTS = ("ECF", "SBA", "EFF")


@dataclass
class EvaluationInputs:
    answers: pd.DataFrame
    corpus: pd.DataFrame
    training_curves: pd.DataFrame
    promotion: dict


def condition_text(rng: np.random.Generator, area: str) -> str:
    """A condition in the MONA style whose content words come from `area`."""
    words = rng.choice(AREA_WORDS[area], size=2, replace=False)
    return (f"{rng.choice(VERBS)} the {words[0]} {rng.choice(OBJECTS)} to strengthen {words[1]} "
            f"by {rng.choice(['end-June', 'end-December', 'end-March', 'end-September'])} {rng.integers(2000, 2024)}")


def synthetic_inputs(seed: int = 0, n_prompts: int = 36, samples_per_prompt: int = 2, corpus_size: int = 360,
                     ppo_proxy_gain: float = 0.15, ppo_gold_gain: float = 0.10, sd: float = 0.08,
                     prompt_sd: float = 0.12) -> EvaluationInputs:
    """Answers of base, sft, ppo, random and historical policies to `n_prompts` prompts.

    Rewards are `clip(mean + prompt effect + noise)` with a prompt effect (sd `prompt_sd`) shared by
    all policies on a prompt, as real prompts differ in difficulty. Base and random sit at 0.45 on
    both rewards; SFT a little higher; PPO `ppo_proxy_gain` above base on the proxy and
    `ppo_gold_gain` on the gold reward. PPO answers stay on the asked area, base answers drift to
    other areas a third of the time, random ones are corpus conditions (copies by construction).
    """
    rng = np.random.default_rng(seed)
    areas = list(AREA_WORDS)
    corpus_areas = [areas[i % len(areas)] for i in range(corpus_size)]
    corpus = pd.DataFrame({
        "description": [condition_text(rng, area) for area in corpus_areas],
        "economic_area": corpus_areas,
        "country": rng.choice(COUNTRIES, size=corpus_size),
        "is_met": rng.integers(0, 2, size=corpus_size),
        "test_year": rng.integers(2000, 2020, size=corpus_size),
    })
    prompts = pd.DataFrame({
        "prompt_id": [f"p{i:03d}" for i in range(n_prompts)],
        "country": [COUNTRIES[i % len(COUNTRIES)] for i in range(n_prompts)],
        "arrangement_type": [ARRANGEMENTS[i % len(ARRANGEMENTS)] for i in range(n_prompts)],
        "economic_area": [areas[i % len(areas)] for i in range(n_prompts)],
    })
    prompts["prompt"] = [f"Given the economic indicators and historical performance of {c}, what would be an "
                         f"appropriate policy proposal under the {a} arrangement for achieving {e}? "
                         f"Describe the proposed condition." for c, a, e in
                         prompts[["country", "arrangement_type", "economic_area"]].itertuples(index=False)]
    prompt_effect = dict(zip(prompts["prompt_id"], rng.normal(0, prompt_sd, n_prompts)))
    # policy -> (proxy mean, gold mean, KL mean or NaN, share of answers on the asked area)
    means = {"base": (0.45, 0.45, math.nan, 0.67), "sft": (0.50, 0.48, 1.0, 0.85),
             "ppo": (0.45 + ppo_proxy_gain, 0.45 + ppo_gold_gain, 4.0, 1.0),
             "random": (0.45, 0.45, math.nan, None), "historical": (0.55, 0.55, math.nan, 1.0)}
    rows = []
    for prompt in prompts.itertuples(index=False):
        for policy, (proxy_mean, gold_mean, kl_mean, on_area) in means.items():
            for sample in range(samples_per_prompt):
                if on_area is None:
                    answer = str(corpus["description"].iloc[rng.integers(len(corpus))])
                else:
                    area = prompt.economic_area if rng.random() < on_area else str(rng.choice(areas))
                    answer = condition_text(rng, area)
                effect = prompt_effect[prompt.prompt_id] if policy != "random" else 0.0
                gold = float(np.clip(gold_mean + effect + rng.normal(0, sd), 0, 1))
                # The judge's P(asked area): high for an answer written about the area asked.
                p_area = float(np.clip((0.9 if on_area is not None and area == prompt.economic_area else 0.2)
                                       + rng.normal(0, 0.05), 0, 1))
                rows.append({
                    "policy": policy, **prompt._asdict(), "sample": sample, "answer": answer,
                    "proxy_reward": float(np.clip(proxy_mean + effect + rng.normal(0, sd), 0, 1)),
                    "gold_reward": gold, "gold_p_area": p_area, "judged_reward": gold * p_area,
                    "kl_to_base": float(rng.gamma(4.0, kl_mean / 4.0)) if math.isfinite(kl_mean) else math.nan,
                    "kl_to_reference": float(rng.gamma(4.0, kl_mean / 8.0)) if math.isfinite(kl_mean) else math.nan,
                    "n_tokens": float(len(answer.split()) + 3) if policy in ("base", "sft", "ppo") else math.nan,
                })
    steps = np.arange(0, 60)
    progress = 1 - np.exp(-steps / 20)
    curves = pd.DataFrame({"step": steps, "reward_mean": 0.45 + ppo_proxy_gain * progress + rng.normal(0, 0.01, 60),
                           "kl": 4.0 * progress, "kl_coef": np.full(60, 0.05),
                           "proxy_p_met": np.nan, "gold_p_met": np.nan, "judged_reward": np.nan})
    evaluated = curves["step"] % 10 == 9
    curves.loc[evaluated, "proxy_p_met"] = 0.45 + ppo_proxy_gain * progress[evaluated]
    curves.loc[evaluated, "gold_p_met"] = 0.45 + ppo_gold_gain * progress[evaluated]
    curves.loc[evaluated, "judged_reward"] = 0.8 * (0.45 + ppo_gold_gain * progress[evaluated])
    promotion = {"decision": "promoted" if ppo_gold_gain > 0 else "challenger", "version": "3",
                 "new_value": 0.45 + ppo_gold_gain, "champion_value": 0.5, "champion_version": "2",
                 "reason": "gold reward on the evaluation prompts against the champion's"}
    return EvaluationInputs(answers=pd.DataFrame(rows), corpus=corpus, training_curves=curves, promotion=promotion)
