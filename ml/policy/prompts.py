"""The policy's prompts: the paper's template over each (country, arrangement, economic area).

One prompt per distinct combination of a split, carrying the metadata the reward model needs to
score an answer (the reward text is built from country, arrangement type, area and the answer) and
the historical record of that combination (how many of its conditions were met). Also here: how a
prompt is rendered for a given tokenizer (its chat template when it has one) and how a generated
answer is cut down to one condition before it is scored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import pandas as pd
from transformers import PreTrainedTokenizerBase

from ml.policy.grounding import PRECEDENTS_PREFIX, RECORD_LINE, Grounding
from ml.similarity import PromptEchoes

PROMPT_TEMPLATE = (
    "Given the economic indicators and historical performance of {country}, what would be an appropriate "
    "policy proposal under the {arrangement} for achieving {area}? Describe the proposed condition."
)
# The paper's prompts name an arrangement ("ECF arrangement"); conditions without a known type
# still need a grammatical sentence.
UNKNOWN_ARRANGEMENT = "IMF-supported program"
UNKNOWN = "Unknown"  # as ml.data.text renders a missing field
PLAIN_PROMPT_SUFFIX = "\nProposed condition:"
KEY_COLUMNS = ["country", "arrangement_type", "economic_area"]
PROMPT_COLUMNS = ["prompt_id", *KEY_COLUMNS, "prompt", "split", "n_conditions", "n_met"]


def prompt_words() -> set[str]:
    """The lower-case words the prompts are built of, without what fills them: the question's and, in a
    grounded prompt, the record's and the precedents' lines ("... (Ghana, not met)")."""
    # render_arrangement fills {arrangement} with "<type> arrangement".
    scaffold = " ".join([PROMPT_TEMPLATE, "arrangement", RECORD_LINE, PRECEDENTS_PREFIX, "met not met"])
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", scaffold).casefold()))


def prompt_echoes(record: Sequence[str]) -> PromptEchoes:
    """The words of these prompts that the conditions of `record` do not use (`ml.similarity.PromptEchoes`)."""
    return PromptEchoes(prompt_words(), [text for text in record if isinstance(text, str)])


def render_arrangement(arrangement_type: str | None) -> str:
    code = _clean(arrangement_type)
    if code is None or code.lower() == UNKNOWN.lower():
        return UNKNOWN_ARRANGEMENT
    return f"{code} arrangement"


def render_prompt(country: str | None, arrangement_type: str | None, economic_area: str | None) -> str:
    return PROMPT_TEMPLATE.format(country=_clean(country) or UNKNOWN,
                                  arrangement=render_arrangement(arrangement_type),
                                  area=_clean(economic_area) or UNKNOWN)


def prompt_id(split: str, country: str | None, arrangement_type: str | None, economic_area: str | None) -> str:
    """Stable across runs and row orders: the same combination always gets the same id."""
    key = "|".join([split, *(_clean(value) or "" for value in (country, arrangement_type, economic_area))])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def build_policy_prompts(splits: pd.DataFrame, split: str, limit: int | None = None, seed: int = 0,
                         grounding: Grounding | None = None) -> pd.DataFrame:
    """One row per distinct (country, arrangement_type, economic_area) of `split`, sorted by those
    keys; `limit` keeps a seeded random sample of that many combinations. With `grounding`, the
    prompt is the paper's question followed by the country's record and precedents in the area."""
    part = splits.loc[splits["split"] == split, [*KEY_COLUMNS, "is_met"]].copy()
    for column in KEY_COLUMNS:
        # Missing keys group together ("" here, None in the result) instead of being dropped by groupby.
        part[column] = part[column].map(_clean).astype(object).fillna("")
    grouped = (part.groupby(KEY_COLUMNS, sort=True)["is_met"]
               .agg(n_conditions="size", n_met="sum").reset_index())
    if limit is not None and limit < len(grouped):
        grouped = grouped.sample(n=limit, random_state=seed).sort_index()
    for column in KEY_COLUMNS:
        grouped[column] = grouped[column].astype(object).where(grouped[column] != "", None)
    grouped["split"] = split
    grouped["prompt"] = [grounded(render_prompt(*keys), keys.country, keys.economic_area, grounding)
                         for keys in grouped[KEY_COLUMNS].itertuples(index=False)]
    grouped["prompt_id"] = [prompt_id(split, *keys) for keys in grouped[KEY_COLUMNS].itertuples(index=False)]
    grouped["n_conditions"] = grouped["n_conditions"].astype("int64")
    grouped["n_met"] = grouped["n_met"].astype("int64")
    return grouped[PROMPT_COLUMNS].reset_index(drop=True)


def build_sft_examples(splits: pd.DataFrame, split: str = "train", max_examples: int | None = None,
                       seed: int = 0, grounding: Grounding | None = None, balance_areas: bool = False) -> pd.DataFrame:
    """(prompt, description) pairs for the SFT warm start: every historically MET condition of
    `split` under the prompt of its combination; `max_examples` keeps the conditions of a seeded sample
    of whole combinations (so a combination's conditions train together), at most that many;
    `balance_areas` draws that sample in turns over the economic areas, so a rare area gets as many
    combinations as a common one. With `grounding`, each prompt carries its record and precedents,
    never a condition it is the prompt of."""
    met = splits.loc[(splits["split"] == split) & (splits["is_met"] == 1)]
    met = met.loc[met["description"].map(_clean).notna()]
    if max_examples is not None and max_examples < len(met):
        combination = met[KEY_COLUMNS].fillna("").astype(str).agg("|".join, axis=1)
        sizes = combination.value_counts(sort=False).sample(frac=1.0, random_state=seed)
        if balance_areas:  # each area's first combination, then each area's second, ...
            area = met["economic_area"].fillna("").groupby(combination).first().reindex(sizes.index)
            turn = sizes.groupby(area).cumcount()
            sizes = sizes.iloc[turn.to_numpy().argsort(kind="stable")]
        chosen = sizes.index[sizes.cumsum() <= max_examples]
        met = met[combination.isin(chosen)]
    met = met.sort_values("condition_id") if "condition_id" in met else met
    keys = list(met[KEY_COLUMNS].itertuples(index=False))
    # One prompt per combination (its conditions train together, sharing the prompt's forward pass);
    # grounded, its precedents leave out every condition it is the prompt of.
    targets: dict[tuple, list[str]] = {}
    for key, text in zip(keys, met["description"]):
        targets.setdefault(tuple(key), []).append(text)
    prompt_of = {key: grounded(render_prompt(*key), key[0], key[2], grounding, exclude=texts)
                 for key, texts in targets.items()}
    return pd.DataFrame({
        "prompt_id": [prompt_id(split, *key) for key in keys],
        **{column: pd.Series([_clean(getattr(key, column)) for key in keys], dtype=object) for column in KEY_COLUMNS},
        "prompt": [prompt_of[tuple(key)] for key in keys],
        "description": [_clean(text) for text in met["description"]],
    })


def grounded(question: str, country: str | None, area: str | None, grounding: Grounding | None,
             exclude: tuple[str, ...] | list[str] = (), draw: int = 0) -> str:
    """The question, followed by the grounding context (its precedent draw `draw`) when there is one."""
    if grounding is None:
        return question
    return question + "\n" + grounding.context(country, area, exclude=exclude, draw=draw)


def chat_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The text the policy sees: an instruct model's chat template with the assistant turn opened,
    or for a base model (Llama-2) the plain prompt with a cue to answer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + PLAIN_PROMPT_SUFFIX


_PREFIX = re.compile(r"^\W*(?:the\s+)?(?:proposed\s+)?(?:policy\s+)?(?:condition|proposal)(?:\s+is)?\s*:\s*",
                     re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)]|\([a-z0-9]+\))\s+", re.IGNORECASE)
# A precedent's annotation in a grounded prompt ("(Ghana, met)"), echoed at the end of an answer.
_PRECEDENT_NOTE = re.compile(r"\s*\([^()]*,\s*(?:not )?met\)\s*\.?$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z])")
# Abbreviations common in MONA conditions that end with a period but not a sentence.
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "no.", "art.", "incl.", "approx.", "vs.", "u.s.", "st.")


def answer_to_condition(answer: str) -> str:
    """One condition out of a generated answer, as the reward model saw conditions in training
    (MONA descriptions are one sentence): drop "Proposed condition:" style prefixes, list markers,
    markdown emphasis and wrapping quotes; take the first line that is not just an introduction
    ending in ":" (chat models like "The proposed condition is:" followed by a numbered list); cut
    it at the end of its first sentence."""
    lines = [_strip_decoration(line) for line in answer.replace("**", "").replace("__", "").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    chosen = next((line for line in lines if not line.endswith(":")), lines[0])
    condition = _PRECEDENT_NOTE.sub("", _first_sentence(chosen).strip())
    return condition.strip().strip("\"'\u201c\u201d").strip()


def _strip_decoration(line: str) -> str:
    previous = None
    while previous != line:  # prefixes and markers can nest ("1. Proposed condition: ...")
        previous = line
        line = _LIST_MARKER.sub("", _PREFIX.sub("", line.strip())).strip()
    return line


def _first_sentence(text: str) -> str:
    for match in _SENTENCE_END.finditer(text):
        before = text[:match.start()].rsplit(" ", 1)[-1].lower()
        if before in _ABBREVIATIONS:
            continue
        return text[:match.start()]
    return text


def _clean(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    text = " ".join(str(value).split())
    return text or None
