"""`rlxf recommend` and `rlxf score`: the champion policy's proposals and the reward's view of a condition.

The paper's intended use: benchmark new proposals against past experience and peer examples. A
recommendation samples several answers from the champion policy (the registered MLflow Model, which
prompts as the policy was trained; a grounded policy's answers are split over three draws of the
precedents its prompt shows, so that they do not all build on the same one), drops empty proposals and
repeats, ranks the rest by the RL reward the policy was trained on (proxy P(MET) x P(asked area)), and
shows for each its proxy and gold P(MET), the probability that it is about the area asked, whether it
copies a training condition, and the closest historical conditions of the same area (the same country's
first, when they share more than the country with the proposal) with their year and outcome.

Both commands read the inputs against the record: an empty condition is refused, and a country,
arrangement or area the data has never seen is accepted with a warning naming the closest known
values (the reward model has never seen it either, so its number means less). `recommend` refuses an
economic area the record does not hold, naming the closest ones: neither the policy nor the reward's
area classifier knows it, so the policy would only echo the name. Proposals that are new come before
near-verbatim copies of training conditions, which are shown, flagged, only to fill the n asked for;
among each, proposals that name a year already past (the policy learnt dates from old conditions) come
after those that do not, flagged, since their deadline has to be rewritten. Proposals that the training
reward's area classifier puts in another area (P(asked area) < 0.5) come after every on-topic one, and
answers cut off at the token limit ("... by mid-August 200") last of all, both flagged. An answer that
repeats itself ("in line with staff staff recommendations") comes after those that do not, flagged, and one
that opens with a form of the record's verb that no condition opens with ("Submits to Parliament",
"Submitting to parliament" where the record says "Submit") after those, flagged with the record's form.
Two flags say that a proposal is not a new condition for this country: one that restates a condition the
country already had in the area (all but a few of its word pairs, with or without additions) comes right
after the copies, and one that names another country of the record ("... in the framework of the Central
African Republic" for Bosnia and Herzegovina) after those. After those comes one that names a body no
condition of the record names ("the Ministry of Business Development and Finance", "the Labour Party"):
the policy invents institutions now and then, and an analyst should check that it exists. Then one that
borrows words of the question that no condition of the record uses ("Finalize draft conditions for the
medium-term budget framework", "a draft policy proposal for ..."): it speaks of the request rather than
stating a measure.
Last, the n proposals are different ones where the samples allow: a proposal that only rewords a
better-ranked one (the same words of the area, by TF-IDF) comes after every other with no worse flag,
flagged with the number of the proposal it rewords; and one that opens with the same action (first word) as
a better-ranked one comes after those with no worse flag that open otherwise, so that the n shown are
different kinds of step where the samples offer them (the tuned policy opens about half its answers with
one verb).
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from ml.data.splits import SPLITS, read_split
from ml.evaluation.metrics import first_word, is_slip, met_by_first_word, tokens
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME
from ml.policy.prompts import prompt_echoes
from ml.registry import Registry
from ml.reward.pipeline import load_rl_reward
from ml.reward.rl_reward import RL_REWARD_NAME
from ml.reward.topic import area_key
from ml.similarity import NoveltyIndex, at_least, name_record, repeats_itself, unknown_names

OVERSAMPLE = 4  # answers drawn per proposal asked for, so that n distinct ones remain after cleaning
# Prompts with different draws of the precedents the answers are sampled under (a grounded policy
# builds its answer on one precedent it is shown): on ten held-out queries of the demo, three draws
# gave three proposals about different things where one draw gave three about the same precedent.
PRECEDENT_DRAWS = 3
# Output columns a policy registered before them lacks, and what their absence means.
OUTPUT_DEFAULTS = {"complete": True, "least_likely_word": "", "least_likely_logprob": 0.0}
OFF_TOPIC_BELOW = 0.5  # the training side's P(asked area) under which a proposal is taken for another area's
# TF-IDF cosine (the area's words) at which a proposal only rewords a better-ranked one. Ghana's demo
# samples for customs: "Finalize a strategy for the customs clearance process, including the approval of
# a unit for compliance management ..." against "Finalize on a strategy for the customs clearance process,
# staff at the revenue authority ..." 0.75, and against "... process, within the framework of the new
# registry of customs valuation controls" 0.53; "Submit to Parliament a draft amendment to the legal
# framework for customs valuation controls ..." against any of them 0.23-0.28.
VARIANT_AT = 0.5
# Share of a condition's word pairs that a proposal holds, at which the proposal restates it. Ghana's
# "Submit to the Council of Ministers draft amendments to the legal framework for customs valuation controls,
# outline specific measures for ..." holds all of Ghana's 2023 condition (met) and adds to it; a next step
# on the same object, Argentina's "Finalize a framework for the public investment management system, in
# collaboration with the Ministry of Finance" after its 2015 "Implement the new framework for the public
# investment management system, in coordination with the Revenue Authority", holds 53% of it.
RESTATES_AT = 0.8
# TF-IDF cosine (the area's words) from which a condition of the country asked counts as a precedent of a
# proposal and is listed before closer conditions of other countries. Below it, the same country is all they
# share: Bosnia and Herzegovina's "Adopt a government decree on state-owned banks" (0.02) against "Finalize a
# plan for the financial sector development strategy", which Barbados's decree on that strategy matches.
OWN_COUNTRY_FROM = 0.2
# Fewest conditions of the area that open with a proposal's first word for their met share to be shown.
MIN_ACTION_CONDITIONS = 10


class InputError(ValueError):
    """A request that cannot be answered (an empty condition; for recommend, an unknown area)."""


@dataclass
class ActionRecord:
    """The area's conditions that open with a proposal's first word ("prepare"), and how many were met.
    P(MET) depends much on the action: in the record, four in five conditions that open with Prepare or
    Submit were met, one in three that open with Enact."""
    word: str
    met: int
    conditions: int
    area_met_share: float  # the share met among all the area's conditions

    @property
    def met_share(self) -> float:
        return self.met / self.conditions


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
    repeats: bool = False  # stutters or says a phrase twice
    rewords: int | None = None  # the number (1-based) of the better-ranked proposal it merely rewords
    restates: str | None = None  # the condition of this country and area it restates, as a precedent line
    other_countries: list[str] = field(default_factory=list)  # countries of the record it names, not the one asked
    unknown_names: list[str] = field(default_factory=list)  # capitalised names no condition of the record has
    action: ActionRecord | None = None  # how often the area's conditions that open as it does were met
    slip: str | None = None  # the word the policy drew at a probability under SLIP_BELOW ("" for its end)
    record_opening: str | None = None  # the record's form of its first word, when it opens with another
    echoes: list[str] = field(default_factory=list)  # words of the prompt no condition of the record uses

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


# Endings of a verb's other forms, and what may have been dropped before them: "submitting" is "submit"
# with its last consonant doubled, "prepared" and "preparing" are "prepare" without its "e".
_VERB_ENDINGS = (("ing", ("", "e")), ("ed", ("", "e")), ("es", ("",)), ("s", ("",)))


def record_opening(text: str, openings: Collection[str]) -> str | None:
    """The record's form of a proposal's first word when the proposal opens with another form of it
    ("Submits", "Submitting" or "Submitted" for "submit") that no condition in `openings` (the record's
    lower-cased first words) opens with: conditions are instructions, and "Submitting to parliament ..."
    reads as a slip. None when the proposal opens as the record does, or with no form of its verbs."""
    word = first_word(text)
    if not word or word in openings:
        return None
    for ending, dropped in _VERB_ENDINGS:
        if not word.endswith(ending) or len(word) < len(ending) + 3:
            continue
        stem = word[:-len(ending)]
        forms = [stem + letter for letter in dropped]
        if stem[-1] == stem[-2]:
            forms.append(stem[:-1])
        found = next((form for form in forms if form in openings), None)
        if found:
            return found
    return None


def other_countries(texts: Sequence[str], countries: Sequence[str], asked: str | None) -> list[list[str]]:
    """For each text, the countries of `countries` it names, other than `asked` (whole names, the longest
    first, so that "Guinea-Bissau" is not read as "Guinea"); none when no country was asked."""
    names = sorted({str(c) for c in countries if isinstance(c, str) and c.strip()}, key=len, reverse=True)
    if not names or not asked or not str(asked).strip():
        return [[] for _ in texts]
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    asked_key = str(asked).casefold()
    return [list(dict.fromkeys(name for name in pattern.findall(text) if name.casefold() != asked_key))
            for text in texts]


def word_pairs(text: str) -> set[tuple[str, str]]:
    words = tokens(text)
    return set(zip(words, words[1:]))


def analyst_flags(proposals: list[Proposal]) -> list[list[bool]]:
    """The flags that rank a proposal lower, the most severe first."""
    return [[p.cut_off for p in proposals], [p.off_topic for p in proposals],
            [p.copy_of is not None for p in proposals], [p.restates is not None for p in proposals],
            [bool(p.other_countries) for p in proposals], [p.slip is not None for p in proposals],
            [bool(p.unknown_names) for p in proposals], [bool(p.echoes) for p in proposals],
            [bool(p.past_years) for p in proposals],
            [p.repeats for p in proposals], [p.record_opening is not None for p in proposals]]


def analyst_order(reward: Sequence[float], demotions: list[Sequence[bool]]) -> np.ndarray:
    """Order of proposals: by the flags in `demotions` (boolean arrays, the most severe first: a proposal
    flagged by one comes after every proposal it does not flag, ties broken by the next), then by
    descending reward."""
    keys = [-np.asarray(reward, dtype=float), *(np.asarray(flags, dtype=bool) for flags in reversed(demotions))]
    return np.lexsort(keys)


class AreaRecord:
    """The record's conditions of one economic area, under a word uni- and bigram TF-IDF fitted on them,
    so that the words every condition of the area shares weigh little."""

    def __init__(self, corpus: pd.DataFrame, area: str):
        self.conditions = corpus[corpus["economic_area"].map(area_key) == area_key(area)].reset_index(drop=True)
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        if not self.conditions.empty:
            self.matrix = self.vectorizer.fit_transform(self.conditions["description"].fillna(""))

    def precedents(self, country: str, texts: list[str], k: int = 3) -> list[list[str]]:
        """For each text, the k conditions closest to it, with their country, year, outcome and similarity:
        those of `country` at least `OWN_COUNTRY_FROM` similar first, then the rest by similarity."""
        if self.conditions.empty:
            return [[] for _ in texts]
        similarities = (self.matrix @ self.vectorizer.transform(texts).T).toarray().T  # one row per text
        same_country = self.of_country(country)
        return [[self.line(index, f", similarity {similarity[index]:.2f}")
                 for index in np.lexsort((-similarity, ~(same_country & (similarity >= OWN_COUNTRY_FROM))))[:k]]
                for similarity in similarities]

    def of_country(self, country: str) -> np.ndarray:
        return (self.conditions["country"].fillna("").str.casefold() == str(country).casefold()).to_numpy()

    def line(self, index: int, note: str = "") -> str:
        """A condition of the area as a precedent: "Ghana 2023 (met<note>): <its text>"."""
        row = self.conditions.iloc[index]
        year = "" if pd.isna(row.get("test_year")) else f" {int(row['test_year'])}"
        outcome = "met" if row["is_met"] == 1 else "not met"
        return f"{row['country']}{year} ({outcome}{note}): {row['description']}"

    def actions(self, texts: list[str], at_least_conditions: int = MIN_ACTION_CONDITIONS) -> list[ActionRecord | None]:
        """For each text, the area's conditions that open with its first word; None when there are fewer than
        `at_least_conditions` of them."""
        if self.conditions.empty:
            return [None] * len(texts)
        per_word = met_by_first_word(self.conditions)
        met_share = float((self.conditions["is_met"] == 1).mean())
        return [ActionRecord(word, int(per_word.at[word, "met"]), int(per_word.at[word, "conditions"]), met_share)
                if word in per_word.index and per_word.at[word, "conditions"] >= at_least_conditions else None
                for word in map(first_word, texts)]

    def restated(self, country: str, texts: list[str], at: float = RESTATES_AT) -> list[str | None]:
        """For each text, the condition of `country` in this area that it restates (holds at least `at` of
        its word pairs, the most held first), as a precedent line; None when it restates none."""
        if self.conditions.empty:
            return [None] * len(texts)
        pairs = {index: word_pairs(self.conditions.at[index, "description"])
                 for index in np.flatnonzero(self.of_country(country))}
        pairs = {index: p for index, p in pairs.items() if len(p) >= 2}  # a one-word condition restates nothing
        found: list[str | None] = []
        for text in texts:
            held = word_pairs(text)
            shares = {index: len(p & held) / len(p) for index, p in pairs.items()}
            best = max(shares, key=shares.get, default=None)
            found.append(self.line(best) if best is not None and at_least(shares[best], at) else None)
        return found

    def variants(self, texts: list[str], at: float = VARIANT_AT) -> list[int | None]:
        """For each text (best first), the earlier text it merely rewords (cosine >= `at`), None when it
        is a proposal of its own. Only the earlier proposals of their own count as originals."""
        if self.conditions.empty or not texts:
            return [None] * len(texts)
        vectors = self.vectorizer.transform(texts)
        similarity = (vectors @ vectors.T).toarray()
        found: list[int | None] = []
        for i in range(len(texts)):
            own = [j for j in range(i) if found[j] is None]
            closest = max(own, key=lambda j: similarity[i, j], default=None)
            found.append(closest if closest is not None and at_least(similarity[i, closest], at) else None)
        return found


def different_first(ranked: list[Proposal], record: AreaRecord) -> list[Proposal]:
    """n different proposals rather than n wordings of the best one: a proposal that rewords a better-
    ranked one goes after every proposal of its own that carries no worse flag, marked with the number
    of the one it rewords (which always ranks before it); after those, one whose action (first word) a
    better-ranked proposal already opens with."""
    rewords = record.variants([p.text for p in ranked])
    actions = [first_word(p.text) for p in ranked]
    repeated_action = [actions[i] in actions[:i] for i in range(len(ranked))]
    order = analyst_order(-np.arange(len(ranked)),
                          [*analyst_flags(ranked), [r is not None for r in rewords], repeated_action])
    number = {index: place for place, index in enumerate(order, 1)}
    for proposal, original in zip(ranked, rewords):
        proposal.rewords = None if original is None else number[original]
    return [ranked[i] for i in order]


def declares_precedent_draws(policy) -> bool:
    """Whether a loaded policy model takes the `precedent_draws` parameter (those registered before it
    existed do not: MLflow would drop it with a warning)."""
    return "precedent_draws" in {spec.name for spec in getattr(policy.metadata.get_params_schema(), "params", [])}


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


def load_champion(registry: Registry, model_config: dict | None = None):
    """The champion policy (its registry version and the loaded MLflow Model, `model_config` passed to it)
    and the RL reward it was trained on (`RLReward`, its version). LookupError when there is no champion."""
    champion = registry.champion_version(POLICY_ADAPTER_NAME)
    if champion is None:
        raise LookupError(f"{POLICY_ADAPTER_NAME} has no champion yet: run the pipeline first (make demo)")
    reward, reward_version = load_rl_reward(registry, champion.tags.get("rl_reward_version"))
    return champion, registry.load_model(POLICY_ADAPTER_NAME, champion.version, model_config), reward, reward_version


def recommend(home: DataHome, country: str, arrangement: str | None, area: str, n: int = 3, seed: int = 0,
              cache_dir: Path | None = None, current_year: int | None = None,
              precedent_draws: int = PRECEDENT_DRAWS) -> Proposals:
    """`cache_dir`: where the policy's base model is cached (default: where it was when it was trained);
    `current_year` (default: this year): a proposal naming an earlier year is flagged and ranked lower;
    `precedent_draws`: how many draws of the precedents the answers are split over (1: the trained prompt)."""
    current_year = current_year or datetime.date.today().year
    corpus = corpus_of(home)
    known_area(corpus, area)  # refuses an unknown area before any model loads
    warnings = input_warnings(corpus, country, arrangement, area)
    with Registry.for_home(home.root) as registry:
        champion, policy, reward, reward_version = load_champion(
            registry, {"base_model_cache": str(cache_dir)} if cache_dir else None)
    request = {"country": country, "arrangement_type": arrangement, "economic_area": area}
    # Sampled at the policy's own temperature, from the prompt it was trained on (grounded or not) and,
    # grounded, from the same prompt with other draws of the precedents (a policy registered before that
    # parameter existed does not declare it: it samples all its answers under the trained prompt).
    params = {"n": n * OVERSAMPLE, "seed": seed}
    if declares_precedent_draws(policy):
        params["precedent_draws"] = precedent_draws
    answers = policy.predict(pd.DataFrame([{k: v for k, v in request.items() if v is not None}]), params=params)
    prompt = policy.unwrap_python_model().prompt(country, arrangement, area)
    # A policy registered before its output said so: every answer complete, none slipped.
    for column, default in OUTPUT_DEFAULTS.items():
        if column not in answers:
            answers[column] = default
    conditions, cut_off, slips, seen = [], [], [], set()
    # Complete answers first, then the least slipped, so that a repeat keeps its best form.
    for text, complete, word, logprob in answers.sort_values(
            ["complete", "least_likely_logprob"], ascending=False, kind="stable")[
            ["proposal", "complete", "least_likely_word", "least_likely_logprob"]].itertuples(index=False):
        key = " ".join(text.casefold().split()).rstrip(".")
        if key and key not in seen:
            seen.add(key)
            conditions.append(text)
            cut_off.append(not complete)
            slips.append(word if is_slip(logprob) else None)
    items: list[Proposal] = []
    if conditions:
        parts = reward.components([request] * len(conditions), conditions)
        copies = NoveltyIndex(corpus["description"]).nearest(conditions)
        record = AreaRecord(corpus, area)
        openings = set(corpus["description"].map(first_word).dropna())
        candidates = [Proposal(text, float(row.proxy_p_met), float(row.gold_p_met), float(row.gold_p_area),
                               copy.nearest if copy.is_copy else None, [], past_years(text, current_year), cut,
                               float(row.proxy_p_area), repeats_itself(text), restates=restated,
                               other_countries=named, unknown_names=unknown, slip=slip, echoes=echoes,
                               record_opening=record_opening(text, openings))
                      for text, row, copy, cut, restated, named, unknown, slip, echoes in zip(
                          conditions, parts.itertuples(index=False), copies.itertuples(index=False), cut_off,
                          record.restated(country, conditions),
                          other_countries(conditions, corpus["country"].dropna().unique(), country),
                          unknown_names(conditions, name_record(corpus)), slips,
                          prompt_echoes(corpus["description"]).echoes(conditions))]
        # Ranked by the training side of the reward (proxy P(MET) x P(area)) after the flags an analyst
        # cares about, the worst first; the gold judge stays a judge.
        ranked = [candidates[i] for i in analyst_order([p.proxy_p_met * p.proxy_p_area for p in candidates],
                                                       analyst_flags(candidates))]
        items = different_first(ranked, record)[:n]
        texts = [p.text for p in items]
        for item, precedents, action in zip(items, record.precedents(country, texts), record.actions(texts)):
            item.precedents, item.action = precedents, action
    if len(items) < n:
        warnings.append(f"only {len(items)} distinct non-empty proposal(s) among {len(answers)} sampled answers")
    header = (f"{prompt}\n(policy: {POLICY_ADAPTER_NAME} v{champion.version}, champion; reward: {RL_REWARD_NAME} "
              f"v{reward_version}: {reward.spec.proxy['name']} v{reward.spec.proxy['version']}, judged by "
              f"{reward.spec.gold['name']} v{reward.spec.gold['version']})")
    return Proposals(header, warnings, items)
