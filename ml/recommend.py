"""`rlxf recommend` and `rlxf score`: the champion policy's proposals and the reward's view of a condition.

The paper's intended use: benchmark new proposals against past experience and peer examples. A
recommendation samples several answers from the champion policy (the registered MLflow Model, which
prompts as the policy was trained), drops empty proposals and repeats, ranks the rest by the RL reward
the policy was trained on (proxy P(MET) x
P(asked area)), and shows for each its proxy and gold P(MET), the probability that it is about the
area asked, whether it copies a training condition, and the closest historical conditions of the
same area (the same country's first) with their year and outcome.

Both commands read the inputs against the record: an empty condition is refused, and a country,
arrangement or area the data has never seen is accepted with a warning naming the closest known
values (the reward model has never seen it either, so its number means less). `recommend` refuses an
economic area the record does not hold, naming the closest ones: neither the policy nor the reward's
area classifier knows it, so the policy would only echo the name. Proposals that are new come before
near-verbatim copies of training conditions, which are shown, flagged, only to fill the n asked for;
among each, proposals that name a year already past (the policy learnt dates from old conditions) come
after those that do not, flagged, since their deadline has to be rewritten. Proposals that the training
reward's area classifier puts in another area (P(asked area) < 0.5) come after every on-topic one, and
answers cut off at the token limit ("... by mid-August 200") last of all, both flagged.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from ml.data.splits import SPLITS, read_split
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME
from ml.registry import Registry
from ml.reward.pipeline import load_rl_reward
from ml.reward.rl_reward import RL_REWARD_NAME
from ml.reward.topic import area_key
from ml.similarity import NoveltyIndex

OVERSAMPLE = 4  # answers drawn per proposal asked for, so that n distinct ones remain after cleaning
OFF_TOPIC_BELOW = 0.5  # the training side's P(asked area) under which a proposal is taken for another area's


class InputError(ValueError):
    """A request that cannot be answered (an empty condition; for recommend, an unknown area)."""


@dataclass
class Proposal:
    text: str
    proxy_p_met: float
    gold_p_met: float
    p_area: float  # the gold side's P(asked area | proposal)
    copy_of: str | None  # the training condition it copies (near-verbatim), if any
    precedents: list[str] = field(default_factory=list)
    past_years: list[int] = field(default_factory=list)  # years it names that are already past
    cut_off: bool = False  # the answer reached the token limit before it ended
    proxy_p_area: float = 1.0  # the training side's P(asked area | proposal), which ranks it

    @property
    def off_topic(self) -> bool:
        return self.proxy_p_area < OFF_TOPIC_BELOW


@dataclass
class Proposals:
    header: str
    warnings: list[str]
    items: list[Proposal]


@dataclass
class Scored:
    header: str
    warnings: list[str]
    proxy_p_met: float
    gold_p_met: float
    p_area: float


def corpus_of(home: DataHome) -> pd.DataFrame:
    return pd.concat([read_split(home.exports / "splits", split) for split in SPLITS], ignore_index=True)


def input_warnings(corpus: pd.DataFrame, country: str | None, arrangement: str | None, area: str | None) -> list[str]:
    """One line per value the record has never seen, with the closest values it has."""
    lines = []
    for label, value, column, key in (("country", country, "country", str.casefold),
                                      ("arrangement", arrangement, "arrangement_type", str.casefold),
                                      ("economic area", area, "economic_area", lambda a: area_key(a) or "")):
        if value is None or not str(value).strip():
            continue
        known = sorted({str(v) for v in corpus[column].dropna().unique()})
        if key(str(value)) in {key(k) for k in known}:
            continue
        close = difflib.get_close_matches(str(value), known, n=3, cutoff=0.4)
        hint = f"; closest known: {', '.join(repr(c) for c in close)}" if close else ""
        lines.append(f"{label} {value!r} does not occur in the data (the reward model never saw it){hint}")
    return lines


def known_area(corpus: pd.DataFrame, area: str) -> str:
    """The record's name of the economic area asked for (matched as `area_key` matches, so numbering and
    case do not matter); an area the record does not hold is an InputError naming the closest ones."""
    known = {area_key(name): name for name in corpus["economic_area"].dropna().unique()}
    if area_key(area) in known:
        return known[area_key(area)]
    close = difflib.get_close_matches(str(area), sorted(known.values()), n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
    raise InputError(f"economic area {area!r} does not occur in the record, so no policy or reward knows it{hint}")


YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")


def past_years(text: str, current_year: int) -> list[int]:
    """The years before `current_year` that a proposal names ("by end-December 2002")."""
    return sorted({int(year) for year in YEAR.findall(text) if int(year) < current_year})


def analyst_order(reward: Sequence[float], demotions: list[Sequence[bool]]) -> np.ndarray:
    """Order of proposals: by the flags in `demotions` (boolean arrays, the most severe first: a proposal
    flagged by one comes after every proposal it does not flag, ties broken by the next), then by
    descending reward."""
    keys = [-np.asarray(reward, dtype=float), *(np.asarray(flags, dtype=bool) for flags in reversed(demotions))]
    return np.lexsort(keys)


def precedents_for(corpus: pd.DataFrame, country: str, area: str, texts: list[str], k: int = 3) -> list[list[str]]:
    """For each text, the k historical conditions of the same area closest to it (TF-IDF cosine), those of
    the same country first; with their country, year and outcome."""
    same_area = corpus[corpus["economic_area"].map(area_key) == area_key(area)].reset_index(drop=True)
    if same_area.empty:
        return [[] for _ in texts]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    matrix = vectorizer.fit_transform(same_area["description"].fillna(""))
    similarities = (matrix @ vectorizer.transform(texts).T).toarray().T  # one row per text
    same_country = (same_area["country"].fillna("").str.casefold() == str(country).casefold()).to_numpy()
    found = []
    for similarity in similarities:
        lines = []
        for index in np.lexsort((-similarity, ~same_country))[:k]:
            row = same_area.iloc[index]
            year = "" if pd.isna(row.get("test_year")) else f" {int(row['test_year'])}"
            outcome = "met" if row["is_met"] == 1 else "not met"
            lines.append(f"{row['country']}{year} ({outcome}, similarity {similarity[index]:.2f}): "
                         f"{row['description']}")
        found.append(lines)
    return found


def score(home: DataHome, country: str, arrangement: str | None, area: str | None, condition: str) -> Scored:
    if not condition or not condition.strip():
        raise InputError("the condition is empty: there is nothing to score")
    with Registry.for_home(home.root) as registry:
        versions = registry.versions(RL_REWARD_NAME)
        if not versions:
            raise LookupError(f"no {RL_REWARD_NAME} is registered yet: run the pipeline first (make demo)")
        reward, reward_version = load_rl_reward(registry, versions[-1].version)
    record = {"country": country, "arrangement_type": arrangement, "economic_area": area}
    parts = reward.components([record], [condition.strip()]).iloc[0]
    spec = reward.spec
    header = (f"{spec.proxy['name']} v{spec.proxy['version']} (proxy), {spec.gold['name']} v{spec.gold['version']} "
              f"(gold), from {RL_REWARD_NAME} v{reward_version}")
    return Scored(header, input_warnings(corpus_of(home), country, arrangement, area), float(parts["proxy_p_met"]),
                  float(parts["gold_p_met"]), float(parts["gold_p_area"]))


def recommend(home: DataHome, country: str, arrangement: str | None, area: str, n: int = 3, seed: int = 0,
              cache_dir: Path | None = None, current_year: int | None = None) -> Proposals:
    """`cache_dir`: where the policy's base model is cached (default: where it was when it was trained);
    `current_year` (default: this year): a proposal naming an earlier year is flagged and ranked lower."""
    current_year = current_year or datetime.date.today().year
    corpus = corpus_of(home)
    known_area(corpus, area)  # refuses an unknown area before any model loads
    warnings = input_warnings(corpus, country, arrangement, area)
    with Registry.for_home(home.root) as registry:
        champion = registry.champion_version(POLICY_ADAPTER_NAME)
        if champion is None:
            raise LookupError(f"{POLICY_ADAPTER_NAME} has no champion yet: run the pipeline first (make demo)")
        reward, reward_version = load_rl_reward(registry, champion.tags.get("rl_reward_version"))
        policy = registry.load_model(POLICY_ADAPTER_NAME, champion.version,
                                     {"base_model_cache": str(cache_dir)} if cache_dir else None)
    request = {"country": country, "arrangement_type": arrangement, "economic_area": area}
    # Sampled at the policy's own temperature, from the prompt it was trained on (grounded or not).
    answers = policy.predict(pd.DataFrame([{k: v for k, v in request.items() if v is not None}]),
                             params={"n": n * OVERSAMPLE, "seed": seed})
    prompt = policy.unwrap_python_model().prompt(country, arrangement, area)
    if "complete" not in answers:  # a policy registered before its output said so
        answers = answers.assign(complete=True)
    conditions, cut_off, seen = [], [], set()
    # Complete answers first, so that a repeat keeps its complete form.
    for text, complete in answers.sort_values("complete", ascending=False, kind="stable")[
            ["proposal", "complete"]].itertuples(index=False):
        key = " ".join(text.casefold().split()).rstrip(".")
        if key and key not in seen:
            seen.add(key)
            conditions.append(text)
            cut_off.append(not complete)
    items: list[Proposal] = []
    if conditions:
        parts = reward.components([request] * len(conditions), conditions)
        copies = NoveltyIndex(corpus["description"]).nearest(conditions)
        candidates = [Proposal(text, float(row.proxy_p_met), float(row.gold_p_met), float(row.gold_p_area),
                               copy.nearest if copy.is_copy else None, [], past_years(text, current_year), cut,
                               float(row.proxy_p_area))
                      for text, row, copy, cut in zip(conditions, parts.itertuples(index=False),
                                                      copies.itertuples(index=False), cut_off)]
        # Ranked by the training side of the reward (proxy P(MET) x P(area)) after the flags an analyst
        # cares about, the worst first; the gold judge stays a judge.
        order = analyst_order([p.proxy_p_met * p.proxy_p_area for p in candidates],
                              [[p.cut_off for p in candidates], [p.off_topic for p in candidates],
                               [p.copy_of is not None for p in candidates], [bool(p.past_years) for p in candidates]])
        items = [candidates[i] for i in order[:n]]
        for item, precedents in zip(items, precedents_for(corpus, country, area, [p.text for p in items])):
            item.precedents = precedents
    if len(items) < n:
        warnings.append(f"only {len(items)} distinct non-empty proposal(s) among {len(answers)} sampled answers")
    header = (f"{prompt}\n(policy: {POLICY_ADAPTER_NAME} v{champion.version}, champion; reward: {RL_REWARD_NAME} "
              f"v{reward_version}: {reward.spec.proxy['name']} v{reward.spec.proxy['version']}, judged by "
              f"{reward.spec.gold['name']} v{reward.spec.gold['version']})")
    return Proposals(header, warnings, items)
