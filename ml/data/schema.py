"""The one schema every MONA export is mapped to, and the header variants that map onto it.

Real exports differ in header spelling (`Country Name`, `CountryName`, `country_name`), so headers
are compared after `normalize_header` (lower case, letters and digits only).
"""

from __future__ import annotations

import re

# Canonical column -> accepted header spellings (already normalized).
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "arrangement_number": ("arrangementnumber", "arrangementno", "arrangementid", "arrangement"),
    "country": ("countryname", "country"),
    "country_code": ("countrycode", "iso", "countryiso"),
    "arrangement_type": ("arrangementtype", "typeofarrangement", "facility", "facilitytype"),
    "approval_date": ("approvaldate", "dateofapproval", "boardapprovaldate"),
    "review_type": ("reviewtype", "review"),
    "condition_type": ("type", "conditiontype", "structuralconditiontype", "sctype"),
    "economic_code": ("economiccode", "ecocode", "sectorcode"),
    "economic_descriptor": ("economicdescriptor", "economicclassification", "sector"),
    "description": ("description", "conditiondescription", "structuralcondition", "condition"),
    "description_code": ("descriptioncode",),
    "test_date": ("testdate", "testdt", "duedate", "date"),
    "status": ("pcstatus", "status", "conditionstatus", "compliancestatus"),
    "comments": ("comments", "comment", "remarks"),
}

REQUIRED_COLUMNS: tuple[str, ...] = ("country", "description", "status")
# At least one of these must be present: the economic area can come from either.
REQUIRED_ONE_OF: tuple[str, ...] = ("economic_descriptor", "economic_code")

# Columns the reader writes besides the canonical ones.
DERIVED_COLUMNS: tuple[str, ...] = (
    "test_date_text",  # the test date cell exactly as written (e.g. "Second Review Prior action")
    "extra_columns",  # JSON of any columns the schema does not know, so nothing is lost
)

CANONICAL_COLUMNS: tuple[str, ...] = tuple(HEADER_ALIASES) + DERIVED_COLUMNS

# Headers the synthetic generator writes: the spelling of the IMF's MONA structural-conditions file.
IMF_HEADERS: dict[str, str] = {
    "arrangement_number": "Arrangement Number",
    "country": "Country Name",
    "country_code": "Country Code",
    "arrangement_type": "Arrangement Type",
    "approval_date": "Approval Date",
    "review_type": "Review Type",
    "condition_type": "Type",
    "economic_code": "Economic Code",
    "economic_descriptor": "Economic Descriptor",
    "description": "Description",
    "description_code": "Description Code",
    "test_date": "TestDate",
    "status": "PC Status",
    "comments": "Comments",
}

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize_header(header: object) -> str:
    return _NON_ALNUM.sub("", str(header).strip().lower())


_ALIAS_TO_COLUMN = {alias: column for column, aliases in HEADER_ALIASES.items() for alias in aliases}


def canonical_column(header: object) -> str | None:
    """The canonical column a header maps to, or None when the schema does not know it."""
    return _ALIAS_TO_COLUMN.get(normalize_header(header))
