"""MONA's classification of structural conditions, arrangement types and their eras.

Economic descriptors are numbered `major.minor.`; MONA's economic code is tied to that number:
`code = 19 + major + minor / 10` (`1.6.` -> 20.6, `6.2.` -> 25.2, `3.` -> 22.0, `10.` -> 29.0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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


ECONOMIC_AREAS: tuple[EconomicArea, ...] = (
    EconomicArea("1.", "General government"),
    EconomicArea("1.1.", "Revenue measures, excluding trade policy"),
    EconomicArea("1.2.", "Revenue administration, including customs"),
    EconomicArea("1.3.", "Expenditure measures, including arrears clearance"),
    EconomicArea("1.4.", "Combined expenditure and revenue measures"),
    EconomicArea("1.5.", "Debt management"),
    EconomicArea("1.6.", "Expenditure auditing, accounting, and financial controls"),
    EconomicArea("1.7.", "Fiscal transparency (publication, parliamentary oversight)"),
    EconomicArea("1.8.", "Budget preparation (e.g., submission or approval)"),
    EconomicArea("1.9.", "Inter-governmental relations"),
    EconomicArea("2.", "Central bank"),
    EconomicArea("2.1.", "Central bank operations and reforms"),
    EconomicArea("2.2.", "Central bank auditing, transparency, and financial controls"),
    EconomicArea("3.", "Civil service and public employment reforms, and wages"),
    EconomicArea("4.", "Pension and other social sector reforms"),
    EconomicArea("4.1.", "Pension reforms"),
    EconomicArea("4.2.", "Other social sector reforms (e.g., social safety nets, health and education)"),
    EconomicArea("5.", "Trade policy (excluding customs reforms)"),
    EconomicArea("6.", "Financial sector"),
    EconomicArea("6.1.", "Financial sector legal reforms, regulation, and supervision"),
    EconomicArea("6.2.", "Restructuring and privatization of financial institutions"),
    EconomicArea("6.3.", "Other financial sector reforms (e.g., capital markets, payment systems)"),
    EconomicArea("7.", "Exchange system and restrictions"),
    EconomicArea("8.", "Public enterprise reform and pricing"),
    EconomicArea("8.1.", "Public enterprise restructuring and privatization"),
    EconomicArea("8.2.", "Public enterprise pricing and subsidies"),
    EconomicArea("9.", "Private sector development and business environment"),
    EconomicArea("10.", "Other"),
)

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
