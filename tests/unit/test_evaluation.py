"""ml.evaluation on synthetic inputs whose answer is known: the statistics, the flags, the report."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from ml.evaluation import (
    AreaClassifier,
    NoveltyIndex,
    distinct_n,
    evaluate_policies,
    mean_ci,
    overoptimisation_flag,
    paired_bootstrap,
    scenario_of,
    scenario_samples,
    synthetic_inputs,
    top_opening,
    welch_test,
    write_report,
)

MLFLOW_SAFE = re.compile(r"^[A-Za-z0-9_\-./ ]+$")


@pytest.fixture(scope="module")
def confirmed():
    """PPO gains on the proxy and, by a little less, on the gold reward: a real improvement."""
    inputs = synthetic_inputs(seed=0, ppo_proxy_gain=0.15, ppo_gold_gain=0.10)
    return inputs, evaluate_policies(inputs.answers, inputs.corpus, seed=0)


@pytest.fixture(scope="module")
def hacked():
    """PPO gains on the proxy while the gold reward falls: the reward model is being exploited."""
    inputs = synthetic_inputs(seed=1, ppo_proxy_gain=0.15, ppo_gold_gain=-0.05)
    return inputs, evaluate_policies(inputs.answers, inputs.corpus, seed=0)


# --- statistics -------------------------------------------------------------------------------------

def test_identical_distributions_are_not_significant():
    rng = np.random.default_rng(11)
    prompts = np.repeat([f"p{i}" for i in range(100)], 2)  # two samples per prompt
    a, b = rng.normal(0.5, 0.1, 200), rng.normal(0.5, 0.1, 200)
    welch = welch_test(a, b)
    boot = paired_bootstrap(pd.Series(a, index=prompts), pd.Series(b, index=prompts), seed=0)
    assert welch.p > 0.05 and abs(welch.hedges_g) < 0.2
    assert boot.p > 0.05 and boot.ci_low < 0 < boot.ci_high
    assert boot.n_pairs == 100


def test_shifted_distribution_is_significant_with_sign_and_effect_size():
    rng = np.random.default_rng(12)
    prompts = [f"p{i}" for i in range(200)]
    higher, lower = rng.normal(0.6, 0.1, 200), rng.normal(0.5, 0.1, 200)  # true d = 1.0
    welch = welch_test(higher, lower)
    assert welch.p < 0.01 and welch.t > 0
    assert welch.hedges_g == pytest.approx(1.0, abs=0.25)
    assert welch_test(lower, higher).t < 0 and welch_test(lower, higher).hedges_g < 0
    boot = paired_bootstrap(pd.Series(higher, index=prompts), pd.Series(lower, index=prompts), seed=0)
    assert boot.p < 0.01 and boot.mean_diff == pytest.approx(0.1, abs=0.03)
    assert 0 < boot.ci_low < 0.1 < boot.ci_high


def test_paired_bootstrap_pairs_by_prompt_after_averaging_samples():
    # Prompts differ a lot in difficulty (sd 0.3) and a beats b by 0.05 on every one: Welch's test over
    # rows drowns in the prompt spread, the paired bootstrap sees the gain.
    rng = np.random.default_rng(13)
    difficulty = rng.normal(0.5, 0.3, 60)
    prompt_ids = [f"p{i}" for i in range(60)]
    a = pd.Series(np.repeat(difficulty + 0.05, 3) + rng.normal(0, 0.02, 180), index=np.repeat(prompt_ids, 3))
    b = pd.Series(difficulty + rng.normal(0, 0.02, 60), index=prompt_ids).sample(frac=1, random_state=0)
    b["only_in_b"] = 0.0  # unpaired: must be ignored
    assert welch_test(a, b).p > 0.05
    boot = paired_bootstrap(a, b, seed=0)
    assert boot.n_pairs == 60 and boot.p < 0.01
    assert boot.mean_diff == pytest.approx(0.05, abs=0.01)


def test_mean_ci_covers_the_true_mean_at_its_level():
    rng = np.random.default_rng(14)
    single = mean_ci(rng.normal(3.0, 1.0, 200))
    assert single.low < 3.0 < single.high
    covered = [low <= 3.0 <= high for _, low, high in (mean_ci(rng.normal(3.0, 1.0, 30)) for _ in range(400))]
    assert 0.92 <= np.mean(covered) <= 0.98
    assert np.isnan(mean_ci([0.4]).low) and mean_ci([0.4]).mean == 0.4
    assert mean_ci([0.5, 0.5, np.nan]) == (0.5, 0.5, 0.5)


def test_distinct_n_on_hand_examples():
    texts = ["the cat sat", "The cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # "the cat" twice
    assert distinct_n(["same words", "same words"], 2) == pytest.approx(0.5)
    assert np.isnan(distinct_n(["one"], 2))


def test_top_opening_names_the_first_word_most_answers_share():
    answers = ["Prepare a plan.", "prepare the budget", "Adopt a law", ""]
    assert top_opening(answers) == ("prepare", pytest.approx(2 / 3))  # of the three answers with a word
    assert top_opening(["", None]) == (None, pytest.approx(np.nan, nan_ok=True))


def test_overoptimisation_flag_fires_when_proxy_rises_without_gold():
    assert overoptimisation_flag(proxy_gain=0.15, proxy_p=0.001, gold_gain=0.01, gold_p=0.6)
    assert overoptimisation_flag(proxy_gain=0.15, proxy_p=0.001, gold_gain=-0.04, gold_p=0.01)
    # gold falls significantly while proxy rises without significance: still flagged
    assert overoptimisation_flag(proxy_gain=0.02, proxy_p=0.3, gold_gain=-0.05, gold_p=0.001)


def test_overoptimisation_flag_stays_quiet_when_gold_confirms_or_nothing_moved():
    assert not overoptimisation_flag(proxy_gain=0.15, proxy_p=0.001, gold_gain=0.10, gold_p=0.001)
    assert not overoptimisation_flag(proxy_gain=0.01, proxy_p=0.5, gold_gain=-0.01, gold_p=0.6)
    missing_gold = overoptimisation_flag(proxy_gain=0.15, proxy_p=0.001, gold_gain=float("nan"), gold_p=float("nan"))
    assert not missing_gold and missing_gold.reason.startswith("not assessed")


def test_area_classifier_gets_a_clear_case_right():
    corpus = synthetic_inputs(seed=0).corpus
    classifier = AreaClassifier.fit(corpus)
    assert classifier.holdout_accuracy > 0.9
    answers = pd.DataFrame({
        "answer": ["Remove the vat exemptions and raise the excise tax", "Raise the vat rate on services"],
        "economic_area": ["1.1. Revenue measures, excluding trade policy", "Pension reforms"]})
    assert list(classifier.on_topic(answers)) == [1.0, 0.0]
    assert classifier.on_topic_rate(answers) == 0.5


def nested_areas_corpus() -> pd.DataFrame:
    """Conditions of a top-level area ("6. Financial sector"), two of its sub-areas and an unrelated
    area, each area with words of its own."""
    words = {"6. Financial sector": ("financial stability report", "systemic risk council"),
             "6.1. Financial sector legal reforms, regulation, and supervision": ("bank supervision act",
                                                                                   "prudential capital rules"),
             "6.2. Restructuring and privatization of financial institutions": ("state bank privatization",
                                                                                "bank recapitalization plan"),
             "4.1. Pension reforms": ("pension indexation formula", "retirement age increase")}
    verbs = ("Adopt the", "Publish the", "Submit to parliament the", "Complete the", "Approve the")
    return pd.DataFrame([{"description": f"{verb} {phrase}", "economic_area": area}
                         for area, phrases in words.items() for phrase in phrases for verb in verbs])


def test_an_answer_about_a_sub_area_is_about_the_area_that_holds_it_not_the_reverse():
    # MONA's areas nest: a bank-supervision condition answers a question about the financial sector,
    # but a condition about the financial sector at large does not answer one about bank supervision.
    from ml.evaluation.judges import EmbeddingAreaJudge

    corpus = nested_areas_corpus()
    answers = pd.DataFrame({
        "answer": ["Adopt the bank supervision act", "Adopt the bank supervision act",
                   "Adopt the bank supervision act", "Publish the financial stability report",
                   "Publish the financial stability report"],
        "economic_area": ["Financial sector", "6.1. Financial sector legal reforms, regulation, and supervision",
                          "Restructuring and privatization of financial institutions",
                          "Financial sector legal reforms, regulation, and supervision", "Pension reforms"]})
    expected = [1.0, 1.0, 0.0, 0.0, 0.0]
    classifier = AreaClassifier.fit(corpus, min_rows_for_holdout=10**6)
    assert list(classifier.on_topic(answers)) == expected
    assert list(EmbeddingAreaJudge(corpus, k=3).on_topic(answers)) == expected
    # P(asked area) of a top-level area adds its sub-areas' probabilities to its own: here, all but
    # the unrelated area's.
    text = ["Adopt the bank supervision act"]
    p = {area: classifier.asked_area_probability(text, [area])[0] for area in corpus["economic_area"].unique()}
    child = p["6.1. Financial sector legal reforms, regulation, and supervision"]
    assert p["6. Financial sector"] == pytest.approx(1.0 - p["4.1. Pension reforms"])
    assert p["6. Financial sector"] > child > p["6.2. Restructuring and privatization of financial institutions"]


def test_sentence_embeddings_batched_over_sorted_lengths_come_back_in_input_order():
    # Texts of very different lengths in one call: batches are formed over the length-sorted texts, and
    # each row must still be the embedding of the text at that position, as if embedded alone.
    from ml.evaluation.judges import embed, minilm_encoder

    model, tokenizer = minilm_encoder()
    texts = ["Adopt a medium-term debt management strategy covering domestic and external borrowing "
             "with annual borrowing plans", "Publish", "Submit the budget to parliament",
             "Complete an audit of the central bank's foreign reserves by an international firm", "Enact"]
    together = embed(texts, model, tokenizer, batch_size=2)
    alone = np.concatenate([embed([text], model, tokenizer) for text in texts])
    assert together.shape == (len(texts), model.config.hidden_size)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert embed([], model, tokenizer).shape == (0, model.config.hidden_size)


def test_novelty_index_flags_an_exact_copy_only():
    corpus = synthetic_inputs(seed=0).corpus
    index = NoveltyIndex(corpus["description"])
    copied = corpus["description"].iloc[7]
    nearest = index.nearest([copied, "Legislate a carbon levy on aviation fuel with compensating transfers"])
    assert nearest["is_copy"].tolist() == [True, False]
    assert nearest["similarity"].iloc[0] == pytest.approx(1.0)
    assert nearest["nearest"].iloc[0] == copied


# --- the evaluation ---------------------------------------------------------------------------------

def test_evaluation_recovers_the_known_gains(confirmed):
    inputs, evaluation = confirmed
    table = evaluation.table.set_index("policy")
    assert list(table.index) == ["base", "sft", "ppo", "random", "historical"]
    ppo = inputs.answers[inputs.answers["policy"] == "ppo"]
    assert table.loc["ppo", "proxy_mean"] == pytest.approx(ppo["proxy_reward"].mean())
    assert table.loc["ppo", "on_topic_rate"] == 1.0
    assert table.loc["random", "copy_share"] == 1.0  # random answers are corpus conditions
    tests = evaluation.tests.set_index(["comparison", "metric"])
    for comparison in ("ppo_vs_base", "ppo_vs_random"):
        assert tests.loc[(comparison, "proxy"), "gain"] > 0.05
        assert tests.loc[(comparison, "proxy"), "welch_p"] < 0.01
        assert tests.loc[(comparison, "proxy"), "bootstrap_p"] < 0.01
    assert evaluation.overoptimised() == []


def test_the_table_counts_the_answers_that_repeat_themselves(confirmed):
    inputs, evaluation = confirmed
    assert evaluation.table.set_index("policy").loc["sft", "repeat_share"] < 0.05
    answers = inputs.answers.copy()
    sft = answers["policy"] == "sft"
    answers.loc[sft, "answer"] = answers.loc[sft, "answer"].str.replace(" the ", " the the ", n=1, regex=False)
    table = evaluate_policies(answers, inputs.corpus, seed=0).table.set_index("policy")
    assert table.loc["sft", "repeat_share"] == 1.0 and table.loc["ppo", "repeat_share"] == 0.0


def test_the_table_counts_the_answers_that_name_a_body_no_training_condition_names(confirmed):
    inputs, evaluation = confirmed
    assert evaluation.table.set_index("policy")["unknown_name_share"].max() == 0.0
    answers = inputs.answers.copy()
    ppo = answers.index[answers["policy"] == "ppo"]
    invented, known = ppo[:len(ppo) // 4], ppo[len(ppo) // 4:len(ppo) // 2]
    answers.loc[invented, "answer"] += " with the Office of the Exchange Market"
    # A country of the record and a month are names it knows.
    answers.loc[known, "answer"] += f" in {inputs.corpus['country'].iloc[0]} by May"
    result = evaluate_policies(answers, inputs.corpus, seed=0)
    table = result.table.set_index("policy")
    assert table.loc["ppo", "unknown_name_share"] == pytest.approx(len(invented) / len(ppo))
    assert table.loc["sft", "unknown_name_share"] == 0.0
    assert result.headline()["ppo_unknown_name_share"] == pytest.approx(len(invented) / len(ppo))


def test_the_table_counts_the_sampled_answers_that_hold_a_slip_and_only_those(confirmed):
    from ml.evaluation.metrics import SLIP_BELOW
    from ml.evaluation.report import headline_table

    inputs, evaluation = confirmed
    assert evaluation.table["slip_share"].isna().all()  # answers without token log-probs: nothing to say
    answers = inputs.answers.copy()
    sampled = answers["policy"].isin(["base", "sft", "ppo"])
    answers.loc[sampled, "least_token_logprob"] = np.log(SLIP_BELOW) + 2.0  # unlikely, not a slip
    ppo = answers.index[answers["policy"] == "ppo"]
    answers.loc[ppo[:len(ppo) // 4], "least_token_logprob"] = np.log(SLIP_BELOW) - 0.5
    result = evaluate_policies(answers, inputs.corpus, seed=0)
    table = result.table.set_index("policy")
    assert table.loc["ppo", "slip_share"] == pytest.approx(len(ppo) // 4 / len(ppo))
    assert table.loc["sft", "slip_share"] == 0.0
    assert np.isnan(table.loc["historical", "slip_share"])  # not drawn from a policy
    headline = result.headline()
    assert headline["ppo_slip_share"] == pytest.approx(len(ppo) // 4 / len(ppo))
    assert "historical_slip_share" not in headline
    shown = headline_table(result.table).set_index("policy")[f"holds a token drawn at p < {SLIP_BELOW:g}"]
    assert shown["ppo"] == f"{len(ppo) // 4 / len(ppo):.0%}" and shown["historical"] == "—"


def test_the_table_counts_the_answers_that_borrow_the_questions_words(confirmed):
    from ml.evaluation.report import headline_table

    inputs, evaluation = confirmed
    assert (evaluation.table["echo_share"] == 0.0).all()  # the fixture's answers speak as conditions do
    answers = inputs.answers.copy()
    sft = answers.index[answers["policy"] == "sft"]
    answers.loc[sft[:len(sft) // 2], "answer"] = "Finalize draft conditions for " + answers.loc[
        sft[:len(sft) // 2], "answer"].str.lower()
    result = evaluate_policies(answers, inputs.corpus, seed=0)
    table = result.table.set_index("policy")
    assert table.loc["sft", "echo_share"] == pytest.approx(len(sft) // 2 / len(sft))
    assert table.loc["ppo", "echo_share"] == 0.0 and table.loc["historical", "echo_share"] == 0.0
    assert result.headline()["sft_echo_share"] == pytest.approx(len(sft) // 2 / len(sft))
    shown = headline_table(result.table).set_index("policy")["borrows the question's words"]
    assert shown["sft"] == f"{len(sft) // 2 / len(sft):.0%}" and shown["ppo"] == "0%"


def test_the_table_names_the_word_a_policy_opens_most_answers_with(confirmed):
    inputs, evaluation = confirmed
    before = evaluation.table.set_index("policy").loc["ppo", "opening_share"]
    answers = inputs.answers.copy()
    ppo = answers["policy"] == "ppo"
    answers.loc[ppo, "answer"] = "Prepare " + answers.loc[ppo, "answer"].str.lower()
    result = evaluate_policies(answers, inputs.corpus, seed=0)
    row = result.table.set_index("policy").loc["ppo"]
    assert before < 1.0 and (row["opening_word"], row["opening_share"]) == ("prepare", 1.0)
    assert result.headline()["ppo_opening_share"] == 1.0


def test_evaluation_flags_a_proxy_gain_the_gold_reward_denies(hacked):
    _, evaluation = hacked
    assert "ppo" in evaluation.overoptimised()
    headline = evaluation.headline()
    assert headline["ppo_overoptimised"] == 1.0
    assert headline["ppo_vs_base_proxy_gain"] > 0 and headline["ppo_vs_base_gold_gain"] < 0


def test_headline_names_are_mlflow_safe_and_include_the_paper_test(confirmed):
    headline = confirmed[1].headline()
    for name in ("ppo_gold_p_met", "ppo_proxy_p_met", "ppo_judged_reward", "ppo_vs_base_gold_gain",
                 "ppo_vs_random_welch_p", "ppo_vs_base_gold_bootstrap_p", "sft_vs_base_hedges_g", "ppo_kl_to_base",
                 "ppo_distinct_2"):
        assert name in headline
    assert all(MLFLOW_SAFE.match(name) for name in headline)
    assert all(np.isfinite(value) for value in headline.values())
    assert "base_kl_to_base" not in headline  # NaN values are left out, not logged


def test_missing_answer_columns_are_named():
    with pytest.raises(ValueError, match="gold_reward"):
        evaluate_policies(pd.DataFrame({"policy": ["ppo"], "prompt_id": ["p"], "economic_area": ["Trade"],
                                        "answer": ["x"], "proxy_reward": [0.5]}), synthetic_inputs().corpus)


def test_scenario_samples_pick_fiscal_trade_and_financial_prompts():
    areas = {"a": "1.1. Revenue measures, excluding trade policy", "b": "Debt management",
             "c": "Trade policy (excluding customs reforms)", "d": "Exchange system and restrictions",
             "e": "Financial sector legal reforms, regulation, and supervision",
             "f": "Central bank operations and reforms",
             "g": "Pension reforms", "h": "Public enterprise restructuring and privatization"}
    answers = pd.DataFrame([{"policy": policy, "prompt_id": pid, "economic_area": area, "country": "KENYA",
                             "arrangement_type": "ECF", "prompt": f"prompt {pid}", "answer": f"{policy} on {pid}",
                             "proxy_reward": 0.5, "gold_reward": 0.4}
                            for pid, area in areas.items() for policy in ("ppo", "base", "random")])
    samples = scenario_samples(answers, n_per_scenario=2, n_other=1)
    by_scenario = samples.groupby("scenario", sort=False)["prompt_id"].unique().map(sorted).to_dict()
    assert by_scenario == {"fiscal": ["a", "b"], "trade and investment": ["c", "d"],
                           "financial sector": ["e", "f"], "other": ["g"]}
    assert samples.loc[samples["prompt_id"] == "a", "policy"].tolist() == ["base", "ppo", "random"]
    assert scenario_of("Restructuring and privatization of financial institutions") == "financial sector"
    assert scenario_of("8.1. Public enterprise restructuring and privatization") == "other"
    assert scenario_of("Private sector development and business environment") == "trade and investment"


# --- the report -------------------------------------------------------------------------------------

def test_report_files_hold_the_numbers_of_the_inputs(hacked, tmp_path):
    inputs, evaluation = hacked
    files = write_report(evaluation, tmp_path, inputs.training_curves, inputs.promotion)
    assert files.md.exists() and files.html.exists()
    assert set(files.plots) == {"reward_by_policy", "training_curves", "kl_vs_gold"}
    for path in files.plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.partial"))  # atomic writes leave no temporary files
    md = files.md.read_text()
    answers = inputs.answers
    ppo_row = next(line for line in md.splitlines() if re.match(r"\| ppo +\|", line))
    assert f"{answers.loc[answers['policy'] == 'ppo', 'proxy_reward'].mean():.3f}" in ppo_row
    assert f"{answers.loc[answers['policy'] == 'ppo', 'gold_reward'].mean():.3f}" in ppo_row
    assert "ppo: over-optimisation suspected." in md
    assert "Kept as challenger." in md and "0.400" in md and "0.500" in md  # both figures of the decision
    assert "### Fiscal" in md and "### Trade and investment" in md and "### Financial sector" in md
    assert "](plots/training_curves.png)" in md
    page = files.html.read_text()
    assert '<table id="headline">' in page
    assert page.count('src="data:image/png;base64,') == 3
    assert "plots/" not in page  # self-contained: nothing linked beside it
    assert files.headline == evaluation.headline()


def test_report_escapes_model_output(confirmed, tmp_path):
    inputs, _ = confirmed
    answers = inputs.answers.copy()
    hostile = "<script>alert(1)</script> ![pixel](http://tracker.example/x.png) | cell"
    first_fiscal = (answers["policy"] == "ppo") & (answers["prompt_id"] == "p000")
    answers.loc[first_fiscal, "answer"] = hostile
    files = write_report(evaluate_policies(answers, inputs.corpus, n_boot=200), tmp_path)
    md, page = files.md.read_text(), files.html.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "<script>" not in md and "![pixel](" not in md and "\\| cell" in md
