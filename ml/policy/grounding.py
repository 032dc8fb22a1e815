"""Grounding: what MONA knows about a prompt's country and area, written under the paper's question.

The paper's prompt speaks of "the economic indicators and historical performance of [Country]" and
gives the model none of it. A grounded prompt keeps the question word for word and adds the record:
how many conditions the country had in that area and how many were met, and a few precedents (real
conditions of that area, the country's own first, each with its outcome). The model then writes a
condition about the area asked with the record in view, instead of recalling the area's vocabulary
from its weights. Precedents come from the training split only; an SFT example never sees its own
target condition among them (nothing to copy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from ml.reward.topic import area_key
from ml.similarity import at_least

PRECEDENTS_PREFIX = "Precedents: "
RECORD_LINE = "Record of {country} in this area: {n} conditions, {met} met."
# One precedent as `context` writes it: "<description> (<country>, met)." or "(<country>, not met)."
_PRECEDENT = re.compile(r"(.+?) \([^()]*, (?:met|not met)\)\.")


class Grounding:
    """Record and precedents per (country, area), from a corpus of labelled conditions."""

    def __init__(self, corpus: pd.DataFrame, n_precedents: int = 3, seed: int = 0):
        usable = corpus.dropna(subset=["description", "economic_area"])
        usable = pd.DataFrame({"description": usable["description"].to_numpy(dtype=object),
                               "country": usable["country"].to_numpy(dtype=object),
                               "is_met": usable["is_met"].to_numpy(dtype=float),
                               "area": usable["economic_area"].map(area_key).to_numpy(dtype=object),
                               "who": usable["country"].fillna("").str.casefold().to_numpy(dtype=object)})
        # Each area's columns once, as arrays in corpus order: a prompt table asks for thousands of
        # contexts, and slicing the whole corpus frame for each took two minutes of the demo's.
        self._by_area = {key: {column: rows[column].to_numpy() for column in rows}
                         for key, rows in usable.groupby("area", sort=False)}
        self._no_rows = {column: usable[column].to_numpy()[:0] for column in usable}  # an area the corpus lacks
        self.n_precedents = n_precedents
        self.seed = seed

    def context(self, country: str | None, area: str | None, exclude: Iterable[str] = (), draw: int = 0) -> str:
        """The lines added under the question. `exclude` drops conditions with these descriptions (the
        targets an SFT prompt is trained on). `draw` > 0: another seeded choice of the precedents, by the
        same rule (the country's own first); draw 0 is the one every prompt was trained with."""
        who = (country or "").casefold()
        in_area = self._by_area.get(area_key(area), self._no_rows)
        descriptions = in_area["description"]
        excluded = set(exclude)
        kept = (np.array([text not in excluded for text in descriptions], dtype=bool) if excluded
                else np.ones(len(descriptions), dtype=bool))
        mine = kept & (in_area["who"] == who)
        own, others = np.flatnonzero(mine), np.flatnonzero(kept & ~mine)
        lines = [RECORD_LINE.format(country=country or "the country", n=len(own),
                                    met=int(np.nansum(in_area["is_met"][own])))]
        rng = np.random.default_rng([self.seed, int(kept.sum()), *([draw] if draw else [])])
        # The country's own conditions first, then the area's others, in a seeded order; distinct texts only.
        chosen, seen = [], set()
        for row in np.concatenate([own[rng.permutation(len(own))], others[rng.permutation(len(others))]]):
            if descriptions[row] not in seen:
                seen.add(descriptions[row])
                chosen.append(row)
                if len(chosen) == self.n_precedents:
                    break
        if chosen:
            lines.append(PRECEDENTS_PREFIX + " ".join(
                f"{descriptions[row].rstrip('.')} ({in_area['country'][row]}, "
                f"{'met' if in_area['is_met'][row] == 1 else 'not met'})." for row in chosen))
        return "\n".join(lines)


def precedents_in(prompt: str) -> list[str]:
    """The precedent descriptions a grounded prompt shows (none for a bare question), as `context`
    wrote them (without their final full stop)."""
    for line in str(prompt).splitlines():
        if line.startswith(PRECEDENTS_PREFIX):
            return [match.group(1).strip() for match in _PRECEDENT.finditer(line[len(PRECEDENTS_PREFIX):])]
    return []


def precedent_similarity(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """Per answer, the cosine similarity (TF-IDF of character 3-5 grams within words, as the
    evaluation's copy measure) to the closest precedent its own prompt shows; 0 without precedents.
    An answer near 1 quotes MONA back to the user instead of proposing something."""
    shown = [precedents_in(prompt) for prompt in prompts]
    texts = [text for group in shown for text in group]
    similarity = np.zeros(len(answers))
    if not texts:
        return similarity
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit(texts)
    answer_vectors = vectorizer.transform([a if isinstance(a, str) else "" for a in answers])
    precedent_vectors = vectorizer.transform(texts)  # rows L2-normalised: dot = cosine
    first = np.cumsum([0, *map(len, shown)])  # answer i's precedents are rows first[i]:first[i + 1]
    for i, group in enumerate(shown):
        if group:
            similarity[i] = (answer_vectors[i] @ precedent_vectors[first[i]:first[i + 1]].T).toarray().max()
    return similarity


def quotes_precedent(prompts: Sequence[str], answers: Sequence[str], threshold: float) -> np.ndarray:
    """Per answer: does it quote a precedent its prompt shows (`precedent_similarity` >= threshold, as
    the copy measure's threshold is applied)?"""
    return at_least(precedent_similarity(prompts, answers), threshold)
