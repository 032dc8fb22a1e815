"""How close a text is to others: the one TF-IDF nearest-neighbour index and threshold rule that the
evaluation's copy measure, the RL reward's copy and quote rules and `rlxf recommend` share; and whether
a text repeats itself, which the evaluation measures and `recommend` flags. It sits outside
`ml.evaluation` and `ml.reward` because both use it."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

STUTTER = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)


def repeats_itself(text: str) -> bool:
    """A stuttered word ("in line with staff staff recommendations") or a three-word phrase said twice
    ("... in line with staff recommendations in line with staff"): slips of the sampler. In the demo's
    evaluation, 8% of the PPO and SFT answers and under 1% of real conditions repeat themselves so."""
    words = re.findall(r"\w+", text.casefold())
    trigrams = list(zip(words, words[1:], words[2:]))
    return bool(STUTTER.search(text)) or len(set(trigrams)) < len(trigrams)


def at_least(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """similarity >= threshold, with room for float rounding (a text identical to another scores 1 - 1e-16)."""
    return np.asarray(similarity) >= threshold - 1e-9


class NoveltyIndex:
    """Cosine similarity (TF-IDF, character 3-5 grams within words by default, so light edits of a
    training condition still look like it) of each answer to its nearest training condition. A policy
    tuned against a reward model learned from those very conditions can score well by reciting them;
    `copy_threshold` marks such answers as copies.
    """

    def __init__(self, corpus_texts: Iterable[object], analyzer: str = "char_wb",
                 ngram_range: tuple[int, int] = (3, 5), copy_threshold: float = 0.9, batch_size: int = 256):
        texts = pd.Series([t for t in corpus_texts if isinstance(t, str) and t.strip()], dtype=object)
        self.texts = texts.drop_duplicates().to_numpy(dtype=object)
        if len(self.texts) == 0:
            raise ValueError("NoveltyIndex needs at least one corpus text")
        self.vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(self.texts)  # rows L2-normalised: dot = cosine
        self.copy_threshold = copy_threshold
        self.batch_size = batch_size

    def nearest(self, texts: Iterable[object]) -> pd.DataFrame:
        """One row per text: `similarity` to the nearest corpus text (0 for an empty answer), that
        `nearest` text, and `is_copy` (similarity >= copy_threshold)."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        similarity = np.zeros(len(texts))
        index = np.zeros(len(texts), dtype=int)
        # Batches bound the dense (batch, corpus) similarity block.
        for start in range(0, len(texts), self.batch_size):
            block = (self.vectorizer.transform(texts[start:start + self.batch_size]) @ self.matrix.T).toarray()
            index[start:start + len(block)] = block.argmax(axis=1)
            similarity[start:start + len(block)] = block.max(axis=1)
        return pd.DataFrame({"similarity": similarity, "nearest": self.texts[index],
                             "is_copy": at_least(similarity, self.copy_threshold)})
