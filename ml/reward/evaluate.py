"""Test-split evaluation of a reward model, next to the baselines it has to beat.

`evaluate_reward_model` answers "is this P(MET) good enough to be a reward?": discrimination
(accuracy, per-class and macro precision/recall/F1, ROC-AUC), calibration (Brier, ECE, reliability
curve), where it fails (by economic area, by test year, on the temporal holdout: the most recent
years, the closest thing to scoring the future), and against baselines computed in the same call on
the same rows: TF-IDF word 1-2 grams + logistic regression, and the majority class. On synthetic
data the truth sidecar gives two ceilings: the Bayes-optimal accuracy of a classifier of the
reward model's input text (the one a model can approach), and the oracle's, which also knows the
latents the text does not show (condition type, approval year, noise).

`RewardEvaluation.headline()` is a flat dict of MLflow-safe metric names; `to_markdown()` the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from ml.markdown import markdown_table
from ml.reward.calibration import expected_calibration_error, reliability_curve
from ml.reward.encoder import LABELS
from ml.reward.model import RewardModel, texts_for_rows
from ml.reward.negatives import relevance_negatives

THRESHOLD = 0.5  # predict MET when P(MET) >= THRESHOLD
METRIC_NAMES = ("n", "accuracy", "macro_precision", "macro_recall", "macro_f1", "precision_met", "recall_met",
                "f1_met", "precision_non_met", "recall_non_met", "f1_non_met", "roc_auc", "brier", "ece")
TABLE_METRICS = ("n", "accuracy", "macro_f1", "f1_met", "f1_non_met", "precision_met", "recall_met",
                 "precision_non_met", "recall_non_met", "roc_auc", "brier", "ece")


@dataclass
class RewardEvaluation:
    metrics: dict[str, float]  # the model on the test split: METRIC_NAMES
    holdout_metrics: dict[str, float]  # the model on the test split's temporal-holdout rows
    baselines: dict[str, dict[str, float]]  # "tfidf_lr", "majority" -> same keys as `metrics`
    bayes_optimal_accuracy: float  # given the input text; NaN without a truth sidecar
    oracle_accuracy: float  # knowing every latent, true_p_met; NaN without a truth sidecar
    truth_coverage: float  # share of test rows found in the truth sidecar; NaN without one
    confusion: np.ndarray  # (2, 2): rows true, columns predicted, in LABELS order
    by_area: pd.DataFrame  # economic_area, n, met_share, mean_p_met, accuracy, macro_f1
    by_year: pd.DataFrame  # test_year, same columns
    reliability: pd.DataFrame  # `calibration.reliability_curve` of the model's test P(MET)
    probs: np.ndarray  # the model's calibrated P(MET) per test row
    labels: np.ndarray  # is_met per test row
    relevance: dict[str, float]  # `relevance_check` on the test split

    def headline(self) -> dict[str, float]:
        """test_*, holdout_*, baseline_<name>_*, bayes_optimal_*; non-finite values (e.g. ROC-AUC of
        a one-class subset) are left out, so every value can be logged as an MLflow metric."""
        flat = {f"test_{k}": v for k, v in self.metrics.items()}
        flat |= {f"holdout_{k}": v for k, v in self.holdout_metrics.items()}
        for name, metrics in self.baselines.items():
            flat |= {f"baseline_{name}_{k}": v for k, v in metrics.items()}
        flat |= {"bayes_optimal_accuracy": self.bayes_optimal_accuracy, "oracle_accuracy": self.oracle_accuracy,
                 "truth_coverage": self.truth_coverage}
        flat |= {f"test_{k}": v for k, v in self.relevance.items()}
        return {k: float(v) for k, v in flat.items() if math.isfinite(v)}

    def to_markdown(self) -> str:
        columns = {"reward model": self.metrics, **{f"baseline {k}": v for k, v in self.baselines.items()},
                   "reward model, temporal holdout": self.holdout_metrics}
        table = pd.DataFrame({name: [m[k] for k in TABLE_METRICS] for name, m in columns.items()},
                             index=list(TABLE_METRICS))
        confusion = pd.DataFrame(self.confusion, index=[f"true {x}" for x in LABELS],
                                 columns=[f"predicted {x}" for x in LABELS])
        parts = ["## Reward model on the test split", "", markdown_table(table.reset_index(names="metric")), ""]
        if math.isfinite(self.bayes_optimal_accuracy):
            parts += [f"Bayes-optimal accuracy on these rows, given the input text: {self.bayes_optimal_accuracy:.3f}; "
                      f"an oracle that also knows the hidden latents: {self.oracle_accuracy:.3f} "
                      f"(truth found for {self.truth_coverage:.0%} of them).", ""]
        r = self.relevance
        clause = r.get("p_met_vague_closing_clause", math.nan)  # NaN: no test condition ends in a clause
        with_clause = (f", cut before their object but keeping their closing clause {clause:.3f}"
                       if math.isfinite(clause) else "")
        parts += ["### Relevance", "",
                  f"Mean P(MET) of the test conditions under their own area {r['p_met_own_area']:.3f}, placed under "
                  f"another area {r['p_met_other_area']:.3f}, "
                  f"cut before their object {r['p_met_vague']:.3f}{with_clause}; "
                  f"ROC-AUC of a real condition against its cross-area copy {r['relevance_auc']:.3f}.", ""]
        parts += ["### Confusion matrix", "", markdown_table(confusion.reset_index(names="")), "",
                  "### By economic area", "", markdown_table(self.by_area), "",
                  "### By test year", "", markdown_table(self.by_year), ""]
        return "\n".join(parts)


def evaluate_reward_model(model: RewardModel, test: pd.DataFrame, train: pd.DataFrame,
                          truth: pd.DataFrame | None = None) -> RewardEvaluation:
    """Score `test` with `model` and with baselines fitted on `train`; `truth` (synthetic data:
    arrangement_number, description, true_p_met, p_met_given_text) adds the Bayes-optimal accuracies."""
    labels = test["is_met"].to_numpy(dtype=int)
    probs = model.score(test)
    holdout = test["is_temporal_holdout"].fillna(False).to_numpy(dtype=bool)
    bayes, oracle, coverage = bayes_optimal_accuracies(test, truth) if truth is not None else (math.nan,) * 3
    return RewardEvaluation(
        metrics=classification_metrics(labels, probs),
        holdout_metrics=classification_metrics(labels[holdout], probs[holdout]),
        baselines={"tfidf_lr": classification_metrics(labels, tfidf_baseline(train, test)),
                   "majority": classification_metrics(labels, majority_baseline(train, len(test)))},
        bayes_optimal_accuracy=bayes, oracle_accuracy=oracle, truth_coverage=coverage,
        confusion=confusion_matrix(labels, predict(probs), labels=[0, 1]),
        by_area=breakdown(test["economic_area"].fillna("Unknown"), labels, probs, "economic_area"),
        by_year=breakdown(test["test_year"].astype("string").fillna("unknown"), labels, probs, "test_year"),
        reliability=reliability_curve(probs, labels), probs=probs, labels=labels,
        relevance=relevance_check(model.score, test, own_probs=probs))


def relevance_check(score: Callable[[pd.DataFrame], np.ndarray], test: pd.DataFrame, seed: int = 0,
                    own_probs: np.ndarray | None = None) -> dict[str, float]:
    """What a reward model knows of relevance, on real test conditions: mean P(MET) under their own
    area, under another area, cut before their object, and cut before their object but keeping their
    closing clause ("Complete the restructuring, in coordination with the Central Bank"; over the
    conditions that have one, NaN if none), and the ROC-AUC of telling a real condition from its
    cross-area copy. `score(rows) -> P(MET)`."""
    cross = relevance_negatives(test, 1.0, 0.0, seed)
    vague = relevance_negatives(test, 0.0, 1.0, seed)
    clause = relevance_negatives(test, 0.0, 1.0, seed, keep_closing_clause=True)
    clause = clause[clause["description"].to_numpy() != vague["description"].to_numpy()]
    own_p = score(test) if own_probs is None else own_probs
    cross_p, vague_p = score(cross), score(vague)
    clause_p = score(clause) if len(clause) else np.array([math.nan])
    labels = np.r_[np.ones(len(own_p)), np.zeros(len(cross_p))].astype(int)
    auc = classification_metrics(labels, np.r_[own_p, cross_p])["roc_auc"]
    return {"p_met_own_area": float(np.mean(own_p)), "p_met_other_area": float(np.mean(cross_p)),
            "p_met_vague": float(np.mean(vague_p)), "p_met_vague_closing_clause": float(np.mean(clause_p)),
            "relevance_auc": float(auc)}


def predict(probs: np.ndarray) -> np.ndarray:
    return (np.asarray(probs) >= THRESHOLD).astype(int)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """n, accuracy, precision/recall/F1 per class (`_met`, `_non_met`) and macro, ROC-AUC, Brier, ECE
    of P(MET) `probs` against 0/1 `labels`; NaN where undefined (no rows; ROC-AUC with one class)."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    if len(labels) == 0:
        return {k: (0.0 if k == "n" else math.nan) for k in METRIC_NAMES}
    predicted = predict(probs)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, labels=[0, 1], zero_division=0)
    metrics = {"n": float(len(labels)), "accuracy": float(accuracy_score(labels, predicted)),
               "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
               "macro_f1": float(f1.mean())}
    for index, suffix in ((1, "met"), (0, "non_met")):
        metrics |= {f"precision_{suffix}": float(precision[index]), f"recall_{suffix}": float(recall[index]),
                    f"f1_{suffix}": float(f1[index])}
    metrics["roc_auc"] = float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else math.nan
    metrics["brier"] = float(np.mean((probs - labels) ** 2))
    metrics["ece"] = expected_calibration_error(probs, labels)
    return metrics


def tfidf_baseline(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """P(MET) of TF-IDF word 1-2 grams + logistic regression, fitted on the same texts the reward
    model trains on; class-balanced like the reward model's loss."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(texts_for_rows(train))
    classifier = LogisticRegression(max_iter=1000, class_weight="balanced")
    classifier.fit(features, train["is_met"].to_numpy(dtype=int))
    return classifier.predict_proba(vectorizer.transform(texts_for_rows(test)))[:, 1]


def majority_baseline(train: pd.DataFrame, n_rows: int) -> np.ndarray:
    """The training MET share for every row: predicts the majority class, and is calibrated overall."""
    return np.full(n_rows, float(train["is_met"].mean()))


def bayes_optimal_accuracies(test: pd.DataFrame, truth: pd.DataFrame) -> tuple[float, float, float]:
    """(given the input text, oracle, share of test rows found in `truth`): mean of max(p, 1 - p) over
    the test rows found, with p = `p_met_given_text` and `true_p_met`; joined once on arrangement
    number as text and whitespace-collapsed description. NaN for a column a sidecar predates."""
    columns = [c for c in ("p_met_given_text", "true_p_met") if c in truth.columns]
    p_by_key = truth.assign(key=_truth_keys(truth)).groupby("key")[columns].mean()
    joined = p_by_key.reindex(_truth_keys(test).to_numpy())
    found = joined.notna().all(axis=1).to_numpy() if columns else np.zeros(len(test), dtype=bool)
    if not found.any():
        return math.nan, math.nan, (0.0 if columns else math.nan)

    def ceiling(column: str) -> float:
        if column not in columns:
            return math.nan
        p = joined[column].to_numpy(dtype=float)[found]
        return float(np.mean(np.maximum(p, 1.0 - p)))

    return ceiling("p_met_given_text"), ceiling("true_p_met"), float(found.mean())


def breakdown(groups: pd.Series, labels: np.ndarray, probs: np.ndarray, name: str) -> pd.DataFrame:
    """n, MET share, mean P(MET), accuracy and macro-F1 of the model per group."""
    frame = pd.DataFrame({name: groups.to_numpy(), "label": labels, "p": probs})
    rows = []
    for value, part in frame.groupby(name, sort=True):
        metrics = classification_metrics(part["label"].to_numpy(), part["p"].to_numpy())
        rows.append({name: value, "n": len(part), "met_share": part["label"].mean(), "mean_p_met": part["p"].mean(),
                     "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
    return pd.DataFrame(rows, columns=[name, "n", "met_share", "mean_p_met", "accuracy", "macro_f1"])


def _truth_keys(frame: pd.DataFrame) -> pd.Series:
    number = frame["arrangement_number"].map(_number_text)
    description = frame["description"].map(lambda d: " ".join(str(d).split()) if isinstance(d, str) else "")
    return (number + "|" + description).set_axis(frame.index)


def _number_text(value: object) -> str:
    # Arrangement numbers arrive as text from dbt and as integers (or floats, via NaN) from the sidecar.
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()
