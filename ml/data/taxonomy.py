"""MONA's classification of structural conditions, its status forms, arrangement types and their eras.

The economic areas and the status label map are dbt seeds (`dbt_project/seeds/economic_areas.csv`,
`status_label_map.csv`); this module reads them, so each table is written once and the warehouse and
Python agree by construction. What must also exist in SQL is pinned by parity tests
(tests/unit/test_taxonomy.py, tests/integration/test_dbt.py):

- Economic descriptors are numbered `major.minor.`; MONA's economic code is tied to that number:
  `code = 19 + major + minor / 10` (`1.6.` -> 20.6, `6.2.` -> 25.2, `3.` -> 22.0, `10.` -> 29.0), here
  and in the `economic_code_for_number` macro.
- A status is looked up in the label map by its `status_code` (upper case, every run of characters
  other than letters, digits and `/` one space), here and in the `status_code` macro.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ml.paths import DBT_PROJECT_DIR

SEEDS_DIR = DBT_PROJECT_DIR / "seeds"


def read_seed(name: str, seeds_dir: Path = SEEDS_DIR) -> list[dict[str, str]]:
    """The rows of a dbt seed, as text."""
    with (seeds_dir / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class EconomicArea:
    number: str  # as MONA prints it: "1.6." or "3."
    name: str

    @property
    def code(self) -> float:
        return economic_code_for_number(self.number)

    @property
    def descriptor(self) -> str:
        """The `Economic Descriptor` cell: number and name, e.g. `1.2. Revenue administration ...`."""
        return f"{self.number} {self.name}"

    @property
    def major(self) -> int:
        return int(self.number.split(".")[0])


ECONOMIC_AREAS: tuple[EconomicArea, ...] = tuple(
    EconomicArea(row["economic_descriptor_number"], row["economic_area"]) for row in read_seed("economic_areas"))

_NUMBER = re.compile(r"^\s*(\d{1,2})\.(?:(\d)\.?)?\s")


def economic_code_for_number(number: str) -> float:
    """MONA's economic code for a descriptor number: `19 + major + minor / 10`."""
    parts = [p for p in number.strip().split(".") if p]
    major = int(parts[0])
    minor = int(parts[1]) if len(parts) > 1 else 0
    return round(19 + major + minor / 10, 1)


def descriptor_number(descriptor: str) -> str | None:
    """The leading `major.minor.` of a descriptor cell, or None when it has none."""
    match = _NUMBER.match(descriptor + " ")
    if not match:
        return None
    major, minor = match.groups()
    return f"{major}.{minor}." if minor else f"{major}."


# Status form (its status_code) -> MET / NON_MET / EXCLUDED, after the paper (see the seed's `meaning`).
STATUS_LABELS: dict[str, str] = {row["status_code"]: row["label"] for row in read_seed("status_label_map")}

_NOT_CODE = re.compile(r"[^\w/]+|_+")


def status_code(status: str | None) -> str | None:
    """A status as the key into the label map: `Not-met.` -> `NOT MET`; None when nothing is left."""
    code = _NOT_CODE.sub(" ", status or "").strip().upper()
    return code or None


def status_label(status: str | None) -> str | None:
    """MET / NON_MET / EXCLUDED for a status cell, None when the label map does not know it."""
    return STATUS_LABELS.get(status_code(status) or "")


# Arrangement types with the years they could be approved (the PRGF became the ECF in 2010).
ARRANGEMENT_ERAS: dict[str, tuple[int, int]] = {
    "SBA": (2002, 2025),
    "EFF": (2002, 2025),
    "PRGF": (2002, 2009),
    "ECF": (2010, 2025),
    "SCF": (2010, 2025),
    "ECF-EFF": (2010, 2025),
    "PLL": (2011, 2025),
}

# Structural condition types: prior action, structural performance criterion, structural benchmark.
CONDITION_TYPES: dict[str, str] = {
    "PA": "Prior action",
    "SPC": "Structural performance criterion",
    "SB": "Structural benchmark",
}

ORDINALS = ("First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth", "Ninth", "Tenth")
