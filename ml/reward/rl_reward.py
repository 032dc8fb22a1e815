"""The RL reward: what the policy is trained on and what judges it, as one saved, versioned artifact.

A `RewardSpec` names the parts (registered reward-model versions; the proxy's and the gold side's
area classifiers, stored in the same folder) and how the training reward combines them (`design`).
`RLReward` is its loaded, callable form. Training (PPO, GRPO, RLOO), the evaluation, `rlxf recommend`
and the benchmarks load the same folder, so nothing is refitted and every stage agrees on what
"the reward" was.

With P = the proxy's P(MET) of an answer read as a condition for its prompt's country, arrangement
and area, and A = P(asked area | answer) from the proxy side's area classifier, the designs are:

- "p_met": P, the paper's reward;
- "product": P * A^w;
- "constraint": P + lambda * A, where lambda >= 0 is a Lagrange multiplier that rises while a batch's
  on-topic share is below `on_topic_target` and falls above it (constrained RLHF, Moskovitz et al.,
  ICLR 2024): the topic term weighs exactly as much as it must to meet the target;
- "normalize_then_sum": z(P) + w * z(A), each standardised over the batch (GDPO; TRL's
  `multi_objective_aggregation="normalize_then_sum"`);
- "ensemble": mean - k * std of P over the proxy and its ensemble members (a conservative
  ensemble, Coste et al., ICLR 2024), times A^w when w > 0.

With `quote_threshold` > 0, an answer at least that similar to one of the precedents its grounded prompt
shows (`ml.policy.grounding.quotes_precedent`) gets the lowest reward of its batch, whatever the
design: the reward models rate real MET conditions highly, so a policy shown three of them learns to
quote one back (29% of PPO's test answers in the 51c2d99 demo, 73% of its copies), which tells an analyst
nothing the precedents beside the proposal do not. With `copy_threshold` > 0 the same holds for an answer
that recites a condition the proxy learned from (`CopyRule`): PPO raised the evaluation's copy share from
SFT's 6% to 17% in the 320fe7a demo, since a real MET condition is what the reward models rate highest.
The rule's detector is not the report's: it sees word uni- and bigrams over the proxy's half of the
training split, while the report's copy share counts character n-grams over the whole split, so the
report measures copies the training reward never looked at directly. With `copy_ramp_from` too, the rule
is a ramp rather than a step: an answer between that similarity and `copy_threshold` loses a proportional
share of the way to its batch's lowest reward, so a policy drifting toward a recital pays before it gets
there (off by default: the ablation is in the README). With `floor_repeats`, an answer
that repeats itself (`ml.similarity.repeats_itself`: a stuttered word or a three-word phrase said twice,
as 8.6% of PPO's test answers in the 9156f49 demo did and no historical condition does) earns its
batch's lowest reward too: the reward models read "in line with staff staff recommendations" as they
read the phrase once, so nothing else tells the policy that it is a slip. With `floor_unknown_names`, an
answer that names a body no condition of the proxy's training half names (`ml.similarity.unknown_names`:
"the Ministry of Business Development and Finance", "the Financial Action Task Board"; the half's countries
and arrangement types count as known) earns its batch's lowest reward: 11-16% of PPO's test answers did in
the cb882a5 demo's runs, half of them inventions, and no historical condition did, yet the reward models
rate an invented ministry as they rate a real one (off by default: in 300 s of PPO it lowered that share by
only 2 points; the ablation is in the README).

With `action_rates` (`action_base_rates` of the proxy's training conditions), every design reads P as
P minus its action's premium: the met share of the conditions that open with the answer's first word,
less the met share of all of them (floored at 0). Conditions that open with Submit or Prepare were met
83-86% of the time and those that open with Enact 35%, so P(MET) pays for preparatory actions whatever
follows them; without the premium, an answer is rewarded for what it adds over its action (off by
default: the ablation is in the README).

With `opening_penalty` c > 0, every design's reward loses c times the share of the batch's answers that
open with the answer's first word: a policy that opens most answers with one verb (PPO opened 30-48% of
its test answers with "Prepare" or "Submit" in five fresh-clone demos) pays for it, and an answer with
another action gains over its batch. The share is over the global batch, so N processes reward as one does
(off by default: at 600 s it did not lower that share beyond the default's run-to-run spread and copied
more; the ablation is in the README).

Whichever design trains, the judge is the same (`judged`): the gold model's P(MET) times the gold
side's P(asked area | answer), both fitted on the half of the training split the proxy never saw.
It is the estimate of "a condition that gets met *and* is about the area asked" that checkpoint
selection, the champion rule and the report's headline use.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ml import distributed
from ml.evaluation.metrics import first_word, met_by_first_word
from ml.policy.grounding import quotes_precedent
from ml.policy.prompts import answer_to_condition
from ml.reward.model import RewardModel
from ml.reward.topic import AreaClassifier, area_key
from ml.similarity import KnownNames, NoveltyIndex, repeats_itself

SPEC_FILE = "reward_spec.json"
COPY_CORPUS_FILE = "copy_corpus.json"  # the conditions the copy rule compares answers with
NAME_RECORD_FILE = "name_record.json"  # the texts whose names the unknown-name rule knows
DESIGNS = ("p_met", "product", "constraint", "normalize_then_sum", "ensemble")
RL_REWARD_NAME = "rlxf-rl-reward"
ModelRef = dict  # {"name": registered model name, "version": "3"}


@dataclass(frozen=True)
class RewardSpec:
    """What the training reward is made of (see the module docstring for each design)."""

    design: str
    proxy: ModelRef
    gold: ModelRef
    ensemble: tuple[ModelRef, ...] = ()  # further proxy members for "ensemble"
    topic_weight: float = 0.5  # w of "product", "normalize_then_sum" and "ensemble"
    ensemble_k: float = 1.0  # k of mean - k * std
    on_topic_target: float = 0.9  # "constraint": the on-topic share the multiplier enforces
    multiplier_lr: float = 2.0  # "constraint": lambda += lr * (target - on-topic share) per batch
    initial_multiplier: float = 0.0
    # > 0: an answer this similar to a precedent its prompt shows earns its batch's lowest reward.
    quote_threshold: float = 0.0
    # > 0: an answer this similar to a condition of the proxy's training half earns its batch's lowest reward.
    copy_threshold: float = 0.0
    # > 0 (below copy_threshold): an answer between this similarity and copy_threshold gives up that share of
    # the way from its reward to the batch's lowest, so near-copies already cost (0 = a floor at the threshold).
    copy_ramp_from: float = 0.0
    floor_repeats: bool = False  # an answer that repeats itself earns its batch's lowest reward
    floor_unknown_names: bool = False  # an answer naming a body the name record never names: the batch's lowest
    # first word -> met share of the proxy's training conditions that open with it (`action_base_rates`);
    # non-empty: P(MET) loses its action's premium over `action_overall`, the met share of them all.
    action_rates: dict = field(default_factory=dict)
    action_overall: float = 0.0
    # > 0: an answer loses this times the share of the batch's answers that open with its first word.
    opening_penalty: float = 0.0
    info: dict = field(default_factory=dict)  # provenance: data snapshot hash, area classifier accuracies

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"unknown reward design {self.design!r}; choose one of {DESIGNS}")
        if self.design == "ensemble" and not self.ensemble:
            raise ValueError("the 'ensemble' design needs ensemble members besides the proxy")
        if self.copy_ramp_from and not 0 < self.copy_ramp_from < self.copy_threshold:
            raise ValueError(f"copy_ramp_from ({self.copy_ramp_from}) must lie between 0 and copy_threshold "
                             f"({self.copy_threshold})")

    def options(self) -> dict:
        """The scalar settings of the design and its rules: the RL reward's MLflow params and Dagster metadata."""
        return {"design": self.design, "topic_weight": self.topic_weight, "on_topic_target": self.on_topic_target,
                "quote_threshold": self.quote_threshold, "copy_threshold": self.copy_threshold,
                "copy_ramp_from": self.copy_ramp_from, "floor_repeats": self.floor_repeats,
                "floor_unknown_names": self.floor_unknown_names, "opening_penalty": self.opening_penalty}

    def models(self) -> list[ModelRef]:
        return [self.proxy, self.gold, *self.ensemble]


class CopyRule:
    """Which answers recite a known condition: TF-IDF cosine of word uni- and bigrams to the nearest of
    `corpus` (the proxy's training conditions) at least `threshold`."""

    def __init__(self, corpus: Sequence[str], threshold: float):
        self.corpus = list(corpus)
        self.index = NoveltyIndex(self.corpus, analyzer="word", ngram_range=(1, 2), copy_threshold=threshold)

    def copies(self, conditions: Sequence[str]) -> np.ndarray:
        return self.index.nearest(conditions)["is_copy"].to_numpy(dtype=bool)

    def similarity(self, conditions: Sequence[str]) -> np.ndarray:
        return self.index.nearest(conditions)["similarity"].to_numpy(dtype=float)


class RLReward:
    """A loaded `RewardSpec`: `train_reward` for RL, `judged` for selection and reports. `copy_corpus`
    (the proxy's training conditions) is needed when the spec's `copy_threshold` is set, `name_record`
    (`ml.similarity.name_record` of the proxy's training half) when `floor_unknown_names` is."""

    def __init__(self, spec: RewardSpec, proxy: RewardModel, gold: RewardModel, proxy_area: AreaClassifier,
                 gold_area: AreaClassifier, ensemble: Sequence[RewardModel] = (),
                 copy_corpus: Sequence[str] | None = None, name_record: Sequence[str] | None = None):
        self.spec = spec
        self.proxy, self.gold, self.ensemble = proxy, gold, list(ensemble)
        self.proxy_area, self.gold_area = proxy_area, gold_area
        self.multiplier = spec.initial_multiplier
        # Which answers of the last `train_reward` batch a rule floored: PPO logs their share per step.
        self.last_floored: np.ndarray = np.zeros(0, dtype=bool)
        if spec.copy_threshold > 0 and not copy_corpus:
            raise ValueError("a reward with copy_threshold > 0 needs the conditions it compares answers with")
        self.copy_rule = CopyRule(copy_corpus, spec.copy_threshold) if spec.copy_threshold > 0 else None
        if spec.floor_unknown_names and not name_record:
            raise ValueError("a reward with floor_unknown_names needs the texts whose names it knows")
        self.name_record = list(name_record or [])
        self.known_names = KnownNames(self.name_record) if spec.floor_unknown_names else None

    def variant(self, proxy: RewardModel | None = None, gold: RewardModel | None = None,
                members: Sequence[RewardModel] | None = None, name_record: Sequence[str] | None = None,
                **spec_changes) -> RLReward:
        """This reward with other spec fields or reward models (the benchmark's ablations); the area
        classifiers, the copy rule's conditions and the name record stay unless `name_record` is given;
        `members` replace the ensemble's models."""
        return RLReward(replace(self.spec, **spec_changes), proxy or self.proxy, gold or self.gold,
                        self.proxy_area, self.gold_area, self.ensemble if members is None else members,
                        self.copy_rule.corpus if self.copy_rule else None,
                        self.name_record if name_record is None else name_record)

    # ---- parts ---------------------------------------------------------------------------------

    @staticmethod
    def rows(records: Sequence[Mapping], conditions: Sequence[str]) -> list[dict]:
        return [{"country": r.get("country"), "arrangement_type": r.get("arrangement_type"),
                 "economic_area": r.get("economic_area"), "description": c} for r, c in zip(records, conditions)]

    def components(self, records: Sequence[Mapping], conditions: Sequence[str]) -> pd.DataFrame:
        """Per condition (already cut out of an answer): proxy and gold P(MET), each side's
        P(asked area | condition), and the judged reward."""
        rows, areas = self.rows(records, conditions), [r.get("economic_area") for r in records]
        frame = pd.DataFrame({
            "proxy_p_met": self.proxy.score(rows), "gold_p_met": self.gold.score(rows),
            "proxy_p_area": self.proxy_area.asked_area_probability(conditions, areas),
            "gold_p_area": self.gold_area.asked_area_probability(conditions, areas)})
        return frame.assign(judged_reward=frame["gold_p_met"] * frame["gold_p_area"])

    def judged(self, records: Sequence[Mapping], answers: Sequence[str]) -> np.ndarray:
        """Gold P(MET) x gold P(asked area | answer), per answer."""
        return self.judged_conditions(records, [answer_to_condition(a) for a in answers])

    def judged_conditions(self, records: Sequence[Mapping], conditions: Sequence[str]) -> np.ndarray:
        """The judged reward of conditions already cut out of answers (or real ones): the gold side
        alone, without the proxy's pass that `components` also makes."""
        rows, areas = self.rows(records, conditions), [r.get("economic_area") for r in records]
        return self.gold.score(rows) * self.gold_area.asked_area_probability(conditions, areas)

    # ---- the training reward -------------------------------------------------------------------

    def train_reward(self, records: Sequence[Mapping], answers: Sequence[str]) -> np.ndarray:
        """The design's reward per answer of one batch (batch statistics for the batch designs;
        "constraint" also updates its multiplier from this batch) less the opening penalty; quoted
        precedents, recited training conditions, answers that repeat themselves and names the record never
        names at the batch's lowest. `records` carry each answer's rendered prompt (`prompt_text`) for the
        quote check."""
        conditions = [answer_to_condition(a) for a in answers]
        reward = self._design_reward(records, conditions)
        if self.spec.opening_penalty:
            reward = reward - self.spec.opening_penalty * batch_opening_share(conditions)
        self.last_floored = np.zeros(len(conditions), dtype=bool)
        if self.has_floor_rules:  # the same on every rank: batch_min is a collective
            lowest = batch_min(reward)
            self.last_floored = self.floored(records, conditions)
            reward = np.where(self.last_floored, lowest, reward - self.near_copy_share(conditions) * (reward - lowest))
        return reward

    def near_copy_share(self, conditions: Sequence[str]) -> np.ndarray:
        """Per condition: the share of the way to its batch's lowest reward that `copy_ramp_from` takes
        from it, rising linearly from 0 at that similarity to 1 at `copy_threshold` (0 without a ramp)."""
        start, end = self.spec.copy_ramp_from, self.spec.copy_threshold
        if not start:  # a ramp implies copy_threshold > 0, hence a copy rule (RewardSpec and __init__ check)
            return np.zeros(len(conditions))
        return np.clip((self.copy_rule.similarity(conditions) - start) / (end - start), 0.0, 1.0)

    @property
    def has_floor_rules(self) -> bool:
        return (self.spec.quote_threshold > 0 or self.copy_rule is not None or self.spec.floor_repeats
                or self.spec.floor_unknown_names)

    def floored(self, records: Sequence[Mapping], conditions: Sequence[str]) -> np.ndarray:
        """Per condition: does a rule put it at its batch's lowest reward (a quote, a copy, a repeat, a name
        the record never names)?"""
        repeats = np.array([self.spec.floor_repeats and repeats_itself(c) for c in conditions], dtype=bool)
        unknown = (np.array([bool(names) for names in self.known_names.unknown(conditions)], dtype=bool)
                   if self.known_names else np.zeros(len(conditions), dtype=bool))
        return self.quotes(records, conditions) | self.copies(conditions) | repeats | unknown

    def quotes(self, records: Sequence[Mapping], conditions: Sequence[str]) -> np.ndarray:
        """Per condition: does it quote a precedent its prompt shows (similarity >= quote_threshold)?"""
        if self.spec.quote_threshold <= 0:
            return np.zeros(len(conditions), dtype=bool)
        prompts = [str(r.get("prompt_text") or "") for r in records]
        return quotes_precedent(prompts, conditions, self.spec.quote_threshold)

    def copies(self, conditions: Sequence[str]) -> np.ndarray:
        """Per condition: does it recite a condition of the proxy's training half (the copy rule)?"""
        return self.copy_rule.copies(conditions) if self.copy_rule else np.zeros(len(conditions), dtype=bool)

    def action_premium(self, conditions: Sequence[str]) -> np.ndarray:
        """Per condition: how much more often the proxy's training conditions that open with its first word
        were met than all of them (0 without `action_rates`, or for a word too rare to have a rate)."""
        rates, overall = self.spec.action_rates, self.spec.action_overall
        return np.array([rates.get(first_word(c), overall) - overall if rates else 0.0 for c in conditions])

    def _design_reward(self, records: Sequence[Mapping], conditions: Sequence[str]) -> np.ndarray:
        spec = self.spec
        rows, areas = self.rows(records, conditions), [r.get("economic_area") for r in records]
        premium = self.action_premium(conditions)

        def score(model: RewardModel) -> np.ndarray:
            return np.clip(model.score(rows) - premium, 0.0, 1.0)

        p_met = score(self.proxy)
        p_area = (self.proxy_area.asked_area_probability(conditions, areas)
                  if spec.design != "p_met" else np.ones(len(rows)))
        if spec.design == "p_met":
            return p_met
        if spec.design == "product":
            return p_met * p_area ** spec.topic_weight
        if spec.design == "constraint":
            reward = p_met + self.multiplier * p_area
            on_topic_share = batch_share(p_area >= 0.5)  # over every rank's answers: all ranks keep one multiplier
            self.multiplier = max(0.0, self.multiplier + spec.multiplier_lr * (spec.on_topic_target - on_topic_share))
            return reward
        if spec.design == "normalize_then_sum":
            return _standardise(p_met) + spec.topic_weight * _standardise(p_area)
        members = np.stack([p_met, *(score(member) for member in self.ensemble)])  # "ensemble"
        return (members.mean(0) - spec.ensemble_k * members.std(0)) * p_area ** spec.topic_weight

    __call__ = train_reward  # an RLReward is a RewardFn: (records, answers) -> rewards

    def state_dict(self) -> dict[str, float]:
        return {"multiplier": self.multiplier}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.multiplier = float(state["multiplier"])

    # ---- files ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        self.proxy_area.save(folder / "proxy_area_classifier")
        self.gold_area.save(folder / "gold_area_classifier")
        if self.copy_rule is not None:
            (folder / COPY_CORPUS_FILE).write_text(json.dumps(self.copy_rule.corpus), encoding="utf-8")
        if self.name_record:
            (folder / NAME_RECORD_FILE).write_text(json.dumps(self.name_record), encoding="utf-8")
        (folder / SPEC_FILE).write_text(json.dumps(asdict(self.spec), indent=2, allow_nan=False), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path, load_model: Callable[[ModelRef], RewardModel],
             **overrides) -> RLReward:
        """The reward saved in `folder`; `load_model` turns a model reference into a RewardModel (from
        the registry); `overrides` replace spec fields (the benchmark's design ablation)."""
        spec = read_spec(folder, **overrides)
        def texts(name: str) -> list[str] | None:
            path = Path(folder) / name
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

        return cls(spec, load_model(spec.proxy), load_model(spec.gold),
                   AreaClassifier.load(Path(folder) / "proxy_area_classifier"),
                   AreaClassifier.load(Path(folder) / "gold_area_classifier"),
                   [load_model(member) for member in spec.ensemble], texts(COPY_CORPUS_FILE), texts(NAME_RECORD_FILE))


def read_spec(folder: Path, **overrides) -> RewardSpec:
    raw = json.loads((Path(folder) / SPEC_FILE).read_text(encoding="utf-8"))
    raw["ensemble"] = tuple(raw.get("ensemble", ()))
    return replace(RewardSpec(**raw), **overrides)


def action_base_rates(conditions: pd.DataFrame, at_least: int = 2, prior: float = 10.0) -> tuple[dict, float]:
    """The met share of `conditions` per first word (those that open at least `at_least` of them), each shrunk
    toward the overall share by `prior` pseudo-conditions, and the overall share."""
    overall = float((conditions["is_met"] == 1).mean())
    rates = {word: round((float(row.met) + prior * overall) / (row.conditions + prior), 4)
             for word, row in met_by_first_word(conditions).iterrows() if row.conditions >= at_least}
    return rates, round(overall, 4)


def fit_area_classifiers(half_a: pd.DataFrame, half_b: pd.DataFrame,
                         seed: int) -> tuple[AreaClassifier, AreaClassifier]:
    """The proxy side's and the gold side's area classifiers, each on the training half its reward
    model learned from, so the judge shares none of the proxy's data."""
    return AreaClassifier.fit(half_a, seed=seed), AreaClassifier.fit(half_b, seed=seed + 1)


def on_topic(classifier: AreaClassifier, conditions: Sequence[str], areas: Sequence[object]) -> np.ndarray:
    """1.0 when `classifier` puts the condition in the asked area, 0.0 when not, NaN when the asked
    area is unknown to it."""
    return classifier.on_topic(pd.DataFrame({"answer": list(conditions), "economic_area": list(areas)}))


# The batch designs' statistics are over the global batch: under `accelerate launch` each rank scores
# its shard, and the sums below run over all ranks (ml/distributed.py), so N processes reward each answer
# as one process does.

def batch_share(flags: np.ndarray) -> float:
    """Share of True over the global batch."""
    totals = distributed.current().sum(torch.tensor([float(np.sum(flags)), float(len(flags))], dtype=torch.float64))
    return float(totals[0] / totals[1])


def batch_min(values: np.ndarray) -> float:
    """Lowest value of the global batch (+inf where it is empty)."""
    local = float(np.min(values)) if len(values) else math.inf
    return -float(distributed.current().max(torch.tensor([-local], dtype=torch.float64))[0])


def batch_opening_share(conditions: Sequence[str]) -> np.ndarray:
    """Per condition: the share of the global batch's conditions that open with its first word (0 for one
    with no word)."""
    words = [first_word(c) for c in conditions]
    counts = Counter(distributed.current().gather_objects(words))
    total = sum(counts.values())
    return np.array([counts[word] / total if word else 0.0 for word in words])


def _standardise(values: np.ndarray) -> np.ndarray:
    """(values - mean) / std over the global batch (population std); centred only when it has no spread."""
    dist = distributed.current()
    totals = dist.sum(torch.tensor([float(np.sum(values)), float(len(values))], dtype=torch.float64))
    mean = float(totals[0] / totals[1])
    squares = dist.sum(torch.tensor([float(np.sum((values - mean) ** 2))], dtype=torch.float64))
    std = math.sqrt(float(squares[0] / totals[1]))
    return (values - mean) / std if std > 1e-8 and math.isfinite(std) else values - mean


__all__ = ["DESIGNS", "RL_REWARD_NAME", "CopyRule", "RLReward", "RewardSpec", "area_key", "fit_area_classifiers",
           "on_topic", "read_spec"]
