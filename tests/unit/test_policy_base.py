"""The base policy, its prompts and generation, on the tiny Llama (offline, a few seconds).

The SmolLM2 GGUF conversion itself is an integration test: it takes ~20 s and writes ~0.5 GB.
"""

from __future__ import annotations

import copy
import time

import pandas as pd
import pytest
import torch

from ml.config import get_profile
from ml.policy.base import (
    CONVERSION_MANIFEST,
    PolicyUnavailableError,
    apply_lora,
    ensure_padding,
    load_adapter,
    load_base_policy,
    smollm2_cache_folder,
)
from ml.policy.prompts import (
    PROMPT_COLUMNS,
    answer_to_condition,
    build_policy_prompts,
    build_sft_examples,
    chat_text,
    render_prompt,
)
from ml.policy.sampling import generate_answers, greedy_answers
from ml.policy.tiny import build_tiny_llama, shared_cache_dir

SETTINGS = get_profile("smoke").policy


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer); the cache is shared per machine, so the GGUF tokenizer is read once."""
    return load_base_policy("tiny-llama", shared_cache_dir(), seed=0)


@pytest.fixture()
def splits() -> pd.DataFrame:
    rows = [
        ("c1", "Ghana", "ECF", "Revenue administration, including customs", "Adopt a customs code.", 1, "train"),
        ("c2", "Ghana", "ECF", "Revenue administration, including customs", "Audit large taxpayers.", 0, "train"),
        ("c3", "Ghana", "ECF", "Revenue administration, including customs", "Publish tax arrears.", 1, "train"),
        ("c4", "Gabon", "EFF", "Expenditure auditing", "Establish a cash plan.", 1, "train"),
        ("c5", "Uruguay", None, "Banking supervision", "Submit the bank plan.", 0, "train"),
        ("c6", "Ghana", "ECF", "Revenue administration, including customs", "Held out.", 1, "test"),
    ]
    frame = pd.DataFrame(rows, columns=["condition_id", "country", "arrangement_type", "economic_area",
                                        "description", "is_met", "split"])
    frame["label"] = frame["is_met"].map({1: "MET", 0: "NON_MET"})
    return frame


def test_tiny_llama_loads_offline_and_generates(tiny):
    model, tokenizer = tiny
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 2, len(tokenizer))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    prompts = [chat_text(tokenizer, "Describe a condition."), chat_text(tokenizer, "A much longer prompt " * 5)]

    greedy = greedy_answers(model, tokenizer, prompts, max_new_tokens=6)
    sampled = generate_answers(model, tokenizer, prompts, max_new_tokens=6, num_return_sequences=3, seed=7)

    assert len(greedy) == 2 and all(greedy)
    assert greedy == greedy_answers(model, tokenizer, prompts, max_new_tokens=6)
    assert len(sampled) == 6  # three consecutive answers per prompt
    assert sampled == generate_answers(model, tokenizer, prompts, max_new_tokens=6, num_return_sequences=3, seed=7)
    # Left padding: a prompt's greedy answer does not depend on what it is batched with.
    assert greedy_answers(model, tokenizer, prompts[:1], max_new_tokens=6) == greedy[:1]


def test_policy_dtype_auto_is_bfloat16_exactly_where_the_cpu_computes_it_natively():
    model, _ = load_base_policy("tiny-llama", shared_cache_dir(), dtype="auto", device="cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert model.dtype == (torch.bfloat16 if native else torch.float32)
    assert load_base_policy("tiny-llama", shared_cache_dir(), dtype="float32", device="cpu")[0].dtype == torch.float32


def test_tiny_llama_weights_depend_only_on_seed(tiny):
    _, tokenizer = tiny
    first, again, other = (build_tiny_llama(tokenizer, seed=s).model.embed_tokens.weight for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_prompt_follows_the_paper_template_exactly():
    assert render_prompt("Ghana", "ECF", "Revenue administration, including customs") == (
        "Given the economic indicators and historical performance of Ghana, what would be an appropriate policy "
        "proposal under the ECF arrangement for achieving Revenue administration, including customs? Describe "
        "the proposed condition.")
    assert "under the IMF-supported program for achieving" in render_prompt("Ghana", None, "Tax policy")
    assert "under the IMF-supported program for achieving" in render_prompt("Ghana", "  ", "Tax policy")


def test_policy_prompts_one_row_per_combination_with_history(splits):
    prompts = build_policy_prompts(splits, "train")

    assert list(prompts.columns) == PROMPT_COLUMNS
    assert len(prompts) == 3 and set(prompts["split"]) == {"train"}
    ghana = prompts.set_index("country").loc["Ghana"]
    assert (ghana["n_conditions"], ghana["n_met"]) == (3, 2)
    assert ghana["prompt"] == render_prompt("Ghana", "ECF", "Revenue administration, including customs")
    uruguay = prompts.set_index("country").loc["Uruguay"]
    assert uruguay["arrangement_type"] is None and "IMF-supported program" in uruguay["prompt"]
    # Ids are stable: the same combinations in another row order get the same ids.
    shuffled = build_policy_prompts(splits.sample(frac=1, random_state=1), "train")
    assert list(shuffled["prompt_id"]) == list(prompts["prompt_id"])
    assert prompts["prompt_id"].is_unique
    limited = build_policy_prompts(splits, "train", limit=2, seed=5)
    assert len(limited) == 2 and limited.equals(build_policy_prompts(splits, "train", limit=2, seed=5))
    assert len(build_policy_prompts(splits, "test")) == 1


def test_validation_and_test_prompt_counts_are_separate_settings(tmp_path):
    """RL's checkpoint selection and the evaluation's paired tests need different sample sizes."""
    from dataclasses import replace

    from ml.policy.pipeline import policy_prompt_table

    rows = [(f"c{split}{i}", f"Country {i}", "ECF", "Tax policy", f"Condition {i}.", 1, split)
            for split in ("train", "validation", "test") for i in range(6)]
    frame = pd.DataFrame(rows, columns=["condition_id", "country", "arrangement_type", "economic_area",
                                        "description", "is_met", "split"])
    for split, part in frame.groupby("split"):
        part.to_parquet(tmp_path / f"{split}.parquet", index=False)
    settings = replace(SETTINGS, n_eval_prompts=2, n_test_prompts=5, grounding_precedents=0)

    counts = policy_prompt_table(tmp_path, settings, seed=3)["split"].value_counts()

    assert (counts["train"], counts["validation"], counts["test"]) == (6, 2, 5)


def test_sft_examples_are_met_conditions_under_their_prompt(splits):
    examples = build_sft_examples(splits, "train")
    assert sorted(examples["description"]) == ["Adopt a customs code.", "Establish a cash plan.",
                                               "Publish tax arrears."]
    prompts = build_policy_prompts(splits, "train").set_index("prompt_id")["prompt"]
    assert all(prompts[pid] == prompt for pid, prompt in zip(examples["prompt_id"], examples["prompt"]))


def test_a_balanced_sft_sample_gives_a_rare_area_its_turn():
    # 20 one-condition combinations of a common area and 2 of a rare one; a sample of 4 examples.
    rows = [(f"c{i}", f"Country {i}", "ECF", "Revenue administration", f"Adopt measure {i}.", 1, "train")
            for i in range(20)]
    rows += [(f"r{i}", f"Island {i}", "EFF", "Trade policy", f"Cut tariff {i}.", 1, "train") for i in range(2)]
    frame = pd.DataFrame(rows, columns=["condition_id", "country", "arrangement_type", "economic_area",
                                        "description", "is_met", "split"])

    balanced = [build_sft_examples(frame, "train", 4, seed=seed, balance_areas=True) for seed in range(5)]
    plain = [build_sft_examples(frame, "train", 4, seed=seed) for seed in range(5)]

    # In turns: two combinations of each area, whatever the seed; the plain sample mostly misses the rare one.
    assert all(sample["economic_area"].value_counts().to_dict() == {"Revenue administration": 2, "Trade policy": 2}
               for sample in balanced)
    assert sum((sample["economic_area"] == "Trade policy").sum() for sample in plain) < 5
    assert len({tuple(sample["description"]) for sample in balanced}) > 1  # still a seeded draw


def test_grounded_prompts_carry_the_record_and_precedents_but_never_their_own_targets(splits):
    from ml.policy.grounding import Grounding

    more = pd.concat([splits, pd.DataFrame([
        ("c7", "Kenya", "ECF", "Revenue administration, including customs", "Computerize customs.", 1, "train", "MET"),
    ], columns=splits.columns)], ignore_index=True)
    grounding = Grounding(more[more["split"] == "train"], n_precedents=3, seed=0)
    context = grounding.context("Ghana", "1.2. Revenue administration, including customs")
    assert context.startswith("Record of Ghana in this area: 3 conditions, 2 met.\nPrecedents: ")
    # The country's own conditions come first, then other countries' of the same area; outcomes shown.
    precedents = context.split("Precedents: ")[1]
    assert "Computerize customs (Kenya, met)." not in precedents  # three of Ghana's fill the three places
    assert {"Adopt a customs code (Ghana, met).", "Audit large taxpayers (Ghana, not met).",
            "Publish tax arrears (Ghana, met)."} <= set(p.strip() + ")." for p in precedents.split(").") if p.strip())
    assert "Establish a cash plan" not in context  # another area

    prompts = build_policy_prompts(more, "test", grounding=grounding)
    question = render_prompt("Ghana", "ECF", "Revenue administration, including customs")
    assert prompts["prompt"].iloc[0].startswith(question + "\nRecord of Ghana")
    examples = build_sft_examples(more, "train", grounding=grounding)
    for row in examples.itertuples():
        ghana_targets = set(examples.loc[examples["prompt"] == row.prompt, "description"])
        assert not any(target.rstrip(".") in row.prompt.split("Precedents: ")[-1] for target in ghana_targets)
    assert examples.groupby("prompt")["description"].count().max() == 2  # Ghana's two MET conditions share one



def test_another_precedent_draw_shows_other_precedents_by_the_same_rule():
    from ml.policy.grounding import Grounding, precedents_in

    rows = [(f"g{i}", "Ghana", "ECF", "Tax policy", f"Ghana tax condition {i}.", 1, "train", "MET") for i in range(2)]
    rows += [(f"k{i}", "Kenya", "ECF", "Tax policy", f"Kenya tax condition {i}.", i % 2, "train", "MET")
             for i in range(12)]
    corpus = pd.DataFrame(rows, columns=["condition_id", "country", "arrangement_type", "economic_area",
                                         "description", "is_met", "split", "status"])
    grounding = Grounding(corpus, n_precedents=3, seed=5)
    trained = grounding.context("Ghana", "Tax policy")
    assert grounding.context("Ghana", "Tax policy", draw=0) == trained  # draw 0 is the prompt trained on
    draws = [precedents_in("\n" + grounding.context("Ghana", "Tax policy", draw=d)) for d in range(4)]
    for shown in draws:  # every draw: Ghana's own two first, then one of Kenya's
        assert sorted(shown[:2]) == ["Ghana tax condition 0", "Ghana tax condition 1"]
        assert shown[2].startswith("Kenya tax condition")
    assert len({shown[2] for shown in draws}) > 1

def test_chat_text_uses_the_chat_template_when_present(tiny):
    _, tokenizer = tiny
    prompt = render_prompt("Ghana", "ECF", "Tax policy")
    text = chat_text(tokenizer, prompt)
    assert prompt in text and text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert chat_text(plain, prompt) == prompt + "\nProposed condition:"


def test_ensure_padding_uses_eos_and_left_side(tiny):
    tokenizer = copy.deepcopy(tiny[1])
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    ensure_padding(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"


@pytest.mark.parametrize("answer, condition", [
    ("Proposed condition: Submit the 2024 budget to parliament. It will pass.",
     "Submit the 2024 budget to parliament."),
    ("  **Proposed Condition:** Adopt a new customs code.\nMore text", "Adopt a new customs code."),
    ("Proposed condition:\nAdopt the law.", "Adopt the law."),
    ("1. Set up a treasury account (e.g. for all ministries) by June. Then more.",
     "Set up a treasury account (e.g. for all ministries) by June."),
    ("The proposed condition is: raise VAT to 15 percent. Next.", "raise VAT to 15 percent."),
    ("Under the ECF, the proposal is as follows:\n1. Reduce arrears to 1.5 percent of GDP.\n2. Other",
     "Reduce arrears to 1.5 percent of GDP."),
    ('"Publish quarterly fiscal reports."', "Publish quarterly fiscal reports."),
    ("Cap the wage bill", "Cap the wage bill"),
    ("  \n ", ""),
    # A grounded prompt's precedent annotation echoed by the model is not part of the condition.
    ("Audit the treasury accounts, with the Revenue Authority (Afghanistan, not met).",
     "Audit the treasury accounts, with the Revenue Authority"),
    ("Adopt the law (on taxes).", "Adopt the law (on taxes)."),
])
def test_answer_to_condition(answer, condition):
    assert answer_to_condition(answer) == condition


def test_apply_lora_leaves_only_lora_trainable(tiny):
    model = build_tiny_llama(tiny[1], seed=1)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    peft_model = apply_lora(model, SETTINGS)

    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == set(SETTINGS.lora_target_modules)
    assert peft_model.peft_config["default"].r == SETTINGS.lora_r
    with torch.no_grad():  # LoRA's B starts at zero: the wrapped model is the base model until trained
        assert torch.allclose(peft_model(input_ids=ids).logits, before)


def test_saved_adapter_reloads_to_the_same_greedy_output(tiny, tmp_path):
    tokenizer = tiny[1]
    prompts = [chat_text(tokenizer, render_prompt("Ghana", "ECF", "Tax policy"))]
    peft_model = apply_lora(build_tiny_llama(tokenizer, seed=2), SETTINGS)
    with torch.no_grad():  # stand in for training: move the adapter away from its zero start
        generator = torch.Generator().manual_seed(0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    expected = greedy_answers(peft_model, tokenizer, prompts, max_new_tokens=8)
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    base = build_tiny_llama(tokenizer, seed=2)
    base_answer = greedy_answers(base, tokenizer, prompts, max_new_tokens=8)
    reloaded = load_adapter(base, tmp_path / "adapter")

    assert greedy_answers(reloaded, tokenizer, prompts, max_new_tokens=8) == expected
    assert expected != base_answer  # the adapter really changes the policy
    assert not any(p.requires_grad for p in reloaded.parameters())  # loaded for inference by default


def test_unknown_policy_fails_with_a_clear_offline_error(tmp_path):
    with pytest.raises(PolicyUnavailableError, match="meta-llama/Llama-2-7b-hf"):
        load_base_policy("meta-llama/Llama-2-7b-hf", tmp_path)


@pytest.mark.integration
def test_smollm2_gguf_converts_once_to_cached_safetensors(tmp_path):
    model, tokenizer = load_base_policy("smollm2-135m-instruct", tmp_path, device="cpu")
    folder = smollm2_cache_folder(tmp_path)
    assert (folder / "model.safetensors").exists() and (folder / CONVERSION_MANIFEST).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    del model

    started = time.perf_counter()
    model, tokenizer = load_base_policy("smollm2-135m-instruct", tmp_path, device="cpu")
    assert time.perf_counter() - started < 15  # read from safetensors, not converted again
    assert "quantization_config" not in model.config.to_dict()
    prompt = chat_text(tokenizer, render_prompt("Ghana", "ECF", "Revenue administration, including customs"))
    [answer] = greedy_answers(model, tokenizer, [prompt], max_new_tokens=16)
    assert len(answer.split()) >= 3
