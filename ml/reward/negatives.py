"""Relevance negatives: conditions no program could meet for the area it was asked about.

MONA only records conditions that belong to their area, so a reward model trained on it alone has
never seen "a condition for area X written about area Y", nor a condition with no object at all,
and judges both by their verb: "Publish a report" scores like a real condition. RL finds such answers.
Training also on two kinds of negative rows, labelled NON_MET, teaches the model that relevance and
substance are part of being implementable:

- cross-area: a real condition placed under another area's context (same country and arrangement,
  another economic area, neither holding the other), e.g. a customs-clearance condition proposed for
  pension reform;
- vague: a real condition cut before its object ("Submit to parliament a draft law on" -> "Submit to
  parliament"): nothing in it can be verified at a review. With `keep_closing_clause`, a condition that
  ends in a clause after a comma keeps that clause ("Submit to parliament, with IMF technical
  assistance"), so a stock phrase cannot stand in for the object either.

Negatives are added to the training rows only; validation (early stopping, calibration) and test
metrics stay on real conditions, and `ml.reward.evaluate.relevance_check` measures what they taught.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.reward.topic import nested

NEGATIVE_COLUMN = "is_relevance_negative"
VAGUE_WORDS = (2, 3, 4)  # a vague negative keeps this many leading words of a real condition
_DANGLING = {"a", "an", "the", "of", "on", "to", "for", "in", "and", "with", "by", "from"}


def relevance_negatives(train: pd.DataFrame, cross_area_share: float, vague_share: float,
                        seed: int, keep_closing_clause: bool = False) -> pd.DataFrame:
    """Negative rows (is_met = 0, `is_relevance_negative` = True) numbering cross_area_share and
    vague_share times the rows of `train`, drawn from `train` with `seed`."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> pd.DataFrame:  # each row once while there are enough, then with replacement
        index = rng.permutation(len(train))[:n] if n <= len(train) else rng.integers(0, len(train), n)
        return train.iloc[index].copy()

    areas = train["economic_area"].dropna().unique()
    frames = []
    n_cross = int(round(cross_area_share * len(train)))
    if n_cross and len(areas) > 1:
        rows = draw(n_cross)
        # Another area than the row's own: shift its index by 1..len-1 places in the list of areas.
        own = pd.Index(areas).get_indexer(rows["economic_area"])
        other = np.where(own >= 0, (own + rng.integers(1, len(areas), n_cross)) % len(areas),
                         rng.integers(0, len(areas), n_cross))
        # Not an area that holds the row's own or that its own holds (`nested`): a bank-restructuring
        # condition under "Financial sector" is about that area. Move such a draw on to the next area
        # that is neither, which leaves every other draw as it was.
        other = [_unnested_from(own_area, drawn, areas) for own_area, drawn in zip(rows["economic_area"], other)]
        rows["economic_area"] = areas[other]
        frames.append(rows)
    n_vague = int(round(vague_share * len(train)))
    if n_vague:
        rows = draw(n_vague)
        keep = rng.choice(VAGUE_WORDS, n_vague)
        rows["description"] = [cut_before_object(text, k, keep_closing_clause)
                               for text, k in zip(rows["description"].fillna("").astype(str), keep)]
        frames.append(rows)
    if not frames:
        return train.iloc[:0].assign(**{NEGATIVE_COLUMN: pd.Series(dtype=bool)})
    negatives = pd.concat(frames, ignore_index=True)
    return negatives.assign(is_met=0, **{NEGATIVE_COLUMN: True})


def cut_before_object(description: str, keep: int, keep_closing_clause: bool = False) -> str:
    """The first `keep` words of a condition, never all but its last two; with `keep_closing_clause`
    and a clause after the condition's last comma (two words or more, at least two words after the
    kept ones before it), that clause too: what was to be done and how, without what to."""
    head, comma, clause = description.rpartition(",")
    head_words = head.split()
    if keep_closing_clause and comma and len(clause.split()) >= 2 and len(head_words) >= keep + 2:
        lead = head_words[:keep]
        # "Complete the restructuring of, in ..." reads as a typo, not as a condition without its object.
        while len(lead) > 1 and lead[-1].lower() in _DANGLING:
            lead.pop()
        return " ".join(lead) + "," + clause
    words = description.split()
    return " ".join(words[:max(1, min(keep, len(words) - 2))])


def with_relevance_negatives(train: pd.DataFrame, cross_area_share: float, vague_share: float,
                             seed: int, keep_closing_clause: bool = False) -> pd.DataFrame:
    """`train` plus its negatives (flagged), in a seeded random order."""
    negatives = relevance_negatives(train, cross_area_share, vague_share, seed, keep_closing_clause)
    if negatives.empty:
        return train
    combined = pd.concat([train.assign(**{NEGATIVE_COLUMN: False}), negatives], ignore_index=True)
    return combined.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _unnested_from(own: object, start: int, areas: np.ndarray) -> int:
    """The index of the first area from `start` on (cyclically) that is not nested with `own`; `start`
    when every area is."""
    for step in range(len(areas)):
        if not nested(own, areas[(start + step) % len(areas)]):
            return (start + step) % len(areas)
    return start
