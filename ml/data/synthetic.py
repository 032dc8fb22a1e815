"""Seeded synthetic MONA structural-conditions exports: the embedded default data set.

Real MONA exports are not shipped with the project, yet every stage (ingestion, dbt, the reward
model, PPO) needs a realistically shaped table to run on and a known answer to be checked against.
`generate_mona` produces both: an export that looks like the IMF's file (headers `IMF_HEADERS`, cell
conventions of the paper's Table 2 sample) and a truth sidecar holding each condition's true
probability of being met, which never enters the export.

What an export holds
--------------------
- Arrangements: ~65 real IMF program countries (with ISO3 codes), approval dates 2002-2024, the
  arrangement type drawn by era and country group (PRGF only 2002-2009, ECF/SCF/ECF-EFF only 2010+,
  PLL 2011+; see `taxonomy.ARRANGEMENT_ERAS`), numbered 500, 501, ... in approval order.
- Each arrangement has its approval (`R0`) and 1-5 reviews (`R1`..`R5`) and 8-25 conditions:
  prior actions (PA), structural performance criteria (SPC, only before the 2009 reform that
  abolished them) and structural benchmarks (SB).
- A PA is one row at the review it belongs to, `TestDate` = "Second Review Prior action" (or
  "Program approval Prior action" at R0), with its status.
- An SB/SPC is listed at the review that sets it (blank status: not yet due), then at each review
  that assesses it: a condition assessed twice or three times was missed first (NM/D/R) and its
  last assessment is the final outcome. `TestDate` is `MM/DD/YYYY`.
- About 4% of conditions (SB/SPC) are never assessed: blank status in all their rows (PENDING).
- Status cells: short codes M, PM, NM, W, D, R; one arrangement in ten writes long forms (Met,
  Partially met, Not met, Waived, Delayed, Reprogrammed); "Implemented with delay" appears as is.
  Labels as the status label map gives them (M/PM MET, NM/W/D/R/Implemented with delay NON_MET);
  blank = not yet assessed.
- Descriptions combine an action (verb phrase) with an object of the condition's economic area,
  plus optional fillers ("with IMF technical assistance", an agency, a deadline), e.g.
  "Submit to the National Assembly a draft law on risk-based banking supervision".
- Rows are ordered by arrangement, review, condition; exactly `n_rows` are returned, so the most
  recent arrangement may be cut short (like an ongoing program): its conditions' truth is taken
  from the rows that remain.

Latent outcome model
--------------------
For condition i (country c, economic area a, action verb v, type t, approval year y):

    logit P(MET) = INTERCEPT + country_effect[c] + area_effect[a] + verb_effect[v]
                   + type_effect[t] + era_effect[y] + noise_i

    INTERCEPT      = 0.30  (MET share of assessed conditions ~65-70%, as in real MONA)
    country_effect ~ N(0, 0.6) per country, fixed by the seed (track record)
    verb_effect    : submit +1.3, prepare +1.2, publish +1.0, audit +0.4, establish 0.0,
                     implement -0.5, adopt (decree, budget) -0.7, enact (law by parliament) -1.5,
                     restructure -1.5, privatize -1.8  (the strongest signal in the text)
    area_effect    : from +0.5 (1.8. budget preparation), +0.4 (1.2. revenue administration)
                     to -0.5 (3. civil service, 8. public enterprise), -0.6 (6.2., 8.1.
                     restructuring and privatization); table `AREA_EFFECTS`
    type_effect    : PA +1.6 (prior actions are met before Board approval), SPC +0.3, SB 0
    era_effect     : +0.2 for approvals from 2010 on, else 0
    noise_i        ~ N(0, 0.3)

final outcome ~ Bernoulli(P(MET)); the truth sidecar keeps p and every component. The reward
model reads country, arrangement type, area and description, which show the country, area and verb
effects but not the condition type, the approval year or the noise; the sidecar's
`p_met_given_text` integrates those out, so a model's accuracy can be compared
with the ceiling it can actually reach, `bayes_optimal_accuracy` (about 0.74), next to the
oracle's, which knows every latent (`true_p_met`, about 0.76).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml.data.schema import IMF_HEADERS
from ml.data.taxonomy import ARRANGEMENT_ERAS, ECONOMIC_AREAS, ORDINALS, status_label
from ml.io import atomic_write

# ---------------------------------------------------------------------------------------------
# Countries: (name, ISO3, PRGT-eligible (low-income facilities), name of the legislature)

COUNTRIES: tuple[tuple[str, str, bool, str], ...] = (
    ("Gabon", "GAB", False, "the National Assembly"),
    ("Uruguay", "URY", False, "the General Assembly"),
    ("Armenia", "ARM", True, "the National Assembly"),
    ("Burundi", "BDI", True, "the National Assembly"),
    ("Jamaica", "JAM", False, "parliament"),
    ("Sierra Leone", "SLE", True, "parliament"),
    ("Paraguay", "PRY", False, "congress"),
    ("Moldova", "MDA", True, "parliament"),
    ("Senegal", "SEN", True, "the National Assembly"),
    ("Ghana", "GHA", True, "parliament"),
    ("Kenya", "KEN", True, "the National Assembly"),
    ("Tanzania", "TZA", True, "parliament"),
    ("Uganda", "UGA", True, "parliament"),
    ("Zambia", "ZMB", True, "the National Assembly"),
    ("Malawi", "MWI", True, "parliament"),
    ("Mozambique", "MOZ", True, "the Assembly of the Republic"),
    ("Madagascar", "MDG", True, "the National Assembly"),
    ("Mali", "MLI", True, "the National Assembly"),
    ("Niger", "NER", True, "the National Assembly"),
    ("Burkina Faso", "BFA", True, "the National Assembly"),
    ("Benin", "BEN", True, "the National Assembly"),
    ("Togo", "TGO", True, "the National Assembly"),
    ("Guinea", "GIN", True, "the National Assembly"),
    ("Liberia", "LBR", True, "the legislature"),
    ("Côte d'Ivoire", "CIV", True, "the National Assembly"),
    ("Cameroon", "CMR", True, "the National Assembly"),
    ("Chad", "TCD", True, "the National Assembly"),
    ("Central African Republic", "CAF", True, "the National Assembly"),
    ("Democratic Republic of the Congo", "COD", True, "parliament"),
    ("Rwanda", "RWA", True, "parliament"),
    ("Ethiopia", "ETH", True, "parliament"),
    ("São Tomé and Príncipe", "STP", True, "the National Assembly"),
    ("Grenada", "GRD", True, "parliament"),
    ("Haiti", "HTI", True, "parliament"),
    ("Honduras", "HND", True, "the National Congress"),
    ("Nicaragua", "NIC", True, "the National Assembly"),
    ("Bangladesh", "BGD", True, "parliament"),
    ("Nepal", "NPL", True, "parliament"),
    ("Afghanistan", "AFG", True, "parliament"),
    ("Kyrgyz Republic", "KGZ", True, "parliament"),
    ("Tajikistan", "TJK", True, "parliament"),
    ("Georgia", "GEO", True, "parliament"),
    ("Egypt", "EGY", False, "parliament"),
    ("Morocco", "MAR", False, "parliament"),
    ("Tunisia", "TUN", False, "parliament"),
    ("Jordan", "JOR", False, "parliament"),
    ("Pakistan", "PAK", False, "the National Assembly"),
    ("Sri Lanka", "LKA", False, "parliament"),
    ("Ukraine", "UKR", False, "the Verkhovna Rada"),
    ("Serbia", "SRB", False, "the National Assembly"),
    ("Albania", "ALB", False, "parliament"),
    ("North Macedonia", "MKD", False, "parliament"),
    ("Bosnia and Herzegovina", "BIH", False, "parliament"),
    ("Romania", "ROU", False, "parliament"),
    ("Hungary", "HUN", False, "parliament"),
    ("Greece", "GRC", False, "parliament"),
    ("Portugal", "PRT", False, "parliament"),
    ("Ireland", "IRL", False, "the Oireachtas"),
    ("Iceland", "ISL", False, "the Althingi"),
    ("Argentina", "ARG", False, "congress"),
    ("Ecuador", "ECU", False, "the National Assembly"),
    ("Dominican Republic", "DOM", False, "congress"),
    ("El Salvador", "SLV", False, "the Legislative Assembly"),
    ("Costa Rica", "CRI", False, "the Legislative Assembly"),
    ("Barbados", "BRB", False, "parliament"),
    ("Mongolia", "MNG", False, "the State Great Hural"),
)

# Arrangement types by (PRGT-eligible, approved 2010 or later); types outside their era are dropped.
ARRANGEMENT_MIX: dict[tuple[bool, bool], dict[str, float]] = {
    (True, False): {"PRGF": 0.75, "SBA": 0.15, "EFF": 0.10},
    (True, True): {"ECF": 0.60, "ECF-EFF": 0.15, "SCF": 0.10, "SBA": 0.15},
    (False, False): {"SBA": 0.70, "EFF": 0.30},
    (False, True): {"SBA": 0.45, "EFF": 0.40, "PLL": 0.15},
}
FIRST_YEAR, LAST_YEAR = 2002, 2024

# ---------------------------------------------------------------------------------------------
# Latent outcome model (see the module docstring)

INTERCEPT = 0.30
COUNTRY_SD = 0.6
NOISE_SD = 0.3
ERA_EFFECT = 0.2  # approvals from 2010 on
TYPE_CODES = ("PA", "SPC", "SB")
TYPE_EFFECTS = {"PA": 1.6, "SPC": 0.3, "SB": 0.0}
VERB_EFFECTS = {
    "submit": 1.3, "prepare": 1.2, "publish": 1.0, "audit": 0.4, "establish": 0.0,
    "implement": -0.5, "adopt": -0.7, "enact": -1.5, "restructure": -1.5, "privatize": -1.8,
}

# Economic area number -> (difficulty effect, relative frequency in MONA).
AREA_EFFECTS: dict[str, tuple[float, float]] = {
    "1.": (0.0, 2), "1.1.": (0.1, 5), "1.2.": (0.4, 8), "1.3.": (0.0, 5), "1.4.": (0.0, 2),
    "1.5.": (0.2, 3), "1.6.": (0.1, 8), "1.7.": (0.3, 5), "1.8.": (0.5, 5), "1.9.": (-0.2, 1),
    "2.": (0.2, 1), "2.1.": (0.2, 2), "2.2.": (0.3, 2), "3.": (-0.5, 4), "4.": (-0.2, 1),
    "4.1.": (-0.4, 2), "4.2.": (-0.1, 3), "5.": (0.0, 2), "6.": (-0.1, 2), "6.1.": (-0.1, 8),
    "6.2.": (-0.6, 4), "6.3.": (0.0, 3), "7.": (0.1, 2), "8.": (-0.5, 2), "8.1.": (-0.6, 4),
    "8.2.": (-0.3, 3), "9.": (-0.1, 4), "10.": (0.0, 2),
}

# ---------------------------------------------------------------------------------------------
# Description text: an action template applied to an object of the area, plus fillers.
# Objects are noun phrases that read after "a draft law on", "an audit of", "the restructuring of".
# Templates: {obj} the object, {leg}/{Leg} the country's legislature, {year} a year.

ACTIONS: tuple[tuple[str, str], ...] = (
    ("submit", "Submit to {leg} a draft law on {obj}"),
    ("submit", "Submit to the Council of Ministers draft amendments to the legal framework for {obj}"),
    ("prepare", "Prepare an action plan for {obj}"),
    ("prepare", "Prepare and submit to Fund staff a roadmap for {obj}"),
    ("prepare", "Finalize a strategy for {obj}"),
    ("publish", "Publish quarterly reports on {obj}"),
    ("publish", "Publish on the Ministry of Finance website a report on {obj}"),
    ("audit", "Complete an audit of {obj}"),
    ("audit", "Complete a diagnostic review of {obj}"),
    ("establish", "Establish a dedicated unit for {obj}"),
    ("implement", "Implement the new framework for {obj}"),
    ("adopt", "Adopt a government decree on {obj}"),
    ("adopt", "Issue regulations on {obj}"),
    ("enact", "{Leg} adopts the law on {obj}"),
    ("enact", "Enact legislation on {obj}"),
    ("restructure", "Complete the restructuring of {obj}"),
)

# Area-specific actions (weight 2 each against 1 for a generic action).
AREA_ACTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "1.6.": (("establish", "Establish a single treasury account at the central bank covering {obj}"),),
    "1.8.": (
        ("adopt", "Adopt a budget for {year} consistent with the program's fiscal targets"),
        ("submit", "Submit to {leg} a {year} budget consistent with program understandings"),
        ("enact", "{Leg} approves the {year} budget in line with the agreed deficit ceiling"),
    ),
    "6.2.": (
        ("privatize", "Privatize {obj}"),
        ("restructure", "Recapitalize and restructure {obj}"),
    ),
    "8.": (("privatize", "Launch the privatization of {obj}"),),
    "8.1.": (
        ("privatize", "Privatize {obj}"),
        ("privatize", "Complete the sale of the government's majority stake in {obj}"),
    ),
    "8.2.": (("implement", "Implement the automatic adjustment of {obj}"),),
}

# Generic actions first, then each area's own (ids index this tuple).
ALL_ACTIONS: tuple[tuple[str, str], ...] = ACTIONS + tuple(a for extra in AREA_ACTIONS.values() for a in extra)

AREA_OBJECTS: dict[str, tuple[str, ...]] = {
    "1.": ("public financial management", "the medium-term fiscal framework",
           "fiscal risks from state-owned enterprises", "the public investment management system",
           "public procurement", "the fiscal rule", "extrabudgetary funds",
           "the fiscal framework for {year}"),
    "1.1.": ("value-added tax exemptions", "the excise regime on fuel and tobacco",
             "the personal income tax schedule", "property taxation", "tax incentives for investment",
             "the corporate income tax base", "mining and natural resource royalties",
             "the tax policy measures for {year}"),
    "1.2.": ("the large taxpayers office", "the customs clearance process", "value-added tax refunds",
             "taxpayer registration and the single taxpayer identification number",
             "risk-based tax audits", "tax arrears collection", "the integrated tax administration system",
             "customs valuation controls", "compliance management at the revenue authority"),
    "1.3.": ("domestic expenditure arrears accumulated through end-{year}", "the clearance of domestic arrears",
             "fuel and electricity subsidies", "the rationalization of current spending",
             "capital expenditure execution", "expenditure commitment controls",
             "arrears owed to domestic suppliers at end-{year}"),
    "1.4.": ("the fiscal consolidation measures for {year}",
             "the revenue and expenditure measures underpinning the {year} budget",
             "fiscal measures agreed with staff", "the medium-term fiscal adjustment",
             "earmarked revenues and spending mandates", "the fiscal impact of new measures"),
    "1.5.": ("the medium-term debt management strategy", "public debt reporting",
             "government guarantees and on-lending", "the public debt database",
             "contingent liabilities of state-owned enterprises", "the debt management office",
             "external borrowing on non-concessional terms"),
    "1.6.": ("treasury cash management", "the integrated financial management information system",
             "internal audit in line ministries", "payment and commitment controls",
             "the government chart of accounts", "the accounts of the Ministry of Finance",
             "bank accounts of central government entities", "the treasury single account"),
    "1.7.": ("budget execution", "the financial statements of state-owned enterprises", "tax expenditures",
             "government contracts and the beneficial ownership of contractors",
             "the audited central government accounts for {year}", "fiscal risks",
             "extractive industry revenues"),
    "1.8.": ("the {year} budget", "the medium-term budget framework", "program-based budgeting",
             "budget classification in line with GFSM 2001", "the budget preparation calendar",
             "expenditure ceilings for line ministries", "the budget contingency reserve"),
    "1.9.": ("fiscal transfers to local governments", "borrowing by subnational governments",
             "revenue sharing with the provinces", "the fiscal responsibility of municipalities",
             "expenditure assignments across levels of government",
             "the financial reporting of regional governments"),
    "2.": ("the central bank's governance", "central bank independence",
           "the central bank's financial autonomy", "central bank lending to the government",
           "the central bank's recapitalization", "emergency liquidity assistance"),
    "2.1.": ("the monetary policy framework", "the interest rate corridor",
             "the central bank's liquidity forecasting", "open market operations",
             "the foreign exchange intervention strategy", "the inflation targeting framework",
             "reserve requirements"),
    "2.2.": ("the central bank's financial statements", "the safeguards assessment recommendations",
             "the central bank's internal audit function", "the central bank's foreign exchange reserves",
             "the central bank's audit committee", "central bank accounting in line with IFRS",
             "the central bank's accounts for {year}"),
    "3.": ("the civil service payroll", "the public sector wage grid", "ghost workers in the public service",
           "the public service census", "the civil service pay and employment policy",
           "hiring in the public administration", "the human resource management information system",
           "the wage bill for {year}"),
    "4.": ("social protection programs", "the social security fund", "the targeting of social transfers",
           "social spending floors", "the health insurance fund", "cash transfer programs"),
    "4.1.": ("the pension system", "the parametric reform of the pension system", "early retirement schemes",
             "the civil service pension fund", "pension indexation",
             "the actuarial balance of the pension fund"),
    "4.2.": ("the social safety net", "the unified social registry",
             "targeted cash transfers to vulnerable households", "health sector financing",
             "the tertiary education system", "school feeding programs", "primary health care coverage"),
    "5.": ("the common external tariff", "non-tariff barriers", "import licensing", "export taxes",
           "the tariff structure", "trade facilitation at the border"),
    "6.": ("the financial sector development strategy", "non-performing loans in the banking system",
           "the deposit insurance scheme", "financial sector stability", "state-owned banks",
           "microfinance institutions"),
    "6.1.": ("anti-money laundering and combating the financing of terrorism", "risk-based banking supervision",
             "bank capital requirements", "the bank resolution framework",
             "loan classification and provisioning", "related-party lending",
             "consolidated supervision of banking groups"),
    "6.2.": ("the largest state-owned bank", "the state savings bank", "the state mortgage bank",
             "undercapitalized private banks", "the development bank", "the bank in temporary administration",
             "the postal bank"),
    "6.3.": ("the national payment system", "the government securities market", "the credit registry",
             "capital market development", "mobile money and electronic payments", "the collateral registry",
             "the interbank market"),
    "7.": ("the foreign exchange market", "exchange restrictions and multiple currency practices",
           "the foreign exchange auction", "surrender requirements on export proceeds",
           "capital flow management measures", "the exchange rate regime"),
    "8.": ("state-owned enterprises", "the state oil company", "the state railway company", "the water utility",
           "the ports authority", "the national airline"),
    "8.1.": ("the state electricity company", "the state telecommunications operator", "the national airline",
             "the state cement company", "the cotton marketing board", "the state mining company",
             "the state-owned sugar company"),
    "8.2.": ("retail fuel prices", "electricity tariffs", "water tariffs", "energy subsidies",
             "cost-recovery pricing of public utilities", "fuel price subsidies for {year}"),
    "9.": ("the business environment", "investment licensing", "the insolvency framework", "the commercial courts",
           "public-private partnerships", "the anti-corruption framework",
           "asset declarations of senior public officials", "land titling"),
    "10.": ("the national statistics system", "national accounts statistics", "the consumer price index",
            "governance and anti-corruption", "the poverty reduction strategy", "the census of enterprises"),
}

ALL_OBJECTS: tuple[str, ...] = tuple(o for objects in AREA_OBJECTS.values() for o in objects)
# Area ids index AREAS (the order of AREA_EFFECTS); the export writes their descriptor and code.
AREAS = tuple(area for number in AREA_EFFECTS for area in ECONOMIC_AREAS if area.number == number)
_AREA_CODE = np.array([area.code for area in AREAS])
_AREA_DESCRIPTOR = np.array([area.descriptor for area in AREAS], dtype=object)

# "June 2008" for every month a date can fall in, indexed by months since 1970-01 minus the start.
_MONTH_YEAR_START = (FIRST_YEAR - 1970) * 12
_MONTH_YEAR = np.array([f"{calendar.month_name[m % 12 + 1]} {1970 + m // 12}"
                        for m in range(_MONTH_YEAR_START, (LAST_YEAR + 8 - 1970) * 12)])

# Who carries the measure out, by major area (used in one filler).
AGENCIES: dict[int, tuple[str, ...]] = {
    1: ("Ministry of Finance", "Treasury", "Revenue Authority"), 2: ("Central Bank",),
    3: ("Ministry of Public Service",), 4: ("Ministry of Social Affairs", "Ministry of Labor"),
    5: ("Ministry of Trade",), 6: ("Central Bank", "Banking Supervision Department"), 7: ("Central Bank",),
    8: ("Ministry of Energy", "Ministry of State Enterprises"), 9: ("Ministry of Economy",),
    10: ("Ministry of Finance", "National Statistics Office"),
}
GENERIC_FILLERS = (", with IMF technical assistance", ", in line with staff recommendations",
                   ", in consultation with Fund staff", ", drawing on technical assistance recommendations")

# ---------------------------------------------------------------------------------------------
# Status cells. Code 0 is the blank cell (not yet due / not yet assessed).

STATUS_CODES = ("", "M", "PM", "NM", "W", "D", "R", "IWD")
STATUS_SHORT = np.array(["", "M", "PM", "NM", "W", "D", "R", "Implemented with delay"], dtype=object)
STATUS_LONG = np.array(["", "Met", "Partially met", "Not met", "Waived", "Delayed", "Reprogrammed",
                        "Implemented with delay"], dtype=object)
_BLANK, _M, _PM, _NM, _W, _D, _R, _IWD = range(len(STATUS_CODES))
# The outcome of each code, from the status label map (the dbt seed): M, PM -> MET, the others NON_MET.
_CODE_OUTCOME = np.array(["PENDING", *(status_label(form) for form in STATUS_SHORT[1:])], dtype=object)
# How a condition that is not met ends, by type (W only for SPCs: waivers are for performance criteria).
_NON_MET_FINAL = {
    "PA": ((_NM, _D, _IWD), (0.5, 0.3, 0.2)),
    "SPC": ((_NM, _W, _R, _D, _IWD), (0.35, 0.25, 0.25, 0.10, 0.05)),
    "SB": ((_NM, _D, _R, _IWD), (0.45, 0.20, 0.25, 0.10)),
}
PM_SHARE = 0.08  # of MET outcomes written as partially met
LONG_FORM_SHARE = 0.10  # of arrangements whose statuses are written in long form
PENDING_SHARE = 0.05  # of SB/SPC conditions never assessed (~4% of all conditions)

_WRITTEN_FORMS = {form.lower() for form in (*STATUS_SHORT, *STATUS_LONG)}


def status_outcome(status: object) -> str | None:
    """MET / NON_MET for a status cell this generator writes, PENDING for a blank, None if unknown."""
    text = "" if status is None or (isinstance(status, float) and np.isnan(status)) else str(status).strip()
    if text.lower() not in _WRITTEN_FORMS:
        return None
    return status_label(text) if text else "PENDING"


# ---------------------------------------------------------------------------------------------
# Public API

EXPORT_COLUMNS: list[str] = list(IMF_HEADERS.values())


@dataclass(frozen=True)
class SyntheticExport:
    export: pd.DataFrame  # columns EXPORT_COLUMNS; text cells as str ("" = blank), numbers as numbers
    truth: pd.DataFrame  # one row per condition: key, description, true_p_met, final_outcome, latents


def generate_mona(n_rows: int, seed: int = 0) -> SyntheticExport:
    """Exactly `n_rows` export rows of synthetic MONA, the same for the same (n_rows, seed)."""
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    rng = np.random.default_rng([seed, 0])
    # Country track records come from their own stream so they depend on the seed only.
    country_rng = np.random.default_rng([seed, 1])
    country_effect = country_rng.normal(0.0, COUNTRY_SD, len(COUNTRIES))
    country_weight = country_rng.gamma(2.0, 1.0, len(COUNTRIES))

    arrangements, conditions = _draw_skeleton(rng, n_rows, country_weight / country_weight.sum())
    _draw_content(rng, arrangements, conditions, country_effect)
    rows = _expand_rows(rng, arrangements, conditions, n_rows)
    truth = _truth_table(arrangements, conditions, rows)
    return SyntheticExport(export=_export_frame(arrangements, conditions, rows), truth=truth)


def write_synthetic_export(folder: Path, truth_folder: Path, n_rows: int, seed: int = 0,
                           fmt: str = "csv") -> tuple[Path, Path]:
    """Writes folder/MONA_StructuralConditions_synthetic_<seed>.<csv|xlsx> and
    truth_folder/<same stem>.truth.parquet; returns (export_path, truth_path)."""
    if fmt not in ("csv", "xlsx"):
        raise ValueError(f"fmt must be 'csv' or 'xlsx', got {fmt!r}")
    folder, truth_folder = Path(folder), Path(truth_folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth_folder.mkdir(parents=True, exist_ok=True)
    data = generate_mona(n_rows, seed)
    stem = f"MONA_StructuralConditions_synthetic_{seed}"
    export_path = folder / f"{stem}.{fmt}"
    truth_path = truth_folder / f"{stem}.truth.parquet"
    # Truth first, and the export via a hidden temporary name: a sensor watching the landing folder
    # never sees a half-written file nor an export without its sidecar.
    atomic_write(truth_path, lambda tmp: data.truth.to_parquet(tmp, index=False))
    if fmt == "csv":
        atomic_write(export_path, lambda tmp: data.export.to_csv(tmp, index=False, encoding="utf-8",
                                                                  lineterminator="\n"))
    else:
        atomic_write(export_path, lambda tmp: _write_xlsx(data.export, tmp, seed))
    return export_path, truth_path


def bayes_optimal_accuracy(truth: pd.DataFrame, column: str = "p_met_given_text") -> float:
    """Best accuracy a classifier can reach on MET vs NON_MET: mean(max(p, 1 - p)) over assessed
    conditions. With `p_met_given_text` (the default) for a classifier of the reward model's
    four-field text; with `true_p_met` for an oracle that also sees the hidden latents."""
    p = truth.loc[truth["final_outcome"] != "PENDING", column].to_numpy(dtype=float)
    return float(np.mean(np.maximum(p, 1.0 - p))) if len(p) else float("nan")


# What a condition's four-field text (country, arrangement type, area, description) does not show:
# its type (PA/SPC/SB), its approval year and its noise. The text only hints at them.
HIDDEN_LATENTS = ("type_effect", "era_effect", "noise")
OBSERVED_LATENTS = ("country_effect", "area_effect", "verb_effect")
_YEAR_IN_TEXT = r"\b((?:19|20)\d\d)\b"
_MIN_GROUP = 30
# A group's hidden part enters as at most this many quantiles: the expectation stays exact to well
# under 0.001, and a million-row export needs (distinct observed logits x 512) floats per group, not
# members x members.
_HIDDEN_QUANTILES = 512


def p_met_given_text(truth: pd.DataFrame) -> np.ndarray:
    """P(MET | the reward model's input text) per condition: the Bayes-optimal prediction for a
    classifier of that text, which can approach it but never `true_p_met`.

    The text fixes the observed part of the logit (INTERCEPT + country, area and verb effects); the
    hidden part h = type + era + noise is known only in distribution, given what the text reveals of
    it: the arrangement type (its era), whether a calendar deadline is written (prior actions have
    none) and the last year the description names. So P = mean over the conditions of the same
    (arrangement type, deadline, year) group of sigmoid(observed + h), with groups of fewer than 30
    conditions widened to (arrangement type, deadline)."""
    hidden = truth[list(HIDDEN_LATENTS)].sum(axis=1).to_numpy(dtype=float)
    observed = INTERCEPT + truth[list(OBSERVED_LATENTS)].sum(axis=1).to_numpy(dtype=float)
    # h is drawn from assessed conditions, the only ones a classifier is scored on.
    assessed = (truth["final_outcome"] != "PENDING").to_numpy()
    description = truth["description"].astype(str)
    keys = pd.DataFrame({
        "arrangement_type": truth["arrangement_type"].astype(str).to_numpy(),
        "deadline": description.str.contains(r" by (?:end|mid)-", regex=True).to_numpy(),
        "year": description.str.findall(_YEAR_IN_TEXT).str[-1].fillna("").to_numpy(),
    })
    fine = keys.groupby(["arrangement_type", "deadline", "year"], sort=False).ngroup().to_numpy()
    coarse = keys.groupby(["arrangement_type", "deadline"], sort=False).ngroup().to_numpy()
    group = np.where(np.bincount(fine)[fine] >= _MIN_GROUP, fine, -1 - coarse)
    out = np.empty(len(truth))
    for members in pd.Series(group).groupby(group).indices.values():
        pool = hidden[members[assessed[members]] if assessed[members].any() else members]
        if len(pool) > _HIDDEN_QUANTILES:
            pool = np.quantile(pool, (np.arange(_HIDDEN_QUANTILES) + 0.5) / _HIDDEN_QUANTILES)
        levels, level_of = np.unique(observed[members], return_inverse=True)
        out[members] = (1.0 / (1.0 + np.exp(-(levels[:, None] + pool[None, :])))).mean(axis=1)[level_of]
    return out


# ---------------------------------------------------------------------------------------------
# Step 1: arrangements and the shape of their conditions (enough of them for n_rows)


def _draw_skeleton(rng: np.random.Generator, n_rows: int,
                   country_p: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    # ~30 rows per arrangement on average; draw more than needed, keep the prefix that covers n_rows.
    n_draw = n_rows // 20 + 5
    while True:
        arrangements, conditions = _draw_arrangements(rng, n_draw, country_p)
        rows_per_arrangement = np.bincount(conditions["arr"], weights=conditions["n_rows"], minlength=n_draw)
        covered = np.cumsum(rows_per_arrangement)
        if covered[-1] >= n_rows:
            break
        n_draw *= 2
    keep = int(np.searchsorted(covered, n_rows)) + 1 if n_rows else 1
    arrangements = arrangements.iloc[:keep]
    conditions = conditions[conditions["arr"] < keep]

    # Arrangement numbers follow approval order, as the IMF's do.
    order = np.argsort(arrangements["approval"].to_numpy(), kind="stable")
    rank = np.empty(keep, dtype=np.int64)
    rank[order] = np.arange(keep)
    arrangements = arrangements.iloc[order].reset_index(drop=True)
    arrangements["number"] = 500 + np.arange(keep)
    conditions = conditions.assign(arr=rank[conditions["arr"].to_numpy()])
    conditions = conditions.sort_values("arr", kind="stable").reset_index(drop=True)
    return arrangements, conditions


def _draw_arrangements(rng: np.random.Generator, n: int,
                       country_p: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    country = rng.choice(len(COUNTRIES), size=n, p=country_p)
    year = rng.integers(FIRST_YEAR, LAST_YEAR + 1, n)
    approval = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]") + rng.integers(0, 365, n)
    arrangement_type = _draw_arrangement_types(rng, country, year)
    n_reviews = rng.integers(2, 7, n)  # R0 plus 1-5 reviews
    long_forms = rng.random(n) < LONG_FORM_SHARE
    n_conditions = rng.integers(8, 26, n)
    arrangements = pd.DataFrame({"country": country, "year": year, "approval": approval,
                                 "type": arrangement_type, "n_reviews": n_reviews, "long_forms": long_forms})

    arr = np.repeat(np.arange(n), n_conditions)
    N = len(arr)
    reviews, cond_year = n_reviews[arr], year[arr]
    ctype = _draw_condition_types(rng, cond_year)
    pending = (ctype != 0) & (rng.random(N) < PENDING_SHARE)
    set_review = _draw_set_review(rng, ctype, pending, reviews)
    # Rows: a PA has one; an SB/SPC its setting row plus 1-3 assessments (as many as later reviews
    # allow); a never-assessed one its setting row and perhaps one more, both blank.
    assessments = np.minimum(rng.choice([1, 2, 3], size=N, p=[0.65, 0.25, 0.10]), reviews - 1 - set_review)
    n_rows = np.where(ctype == 0, 1, np.where(pending, np.minimum(reviews - set_review, 2), 1 + assessments))
    conditions = pd.DataFrame({"arr": arr, "ctype": ctype, "pending": pending, "set_review": set_review,
                               "n_rows": n_rows})
    return arrangements, conditions


def _draw_arrangement_types(rng: np.random.Generator, country: np.ndarray, year: np.ndarray) -> np.ndarray:
    prgt = np.array([c[2] for c in COUNTRIES])[country]
    out = np.empty(len(country), dtype=object)
    for y in np.unique(year):
        for group in (True, False):
            where = np.flatnonzero((year == y) & (prgt == group))
            mix = {t: w for t, w in ARRANGEMENT_MIX[(group, y >= 2010)].items()
                   if ARRANGEMENT_ERAS[t][0] <= y <= ARRANGEMENT_ERAS[t][1]}
            weights = np.array(list(mix.values()))
            out[where] = np.array(list(mix), dtype=object)[
                rng.choice(len(mix), size=len(where), p=weights / weights.sum())]
    return out


def _draw_condition_types(rng: np.random.Generator, year: np.ndarray) -> np.ndarray:
    """0 = PA, 1 = SPC, 2 = SB. SPCs were abolished in 2009."""
    u = rng.random(len(year))
    before = year < 2009
    pa_share = np.where(before, 0.22, 0.25)
    spc_share = np.where(before, 0.18, 0.0)
    return np.where(u < pa_share, 0, np.where(u < pa_share + spc_share, 1, 2))


def _draw_set_review(rng: np.random.Generator, ctype: np.ndarray, pending: np.ndarray,
                     reviews: np.ndarray) -> np.ndarray:
    """The review whose row first lists the condition; approval (R0) sets about half of them."""
    at_start, u = rng.random(len(ctype)), rng.random(len(ctype))
    pa = np.where(at_start < 0.5, 0, 1 + np.floor(u * (reviews - 1)))  # 0..R-1
    assessed = np.where(at_start < 0.5, 0, np.floor(u * (reviews - 1)))  # 0..R-2: a later review assesses it
    never = np.where(at_start < 0.7, reviews - 1, np.floor(u * reviews))  # mostly set at the last review
    return np.where(ctype == 0, pa, np.where(pending, never, assessed)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Step 2: what each condition says, when it is due, and how it ends


def _draw_content(rng: np.random.Generator, arrangements: pd.DataFrame, conditions: pd.DataFrame,
                  country_effect: np.ndarray) -> None:
    """Adds area, action, description, test date, latent components and outcome to `conditions`."""
    N = len(conditions)
    arr = conditions["arr"].to_numpy()
    ctype = conditions["ctype"].to_numpy()
    set_review = conditions["set_review"].to_numpy()
    country = arrangements["country"].to_numpy()[arr]
    year = arrangements["year"].to_numpy()[arr]

    area_weight = np.array([weight for _, weight in AREA_EFFECTS.values()])
    area = rng.choice(len(AREAS), size=N, p=area_weight / area_weight.sum())
    action, obj = _draw_actions_and_objects(rng, area)

    # SB/SPC test dates: 2-7 months after the setting review (reviews are ~6 months apart),
    # usually a month end, sometimes mid-month.
    approval_month = arrangements["approval"].to_numpy().astype("datetime64[M]")[arr]
    test_month = approval_month + (6 * set_review + rng.integers(2, 8, N)).astype("timedelta64[M]")
    month_end = (test_month + np.timedelta64(1, "M")).astype("datetime64[D]") - np.timedelta64(1, "D")
    mid_month = test_month.astype("datetime64[D]") + np.timedelta64(14, "D")
    at_month_end = rng.random(N) < 0.85
    test_date = np.where(at_month_end, month_end, mid_month)
    test_year = test_month.astype("datetime64[Y]").astype(np.int64) + 1970
    text_year = np.where(ctype == 0, year + set_review // 2, test_year)

    conditions["area"] = area
    conditions["action"] = action
    deadline = np.char.add(np.where(at_month_end, " by end-", " by mid-"),
                           _MONTH_YEAR[test_month.astype(np.int64) - _MONTH_YEAR_START]).astype(object)
    conditions["description"] = _descriptions(rng, conditions, country, text_year, deadline, obj)
    conditions["description_code"] = rng.choice([1, 2, 3, 4], size=N, p=[0.55, 0.20, 0.15, 0.10])
    conditions["test_date"] = test_date
    conditions["test_month"] = test_month.astype(np.int64)  # months since 1970-01

    latents = {
        "country_effect": country_effect[country],
        "area_effect": np.array([effect for effect, _ in AREA_EFFECTS.values()])[area],
        "verb_effect": np.array([VERB_EFFECTS[ALL_ACTIONS[i][0]] for i in range(len(ALL_ACTIONS))])[action],
        "type_effect": np.array([TYPE_EFFECTS[t] for t in TYPE_CODES])[ctype],
        "era_effect": np.where(year >= 2010, ERA_EFFECT, 0.0),
        "noise": rng.normal(0.0, NOISE_SD, N),
    }
    logit = INTERCEPT + sum(latents.values())
    for name, values in latents.items():
        conditions[name] = values
    conditions["true_p_met"] = 1.0 / (1.0 + np.exp(-logit))
    met = rng.random(N) < conditions["true_p_met"].to_numpy()
    conditions["final_code"] = _final_codes(rng, met, ctype, conditions["pending"].to_numpy())


def _area_action_ids(area_number: str) -> tuple[np.ndarray, np.ndarray]:
    start = len(ACTIONS)
    for number, extra in AREA_ACTIONS.items():
        if number == area_number:
            ids = list(range(len(ACTIONS))) + list(range(start, start + len(extra)))
            weights = np.array([1.0] * len(ACTIONS) + [2.0] * len(extra))
            return np.array(ids), weights / weights.sum()
        start += len(extra)
    return np.arange(len(ACTIONS)), np.full(len(ACTIONS), 1.0 / len(ACTIONS))


def _draw_actions_and_objects(rng: np.random.Generator, area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    action = np.empty(len(area), dtype=np.int64)
    obj = np.empty(len(area), dtype=np.int64)
    offsets = np.cumsum([0] + [len(AREA_OBJECTS[a]) for a in AREA_OBJECTS])
    object_offset = dict(zip(AREA_OBJECTS, offsets))
    for index, number in enumerate(area.number for area in AREAS):
        where = np.flatnonzero(area == index)
        ids, p = _area_action_ids(number)
        action[where] = rng.choice(ids, size=len(where), p=p)
        obj[where] = object_offset[number] + rng.integers(0, len(AREA_OBJECTS[number]), len(where))
    return action, obj


def _descriptions(rng: np.random.Generator, conditions: pd.DataFrame, country: np.ndarray,
                  text_year: np.ndarray, deadline: np.ndarray, obj: np.ndarray) -> np.ndarray:
    N = len(conditions)
    ctype = conditions["ctype"].to_numpy()
    legislature = np.array([c[3] for c in COUNTRIES], dtype=object)[country]
    templates = np.array([t for _, t in ALL_ACTIONS], dtype=object)[conditions["action"].to_numpy()]
    objects = np.array(ALL_OBJECTS, dtype=object)[obj]
    text = np.array([t.replace("{obj}", o).format(year=y, leg=leg, Leg=leg[0].upper() + leg[1:])
                     for t, o, y, leg in zip(templates, objects, text_year.tolist(), legislature)], dtype=object)

    # Fillers vary the wording without changing the odds: 50% none, 30% generic, 12% agency, 8% deadline.
    u = rng.random(N)
    pick = rng.integers(0, 1 << 30, N)
    filler = np.full(N, "", dtype=object)
    generic = u < 0.30
    filler[generic] = np.array(GENERIC_FILLERS, dtype=object)[pick[generic] % len(GENERIC_FILLERS)]
    agency = (u >= 0.30) & (u < 0.42)
    majors = np.array([area.major for area in AREAS])[conditions["area"].to_numpy()]
    filler[agency] = [f", in coordination with the {AGENCIES[m][k % len(AGENCIES[m])]}"
                      for m, k in zip(majors[agency], pick[agency])]
    with_deadline = (u >= 0.42) & (u < 0.50) & (ctype != 0)  # prior actions have no calendar deadline
    filler[with_deadline] = deadline[with_deadline]
    text = text + filler

    # Keys (arrangement, description, economic code) must be unique: number repeated texts as phases.
    repeat = pd.DataFrame({"arr": conditions["arr"], "area": conditions["area"], "text": text}) \
        .groupby(["arr", "area", "text"], sort=False).cumcount().to_numpy()
    again = np.flatnonzero(repeat > 0)
    text[again] = [f"{t} ({ORDINALS[r].lower() if r < len(ORDINALS) else r + 1} phase)"
                   for t, r in zip(text[again], repeat[again])]
    period = rng.random(N) < 0.4
    text[period] = text[period] + "."
    return text


def _final_codes(rng: np.random.Generator, met: np.ndarray, ctype: np.ndarray, pending: np.ndarray) -> np.ndarray:
    N = len(met)
    code = np.where(rng.random(N) < PM_SHARE, _PM, _M)
    u = rng.random(N)
    for index, name in enumerate(TYPE_CODES):
        where = ~met & (ctype == index)
        choices, p = _NON_MET_FINAL[name]
        pick = np.minimum(np.searchsorted(np.cumsum(p), u[where], side="right"), len(choices) - 1)
        code[where] = np.array(choices)[pick]
    code[pending] = _BLANK
    return code


# ---------------------------------------------------------------------------------------------
# Step 3: one row per (condition, review that lists it), ordered and cut to n_rows


def _expand_rows(rng: np.random.Generator, arrangements: pd.DataFrame, conditions: pd.DataFrame,
                 n_rows: int) -> pd.DataFrame:
    per_condition = conditions["n_rows"].to_numpy()
    cond = np.repeat(np.arange(len(conditions)), per_condition)
    start = np.cumsum(per_condition) - per_condition
    position = np.arange(len(cond)) - start[cond]  # 0 = the row that sets the condition
    review = conditions["set_review"].to_numpy()[cond] + position
    arr = conditions["arr"].to_numpy()[cond]

    ctype = conditions["ctype"].to_numpy()[cond]
    last = position == per_condition[cond] - 1
    final = conditions["final_code"].to_numpy()[cond]
    # A condition assessed more than once was missed before its final assessment.
    missed = np.array([_NM, _D, _R])[rng.choice(3, size=len(cond), p=[0.5, 0.3, 0.2])]
    code = np.where(ctype == 0, final, np.where(position == 0, _BLANK, np.where(last, final, missed)))
    code[conditions["pending"].to_numpy()[cond]] = _BLANK

    order = np.lexsort((cond, review, arr))[:n_rows]
    return pd.DataFrame({"cond": cond[order], "arr": arr[order], "review": review[order],
                         "position": position[order], "code": code[order],
                         "comment_draw": rng.random(len(cond))[order]})


def _comments(rows: pd.DataFrame, conditions: pd.DataFrame) -> np.ndarray:
    """Mostly blank; desk notes on delays, resets and waivers, as in real exports."""
    code = rows["code"].to_numpy()
    cond = rows["cond"].to_numpy()
    u = rows["comment_draw"].to_numpy()
    ctype = conditions["ctype"].to_numpy()[cond]
    out = np.full(len(rows), "", dtype=object)
    delayed_met = (code == _M) & (rows["position"].to_numpy() >= 2) & (u < 0.5)
    out[delayed_met] = "Met with delay"
    out[(code == _PM) & (u < 0.3)] = "Partially implemented"
    out[(code == _W) & (u < 0.5)] = "Waiver granted"
    reset = np.flatnonzero((code == _R) & (u < 0.4))
    new_month = conditions["test_month"].to_numpy()[cond[reset]] + 3 * rows["position"].to_numpy()[reset]
    out[reset] = np.char.add(np.where(ctype[reset] == 1, "Reset as SB for end-", "Reprogrammed to end-"),
                             _MONTH_YEAR[new_month - _MONTH_YEAR_START]).astype(object)
    out[(code == _BLANK) & (ctype != 0) & (u < 0.03)] = "Not yet due"
    return out


# ---------------------------------------------------------------------------------------------
# Step 4: the export frame and the truth sidecar


def _export_frame(arrangements: pd.DataFrame, conditions: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    cond = rows["cond"].to_numpy()
    arr = rows["arr"].to_numpy()
    review = rows["review"].to_numpy()
    ctype = conditions["ctype"].to_numpy()[cond]
    area = conditions["area"].to_numpy()[cond]
    names = np.array([c[0] for c in COUNTRIES], dtype=object)
    codes = np.array([c[1] for c in COUNTRIES], dtype=object)
    country = arrangements["country"].to_numpy()[arr]

    # Prior actions carry review text instead of a date.
    pa_text = np.array(["Program approval Prior action"] + [f"{o} Review Prior action" for o in ORDINALS],
                       dtype=object)
    test_date = np.where(ctype == 0, pa_text[review],
                         _format_dates(conditions["test_date"].to_numpy()[cond]))
    long_forms = arrangements["long_forms"].to_numpy()[arr]
    code = rows["code"].to_numpy()

    columns = {
        "arrangement_number": arrangements["number"].to_numpy()[arr].astype(np.int64),
        "country": names[country],
        "country_code": codes[country],
        "arrangement_type": arrangements["type"].to_numpy()[arr],
        "approval_date": _format_dates(arrangements["approval"].to_numpy())[arr],
        "review_type": np.array([f"R{r}" for r in range(10)], dtype=object)[review],
        "condition_type": np.array(TYPE_CODES, dtype=object)[ctype],
        "economic_code": _AREA_CODE[area],
        "economic_descriptor": _AREA_DESCRIPTOR[area],
        "description": conditions["description"].to_numpy()[cond],
        "description_code": conditions["description_code"].to_numpy()[cond].astype(np.int64),
        "test_date": test_date,
        "status": np.where(long_forms, STATUS_LONG[code], STATUS_SHORT[code]),
        "comments": _comments(rows, conditions),
    }
    return pd.DataFrame({IMF_HEADERS[name]: values for name, values in columns.items()})[EXPORT_COLUMNS]


def _format_dates(days: np.ndarray) -> np.ndarray:
    """MM/DD/YYYY text; formatted once per distinct date, which is fast at a million rows."""
    unique, inverse = np.unique(days.astype("datetime64[D]"), return_inverse=True)
    text = pd.DatetimeIndex(unique).strftime("%m/%d/%Y").to_numpy(dtype=object)
    return text[inverse.reshape(-1)]


def _truth_table(arrangements: pd.DataFrame, conditions: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per condition present in the export. A condition whose later rows were cut off
    (the last arrangement) ends where its last remaining row says."""
    cond = rows["cond"].to_numpy()
    shown = np.bincount(cond, minlength=len(conditions))
    outcome = _CODE_OUTCOME[conditions["final_code"].to_numpy()].copy()
    # The code of each condition's last remaining row (highest position).
    by_condition = np.lexsort((rows["position"].to_numpy(), cond))
    is_last = np.diff(cond[by_condition], append=-1) != 0
    last_code = np.full(len(conditions), _BLANK)
    last_code[cond[by_condition][is_last]] = rows["code"].to_numpy()[by_condition][is_last]
    cut = (shown > 0) & (shown < conditions["n_rows"].to_numpy())
    outcome[cut] = _CODE_OUTCOME[last_code[cut]]

    present = np.flatnonzero(shown > 0)
    c = conditions.iloc[present]
    arr = c["arr"].to_numpy()
    number = arrangements["number"].to_numpy()[arr]
    within = c.groupby("arr").cumcount().to_numpy() + 1
    country = arrangements["country"].to_numpy()[arr]
    return pd.DataFrame({
        "condition_key": [f"{n}-{k:02d}" for n, k in zip(number, within)],
        "arrangement_number": number.astype(np.int64),
        "country": np.array([x[0] for x in COUNTRIES], dtype=object)[country],
        "country_code": np.array([x[1] for x in COUNTRIES], dtype=object)[country],
        "arrangement_type": arrangements["type"].to_numpy()[arr],
        "approval_year": arrangements["year"].to_numpy()[arr].astype(np.int64),
        "condition_type": np.array(TYPE_CODES, dtype=object)[c["ctype"].to_numpy()],
        "economic_code": _AREA_CODE[c["area"].to_numpy()],
        "economic_descriptor": _AREA_DESCRIPTOR[c["area"].to_numpy()],
        "description": c["description"].to_numpy(),
        "action": np.array([g for g, _ in ALL_ACTIONS], dtype=object)[c["action"].to_numpy()],
        "n_rows": shown[present].astype(np.int64),
        "true_p_met": c["true_p_met"].to_numpy(),
        "final_outcome": outcome[present],
        **{name: c[name].to_numpy() for name in
           ("country_effect", "area_effect", "verb_effect", "type_effect", "era_effect", "noise")},
    }).pipe(lambda truth: truth.assign(p_met_given_text=p_met_given_text(truth)))


# ---------------------------------------------------------------------------------------------
# Files


def _write_xlsx(export: pd.DataFrame, path: Path, seed: int) -> None:
    """Like the IMF workbook: a notes sheet, then the data sheet with a title row above the header."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    notes = workbook.create_sheet("Notes")
    notes.append(["MONA - Monitoring of Fund Arrangements: structural conditions (synthetic data)"])
    notes.append([f"Generated by ml.data.synthetic with seed {seed}; {len(export)} rows. Not real IMF data."])
    notes.append(["PC Status: M met, PM partially met, NM not met, W waived, D delayed, R reprogrammed; "
                  "blank = not yet assessed."])
    sheet = workbook.create_sheet("Description")
    sheet.append([f"MONA - Structural Conditions (synthetic, seed {seed})"])
    sheet.append(list(export.columns))
    for row in export.itertuples(index=False, name=None):
        sheet.append([None if value == "" else value for value in row])
    workbook.save(path)
