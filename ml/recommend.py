"""`rlxf recommend`: proposals from the champion policy, each with its P(MET) and historical precedents.

The paper's intended use: benchmark new proposals against past experience and peer examples. Each
proposal is scored by the champion reward model and shown with the three most similar historical
conditions (TF-IDF cosine over the corpus), with their country, year and outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from ml.config import PolicySettings
from ml.data.splits import SPLITS, read_split
from ml.paths import DataHome
from ml.policy.generate import generate_answers
from ml.policy.pipeline import POLICY_ADAPTER_NAME, load_policy
from ml.policy.prompts import answer_to_condition, chat_text, render_prompt
from ml.registry import Registry
from ml.reward.pipeline import REWARD_MODEL_NAME, load_champion_reward


@dataclass
class Proposal:
    text: str
    p_met: float
    precedents: list[str]


@dataclass
class Proposals:
    header: str
    items: list[Proposal]


class PrecedentIndex:
    """Nearest historical conditions to a text, by TF-IDF cosine similarity."""

    def __init__(self, corpus: pd.DataFrame):
        self.corpus = corpus.reset_index(drop=True)
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        self.matrix = self.vectorizer.fit_transform(self.corpus["description"].fillna(""))

    def nearest(self, text: str, k: int = 3) -> pd.DataFrame:
        similarity = (self.matrix @ self.vectorizer.transform([text]).T).toarray().ravel()
        top = np.argsort(-similarity)[:k]
        return self.corpus.iloc[top].assign(similarity=similarity[top])


def describe_precedent(row: pd.Series) -> str:
    year = "" if pd.isna(row.get("test_year")) else f" {int(row['test_year'])}"
    outcome = "met" if row["is_met"] == 1 else "not met"
    return f"{row['country']}{year} ({outcome}, similarity {row['similarity']:.2f}): {row['description']}"


def recommend(home: DataHome, settings: PolicySettings, country: str, arrangement: str | None, area: str,
              n: int = 3, seed: int = 0, cache_dir: Path | None = None) -> Proposals:
    with Registry.for_home(home.root) as registry:
        champion = registry.champion_version(POLICY_ADAPTER_NAME)
        if champion is None:
            raise LookupError(f"{POLICY_ADAPTER_NAME} has no champion yet: run the pipeline first (make demo)")
        policy_dir = registry.cached_version(POLICY_ADAPTER_NAME, champion.version, home.models / "registry")
        reward, reward_version = load_champion_reward(registry, REWARD_MODEL_NAME, home.models / "registry")
    model, tokenizer = load_policy(policy_dir, settings, cache_dir or home.models / "base_policy")
    prompt = render_prompt(country, arrangement, area)
    answers = generate_answers(model, tokenizer, [chat_text(tokenizer, prompt)], settings.max_new_tokens,
                               temperature=0.8, num_return_sequences=n, seed=seed,
                               max_prompt_tokens=settings.max_prompt_tokens)
    conditions = [answer_to_condition(answer) for answer in answers]
    p_met = reward.score([{"country": country, "arrangement_type": arrangement, "economic_area": area,
                           "description": text} for text in conditions])
    corpus = pd.concat([read_split(home.exports / "splits", split) for split in SPLITS], ignore_index=True)
    index = PrecedentIndex(corpus)
    items = [Proposal(text, float(p), [describe_precedent(row) for _, row in index.nearest(text).iterrows()])
             for text, p in zip(conditions, p_met)]
    header = (f"{prompt}\n(policy: {POLICY_ADAPTER_NAME} v{champion.version}, champion; "
              f"reward: {REWARD_MODEL_NAME} v{reward_version}, champion)")
    return Proposals(header, items)
