"""ml.registry and ml.serving on a real MLflow SQLite store: runs, MLflow Models logged and loaded by
alias, lineage, and the evidence-gated champion rule."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from ml.config import load_profile, settings_dict
from ml.evaluation.metrics import paired_bootstrap, paired_bootstrap_macro_f1
from ml.paths import DataHome
from ml.registry import SETTINGS_ARTIFACT, Evidence, Registry, RegistryError, artifact_root_for, tracking_uri_for
from ml.reward.encoder import load_encoder
from ml.reward.model import RewardModel
from ml.serving.publish import CARD_FILE, log_reward_model
from orchestration.resources import MlflowRegistry

# A valid 1x1 PNG, so the test needs no plotting library.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
ROWS = pd.DataFrame([
    {"country": "Ghana", "arrangement_type": "ECF", "economic_area": "Revenue administration, including customs",
     "description": "Submit to parliament a draft tax procedures law"},
    {"country": "Kenya", "arrangement_type": "SBA", "economic_area": "Financial sector legal reforms",
     "description": "Adopt amendments to the banking act"},
    {"country": "Jamaica", "arrangement_type": "EFF", "economic_area": "Public enterprise reform and pricing",
     "description": "Publish the audited accounts of the electricity company"},
])


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    """Creating MLflow's tables takes seconds: do it once and copy the file into each test."""
    home = tmp_path_factory.mktemp("mlflow-template")
    Registry.for_home(home)
    return home / "mlflow.db"


@pytest.fixture()
def home(tmp_path, template_db) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    source, target = sqlite3.connect(template_db), sqlite3.connect(home / "mlflow.db")
    with target:
        source.backup(target)
    source.close()
    target.close()
    return home


@pytest.fixture()
def registry(home):
    return Registry.for_home(home, lineage={"dagster_run_id": "run-123"})


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    """A saved reward model: a random tiny BERT (what it scores does not matter here, only that the
    registered model scores the same)."""
    model, tokenizer = load_encoder("tiny-bert", seed=3)
    return RewardModel(model, tokenizer, temperature=1.7, max_length=48).save(tmp_path_factory.mktemp("reward"))


def test_uris_live_in_the_data_home(tmp_path):
    assert tracking_uri_for(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert artifact_root_for(tmp_path) == str(tmp_path.resolve() / "mlartifacts")


def test_run_logs_params_metrics_artifacts_and_lineage_and_finishes(registry, tmp_path):
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
    tags = stored.data.tags
    assert tags["profile"] == "smoke" and tags["dagster_run_id"] == "run-123"
    assert len(tags["git_commit"]) == 40 and tags["mlflow.source.git.commit"] == tags["git_commit"]
    files = {p.relative_to(run.artifact_uri).as_posix() for p in Path(run.artifact_uri).rglob("*") if p.is_file()}
    assert files == {"reports/report.md", "notes/hello.txt", "config.json", "figures/curve.png"}


def test_every_run_records_the_effective_settings(home, tmp_path):
    (tmp_path / "profile.toml").write_text("[policy.ppo]\nsteps = 9\n", encoding="utf-8")
    profile = load_profile("smoke", tmp_path / "profile.toml", overrides="[evaluation]\nsamples_per_prompt = 3\n")
    with MlflowRegistry().open(DataHome(home), "run-9", profile) as registry:
        for name in ("reward", "policy"):
            with registry.run(name, f"{name}-smoke") as run:
                pass
            saved = json.loads((Path(run.artifact_uri) / SETTINGS_ARTIFACT).read_text(encoding="utf-8"))
            assert saved == settings_dict(profile)
            assert saved["policy"]["ppo"]["steps"] == 9 and saved["evaluation"]["samples_per_prompt"] == 3
            assert saved["sources"] == [str(tmp_path / "profile.toml"), "run config"]
    # Outside the pipeline (a registry opened without settings) nothing is added.
    with Registry.for_home(home).run("reward", "plain") as run:
        pass
    assert not (Path(run.artifact_uri) / SETTINGS_ARTIFACT).exists()


@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_an_exception_ends_the_run_and_is_reraised(registry, error, status):
    with pytest.raises(type(error)):
        with registry.run("reward", "broken") as run:
            run.log_metrics({"loss": 1.0})
            raise error
    assert registry.client.get_run(run.run_id).info.status == status
    assert mlflow.active_run() is None


def test_metric_names_with_forbidden_characters_are_sanitised(registry):
    with registry.run("reward", "names") as run:
        logged = run.log_metrics({"F1 (macro)@test%": 0.5, "a//b/../c": 1.0})
    assert logged == {"F1 _macro__test_": 0.5, "a/b/c": 1.0}
    assert registry.client.get_run(run.run_id).data.metrics == logged


@pytest.mark.parametrize("before", [None, "sqlite:////elsewhere/mlflow.db"])
def test_the_store_is_mlflows_current_one_only_inside_the_registry(registry, monkeypatch, before):
    # Regression guard: mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which a Dagster
    # subprocess started later would read as *its* store.
    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    with registry:
        assert mlflow.get_tracking_uri() == registry.tracking_uri
        with registry.run("reward", "nested"):
            assert os.environ["MLFLOW_TRACKING_URI"] == registry.tracking_uri
        assert mlflow.get_tracking_uri() == registry.tracking_uri
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


def test_a_reward_model_is_an_mlflow_model_that_loads_by_alias(registry, home, reward_dir, monkeypatch):
    card = "# rlxf-reward-model\n\nA reward model for the test.\n\n## Known limits\n\nNone tested.\n"
    with registry.run("reward", "train") as run:
        version = log_reward_model(registry, reward_dir, "reward_model", card, ROWS, tags={"split_hash": "abc123"})
    registry.promote("reward_model", version.version, "test_macro_f1", 0.7)

    # As an MLflow user would: the store in the environment, the model by alias, nothing of the project's.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri_for(home))
    loaded = mlflow.pyfunc.load_model("models:/reward_model@champion")
    predicted = loaded.predict(ROWS)
    np.testing.assert_allclose(predicted["p_met"].to_numpy(), RewardModel.load(reward_dir).score(ROWS), atol=1e-6)
    # Optional columns may be left out; a required one may not.
    assert len(loaded.predict(ROWS[["country", "description"]])) == 3
    with pytest.raises(mlflow.exceptions.MlflowException, match="description"):
        loaded.predict(ROWS.drop(columns="description"))

    signature = loaded.metadata.signature
    assert signature.inputs.input_names() == ["country", "arrangement_type", "economic_area", "description"]
    assert signature.outputs.input_names() == ["p_met"]
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/reward_model/1"))
    files = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert {"MLmodel", "input_example.json", "requirements.txt", "reward_entry.py", f"artifacts/{CARD_FILE}",
            f"artifacts/{reward_dir.name}/model.safetensors", "code/ml/serving/models.py"} <= files
    assert not [f for f in files if Path(f).suffix in {".pkl", ".pickle", ".bin", ".pt", ".pth", ".joblib"}]
    assert (model_dir / "artifacts" / CARD_FILE).read_text() == card
    assert "torch==" in (model_dir / "requirements.txt").read_text()

    stored = registry.client.get_model_version("reward_model", version.version)
    assert stored.description == "A reward model for the test."
    assert stored.run_id == run.run_id
    assert {"split_hash": "abc123", "dagster_run_id": "run-123"}.items() <= stored.tags.items()
    assert len(stored.tags["git_commit"]) == 40


# --- the champion rule -----------------------------------------------------------------------------


def new_version(registry: Registry, tmp_path: Path, name: str = "reward_model") -> str:
    """A registered version (its content does not matter to the rule)."""
    folder = tmp_path / f"{name}-{len(registry.versions(name)) + 1}"
    folder.mkdir()
    return registry.register(name, str(folder), run_id=None).version


def predictions(labels: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(len(labels)) < accuracy, labels, 1 - labels)


def reward_evidence(labels, challenger, champion, champion_version: str) -> tuple[float, Evidence]:
    """The challenger's macro-F1 and the evidence the reward pipeline computes for it."""
    result = paired_bootstrap_macro_f1(labels, challenger, champion, n_boot=2000, seed=0, level=0.95)
    evidence = Evidence.from_bootstrap(champion_version, f1_score(labels, champion, average="macro"),
                                       f"paired bootstrap of macro-F1 over {len(labels)} test rows", result, 0.95)
    return f1_score(labels, challenger, average="macro"), evidence


def test_a_reward_challenger_takes_champion_only_when_better_with_evidence(registry, tmp_path):
    name = "reward_model"
    labels = np.random.default_rng(1).integers(0, 2, 2000)
    champion_predictions = predictions(labels, 0.75, seed=2)
    v1 = new_version(registry, tmp_path)
    first = registry.promote(name, v1, "test_macro_f1", f1_score(labels, champion_predictions, average="macro"))
    assert first.promoted and first.evidence is None and "no champion yet" in first.reason

    # Equal within noise: the same accuracy, other errors.
    v2 = new_version(registry, tmp_path)
    value, evidence = reward_evidence(labels, predictions(labels, 0.75, seed=3), champion_predictions, v1)
    tie = registry.promote(name, v2, "test_macro_f1", value, evidence)
    assert not tie.promoted and evidence.ci_low < 0 < evidence.ci_high and "inconclusive" in tie.reason
    assert registry.champion_version(name).version == v1

    # Worse.
    v3 = new_version(registry, tmp_path)
    value, evidence = reward_evidence(labels, predictions(labels, 0.65, seed=4), champion_predictions, v1)
    worse = registry.promote(name, v3, "test_macro_f1", value, evidence)
    assert not worse.promoted and evidence.ci_high < 0 and "worse with evidence" in worse.reason
    assert registry.champion_version(name).version == v1

    # Better: ten points of accuracy on 2,000 rows.
    v4 = new_version(registry, tmp_path)
    better_predictions = predictions(labels, 0.85, seed=5)
    value, evidence = reward_evidence(labels, better_predictions, champion_predictions, v1)
    better = registry.promote(name, v4, "test_macro_f1", value, evidence)
    assert better.promoted and evidence.ci_low > 0 and evidence.p_value < 0.05
    assert registry.champion_version(name).version == v4
    # The figures are sklearn's macro-F1 and the bootstrap's difference is theirs.
    assert value - evidence.champion_value == pytest.approx(
        f1_score(labels, better_predictions, average="macro") - f1_score(labels, champion_predictions, average="macro"))

    tags = registry.version_tags(name, v4)
    assert tags["promotion.decision"] == "promoted" and tags["promotion.champion_version"] == v1
    assert float(tags["promotion.new_value"]) == pytest.approx(value)
    assert float(tags["promotion.champion_value"]) == pytest.approx(evidence.champion_value)
    assert float(tags["promotion.ci_low"]) == evidence.ci_low and float(tags["promotion.p_value"]) == evidence.p_value
    assert tags["promotion.level"] == "0.95" and tags["promotion.test"].startswith("paired bootstrap of macro-F1")
    aliases = {v.version: v.aliases for v in registry.versions(name)}
    assert aliases[v4] == ("champion",) and aliases[v3] == ("challenger",) and aliases[v1] == ()
    assert registry.version_tags(name, v2)["promotion.decision"] == "challenger"


def test_a_policy_challenger_is_judged_by_a_paired_bootstrap_over_prompts(registry, tmp_path):
    name = "policy"
    rng = np.random.default_rng(0)
    prompts = [f"p{i}" for i in range(40) for _ in range(2)]  # 40 prompts x 2 samples
    hardness = np.repeat(rng.uniform(0.1, 0.8, 40), 2)  # shared by both policies: what pairing removes
    champion = pd.Series(hardness + rng.normal(0, 0.05, 80), index=prompts)
    v1, v2, v3 = (new_version(registry, tmp_path, name) for _ in range(3))
    registry.promote(name, v1, "heldout_judged_reward", champion.mean())
    for version, gain, promoted in ((v2, 0.0, False), (v3, 0.05, True)):
        challenger = pd.Series(hardness + gain + rng.normal(0, 0.05, 80), index=prompts)
        result = paired_bootstrap(challenger, champion, seed=0, level=0.95)
        evidence = Evidence.from_bootstrap(v1, champion.mean(), "paired bootstrap over 40 prompts x 2 samples",
                                           result, 0.95)
        decision = registry.promote(name, version, "heldout_judged_reward", challenger.mean(), evidence)
        assert decision.promoted is promoted
    assert registry.champion_version(name).version == v3


def test_evidence_must_be_against_the_current_champion(registry, tmp_path):
    name = "reward_model"
    v1, v2, v3 = (new_version(registry, tmp_path) for _ in range(3))
    registry.promote(name, v1, "f1", 0.5)
    with pytest.raises(ValueError, match="needs evidence against champion v1"):
        registry.promote(name, v2, "f1", 0.9)
    stale = Evidence("7", 0.4, "a test", 0.1, 0.2, 0.001, 0.95)  # convincing, but against another version
    decision = registry.promote(name, v3, "f1", 0.6, stale)
    assert not decision.promoted and "the champion is now v1" in decision.reason
    assert registry.champion_version(name).version == v1
    assert registry.promote(name, v1, "f1", 0.5).reason == "v1 is already champion"


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
