"""The synthetic MONA generator: deterministic, shaped like the IMF export, with a learnable signal."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from openpyxl import load_workbook

from ml.data.schema import IMF_HEADERS
from ml.data.synthetic import (
    bayes_optimal_accuracy,
    generate_mona,
    status_outcome,
    write_synthetic_export,
)
from ml.data.taxonomy import ARRANGEMENT_ERAS, ORDINALS, descriptor_number, economic_code_for_number

KEY = ["Arrangement Number", "Description", "Economic Code"]
TRUTH_KEY = ["arrangement_number", "description", "economic_code"]


@pytest.fixture(scope="module")
def demo():
    """The demo profile's data set: 12,000 rows, seed 2024."""
    return generate_mona(12_000, seed=2024)


def _last_assessed(export: pd.DataFrame) -> pd.DataFrame:
    """One row per condition: its rows, distinct statuses and the outcome of its last assessed status."""
    rows = export.assign(review=export["Review Type"].str[1:].astype(int),
                         outcome=export["PC Status"].map(status_outcome))
    rows = rows.sort_values(KEY + ["review"], kind="stable")
    assessed = rows[rows["outcome"] != "PENDING"]
    last = assessed.groupby(KEY, sort=False)["outcome"].last().rename("last_outcome")
    summary = rows.groupby(KEY, sort=False).agg(n_rows=("review", "size"),
                                                statuses=("PC Status", "nunique"))
    return summary.join(last).reset_index()


def test_same_seed_same_export_and_other_seed_differs():
    first, again = generate_mona(800, seed=3), generate_mona(800, seed=3)
    assert first.export.equals(again.export)
    assert first.truth.equals(again.truth)
    assert first.export.to_csv(index=False) == again.export.to_csv(index=False)
    assert not first.export.equals(generate_mona(800, seed=4).export)


@pytest.mark.parametrize("n_rows", [0, 1, 37, 300, 2_500])
def test_exactly_n_rows_with_imf_headers(n_rows):
    data = generate_mona(n_rows, seed=1)
    assert len(data.export) == n_rows
    assert list(data.export.columns) == list(IMF_HEADERS.values())
    # The truth covers exactly the conditions the export shows.
    assert len(data.truth) == len(data.export.drop_duplicates(KEY))


def test_economic_code_matches_descriptor_number(demo):
    pairs = demo.export[["Economic Descriptor", "Economic Code"]].drop_duplicates()
    assert len(pairs) > 20
    for descriptor, code in pairs.itertuples(index=False):
        number = descriptor_number(descriptor)
        assert number is not None, descriptor
        assert economic_code_for_number(number) == code, (descriptor, code)


def test_arrangement_types_follow_their_eras(demo):
    arrangements = demo.export.drop_duplicates("Arrangement Number")
    year = arrangements["Approval Date"].str[-4:].astype(int)
    kind = arrangements["Arrangement Type"]
    assert year.between(2002, 2024).all()
    assert (year[kind == "PRGF"] < 2010).all() and (kind == "PRGF").any()
    assert (year[kind.isin(["ECF", "SCF"])] >= 2010).all() and (kind == "ECF").any()
    for arrangement_type, years in zip(kind, year):
        first, last = ARRANGEMENT_ERAS[arrangement_type]
        assert first <= years <= last
    # One country, date and type per arrangement number.
    per_number = demo.export.groupby("Arrangement Number")[["Country Name", "Approval Date", "Arrangement Type"]]
    assert (per_number.nunique() == 1).all().all()
    assert demo.export["Approval Date"].str.fullmatch(r"\d{2}/\d{2}/\d{4}").all()


def test_test_dates_are_dates_or_prior_action_text(demo):
    export = demo.export
    prior = export["Type"] == "PA"
    assert set(export["Type"]) == {"PA", "SPC", "SB"}
    assert export.loc[~prior, "TestDate"].str.fullmatch(r"\d{2}/\d{2}/\d{4}").all()
    review = export.loc[prior, "Review Type"].str[1:].astype(int)
    expected = ["Program approval Prior action" if r == 0 else f"{ORDINALS[r - 1]} Review Prior action"
                for r in review]
    assert export.loc[prior, "TestDate"].tolist() == expected


def test_conditions_repeat_across_reviews_and_change_status(demo):
    conditions = _last_assessed(demo.export)
    assert (conditions["n_rows"] > 1).mean() > 0.3
    assert (conditions["statuses"] > 1).mean() > 0.3  # blank when set, then assessed, sometimes missed first
    never = conditions["last_outcome"].isna().mean()
    assert 0.02 <= never <= 0.06


def test_last_assessed_status_is_the_final_outcome(demo):
    truth = demo.truth
    assert not truth.duplicated(TRUTH_KEY).any()
    assert truth["condition_key"].is_unique
    assert demo.export["PC Status"].map(status_outcome).notna().all()  # every status form is known
    conditions = _last_assessed(demo.export).merge(
        truth.rename(columns=dict(zip(TRUTH_KEY, KEY))), on=KEY, how="outer", indicator=True)
    assert (conditions["_merge"] == "both").all()
    assert (conditions["last_outcome"].fillna("PENDING") == conditions["final_outcome"]).all()


def test_status_forms_mix_short_codes_long_forms_and_blanks(demo):
    status = demo.export["PC Status"]
    assessed = status[status != ""]
    short = assessed.isin(["M", "PM", "NM", "W", "D", "R"])
    assert 0.8 < short.mean() < 0.95
    assert {"Met", "Not met", "Implemented with delay"} <= set(assessed)
    final = demo.truth["final_outcome"]
    met = demo.truth[final == "MET"]
    assert 0.6 <= len(met) / (final != "PENDING").sum() <= 0.72
    met_rows = assessed[assessed.map(status_outcome) == "MET"]
    assert 0.04 < met_rows.isin(["PM", "Partially met"]).mean() < 0.12


def test_outcome_is_learnable_from_the_text(demo):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    first_rows = demo.export.drop_duplicates(KEY)
    conditions = first_rows.merge(demo.truth.rename(columns=dict(zip(TRUTH_KEY, KEY))), on=KEY)
    conditions = conditions[conditions["final_outcome"] != "PENDING"]
    text = (conditions["Country Name"] + " | " + conditions["Type"] + " | "
            + conditions["Economic Descriptor"] + " | " + conditions["Description"]).to_numpy()
    label = (conditions["final_outcome"] == "MET").to_numpy()
    order = np.random.default_rng(0).permutation(len(label))
    train, test = order[: int(0.7 * len(order))], order[int(0.7 * len(order)):]

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=2.0, max_iter=1000).fit(vectorizer.fit_transform(text[train]), label[train])
    accuracy = (model.predict(vectorizer.transform(text[test])) == label[test]).mean()
    majority = max(label[test].mean(), 1 - label[test].mean())
    assert accuracy >= majority + 0.05, (accuracy, majority)
    assert 0.6 <= bayes_optimal_accuracy(demo.truth) <= 0.95
    assert accuracy <= bayes_optimal_accuracy(demo.truth) + 0.03  # no leak beyond the latent model


def test_p_met_given_text_is_the_text_classifiers_ceiling(demo):
    truth = demo.truth[demo.truth["final_outcome"] != "PENDING"]
    # A function of what the reward model reads: the same four fields give the same P(MET).
    fields = ["country", "arrangement_type", "economic_descriptor", "description"]
    assert (truth.groupby(fields)["p_met_given_text"].agg(np.ptp) < 1e-12).all()
    # The hidden latents average out rather than shift the MET share ...
    assert truth["p_met_given_text"].mean() == pytest.approx(truth["true_p_met"].mean(), abs=0.01)
    # ... and knowing them (the oracle) is worth something: prior actions alone are a quarter of rows.
    assert bayes_optimal_accuracy(truth, "true_p_met") > bayes_optimal_accuracy(truth) + 0.01
    # Better than what the text shows without the hidden part's distribution (h = 0).
    observed = 0.30 + truth[["country_effect", "area_effect", "verb_effect"]].sum(axis=1)
    outcome = (truth["final_outcome"] == "MET").to_numpy()

    def log_loss(p):
        return -np.mean(np.where(outcome, np.log(p), np.log(1 - p)))

    assert log_loss(truth["p_met_given_text"].to_numpy()) < log_loss(1 / (1 + np.exp(-observed.to_numpy())))


def test_descriptions_are_diverse_sentences(demo):
    descriptions = demo.truth["description"]
    assert descriptions.nunique() > 0.8 * len(descriptions)
    assert descriptions.str.match(r"^[A-Z]").all()
    assert not descriptions.str.contains(r"[{}]").any()  # every template slot filled
    assert demo.truth["action"].nunique() >= 10


def test_write_csv_and_xlsx_exports(tmp_path):
    landing, truth_folder = tmp_path / "landing", tmp_path / "truth"
    csv_path, csv_truth = write_synthetic_export(landing, truth_folder, 300, seed=5, fmt="csv")
    assert csv_path == landing / "MONA_StructuralConditions_synthetic_5.csv"
    assert csv_truth == truth_folder / "MONA_StructuralConditions_synthetic_5.truth.parquet"
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8")
    assert list(table.columns) == list(IMF_HEADERS.values()) and len(table) == 300
    assert set(table["Economic Code"]) <= {f"{code:.1f}" for code in generate_mona(300, 5).export["Economic Code"]}
    truth = pd.read_parquet(csv_truth)
    assert len(truth) == len(table.drop_duplicates(KEY)) and truth["condition_key"].is_unique

    xlsx_path, xlsx_truth = write_synthetic_export(landing, truth_folder, 300, seed=5, fmt="xlsx")
    assert xlsx_path.suffix == ".xlsx" and xlsx_truth == csv_truth
    workbook = load_workbook(xlsx_path, read_only=True)
    assert "Description" in workbook.sheetnames and len(workbook.sheetnames) == 2
    rows = list(workbook["Description"].iter_rows(values_only=True))
    workbook.close()
    assert re.match(r"MONA - Structural Conditions \(synthetic, seed 5\)", rows[0][0])
    assert list(rows[1]) == list(IMF_HEADERS.values())
    assert len(rows) == 2 + 300
    assert not [p for p in landing.iterdir() if p.name.startswith(".")]  # no temporary files left

    with pytest.raises(ValueError):
        write_synthetic_export(landing, truth_folder, 10, fmt="json")
