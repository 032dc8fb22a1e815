"""How close a text is to others: the one TF-IDF nearest-neighbour index and threshold rule that the
evaluation's copy measure, the RL reward's copy and quote rules and `rlxf recommend` share; and whether
a text repeats itself or names a body the record never names, which the evaluation measures and
`recommend` flags. It sits outside `ml.evaluation` and `ml.reward` because both use it."""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

_WORD = re.compile(r"[a-z]+")  # on case-folded text
STUTTER = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)


def repeats_itself(text: str) -> bool:
    """A stuttered word ("in line with staff staff recommendations") or a three-word phrase said twice
    ("... in line with staff recommendations in line with staff"): slips of the sampler. In the demo's
    evaluation, 8% of the PPO and SFT answers and under 1% of real conditions repeat themselves so."""
    words = re.findall(r"\w+", text.casefold())
    trigrams = list(zip(words, words[1:], words[2:]))
    return bool(STUTTER.search(text)) or len(set(trigrams)) < len(trigrams)


# A name: capitalised words, joined by the lower-case words names have inside ("Council of Ministers").
NAME = re.compile(r"(?<![\w-])[A-Z][\w'’-]*(?:\s+(?:(?:of|the|and|for|on)\s+)*[A-Z][\w'’-]*)*")
MONTHS = {datetime.date(2000, month, 1).strftime("%B") for month in range(1, 13)}  # "by May 2026" names no body


class KnownNames:
    """The names the texts of a record hold, for `unknown` to check answers against; built once, since the
    record joined into one lower-case text is about a million characters (the RL reward checks every batch)."""

    def __init__(self, record: Sequence[str]):
        self.text = " ".join(str(t) for t in record).casefold()

    def unknown(self, texts: Sequence[str]) -> list[list[str]]:
        """For each text, the names it uses after its opening word (which is capitalised as the sentence's
        first) that no text of the record holds as whole words, in any case (a hyphen before counts as a
        boundary there: "end-May"); month names and a possessive's "'s" aside ("the Fund's")."""
        found = []
        for text in texts:
            opening_and_rest = str(text).split(None, 1)
            rest = opening_and_rest[1] if len(opening_and_rest) == 2 else ""
            names = dict.fromkeys(re.sub(r"['’]s$", "", match.group(0)) for match in NAME.finditer(rest))
            found.append([name for name in names
                          if name not in MONTHS and not _holds_as_words(self.text, name.casefold())])
        return found


# Prompt words a proposal may not borrow: of five letters or more (the short ones, "be", "not", "met", are
# every sentence's) and used by fewer than this share of the record's conditions.
ECHO_MIN_LETTERS = 5
ECHO_RECORD_SHARE = 0.001


class PromptEchoes:
    """The words of the prompt that the record's conditions do not use ("condition", "proposal",
    "appropriate", "under"): a proposal holding one took them from the question, and speaks of the request
    ("Finalize draft conditions for the medium-term budget framework", "Submit a draft policy proposal for
    electricity tariffs") instead of stating a measure."""

    def __init__(self, prompt_words: Iterable[str], record: Sequence[str]):
        used = Counter(word for text in record for word in set(_WORD.findall(str(text).casefold())))
        self.words = frozenset(word for word in prompt_words if len(word) >= ECHO_MIN_LETTERS
                               and used[word] < ECHO_RECORD_SHARE * max(len(record), 1))

    def echoes(self, texts: Sequence[str]) -> list[list[str]]:
        """For each text, the prompt's words it borrows, in the order it uses them."""
        return [[word for word in dict.fromkeys(_WORD.findall(str(text).casefold())) if word in self.words]
                for text in texts]


def unknown_names(texts: Sequence[str], record: Sequence[str]) -> list[list[str]]:
    """`KnownNames(record).unknown(texts)`, for a record checked once."""
    return KnownNames(record).unknown(texts)


def _holds_as_words(text: str, words: str) -> bool:
    """Does `text` hold `words` with a boundary on each side (a hyphen before counts as one, not after)?
    str.find rather than a regular expression: a lookbehind makes `re` try every position of a record
    of a million characters (20 ms a name, seconds for a batch of garbled answers)."""
    start = text.find(words)
    while start != -1:
        end = start + len(words)
        if (start == 0 or not _is_word_char(text[start - 1])) and (
                end == len(text) or not (_is_word_char(text[end]) or text[end] == "-")):
            return True
        start = text.find(words, start + 1)
    return False


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"  # what `\w` matches


def name_record(corpus: pd.DataFrame) -> pd.Series:
    """The texts whose words count as known names: the conditions, and the record's countries and
    arrangement types (names too, though no condition need spell them)."""
    columns = [column for column in ("description", "country", "arrangement_type") if column in corpus]
    return pd.concat([corpus[column].dropna().drop_duplicates() for column in columns], ignore_index=True)


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
