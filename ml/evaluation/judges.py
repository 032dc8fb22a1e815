"""A second on-topic judge, of another kind than the TF-IDF area classifier the RL reward uses.

`EmbeddingAreaJudge` embeds texts with the packaged sentence encoder (all-MiniLM-L6-v2, mean-pooled
and L2-normalised, as sentence-transformers does) and calls an answer on topic when the plurality of
its k nearest training conditions belongs to the area the prompt asked for. It shares no features
and no fitted weights with the area classifier that the policy was trained against, so a policy that
games the classifier's word statistics does not automatically fool this judge.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from transformers import AutoModel, AutoTokenizer

from ml.reward.encoder import packaged_minilm_dir, pad_batch, tokenize
from ml.reward.topic import about_asked, area_key


def embed(texts: list[str], model: torch.nn.Module, tokenizer, batch_size: int = 128,
          max_length: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (N, H), in input order. Batches are formed over
    length-sorted texts, as the reward models score, so a batch pads to a length near its own."""
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    sequences = tokenize(tokenizer, list(texts), max_length)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = pad_batch([sequences[i] for i in chosen], tokenizer.pad_token_id)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[chosen] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def minilm_encoder() -> tuple[torch.nn.Module, object]:
    """The packaged MiniLM sentence encoder and its tokenizer, for `embed`."""
    folder = packaged_minilm_dir()
    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


class EmbeddingAreaJudge:
    """k-nearest-neighbour vote over sentence embeddings of the training conditions."""

    def __init__(self, corpus: pd.DataFrame, k: int = 10, max_corpus: int = 4000, seed: int = 0):
        usable = corpus.dropna(subset=["description", "economic_area"])
        usable = usable.assign(_key=usable["economic_area"].map(area_key)).dropna(subset=["_key"])
        usable = usable.drop_duplicates(subset=["description", "_key"])
        if len(usable) > max_corpus:  # a stratified sample keeps every area's share
            usable = usable.groupby("_key", group_keys=False).sample(frac=max_corpus / len(usable), random_state=seed)
        if usable.empty:
            raise ValueError("EmbeddingAreaJudge needs corpus rows with a description and an economic area")
        self.model, self.tokenizer = minilm_encoder()
        self.k = min(k, len(usable))
        self.keys = usable["_key"].to_numpy(dtype=object)
        self.matrix = embed(usable["description"].astype(str).tolist(), self.model, self.tokenizer)

    def predict(self, texts: Iterable[object]) -> np.ndarray:
        """The plurality area key among each text's k nearest corpus conditions (ties: the nearest)."""
        texts = [t if isinstance(t, str) and t.strip() else "" for t in texts]
        if not texts:
            return np.array([], dtype=object)
        similarity = embed(texts, self.model, self.tokenizer) @ self.matrix.T  # (N, corpus)
        nearest = np.argsort(-similarity, axis=1)[:, :self.k]
        predicted = []
        for row in self.keys[nearest]:
            counts = Counter(row)
            best = max(counts.values())
            predicted.append(next(key for key in row if counts[key] == best))
        return np.array(predicted, dtype=object)

    def on_topic(self, answers: pd.DataFrame) -> np.ndarray:
        """Per row of `answers` (columns `answer`, `economic_area`): 1.0 when the answer's neighbours
        vote for the asked area or one of its sub-areas (`about_asked`), 0.0 when not (an empty answer
        is about nothing), NaN when the asked area is not in the corpus (no vote could ever agree)."""
        asked = answers["economic_area"].to_numpy(dtype=object)
        predicted = self.predict(answers["answer"])
        empty = np.array([not (isinstance(t, str) and t.strip()) for t in answers["answer"]], dtype=bool)
        known = np.isin(answers["economic_area"].map(area_key).to_numpy(dtype=object), self.keys)
        return np.where(known, (about_asked(predicted, asked) & ~empty).astype(float), math.nan)
