"""Profiles as typed settings: the built-in values (unchanged by the move from dicts and function
defaults to dataclasses), overrides from a TOML file, the environment and Dagster run config, each
validated key by key, and the effective settings where a user reads them."""

from __future__ import annotations

from dataclasses import asdict

import dagster as dg
import pytest

from ml.cli import main
from ml.config import (
    PROFILES,
    PPOSettings,
    ProfileError,
    changed_settings,
    get_profile,
    load_profile,
    profile_for_home,
    settings_dict,
)
from ml.paths import DataHome
from ml.policy.ppo import PPOConfig
from orchestration.resources import RlxfSettings, build_resources

# The profiles' PPO overrides as they were written before PPOSettings (a dict over PPOConfig's defaults).
OLD_PPO_DICTS = {
    "smoke": {"steps": 4, "batch_size": 4, "answers_per_prompt": 2, "mini_batch_size": 2, "ppo_epochs": 1,
              "learning_rate": 1e-3, "eval_every": 2, "checkpoint_every": 2},
    "demo": {"steps": 40, "batch_size": 8, "answers_per_prompt": 8, "mini_batch_size": 2, "ppo_epochs": 1,
             "learning_rate": 3e-4, "init_kl_coef": 0.05, "target_kl": 6.0, "kl_horizon": 1000, "best_max_kl": 8.0,
             "eval_every": 6, "checkpoint_every": 6, "max_seconds": 600, "min_steps": 20},
    "paper": {"steps": 200, "batch_size": 64, "mini_batch_size": 16, "ppo_epochs": 4, "learning_rate": 1e-4,
              "eval_every": 20, "checkpoint_every": 20},
}

LOCAL_LLAMA = """
[policy]
base_model = "/models/llama-2-7b"
lora_target_modules = ["q_proj", "v_proj"]

[policy.ppo]
steps = 100
target_kl = "none"

[reward]
base_model = "/models/bert-base-uncased"
learning_rate = 2
"""


def write(tmp_path, text: str, name: str = "profile.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_keep_their_ppo_values(name):
    settings = get_profile(name).policy
    assert asdict(settings.ppo) == {**asdict(PPOSettings()), **OLD_PPO_DICTS[name]}
    config = PPOConfig.for_policy(settings, seed=5)
    assert (config.max_new_tokens, config.max_prompt_tokens, config.temperature, config.seed) == (
        settings.max_new_tokens, settings.max_prompt_tokens, settings.temperature, 5)


def test_one_definition_per_ppo_knob():
    # PPOConfig adds run-level fields to the profile's knobs; it redefines none of them.
    own = set(PPOConfig.__annotations__)
    assert own.isdisjoint(PPOSettings.__annotations__)
    assert own == {"max_prompt_tokens", "add_special_tokens", "max_new_tokens", "temperature", "seed", "best_metric"}


def test_evaluation_samples_follow_the_profile():
    # Regression: the asset chose 1 sample for smoke, 2 otherwise, by `if profile.name != "smoke"`.
    assert {name: p.evaluation.samples_per_prompt for name, p in PROFILES.items()} == {
        "smoke": 1, "demo": 2, "paper": 2}


def test_no_overrides_is_the_built_in_profile():
    assert load_profile("demo") == get_profile("demo")
    assert changed_settings(load_profile("demo")) == {}


def test_override_file_applies_each_key_with_its_type(tmp_path):
    profile = load_profile("paper", write(tmp_path, LOCAL_LLAMA))
    assert profile.policy.base_model == "/models/llama-2-7b"
    assert profile.policy.lora_target_modules == ("q_proj", "v_proj")  # a tuple from the TOML list
    assert profile.policy.ppo.steps == 100 and profile.policy.ppo.target_kl is None
    assert profile.reward.learning_rate == 2.0 and isinstance(profile.reward.learning_rate, float)
    assert profile.policy.ppo.batch_size == 64  # untouched keys keep the paper profile's values
    assert profile.sources == (str(tmp_path / "profile.toml"),)
    assert set(changed_settings(profile)) == {"policy.base_model", "policy.lora_target_modules", "policy.ppo.steps",
                                              "policy.ppo.target_kl", "reward.base_model", "reward.learning_rate"}
    assert get_profile("paper").policy.base_model == "meta-llama/Llama-2-7b-hf"  # the built-in is not modified


def test_extends_picks_the_base_profile(tmp_path):
    profile = load_profile("demo", write(tmp_path, 'extends = "smoke"\n[policy.group_rl]\nsteps = 9\n'))
    assert profile.name == "smoke" and profile.data == get_profile("smoke").data
    assert profile.policy.group_rl.steps == 9
    with pytest.raises(ProfileError, match="extends = 'tiny' is not a profile"):
        load_profile("demo", write(tmp_path, 'extends = "tiny"\n'))


@pytest.mark.parametrize("text, message", [
    ("[policy.ppo]\nstpes = 100\n", r"unknown setting 'policy\.ppo\.stpes' \(did you mean 'policy\.ppo\.steps'\?"),
    ("[polcy]\nbase_model = 'x'\n", r"unknown setting 'polcy'"),
    ("name = 'mine'\n", r"unknown setting 'name'"),
    ("[policy]\nppo = 3\n", r"policy\.ppo must be a table of settings"),
])
def test_unknown_keys_are_refused_with_the_key_and_file_named(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ProfileError, match=message) as error:
        load_profile("demo", path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("[policy.ppo]\nsteps = 'many'\n", r"policy\.ppo\.steps must be an integer, got 'many'"),
    ("[policy.ppo]\nsteps = 1.5\n", r"policy\.ppo\.steps must be an integer"),
    ("[policy]\nsft_enabled = 1\n", r"policy\.sft_enabled must be true or false"),
    ("[reward]\nepochs = true\n", r"reward\.epochs must be an integer"),
    ("[data]\nmet_share_bounds = [0.3]\n", r"data\.met_share_bounds must be a list of 2 numbers"),
    ("[policy]\nlora_target_modules = [1]\n", r"policy\.lora_target_modules\[0\] must be a string"),
    ("[policy.ppo]\nmini_batch_size = 999\n", r"mini_batch_size cannot exceed batch_size"),
    ("[policy\n", r"not valid TOML"),
])
def test_wrong_values_are_refused_with_the_key_and_expected_type(tmp_path, text, message):
    with pytest.raises(ProfileError, match=message):
        load_profile("demo", write(tmp_path, text))


def test_run_overrides_go_on_top_of_the_file(tmp_path):
    path = write(tmp_path, "[policy.ppo]\nsteps = 100\nbatch_size = 32\n")
    profile = load_profile("demo", path, overrides="[policy.ppo]\nsteps = 7\n")
    assert (profile.policy.ppo.steps, profile.policy.ppo.batch_size) == (7, 32)
    assert profile.sources == (str(path), "run config")
    assert load_profile("demo", overrides={"evaluation": {"samples_per_prompt": 4}}).evaluation.samples_per_prompt == 4
    with pytest.raises(ProfileError, match=r"run config: unknown setting 'evaluation\.samples'"):
        load_profile("demo", overrides="[evaluation]\nsamples = 4\n")


def test_the_data_home_file_is_read_unless_another_is_named(tmp_path):
    home = DataHome(tmp_path / "home")
    assert profile_for_home("demo", home) == get_profile("demo")  # no file: the built-in profile
    home.root.mkdir()
    write(home.root, "[policy]\nbase_model = '/models/a'\n")
    assert profile_for_home("demo", home).policy.base_model == "/models/a"
    named = write(tmp_path, "[policy]\nbase_model = '/models/b'\n", "other.toml")
    assert profile_for_home("demo", home, named).policy.base_model == "/models/b"
    with pytest.raises(ProfileError, match="cannot read profile overrides file"):
        profile_for_home("demo", home, tmp_path / "missing.toml")


def test_environment_names_the_file_for_the_resource(tmp_path, monkeypatch):
    path = write(tmp_path, "[policy.ppo]\nsteps = 11\n", "mine.toml")
    monkeypatch.setenv("RLXF_PROFILE", "smoke")
    monkeypatch.setenv("RLXF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RLXF_PROFILE_FILE", str(path))
    seen = {}

    @dg.asset
    def probe(rlxf: RlxfSettings) -> None:
        seen["profile"] = rlxf.get_profile()

    # The variables reach the resource as dg.EnvVar, resolved when the run starts.
    assert dg.materialize([probe], resources={"rlxf": build_resources()["rlxf"]}).success
    profile = seen["profile"]
    assert (profile.name, profile.policy.ppo.steps, profile.sources) == ("smoke", 11, (str(path),))


def test_dagster_run_config_overrides_reach_the_asset(tmp_path):
    write(tmp_path, "[policy.ppo]\nsteps = 100\nbatch_size = 2\nmini_batch_size = 2\n")
    seen = {}

    @dg.asset
    def probe(rlxf: RlxfSettings) -> None:
        seen["profile"] = rlxf.get_profile()

    # The resource as the Definitions hold it (build_resources). Regression: with a configured instance, run
    # config naming `rlxf` reset its profile and home to the field defaults (demo, .rlxf/demo).
    resources = {"rlxf": build_resources(RlxfSettings(profile="smoke", home=str(tmp_path)))["rlxf"]}
    assert dg.materialize([probe], resources=resources).success
    assert (seen["profile"].policy.ppo.steps, seen["profile"].sources) == (100, (str(tmp_path / "profile.toml"),))

    run_config = {"resources": {"rlxf": {"config": {"overrides": "[policy.ppo]\nsteps = 3\n"}}}}
    assert dg.materialize([probe], resources=resources, run_config=run_config).success
    profile = seen["profile"]
    assert profile.name == "smoke"
    assert (profile.policy.ppo.steps, profile.policy.ppo.batch_size) == (3, 2)  # run config over the home's file
    assert profile.sources == (str(tmp_path / "profile.toml"), "run config")


def test_summary_prints_what_the_overrides_changed(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    write(home, LOCAL_LLAMA)
    assert main(["summary", "--profile", "paper", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert f"the built-in paper profile with {home / 'profile.toml'}: 6 setting(s) changed" in out
    assert 'policy.base_model = "/models/llama-2-7b"   (paper: "meta-llama/Llama-2-7b-hf")' in out
    assert 'policy.ppo.target_kl = "none"   (paper: 6.0)' in out
    monkeypatch.setenv("RLXF_PROFILE_FILE", str(write(tmp_path, "[policy.ppo]\nstpes = 1\n", "bad.toml")))
    with pytest.raises(SystemExit, match=r"unknown setting 'policy\.ppo\.stpes'"):
        main(["summary", "--profile", "paper", "--home", str(home)])


def test_settings_dict_is_plain_data():
    settings = settings_dict(get_profile("demo"))
    assert settings["policy"]["ppo"]["steps"] == 40
    assert settings["policy"]["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert settings["sources"] == []
