"""ml.registry on a real MLflow SQLite store: runs, registration, download, champion/challenger."""

from __future__ import annotations

import base64
import os
import sqlite3

import pytest

from ml.registry import Registry, RegistryError, artifact_root_for, tracking_uri_for

# A valid 1x1 PNG, so the test needs no plotting library.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    """Creating MLflow's tables takes seconds: do it once and copy the file into each test."""
    home = tmp_path_factory.mktemp("mlflow-template")
    Registry.for_home(home).close()
    return home / "mlflow.db"


@pytest.fixture()
def registry(tmp_path, template_db):
    home = tmp_path / "home"
    home.mkdir()
    source, target = sqlite3.connect(template_db), sqlite3.connect(home / "mlflow.db")
    with target:
        source.backup(target)
    source.close()
    target.close()
    with Registry.for_home(home) as reg:
        yield reg


def model_folder(path, seed: int):
    """A model folder like the ones training writes: safetensors weights, tokenizer, json."""
    (path / "tokenizer").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(4096) + bytes([seed]))
    (path / "config.json").write_text(f'{{"seed": {seed}}}')
    (path / "tokenizer" / "tokenizer.json").write_text('{"model": "wordpiece"}')
    return path


def register(registry, tmp_path, seed: int, name: str = "reward_model"):
    with registry.run("reward", f"train-{seed}", params={"seed": seed}) as run:
        return registry.register_model(run, model_folder(tmp_path / f"model-{seed}", seed), name,
                                       tags={"data_hash": f"h{seed}"})


def test_uris_live_in_the_data_home(tmp_path):
    assert tracking_uri_for(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert artifact_root_for(tmp_path) == str(tmp_path.resolve() / "mlartifacts")


def test_run_logs_params_metrics_artifacts_and_finishes(registry, tmp_path):
    (tmp_path / "report.md").write_text("# report")
    (tmp_path / "curve.png").write_bytes(PNG_1X1)
    with registry.run("reward", "train", params={"lr": 5e-5}, tags={"profile": "smoke"}) as run:
        logged = run.log_metrics({"val/macro_f1": 0.75, "loss": float("nan"), "kl": float("inf")}, step=3)
        run.log_artifact(tmp_path / "report.md", "reports")
        run.log_text("hello", "notes/hello.txt")
        run.log_dict({"a": 1}, "config.json")
        run.log_figure_png(tmp_path / "curve.png")
        with pytest.raises(ValueError, match="not a PNG"):
            run.log_figure_png(tmp_path / "report.md")
    assert logged == {"val/macro_f1": 0.75}  # non-finite values skipped
    stored = registry.client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {"lr": "5e-05"}
    assert stored.data.metrics == {"val/macro_f1": 0.75}
    assert stored.data.tags["profile"] == "smoke"
    assert set(run.artifact_files()) == {"reports/report.md", "notes/hello.txt", "config.json", "figures/curve.png"}


def test_exception_ends_run_failed_and_is_reraised(registry):
    with pytest.raises(RuntimeError, match="boom"):
        with registry.run("reward", "broken") as run:
            run.log_metrics({"loss": 1.0})
            raise RuntimeError("boom")
    assert registry.client.get_run(run.run_id).info.status == "FAILED"


def test_metric_names_with_forbidden_characters_are_sanitised(registry):
    with registry.run("reward", "names") as run:
        logged = run.log_metrics({"F1 (macro)@test%": 0.5, "a//b/../c": 1.0})
    assert logged == {"F1 _macro__test_": 0.5, "a/b/c": 1.0}
    assert registry.client.get_run(run.run_id).data.metrics == logged


def test_register_model_versions_download_byte_identical(registry, tmp_path):
    first, second = register(registry, tmp_path, 1), register(registry, tmp_path, 2)
    assert (first.version, second.version) == ("1", "2")
    assert first.status == "READY" and first.tags["data_hash"] == "h1"
    for info in (first, second):
        local = tmp_path / f"model-{info.version}"
        downloaded = registry.download_version("reward_model", info.version, tmp_path / f"dl-{info.version}")
        files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
        assert sorted(p.relative_to(downloaded) for p in downloaded.rglob("*") if p.is_file()) == files
        assert all((downloaded / f).read_bytes() == (local / f).read_bytes() for f in files)
    assert [v.version for v in registry.versions("reward_model")] == ["1", "2"]


def test_register_model_refuses_pickles(registry, tmp_path):
    folder = model_folder(tmp_path / "model", 1)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with registry.run("reward", "pickled") as run, pytest.raises(RegistryError, match="pickle"):
        registry.register_model(run, folder, "reward_model")
    assert registry.versions("reward_model") == []


def test_champion_challenger_promotion(registry, tmp_path):
    name = "reward_model"
    v1, v2, v3, v4 = (register(registry, tmp_path, seed).version for seed in (1, 2, 3, 4))

    first = registry.promote(name, v1, "test/macro_f1", 0.70, comparison="test split abc")
    assert first.promoted and first.previous_champion_version is None and first.champion_value is None
    assert registry.champion_version(name).version == v1

    better = registry.promote(name, v2, "test/macro_f1", 0.80, comparison="test split abc")
    assert better.promoted and better.previous_champion_version == v1 and better.champion_value == 0.70
    assert registry.champion_version(name).version == v2

    worse = registry.promote(name, v3, "test/macro_f1", 0.60, comparison="test split abc")
    assert not worse.promoted and worse.champion_value == 0.80 and "worse" in worse.reason
    assert registry.champion_version(name).version == v2  # the champion alias did not move
    tags = registry.version_tags(name, v3)
    assert tags["promotion.decision"] == "challenger"
    assert float(tags["promotion.new_value"]) == 0.60 and float(tags["promotion.champion_value"]) == 0.80
    assert tags["promotion.champion_version"] == v2 and tags["promotion.comparison"] == "test split abc"
    aliases = {v.version: v.aliases for v in registry.versions(name)}
    assert aliases[v2] == ("champion",) and aliases[v3] == ("challenger",)

    equal = registry.promote(name, v4, "test/macro_f1", 0.80)
    assert equal.promoted and registry.champion_version(name).version == v4
    assert registry.version_tags(name, v4)["promotion.decision"] == "promoted"
    assert registry.download_version(name, "champion", tmp_path / "champ").joinpath("config.json").read_text() \
        == '{"seed": 4}'


def test_lower_is_better_and_champion_without_figure(registry, tmp_path):
    name = "ppo_adapter"
    v1, v2, v3 = (register(registry, tmp_path, seed, name).version for seed in (1, 2, 3))
    registry.client.set_registered_model_alias(name, "champion", v1)  # champion never judged
    decision = registry.promote(name, v2, "kl", 0.5, higher_is_better=False)
    assert decision.promoted and "no recorded kl" in decision.reason
    assert not registry.promote(name, v3, "kl", 0.9, higher_is_better=False).promoted
    assert registry.champion_version(name).version == v2


@pytest.mark.parametrize("where", ["under_a_file", "read_only_folder"])
def test_unwritable_store_path_names_the_path(tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "not_a_folder").write_text("")
        home = tmp_path / "not_a_folder" / "missing"
    elif os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
        home = tmp_path / "ro" / "missing"
    else:  # root writes into any folder; /proc refuses new folders even to root
        if not os.path.isdir("/proc/self"):
            pytest.skip("no read-only location for root on this OS")
        home = tmp_path.joinpath("/proc/rlxf-missing")
    with pytest.raises(RegistryError, match="cannot open MLflow store") as error:
        Registry.for_home(home)
    assert str(home / "mlflow.db") in str(error.value)
