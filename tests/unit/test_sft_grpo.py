"""SFT warm start and TRL's GRPO / RLOO on the tiny Llama: what training must change, in a few CPU steps."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ml.config import get_profile
from ml.policy.base import load_base_policy
from ml.policy.grpo import group_reward, train_group_rl
from ml.policy.pipeline import prompt_records
from ml.policy.prompts import build_policy_prompts, render_prompt
from ml.policy.sft import train_sft_adapter
from ml.policy.tiny import build_tiny_llama, shared_cache_dir

# Tiny models' matmuls are too small to split across threads (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A random tiny model sits near ln(vocab) ~ 10.8 nats; a high learning rate makes the fall visible
# within a few dozen steps.
SETTINGS = replace(get_profile("smoke").policy, sft_learning_rate=5e-2, sft_epochs=10.0)
CONDITIONS = [
    ("Ghana", "ECF", "Revenue administration, including customs", "Adopt a revised customs code."),
    ("Uruguay", "SBA", "Restructuring of financial institutions", "Submit the bank restructuring plan."),
    ("Gabon", "EFF", "Expenditure auditing", "Establish an annual treasury cash plan."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_base_policy("tiny-llama", shared_cache_dir())[1]


@pytest.fixture()
def splits() -> pd.DataFrame:
    rows = [{"condition_id": f"c{i}", "country": c, "arrangement_type": a, "economic_area": e, "description": d,
             "is_met": 1, "label": "MET", "split": "train"} for i, (c, a, e, d) in enumerate(CONDITIONS)]
    return pd.DataFrame(rows)


def test_sft_lowers_the_training_loss_and_saves_an_adapter(tokenizer, tmp_path):
    model = build_tiny_llama(tokenizer, seed=0)
    examples = pd.DataFrame([{"prompt": render_prompt(c, a, e), "description": d}
                             for c, a, e, d in CONDITIONS] * 10)
    lines: list[str] = []

    result = train_sft_adapter(model, tokenizer, examples, SETTINGS, tmp_path, seed=0, progress=lines.append,
                               batch_size=2, max_steps=20)

    assert result.steps == 20 and len(result.train_loss) == 20 and len(lines) >= 20
    # The budget is build_sft_examples's (whole combinations): the trainer takes every example it is given.
    assert len(examples) > SETTINGS.sft_max_examples and result.n_examples == len(examples)
    first, last = [loss for _, loss in result.train_loss[:4]], [loss for _, loss in result.train_loss[-4:]]
    assert sum(last) / 4 < sum(first) / 4 - 0.05, result.train_loss
    assert result.last_loss < result.first_loss
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == SETTINGS.lora_r
    # The caller's base model comes back without LoRA layers: the adapter lives on disk only.
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_group_reward_passes_metadata_and_answers():
    seen = {}

    def reward_fn(records, answers):
        seen.update(records=records, answers=answers)
        return [len(answer) for answer in answers]

    reward = group_reward(reward_fn)
    scores = reward(prompts=["p", "p"], completions=[" Cap the wage bill. ", "Go"],
                    prompt_id=["x", "x"], country=["Ghana", "Ghana"], arrangement_type=["ECF", "ECF"],
                    economic_area=["Tax policy", "Tax policy"], trainer_state=None)

    assert scores == [18.0, 2.0] and all(isinstance(score, float) for score in scores)
    assert seen["answers"] == ["Cap the wage bill.", "Go"]  # the RewardFn cuts conditions itself, as for PPO
    # The rendered prompt too: the quote rule reads the precedents it shows.
    assert seen["records"][0] == {"prompt_text": "p", "prompt_id": "x", "country": "Ghana",
                                  "arrangement_type": "ECF", "economic_area": "Tax policy"}


def test_group_reward_logs_the_share_its_floor_rules_floored():
    def reward_fn(records, answers):
        reward_fn.last_floored = np.array(["tax" in answer for answer in answers])
        return [0.0 if floored else 1.0 for floored in reward_fn.last_floored]

    logged = {}
    group_reward(reward_fn)(prompts=["p"] * 4, completions=["tax", "cap", "tax it", "spend"],
                            log_metric=logged.__setitem__)
    assert logged == {"floored_share": 0.5}


def group_settings(**changes):
    return replace(SETTINGS, group_rl=replace(SETTINGS.group_rl, **{
        "steps": 2, "num_generations": 4, "prompts_per_step": 1, "learning_rate": 1e-2, **changes}))


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_group_rl_runs_with_kl_against_a_callable_reward(kind, tokenizer, splits, tmp_path):
    model = build_tiny_llama(tokenizer, seed=0)
    prompts = pd.DataFrame(prompt_records(build_policy_prompts(splits, "train"), tokenizer))
    calls: list[tuple[list[dict], list[str]]] = []

    def length_share(records, answers):  # toy reward in [0, 1]: longer answers score higher
        calls.append((records, answers))
        length_share.last_floored = np.array([len(answer) < 40 for answer in answers])  # as RLReward's rules say
        return [min(len(answer) / 80, 1.0) for answer in answers]

    result = train_group_rl(kind, model, tokenizer, prompts, length_share, group_settings(), tmp_path, seed=0,
                            progress=lambda line: None)

    assert [row["step"] for row in result.history] == [1, 2]
    assert all(math.isfinite(row["train_reward_mean"]) and math.isfinite(row["kl_per_token_to_reference"])
               for row in result.history)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    # One reward call per step: each step logs the share of its answers the reward's floor rules floored.
    assert [row["floored_share"] for row in result.history] == pytest.approx(
        [np.mean([len(answer) < 40 for answer in step_answers]) for _, step_answers in calls])
    records, answers = calls[0]
    assert len(answers) == 4 and all(isinstance(answer, str) for answer in answers)
    assert len({record["country"] for record in records}) == 1  # one prompt, four answers to it
    assert records[0]["country"] in {c for c, *_ in CONDITIONS}
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_group_rl_refuses_to_run_without_kl(tokenizer, splits, tmp_path):
    prompts = pd.DataFrame(prompt_records(build_policy_prompts(splits, "train"), tokenizer))
    with pytest.raises(ValueError, match="beta"):
        train_group_rl("grpo", build_tiny_llama(tokenizer), tokenizer, prompts,
                       lambda records, answers: [0.0] * len(answers), group_settings(beta=0.0), tmp_path)


def test_group_rl_refuses_a_step_that_does_not_split_over_the_processes(tokenizer, splits, tmp_path, monkeypatch):
    # 1 prompt x 4 answers a step over 3 processes: the global batch would change with the world size.
    from ml import distributed
    from ml.policy import grpo

    monkeypatch.setattr(grpo.distributed, "current", lambda: replace(distributed.SINGLE, world_size=3))
    prompts = pd.DataFrame(prompt_records(build_policy_prompts(splits, "train"), tokenizer))
    with pytest.raises(ValueError, match="1 x 4 = 4 answers per step do not split evenly over 3 processes"):
        train_group_rl("grpo", build_tiny_llama(tokenizer), tokenizer, prompts,
                       lambda records, answers: [0.0] * len(answers), group_settings(), tmp_path)


def test_the_group_rl_time_budget_stops_training_only_after_the_minimum_steps():
    from transformers import TrainerControl, TrainerState

    from ml.policy.grpo import TimeBudgetCallback

    def stops(budget: TimeBudgetCallback) -> list[bool]:
        """After steps 1-4 of a run whose every step overruns the budget: does training stop?"""
        state, control = TrainerState(), TrainerControl()
        budget.on_train_begin(None, state, control)
        decisions = []
        for step in range(1, 5):
            state.global_step = step
            decisions.append(budget.on_step_end(None, state, control).should_training_stop)
        return decisions

    assert stops(TimeBudgetCallback(1e-9)) == [True] * 4
    assert stops(TimeBudgetCallback(1e-9, min_steps=3)) == [False, False, True, True]
    assert stops(TimeBudgetCallback(None, min_steps=3)) == [False] * 4


def test_a_job_with_its_own_time_budget_has_no_step_floor_and_the_group_settings_refuse_a_negative_one():
    from ml.config import GroupRLSettings, PPOSettings
    from ml.policy.rl import time_budget

    for settings in (PPOSettings(max_seconds=600, min_steps=20), GroupRLSettings(max_seconds=600, min_steps=20)):
        assert time_budget(None, settings) == {"max_seconds": 600, "min_steps": 20}  # the profile's
        assert time_budget(90, settings) == {"max_seconds": 90, "min_steps": 0}  # an equal-time comparison's
    with pytest.raises(ValueError, match="GroupRLSettings.min_steps must be >= 0"):
        GroupRLSettings(min_steps=-1)
