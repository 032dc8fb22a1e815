"""The reward model on a tiny random BERT (no download): it learns, calibrates, saves, scores and is
evaluated consistently with sklearn.

The toy corpus has the real split columns and one rule a model must find in the condition text:
conditions that "Submit" something are MET, those that "Adopt" something are NON_MET. One training
run (module fixture) serves every test that needs a trained model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, roc_auc_score

from ml.config import RewardSettings
from ml.data.text import reward_input_text
from ml.reward import (
    EncoderUnavailableError,
    RewardModel,
    TrainedReward,
    describe_encoder,
    evaluate_reward_model,
    expected_calibration_error,
    fit_temperature,
    load_encoder,
    save_plots,
    split_train_halves,
    texts_for_rows,
    train_reward_model,
)
from ml.reward.calibration import positive_probability
from ml.reward.encoder import pad_batch, tokenize
from ml.reward.model import CLS_ONLY_CHECKED_TRANSFORMERS

# Tiny models' matmuls are too small to split across threads (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNTRIES = ("Kenya", "Gabon", "Jamaica", "Moldova", "Armenia")
TYPES = ("ECF", "SBA", "EFF", "PRGF")
AREAS = ("1.2. Revenue administration, including customs", "6.1. Financial sector legal reforms",
         "8. Public enterprise reform and pricing")
OBJECTS = ("the draft budget law", "a medium-term debt strategy", "the central bank audit report",
           "amendments to the banking act with IMF technical assistance", "a tax expenditure report")
PROGRESS_LINE = re.compile(r"^step \d+/\d+ loss \d+\.\d{3} val_macro_f1 \d\.\d{3} \d+\.\d it/s ETA \d+(m\d{2})?s$")


def make_rows(n: int, seed: int, split: str, first_arrangement: int = 500) -> pd.DataFrame:
    """`n` conditions in the split layout, 10 per arrangement; "Submit" = MET, "Adopt" = NON_MET."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        met = bool(rng.random() < 0.6)
        arrangement = first_arrangement + i // 10
        country, kind, area = COUNTRIES[arrangement % 5], TYPES[arrangement % 4], AREAS[rng.integers(3)]
        description = f"{'Submit' if met else 'Adopt'} {OBJECTS[rng.integers(len(OBJECTS))]}"
        year = 2008 + arrangement % 15
        rows.append({
            "condition_id": f"c{split}{i:04d}", "arrangement_key": str(arrangement),
            "arrangement_number": str(arrangement), "country": country, "country_code": country[:3].upper(),
            "arrangement_type": kind, "economic_code": 21.2, "economic_area": area,
            "economic_descriptor_number": area.split(" ")[0], "condition_type": "SB", "description": description,
            "test_date": f"{year}-06-30", "test_year": year, "status_raw": "M" if met else "NM",
            "label": "MET" if met else "NON_MET", "is_met": int(met),
            "reward_text": reward_input_text(country, kind, area, description), "split": split,
            "is_temporal_holdout": year >= 2020,
        })
    frame = pd.DataFrame(rows)
    frame["test_year"] = frame["test_year"].astype("Int64")
    return frame


# A random tiny BERT sits near loss 0.69 for ~40 steps before it finds the verb, so patience spans
# that plateau; validation macro-F1 then reaches 1.0 by step ~50 and four evaluations later it stops,
# well before the 130 planned steps.
SETTINGS = RewardSettings(base_model="tiny-bert", max_length=48, epochs=10, batch_size=16, learning_rate=3e-3,
                          warmup_ratio=0.1, eval_every_steps=10, early_stopping_patience=4)


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return {"train": make_rows(200, 1, "train", 500), "validation": make_rows(60, 2, "validation", 600),
            "test": make_rows(80, 3, "test", 700)}


@pytest.fixture(scope="module")
def trained(data) -> tuple[TrainedReward, list[str]]:
    lines: list[str] = []
    return train_reward_model(data["train"], data["validation"], SETTINGS, seed=0, progress=lines.append), lines


@pytest.fixture(scope="module")
def reward(trained) -> RewardModel:
    return trained[0].reward_model(batch_size=8)


def test_tiny_bert_learns_the_toy_rule_and_beats_the_majority_class(trained, reward, data):
    result, lines = trained
    test = data["test"]
    accuracy = accuracy_score(test["is_met"], reward.score(test) >= 0.5)
    majority = max(test["is_met"].mean(), 1 - test["is_met"].mean())
    assert accuracy >= majority + 0.2, (accuracy, majority, lines)
    losses = [entry["loss"] for entry in result.history]
    assert min(losses[1:]) < 0.5 * losses[0], losses
    assert result.best_val_macro_f1 >= 0.9
    # Early stopping kept the best weights, not the last ones.
    assert result.stopped_early and result.best_step < result.steps < result.planned_steps
    validation = data["validation"]
    kept_f1 = f1_score(validation["is_met"], reward.score(validation) >= 0.5, average="macro")
    assert kept_f1 == pytest.approx(result.best_val_macro_f1)
    assert all(PROGRESS_LINE.match(line) for line in lines[:-1]), lines
    assert lines[-1].startswith("done ")
    # Padded positions: at least one token per row per step, at most max_length.
    assert result.steps * 1 < result.tokens_processed <= result.steps * SETTINGS.batch_size * SETTINGS.max_length
    assert result.train_seconds > 0 and result.model_flops > 0
    assert result.n_params > result.n_params_non_embedding > 0


def test_max_train_examples_subsamples_the_training_split(data):
    settings = RewardSettings(base_model="tiny-bert", max_length=32, epochs=1, batch_size=8, eval_every_steps=100,
                              max_train_examples=24)
    result = train_reward_model(data["train"], data["validation"].head(8), settings, seed=0)
    assert result.planned_steps == result.steps == 3
    assert len(result.history) == 1  # evaluated once, at the last step


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    margin = rng.normal(0.0, 1.5, 2000)  # true log-odds of MET
    labels = (rng.random(2000) < 1 / (1 + np.exp(-margin))).astype(int)
    logits = np.stack([np.zeros_like(margin), 4.0 * margin], axis=1)  # 4x over-confident
    before = expected_calibration_error(positive_probability(logits), labels)
    temperature = fit_temperature(logits, labels)
    after = expected_calibration_error(positive_probability(logits, temperature), labels)
    assert 3.0 < temperature < 5.5
    assert after < 0.5 * before, (before, after)


def test_save_then_load_scores_identically(reward, data, tmp_path):
    folder = reward.save(tmp_path / "reward")
    meta = json.loads((folder / "reward_meta.json").read_text())
    assert meta["temperature"] == reward.temperature and meta["labels"] == ["NON_MET", "MET"]
    assert (folder / "model.safetensors").exists()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # nothing pickled
    loaded = RewardModel.load(folder, batch_size=8)
    np.testing.assert_allclose(loaded.score(data["test"]), reward.score(data["test"]), atol=1e-6)
    # A model evaluated in bfloat16 is loaded in bfloat16, so it scores as it was measured.
    in_bf16 = RewardModel(reward.model, reward.tokenizer, reward.temperature, reward.max_length, dtype="bfloat16")
    reloaded = RewardModel.load(in_bf16.save(tmp_path / "reward_bf16"))
    assert reloaded.dtype == "bfloat16"
    np.testing.assert_allclose(reloaded.score(data["test"]), in_bf16.score(data["test"]), atol=1e-6)
    # A model trained on another text format would score policy answers it never learned to read.
    (folder / "reward_meta.json").write_text(json.dumps(meta | {"text_format": "Condition: {description}"}))
    with pytest.raises(ValueError, match="text format"):
        RewardModel.load(folder)


def test_scoring_builds_the_same_texts_as_the_corpus(data):
    test = data["test"]
    assert texts_for_rows(test) == test["reward_text"].tolist()
    assert texts_for_rows(test.to_dict("records")) == test["reward_text"].tolist()


def test_bad_inputs_still_get_a_probability(reward):
    rows = [{"country": None, "arrangement_type": "ECF", "economic_area": "3. Civil service", "description": ""},
            {"country": "Kenya", "arrangement_type": "NOT-A-FACILITY", "economic_area": float("nan"),
             "description": None},
            {"description": "Submit the budget"},  # other fields absent
            {"country": pd.NA, "arrangement_type": None, "economic_area": None, "description": "x " * 500}]
    for scores in (reward.score(rows), reward.score(pd.DataFrame(rows))):
        assert scores.shape == (4,)
        assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    assert reward.score([]).shape == (0,)


def test_scores_come_back_in_input_order_despite_length_sorting(reward):
    texts = [reward_input_text("Kenya", "ECF", "Fiscal", "Submit " + "the budget " * k) for k in (9, 0, 5, 1, 7, 2, 0)]
    batched = reward.score_texts(texts, batch_size=3)
    one_by_one = np.array([reward.score_texts([text])[0] for text in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_scoring_runs_the_last_layer_for_cls_only_and_gets_the_full_forwards_logits(reward, data, attention):
    model, last = reward.model, reward.model.bert.encoder.layer[-1]
    texts = data["test"]["reward_text"].tolist()[:20]  # padded batches of different widths
    scored_widths = []
    hook = last.register_forward_hook(lambda _module, _inputs, output: scored_widths.append(output.shape[1]))
    before = model.config._attn_implementation
    model.set_attn_implementation(attention)
    try:
        fast = reward.logits(texts, batch_size=6)
        full = full_forward_logits(reward, texts)
    finally:
        hook.remove()
        model.set_attn_implementation(before)
    assert scored_widths[:4] == [1, 1, 1, 1] and scored_widths[-1] > 1  # scoring: [CLS] only; plain call: all
    assert "forward" not in vars(last)  # the model is as it was once scoring ends
    np.testing.assert_allclose(fast, full, atol=1e-5)


def test_the_cls_only_forward_was_checked_against_the_installed_transformers():
    # The shortcut re-implements transformers internals and runs only under the release it was checked
    # against: a lock bump fails here until the exactness test above passes on the new release.
    import transformers

    assert transformers.__version__ == CLS_ONLY_CHECKED_TRANSFORMERS
    lock = (Path(__file__).resolve().parents[2] / "requirements.lock").read_text()
    assert f"transformers=={CLS_ONLY_CHECKED_TRANSFORMERS}" in lock.splitlines()


def test_a_classifier_that_is_not_bert_is_scored_with_its_full_forward(reward):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=reward.tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              num_labels=2)
    other = RewardModel(DistilBertForSequenceClassification(config), reward.tokenizer, max_length=64, batch_size=4)
    texts = [reward_input_text("Kenya", "ECF", "Fiscal", "Submit " + "the budget " * k) for k in (3, 0, 6)]
    np.testing.assert_allclose(other.logits(texts), full_forward_logits(other, texts), atol=1e-5)


def full_forward_logits(scorer: RewardModel, texts: list[str]) -> np.ndarray:
    """The wrapped model's plain forward on one padded batch of `texts`: what scoring must reproduce."""
    batch = pad_batch(tokenize(scorer.tokenizer, texts, scorer.max_length), scorer.tokenizer.pad_token_id)
    with torch.inference_mode():
        return scorer.model(**batch).logits.numpy()


def test_split_train_halves_are_disjoint_by_arrangement_and_cover_train(data):
    train = data["train"]
    half_a, half_b = split_train_halves(train, seed=31)
    assert set(half_a["arrangement_key"]).isdisjoint(half_b["arrangement_key"])
    assert sorted([*half_a["condition_id"], *half_b["condition_id"]]) == sorted(train["condition_id"])
    assert abs(len(half_a) - len(half_b)) <= 10  # within one arrangement of each other
    again_a, _ = split_train_halves(train, seed=31)
    assert again_a["condition_id"].tolist() == half_a["condition_id"].tolist()


def test_evaluation_matches_sklearn_and_has_the_baselines(reward, data, tmp_path):
    test, train = data["test"], data["train"]
    rng = np.random.default_rng(5)
    truth = pd.DataFrame({"arrangement_number": test["arrangement_number"].astype(int),
                          "description": test["description"], "true_p_met": rng.random(len(test)),
                          "p_met_given_text": rng.random(len(test))})
    truth = truth.drop_duplicates(["arrangement_number", "description"])
    evaluation = evaluate_reward_model(reward, test, train, truth=truth)

    probs, labels = reward.score(test), test["is_met"].to_numpy()
    predicted = (probs >= 0.5).astype(int)
    metrics = evaluation.metrics
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["f1_met"] == pytest.approx(f1_score(labels, predicted))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert metrics["brier"] == pytest.approx(brier_score_loss(labels, probs))
    assert evaluation.confusion.sum() == len(test)

    headline = evaluation.headline()
    for name in ("test_macro_f1", "baseline_tfidf_lr_accuracy", "baseline_majority_accuracy",
                 "holdout_accuracy", "bayes_optimal_accuracy"):
        assert name in headline, name
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./ ]+", name) for name in headline)
    assert headline["baseline_majority_accuracy"] == pytest.approx(max(labels.mean(), 1 - labels.mean()))
    # The sidecar repeats a (arrangement, description) pair for identical conditions: one p per pair.
    joined = test.assign(arrangement_number=test["arrangement_number"].astype(int)).merge(
        truth, on=["arrangement_number", "description"])
    for name, column in (("bayes_optimal_accuracy", "p_met_given_text"), ("oracle_accuracy", "true_p_met")):
        p = joined[column].to_numpy()
        assert headline[name] == pytest.approx(np.mean(np.maximum(p, 1 - p)))
    assert headline["truth_coverage"] == 1.0

    holdout = test[test["is_temporal_holdout"]]
    assert evaluation.holdout_metrics["n"] == len(holdout)
    assert evaluation.by_area["n"].sum() == len(test) and evaluation.by_year["n"].sum() == len(test)
    report = evaluation.to_markdown()
    assert "baseline tfidf_lr" in report and "By economic area" in report and "Bayes-optimal" in report
    for path in save_plots(evaluation, tmp_path / "plots").values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_bert_is_seeded_and_its_parameters_are_counted():
    first, _ = load_encoder("tiny-bert", seed=3)
    second, _ = load_encoder("tiny-bert", seed=3)
    for a, b in zip(first.parameters(), second.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    info = describe_encoder(first)
    assert info.n_params == sum(p.numel() for p in first.parameters())
    assert info.hidden_size == 32 and info.num_layers == 2


def test_an_encoder_that_is_not_available_offline_fails_clearly():
    with pytest.raises(EncoderUnavailableError, match="not available offline"):
        load_encoder("rlxf-no-such-org/no-such-model")


def test_auto_precision_resolves_to_what_the_hardware_has(reward):
    from ml.device import resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == "float32" and resolve_dtype("bfloat16", cpu) == "bfloat16"
    assert resolve_dtype("auto", cpu) in ("float32", "bfloat16")
    # The model records the concrete precision, so a saved model says what it was measured in.
    auto = RewardModel(reward.model, reward.tokenizer, reward.temperature, reward.max_length, dtype="auto")
    assert auto.dtype == resolve_dtype("auto", auto.device)
    with pytest.raises(ValueError, match="unknown dtype"):
        RewardModel(reward.model, reward.tokenizer, dtype="float8")
    with pytest.raises(ValueError, match="not float16"):  # no loss scaling in its training loop
        RewardModel(reward.model, reward.tokenizer, dtype="float16")


def rl_reward_for(reward, design: str, copy_corpus=None, name_record=None, **changes):
    from ml.evaluation import synthetic_inputs
    from ml.reward.rl_reward import RewardSpec, RLReward
    from ml.reward.topic import AreaClassifier

    topic = AreaClassifier.fit(synthetic_inputs(seed=0).corpus)
    ref = {"name": "toy", "version": "1"}
    spec = RewardSpec(design=design, proxy=ref, gold=ref, ensemble=(ref,) if design == "ensemble" else (),
                      topic_weight=1.0, **changes)
    return RLReward(spec, reward, reward, topic, topic, [reward] if design == "ensemble" else [], copy_corpus,
                    name_record)


def test_reward_designs_combine_p_met_and_the_topic_term_as_documented(reward):
    area = "1.1. Revenue measures, excluding trade policy"
    answers = ["Remove the vat exemptions and raise the excise tax", "Provide a detailed plan of action"]
    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": area}] * 2
    plain = rl_reward_for(reward, "p_met")
    p_met = plain(records, answers)
    on_topic = plain.proxy_area.asked_area_probability(answers, [area, area])
    assert on_topic[0] > 0.5 > on_topic[1]  # a revenue measure is about revenue; a generic plan is not
    np.testing.assert_allclose(p_met, reward.score(plain.rows(records, answers)), rtol=1e-6)
    np.testing.assert_allclose(rl_reward_for(reward, "product")(records, answers), p_met * on_topic, rtol=1e-5)
    np.testing.assert_allclose(plain.judged(records, answers), p_met * on_topic, rtol=1e-5)
    # Identical members have no spread: the conservative ensemble is the product itself.
    np.testing.assert_allclose(rl_reward_for(reward, "ensemble")(records, answers), p_met * on_topic, rtol=1e-5)
    summed = rl_reward_for(reward, "normalize_then_sum")(records, answers)

    def z(values: np.ndarray) -> np.ndarray:
        return (values - values.mean()) / values.std()

    assert summed.mean() == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(summed, z(p_met) + z(on_topic), atol=1e-5)  # topic_weight 1
    # An area the classifier never saw takes nothing away: there is nothing to judge it by.
    assert plain.proxy_area.asked_area_probability(answers, ["Space programme", None]).tolist() == [1.0, 1.0]


def test_constraint_multiplier_rises_below_the_on_topic_target_and_falls_above_it(reward):
    area = "1.1. Revenue measures, excluding trade policy"
    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": area}] * 2
    off_topic = ["Provide a detailed plan of action"] * 2
    on_topic = ["Remove the vat exemptions and raise the excise tax"] * 2
    constrained = rl_reward_for(reward, "constraint", on_topic_target=0.9, multiplier_lr=1.0)
    first = constrained(records, off_topic)
    assert constrained.multiplier == pytest.approx(0.9)  # 0 + 1.0 * (0.9 - 0.0)
    np.testing.assert_allclose(first, reward.score(constrained.rows(records, off_topic)), rtol=1e-6)
    constrained(records, off_topic)
    assert constrained.multiplier == pytest.approx(1.8)
    constrained(records, on_topic)  # on target: the multiplier gives back what is no longer needed
    assert constrained.multiplier == pytest.approx(1.7)
    state = constrained.state_dict()
    again = rl_reward_for(reward, "constraint", on_topic_target=0.9, multiplier_lr=1.0)
    again.load_state_dict(state)
    assert again.multiplier == constrained.multiplier


def test_an_answer_quoting_a_precedent_of_its_prompt_gets_the_batch_lowest_reward(reward):
    from ml.policy.grounding import Grounding, precedents_in

    corpus = pd.DataFrame({"country": ["Kenya", "Kenya", "Ghana"], "economic_area": [AREAS[0]] * 3,
                           "description": ["Submit the draft budget law (2025) to parliament.",
                                           "Adopt a tax expenditure report", "Publish the arrears stock"],
                           "is_met": [1, 0, 1]})
    prompt = "Question?\n" + Grounding(corpus).context("Kenya", AREAS[0]) + "<|im_end|>"  # as chat-rendered
    assert sorted(precedents_in(prompt)) == ["Adopt a tax expenditure report", "Publish the arrears stock",
                                             "Submit the draft budget law (2025) to parliament"]
    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0], "prompt_text": prompt}] * 3
    answers = ["Submit the draft budget law (2025) to parliament", "Adopt a medium-term revenue strategy",
               "Publish the arrears stock."]
    free = rl_reward_for(reward, "product")(records, answers)
    strict = rl_reward_for(reward, "product", quote_threshold=0.9)
    assert strict.quotes(records, answers).tolist() == [True, False, True]
    np.testing.assert_allclose(strict(records, answers), [free.min(), free[1], free.min()], rtol=1e-6)
    # Without precedents in view (the paper's bare question) nothing is a quote.
    bare = [{**records[0], "prompt_text": "Question?"}] * 3
    np.testing.assert_allclose(strict(bare, answers), rl_reward_for(reward, "product")(bare, answers), rtol=1e-6)


def test_an_answer_reciting_a_condition_the_proxy_learned_from_gets_the_batch_lowest_reward(reward, tmp_path):
    from ml.reward.rl_reward import RLReward

    learned = ["Submit the draft budget law to parliament", "Adopt a tax expenditure report",
               "Publish the arrears stock on the website of the Ministry of Finance"]
    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0]}] * 4
    answers = ["Submit the draft budget law to parliament.", "Adopt a medium-term revenue strategy",
               "Publish the arrears stock on the Ministry of Finance website", "Adopt a public investment plan"]
    free = rl_reward_for(reward, "product")(records, answers)
    strict = rl_reward_for(reward, "product", copy_corpus=learned, copy_threshold=0.85)
    # Verbatim and reordered recitals are copies; sharing a verb or an object is not.
    assert strict.copies(answers).tolist() == [True, False, True, False]
    np.testing.assert_allclose(strict(records, answers), [free.min(), free[1], free.min(), free[3]], rtol=1e-6)
    assert strict.last_floored.tolist() == [True, False, True, False]  # what PPO logs as floored_share
    # The compared conditions travel with the saved reward: loading it needs no training split.
    strict.save(tmp_path)
    loaded = RLReward.load(tmp_path, lambda ref: reward)
    assert loaded.copies(answers).tolist() == [True, False, True, False]
    # A benchmark variant of the reward keeps the rule's conditions.
    assert strict.variant(design="p_met").copies(answers).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="needs the conditions"):
        rl_reward_for(reward, "product", copy_threshold=0.85)


def test_a_near_copy_loses_reward_in_proportion_to_its_closeness_on_the_copy_ramp(reward, tmp_path):
    from ml.reward.rl_reward import RLReward

    learned = ["Submit the draft budget law to parliament", "Adopt a tax expenditure report"]
    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0]}] * 3
    answers = ["Submit the draft budget law to parliament.", "Submit a draft budget law on revenue to the cabinet",
               "Publish the arrears stock on the website"]
    free = rl_reward_for(reward, "product")(records, answers)
    ramped = rl_reward_for(reward, "product", copy_corpus=learned, copy_threshold=0.85, copy_ramp_from=0.3)
    closeness = ramped.copy_rule.similarity(answers)
    assert closeness[0] >= 0.85 and 0.3 < closeness[1] < 0.85 and closeness[2] < 0.3  # a copy, a near one, new
    share = (closeness[1] - 0.3) / (0.85 - 0.3)
    lowest = free.min()
    assert free[1] > lowest  # so the ramp has something to take
    np.testing.assert_allclose(ramped(records, answers),
                               [lowest, free[1] - share * (free[1] - lowest), free[2]], rtol=1e-6)
    assert ramped.last_floored.tolist() == [True, False, False]  # the ramp lowers, only the rule floors
    # The ramp travels with the saved reward; without it the near copy keeps its reward.
    ramped.save(tmp_path)
    np.testing.assert_allclose(RLReward.load(tmp_path, lambda ref: reward)(records, answers), ramped(records, answers),
                               rtol=1e-6)
    np.testing.assert_allclose(ramped.variant(copy_ramp_from=0.0)(records, answers)[1], free[1], rtol=1e-6)
    with pytest.raises(ValueError, match="copy_ramp_from"):
        rl_reward_for(reward, "product", copy_corpus=learned, copy_threshold=0.85, copy_ramp_from=0.9)


def test_an_answer_that_repeats_itself_gets_the_batch_lowest_reward(reward, tmp_path):
    from ml.reward.rl_reward import RLReward

    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0]}] * 4
    answers = ["Adopt a tax expenditure report, in line with staff staff recommendations",
               "Adopt a tax expenditure report, in line with staff recommendations",
               "Publish the arrears stock in line with staff recommendations in line with staff",
               "Publish the arrears stock, in consultation with Fund staff and with staff"]
    free = rl_reward_for(reward, "product")(records, answers)
    strict = rl_reward_for(reward, "product", floor_repeats=True)
    assert strict.floored(records, answers).tolist() == [True, False, True, False]
    np.testing.assert_allclose(strict(records, answers), [free.min(), free[1], free.min(), free[3]], rtol=1e-6)
    strict.save(tmp_path)
    assert RLReward.load(tmp_path, lambda ref: reward).floored(records, answers).tolist() == [True, False, True, False]
    assert not rl_reward_for(reward, "product").floored(records, answers).any()  # off by default


def test_an_answer_naming_a_body_the_record_never_names_gets_the_batch_lowest_reward(reward, tmp_path):
    from ml.reward.rl_reward import RLReward

    record = ["Submit to the Council of Ministers the 2024 budget", "Cabinet to adopt the Public Finance Law",
              "Submit to Fund staff the arrears audit", "Kenya", "ECF"]
    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0]}] * 5
    answers = ["Submit to the Council of Ministers a tax expenditure report by end-June",  # a known body
               "Submit to the Council of State a tax expenditure report",  # no record names it
               "Adopt amendments to the public finance law of Kenya",  # a known law (any case) and country
               "Publish the Fund's review of the ECF",  # a possessive of a name the record holds
               "Publish the arrears stock of the Ministry of Business Development"]  # an invented ministry
    free = rl_reward_for(reward, "product")(records, answers)
    strict = rl_reward_for(reward, "product", floor_unknown_names=True, name_record=record)
    assert strict.floored(records, answers).tolist() == [False, True, False, False, True]
    np.testing.assert_allclose(strict(records, answers), [free[0], free.min(), free[2], free[3], free.min()],
                               rtol=1e-6)
    strict.save(tmp_path)
    assert RLReward.load(tmp_path, lambda ref: reward).floored(records, answers).tolist() == [
        False, True, False, False, True]
    assert not rl_reward_for(reward, "product").floored(records, answers).any()  # off by default
    with pytest.raises(ValueError, match="floor_unknown_names"):
        rl_reward_for(reward, "product", floor_unknown_names=True)


def test_the_action_premium_takes_from_p_met_what_the_answers_first_word_alone_earns(reward, tmp_path):
    from ml.reward.rl_reward import RLReward, action_base_rates

    # 12 Submit conditions, 11 met; 12 Enact, 3 met; 3 Publish, all met (too few to be trusted alone).
    conditions = pd.DataFrame({"description": ["Submit the budget"] * 12 + ["Enact the VAT law"] * 12
                               + ["Publish the arrears"] * 3 + ["Review the tax code"],
                               "is_met": [1] * 11 + [0] + [1] * 3 + [0] * 9 + [1] * 3 + [0]})
    rates, overall = action_base_rates(conditions, at_least=2, prior=10.0)
    assert overall == pytest.approx(17 / 28, abs=1e-4)
    assert rates["submit"] == pytest.approx((11 + 10 * overall) / 22, abs=1e-4)
    assert rates["enact"] == pytest.approx((3 + 10 * overall) / 22, abs=1e-4)
    assert rates["submit"] > rates["publish"] > overall > rates["enact"]  # 3 of 3 met is shrunk toward the overall
    assert "review" not in rates  # one condition is not a rate

    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0]}] * 3
    answers = ["Submit a tax expenditure report", "Enact a tax expenditure report", "Draft a tax expenditure report"]
    plain = rl_reward_for(reward, "p_met")
    adjusted = rl_reward_for(reward, "p_met", action_rates=rates, action_overall=overall)
    np.testing.assert_allclose(adjusted.action_premium(answers), [rates["submit"] - overall,
                                                                   rates["enact"] - overall, 0.0], atol=1e-6)
    # Submit loses its premium, Enact gains back its deficit, a word without a rate keeps its P(MET).
    np.testing.assert_allclose(adjusted(records, answers),
                               np.clip(plain(records, answers) - adjusted.action_premium(answers), 0, 1), rtol=1e-6)
    # The product multiplies the adjusted P(MET); the rates travel with the saved reward.
    product = rl_reward_for(reward, "product", action_rates=rates, action_overall=overall)
    on_topic = product.proxy_area.asked_area_probability(answers, [AREAS[0]] * 3)
    np.testing.assert_allclose(product(records, answers), adjusted(records, answers) * on_topic, rtol=1e-5)
    product.save(tmp_path)
    np.testing.assert_allclose(RLReward.load(tmp_path, lambda ref: reward)(records, answers),
                               product(records, answers), rtol=1e-6)
    assert not rl_reward_for(reward, "product").action_premium(answers).any()  # off by default


def test_the_opening_penalty_takes_from_each_answer_its_openings_share_of_the_batch(reward, tmp_path):
    from ml.reward.rl_reward import RLReward

    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0]}] * 5
    # Three of five open with Prepare (in any case), one with Submit, one is empty.
    answers = ["Prepare a tax expenditure report", "prepare the draft budget law", "Prepare a plan",
               "Submit the draft budget law", ""]
    plain = rl_reward_for(reward, "product")
    penalised = rl_reward_for(reward, "product", opening_penalty=0.3)
    np.testing.assert_allclose(penalised(records, answers) - plain(records, answers),
                               [-0.3 * 3 / 5] * 3 + [-0.3 * 1 / 5, 0.0], atol=1e-6)
    # The same answers reworded with distinct openings lose only a fifth each: diversity pays.
    distinct = ["Draft a tax expenditure report", "Adopt the draft budget law", "Publish a plan",
                "Submit the draft budget law", "Enact a fuel tax"]
    np.testing.assert_allclose(penalised(records, distinct) - plain(records, distinct), [-0.3 / 5] * 5, atol=1e-6)
    penalised.save(tmp_path)
    np.testing.assert_allclose(RLReward.load(tmp_path, lambda ref: reward)(records, answers),
                               penalised(records, answers), rtol=1e-6)
    assert plain.spec.opening_penalty == 0  # off by default


def test_rl_reward_saves_and_loads_without_refitting(reward, tmp_path):
    from ml.reward.rl_reward import RLReward

    original = rl_reward_for(reward, "product")
    original.save(tmp_path)
    loaded = RLReward.load(tmp_path, lambda ref: reward)
    records = [{"country": "Kenya", "arrangement_type": "ECF", "economic_area": AREAS[0]}] * 3
    answers = ["Submit the draft budget law", "Adopt a tax expenditure report", "Provide a plan"]
    np.testing.assert_allclose(loaded(records, answers), original(records, answers), rtol=1e-6)
    assert loaded.spec == original.spec
    assert RLReward.load(tmp_path, lambda ref: reward, design="p_met").spec.design == "p_met"


def test_relevance_negatives_are_real_conditions_out_of_place_or_cut_short():
    from ml.reward.negatives import NEGATIVE_COLUMN, relevance_negatives, with_relevance_negatives
    from ml.reward.topic import nested

    train = make_rows(200, seed=3, split="train")
    negatives = relevance_negatives(train, cross_area_share=0.25, vague_share=0.1, seed=0)
    assert len(negatives) == 50 + 20 and (negatives["is_met"] == 0).all() and negatives[NEGATIVE_COLUMN].all()
    cross, vague = negatives.iloc[:50], negatives.iloc[50:]
    originals = train.set_index("condition_id")
    # Cross-area: the same condition and country under another area than its own.
    assert (cross["economic_area"].to_numpy() != originals.loc[cross["condition_id"], "economic_area"].to_numpy()).all()
    assert (cross["description"].to_numpy() == originals.loc[cross["condition_id"], "description"].to_numpy()).all()
    # Vague: the first words of the condition, never all of it.
    for row in vague.itertuples():
        source = originals.loc[row.condition_id, "description"]
        assert source.startswith(row.description) and len(row.description.split()) < len(source.split())
    # Never under an area that holds the condition's own or that its own holds: a bank-supervision
    # condition under "Financial sector" is about that area.
    areas = ["6. Financial sector", "6.1. Financial sector legal reforms, regulation, and supervision",
             "4.1. Pension reforms"]
    family = train.assign(economic_area=[areas[i % 3] for i in range(len(train))])
    cross = relevance_negatives(family, cross_area_share=1.0, vague_share=0.0, seed=0)
    own = family.set_index("condition_id").loc[cross["condition_id"], "economic_area"].to_numpy()
    assert not any(nested(a, b) for a, b in zip(own, cross["economic_area"]))
    assert set(cross.loc[own != areas[2], "economic_area"]) == {areas[2]}
    assert set(cross.loc[own == areas[2], "economic_area"]) == set(areas[:2])
    combined = with_relevance_negatives(train, 0.25, 0.1, seed=0)
    assert len(combined) == 270 and combined[NEGATIVE_COLUMN].sum() == 70
    assert with_relevance_negatives(train, 0.0, 0.0, seed=0) is train


def test_vague_negatives_can_keep_the_closing_clause_without_the_object():
    from ml.reward.negatives import cut_before_object, relevance_negatives

    text = "Complete the restructuring of the government securities market, in coordination with the Central Bank"
    assert cut_before_object(text, 3) == "Complete the restructuring"
    assert cut_before_object(text, 4, keep_closing_clause=True) == \
        "Complete the restructuring, in coordination with the Central Bank"
    # No closing clause, or one word after the comma: the plain cut.
    assert cut_before_object("Adopt the 2024 budget law", 3, keep_closing_clause=True) == "Adopt the 2024"
    assert cut_before_object("Adopt the budget law of Kenya, 2024", 2, keep_closing_clause=True) == "Adopt the"

    train = make_rows(200, seed=3, split="train")
    clause = ", with IMF technical assistance"
    # Long enough before the comma that every cut (2-4 words) leaves two words or more of the object out.
    train["description"] = [f"{d} for the next fiscal year{clause}" if i % 2 else d
                            for i, d in enumerate(train["description"])]
    plain = relevance_negatives(train, 0.0, 0.5, seed=0)
    kept = relevance_negatives(train, 0.0, 0.5, seed=0, keep_closing_clause=True)
    sources = train.set_index("condition_id").loc[kept["condition_id"], "description"].to_numpy()
    with_clause = np.array([s.endswith(clause) for s in sources])
    assert with_clause.any() and (~with_clause).any()
    assert (kept["description"].to_numpy()[~with_clause] == plain["description"].to_numpy()[~with_clause]).all()
    for source, negative in zip(sources[with_clause], kept["description"].to_numpy()[with_clause]):
        lead = negative.removesuffix(clause)
        assert negative.endswith(clause) and source.startswith(lead)
        assert len(source.split()) - len(negative.split()) >= 2  # the object is gone
