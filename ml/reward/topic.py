"""Is a text about the economic area it was asked for? `AreaClassifier` answers with a probability.

The policy evaluation reports the share of answers classified into the asked area (the on-topic rate);
the RL reward can multiply P(MET) by P(asked area | answer), so that a short generic answer ("Provide
a detailed plan of action"), which a P(MET) model may rate as implementable as any real condition,
earns little unless it is a condition for the area the prompt named.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

_AREA_NUMBER = re.compile(r"^\s*\d{1,2}\.(?:\d\.?)?\s+")


def area_key(area: object) -> str | None:
    """An economic area as a comparison key: without MONA's leading number, case- and space-folded,
    so "1.8. Budget preparation" and "budget  preparation" match."""
    if not isinstance(area, str) or not area.strip():
        return None
    return " ".join(_AREA_NUMBER.sub("", area).split()).casefold()


@functools.cache
def sub_areas() -> dict[str, frozenset[str]]:
    """MONA's economic areas nest: "6. Financial sector" holds "6.1. Financial sector legal reforms ..."
    to "6.3.", "1. General government" holds "1.1." to "1.9.". The keys of each top-level area's
    sub-areas, from the dbt seed, read when first needed: the MLflow Models that carry this module
    (the reward models, the policy) load without the seed."""
    from ml.data.taxonomy import ECONOMIC_AREAS

    return {area_key(top.name): frozenset(area_key(a.name) for a in ECONOMIC_AREAS
                                          if a.major == top.major and a != top)
            for top in ECONOMIC_AREAS if top.number.count(".") == 1}


def covered_keys(area: object) -> frozenset[str]:
    """The keys of the areas a condition may belong to and still be about `area`: the area itself and,
    for a top-level area, its sub-areas (a bank-restructuring condition answers a question about the
    financial sector). Not the reverse: a condition of "Financial sector" at large is not necessarily
    about bank restructuring. An area the taxonomy does not know covers itself only."""
    key = area_key(area)
    if key is None:
        return frozenset()
    return frozenset({key}) | sub_areas().get(key, frozenset())


def about_asked(predicted: Iterable[object], asked: Iterable[object]) -> np.ndarray:
    """Per (predicted area key, asked area) pair, whether the prediction is the asked area or one of its
    sub-areas: what both on-topic judges count."""
    return np.array([key in covered_keys(area) for key, area in zip(predicted, asked)], dtype=bool)


def nested(area: object, other: object) -> bool:
    """Whether one of two areas is the other or holds it."""
    return area_key(other) in covered_keys(area) or area_key(area) in covered_keys(other)


class AreaClassifier:
    """TF-IDF word 1-2 grams + logistic regression from a condition's text to its economic area,
    trained on the corpus. An answer is on topic when the area it is classified into is the area its
    prompt asked for or one of its sub-areas (`covered_keys`). A policy can score reward with a
    well-met condition from another area; this catches it. `holdout_accuracy` (on a seeded 20% of the
    corpus the model did not see) says how far the on-topic rate can be trusted: a weak classifier
    under-reports it for every policy alike.
    """

    def __init__(self, vectorizer: TfidfVectorizer, model: LogisticRegression | None, classes: list[str],
                 holdout_accuracy: float):
        self.vectorizer = vectorizer
        self.model = model  # None when the corpus has a single area
        self.classes = classes  # area keys the classifier can predict
        self.holdout_accuracy = holdout_accuracy

    @classmethod
    def fit(cls, corpus: pd.DataFrame, seed: int = 0, holdout_share: float = 0.2,
            min_rows_for_holdout: int = 50) -> AreaClassifier:
        """Fits on `corpus.description` -> `corpus.economic_area` (rows missing either are skipped)."""
        texts = corpus["description"].where(corpus["description"].map(lambda d: isinstance(d, str)), None)
        keys = corpus["economic_area"].map(area_key)
        usable = texts.notna() & keys.notna()
        texts, keys = texts[usable].astype(str).to_numpy(), keys[usable].astype(str).to_numpy()
        if len(texts) == 0:
            raise ValueError("corpus has no rows with both a description and an economic_area")
        order = np.random.default_rng(seed).permutation(len(texts))
        n_holdout = int(len(texts) * holdout_share) if len(texts) >= min_rows_for_holdout else 0
        holdout, train = order[:n_holdout], order[n_holdout:]
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        features = vectorizer.fit_transform(texts[train])
        classes = sorted(set(keys[train]))
        model = None
        if len(classes) > 1:
            model = LogisticRegression(max_iter=2000, C=4.0)
            model.fit(features, keys[train])
        classifier = cls(vectorizer, model, classes, math.nan)
        if n_holdout:
            classifier.holdout_accuracy = float(np.mean(classifier.predict(texts[holdout]) == keys[holdout]))
        return classifier

    def save(self, folder: Path) -> Path:
        """`area_classifier.json` (settings, vocabulary, classes) + `area_classifier.npz` (idf and
        weights): plain numbers, loadable without unpickling anything."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        params = self.vectorizer.get_params()
        meta = {"classes": self.classes,
                "holdout_accuracy": None if math.isnan(self.holdout_accuracy) else self.holdout_accuracy,
                "ngram_range": list(params["ngram_range"]), "sublinear_tf": params["sublinear_tf"],
                "vocabulary": {term: int(i) for term, i in self.vectorizer.vocabulary_.items()},
                "model_classes": None if self.model is None else [str(c) for c in self.model.classes_]}
        (folder / "area_classifier.json").write_text(json.dumps(meta, ensure_ascii=False, allow_nan=False),
                                                     encoding="utf-8")
        arrays = {"idf": self.vectorizer.idf_}
        if self.model is not None:
            arrays |= {"coef": self.model.coef_, "intercept": self.model.intercept_}
        np.savez(folder / "area_classifier.npz", **arrays)
        return folder

    @classmethod
    def load(cls, folder: Path) -> AreaClassifier:
        meta = json.loads((Path(folder) / "area_classifier.json").read_text(encoding="utf-8"))
        arrays = np.load(Path(folder) / "area_classifier.npz", allow_pickle=False)
        vectorizer = TfidfVectorizer(ngram_range=tuple(meta["ngram_range"]), sublinear_tf=meta["sublinear_tf"])
        vectorizer.vocabulary_ = meta["vocabulary"]
        vectorizer.idf_ = arrays["idf"]
        model = None
        if meta["model_classes"] is not None:
            model = LogisticRegression(max_iter=2000, C=4.0)
            model.classes_ = np.array(meta["model_classes"], dtype=object)
            model.coef_, model.intercept_ = arrays["coef"], arrays["intercept"]
            model.n_features_in_ = arrays["coef"].shape[1]
        holdout = meta["holdout_accuracy"]
        return cls(vectorizer, model, meta["classes"], math.nan if holdout is None else float(holdout))

    def predict(self, texts: Iterable[object]) -> np.ndarray:
        """The area key (see `area_key`) each text is classified into."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        if self.model is None:
            return np.array([self.classes[0]] * len(texts), dtype=object)
        return self.model.predict(self.vectorizer.transform(texts)).astype(object)

    def on_topic(self, answers: pd.DataFrame) -> np.ndarray:
        """Per row of `answers` (columns `answer`, `economic_area`): 1.0 when the answer is classified
        into the area asked for or one of its sub-areas, 0.0 when not, NaN when the asked area is
        unknown to the classifier (it could never agree, so the row says nothing about the policy)."""
        asked = answers["economic_area"].to_numpy(dtype=object)
        predicted = self.predict(answers["answer"])
        known = np.array([area_key(a) in self.classes for a in asked], dtype=bool)
        return np.where(known, about_asked(predicted, asked).astype(float), math.nan)

    def on_topic_rate(self, answers: pd.DataFrame) -> float:
        flags = self.on_topic(answers)
        return float(np.nanmean(flags)) if np.isfinite(flags).any() else math.nan

    def asked_area_probability(self, texts: Iterable[object], areas: Iterable[object]) -> np.ndarray:
        """P(asked area | text) per (text, asked area) pair, the asked area's sub-areas included (see
        `covered_keys`); 1.0 where the asked area is unknown to the classifier (or it knows a single
        area): there is nothing to judge, so nothing is taken away."""
        texts, areas = list(texts), list(areas)
        if len(texts) != len(areas):
            raise ValueError(f"{len(texts)} texts but {len(areas)} areas")
        probability = np.ones(len(texts))
        if self.model is None or not texts:
            return probability
        column = {area: i for i, area in enumerate(self.model.classes_)}
        known = np.array([area_key(area) in column for area in areas], dtype=bool)
        if known.any():
            chosen = np.flatnonzero(known)
            proba = self.model.predict_proba(self.vectorizer.transform(
                [t if isinstance(t, str) else "" for t in (texts[i] for i in chosen)]))
            for row, i in enumerate(chosen):
                probability[i] = sum(proba[row, column[key]] for key in covered_keys(areas[i]) if key in column)
        return probability
