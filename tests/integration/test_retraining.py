"""Continuous retraining end to end on the smoke profile, in one persistent Dagster instance:

first MONA files -> sensor -> full run -> champions, which load by alias as MLflow Models in a fresh
Python (as an MLflow user would), serve over HTTP with `mlflow models serve` and answer as `rlxf score`,
each version carrying its lineage; a second file with new reviews -> sensor -> retraining run -> new
versions with the evidence-gated champion rule applied; SIGKILL in the middle of reward-model training
and of PPO leaves nothing half-registered and no champion changed, and a re-run completes (PPO resumes
from its checkpoint); the Dagster webserver shows every definition and the last run.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from importlib.metadata import packages_distributions
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ml.cli import main
from ml.config import get_profile
from ml.data.landing import seed_landing
from ml.data.splits import read_split
from ml.data.synthetic import write_synthetic_export
from ml.paths import REPO_ROOT, DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME
from ml.policy.prompts import KEY_COLUMNS, answer_to_condition
from ml.policy.tiny import shared_cache_dir
from ml.recommend import score
from ml.registry import Registry, tracking_uri_for
from ml.reward.pipeline import GOLD_REWARD_MODEL_NAME, REWARD_MODEL_NAME, load_registered_reward, load_rl_reward
from orchestration.definitions import build_definitions
from orchestration.resources import RlxfSettings, build_resources
from orchestration.sensors import mona_landing_sensor

pytestmark = pytest.mark.integration

MODELS = (REWARD_MODEL_NAME, GOLD_REWARD_MODEL_NAME, POLICY_ADAPTER_NAME)


class World:
    def __init__(self, root: Path):
        self.home = DataHome(root / "home").ensure()
        self.dagster_home = root / "dagster_home"
        self.dagster_home.mkdir()
        (self.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        self.settings = RlxfSettings(profile="smoke", home=str(self.home.root), model_cache=str(shared_cache_dir()))
        self.defs = build_definitions(build_resources(self.settings))
        self.cursor = None

    def sense(self):
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                          resources={"rlxf": self.settings})
        result = mona_landing_sensor(context)
        self.cursor = context.cursor
        return result

    def execute(self, job_name: str, tags=None, selection=None, run_config=None):
        job = self.defs.resolve_job_def(job_name)
        return job.execute_in_process(instance=self.instance, tags=tags, raise_on_error=False,
                                      asset_selection=selection, run_config=run_config)

    def registry(self) -> Registry:
        return Registry.for_home(self.home.root)

    def state(self) -> dict[str, tuple[int, str | None]]:
        """(number of versions, champion version) per registered model."""
        with self.registry() as registry:
            return {name: (len(registry.versions(name)),
                           getattr(registry.champion_version(name), "version", None)) for name in MODELS}

    def env(self) -> dict[str, str]:
        return dict(os.environ, DAGSTER_HOME=str(self.dagster_home), RLXF_PROFILE="smoke",
                    RLXF_HOME=str(self.home.root), RLXF_MODEL_CACHE=str(shared_cache_dir()),
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("retraining"))
    seed_landing(world.home, get_profile("smoke").data)  # the first MONA files arrive
    request = world.sense()
    assert isinstance(request, dg.RunRequest)
    result = world.execute("rlxf_full_pipeline", tags=request.tags)
    assert result.success
    return world


def test_first_files_produce_champions(world):
    state = world.state()
    assert state == {name: (1, "1") for name in MODELS}
    assert (world.home.reports / "evaluation" / "report.html").exists()


def test_every_mlflow_run_records_the_effective_settings(world):
    from ml.config import settings_dict
    from ml.registry import SETTINGS_ARTIFACT

    expected = settings_dict(get_profile("smoke"))
    scratch = world.home.root / "settings_check"
    scratch.mkdir(exist_ok=True)
    with world.registry() as registry:
        runs = registry.client.search_runs([e.experiment_id for e in registry.client.search_experiments()])
        assert len(runs) >= 4  # proxy and gold reward models, the RL reward, the policy
        for run in runs:
            path = registry.client.download_artifacts(run.info.run_id, SETTINGS_ARTIFACT, str(scratch))
            assert json.loads(Path(path).read_text(encoding="utf-8")) == expected, run.info.run_name
    report_settings = world.home.reports / "evaluation" / "settings.json"
    assert json.loads(report_settings.read_text(encoding="utf-8")) == expected


def test_policy_champion_is_judged_by_the_judged_reward_of_its_rl_reward(world):
    """The promotion figure is the judged reward: the gold P(MET) times the gold side's P(asked area |
    answer), from the registered RL reward the candidate was trained against (loaded, not refitted),
    which is below the gold P(MET) alone."""
    import numpy as np
    import pandas as pd

    from ml.reward.pipeline import load_rl_reward

    profile = get_profile("smoke")
    answers = pd.read_parquet(world.home.reports / "evaluation" / "answers.parquet")
    candidate = answers[answers["policy"] == profile.policy.algorithm]
    with world.registry() as registry:
        version = registry.versions(POLICY_ADAPTER_NAME)[0]
        recorded = float(version.tags["promotion.new_value"])
        reward, _ = load_rl_reward(registry, version.tags["rl_reward_version"])
    records = candidate[["country", "arrangement_type", "economic_area"]].to_dict("records")
    expected = float(np.mean(reward.judged(records, candidate["answer"].tolist())))
    assert recorded == pytest.approx(expected, abs=1e-6)
    assert recorded == pytest.approx(candidate["judged_reward"].mean(), abs=1e-6)
    assert recorded < candidate["gold_reward"].mean()
    # Smoke trains with the action premium and the unknown-name rule on (the judge never has them): the saved
    # reward carries the met shares of the proxy's training half, per first word, and that half's name record,
    # built from the snapshot it names.
    from ml.data.splits import read_split
    from ml.reward.rl_reward import action_base_rates
    from ml.reward.train import split_train_halves
    from ml.similarity import name_record

    splits = world.home.exports / "splits"
    assert reward.spec.info["split_hash"] == json.loads((splits / "manifest.json").read_text())["content_hash"]
    half_a, _ = split_train_halves(read_split(splits, "train"), seed=profile.reward.seed)
    assert reward.spec.action_rates
    assert (reward.spec.action_rates, reward.spec.action_overall) == action_base_rates(half_a)
    assert reward.spec.floor_unknown_names and reward.name_record == name_record(half_a).tolist()
    # SFT's RL reference is the base model, so its two KL columns are one measurement; the RL policy's
    # reference is SFT, so its KL to the base adds SFT's.
    sft = answers[answers["policy"] == "sft"]
    assert len(sft) and sft["kl_to_reference"].tolist() == sft["kl_to_base"].tolist()
    assert candidate["kl_to_reference"].tolist() != candidate["kl_to_base"].tolist()


def test_recommend_and_score_answer_as_the_pipeline_trained(world, capsys):
    """`rlxf recommend` gives distinct proposals, each with both P(MET)s and its topic probability and
    precedents of the area asked; `rlxf score` refuses an empty condition and names unseen values."""
    import pandas as pd

    from ml.cli import main

    prompt = pd.read_parquet(world.home.exports / "policy_prompts.parquet").query("split == 'test'").iloc[0]
    home = ["--profile", "smoke", "--home", str(world.home.root)]
    assert main(["recommend", *home, "--country", prompt.country, "--arrangement", str(prompt.arrangement_type),
                 "--area", prompt.economic_area, "-n", "3"]) == 0
    out = capsys.readouterr().out
    proposals = [line for line in out.splitlines() if line[:3] in ("1. ", "2. ", "3. ")]
    assert proposals and len({line[3:] for line in proposals}) == len(proposals)  # distinct
    assert out.count("proxy P(MET)") == len(proposals) and "P(about the area asked)" in out
    assert "closest precedents in this area" in out and prompt.country in out.splitlines()[0]
    # An area nobody knows is refused, not echoed back by the policy.
    assert main(["recommend", *home, "--country", prompt.country, "--area", "Space programme"]) == 2
    assert "'Space programme' does not occur in the record" in capsys.readouterr().err

    assert main(["score", *home, "--country", "Atlantis", "--area", prompt.economic_area, "--condition", " "]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["score", *home, "--country", "Atlantis", "--area", prompt.economic_area,
                 "--condition", "Submit to parliament a draft budget law"]) == 0
    captured = capsys.readouterr()
    assert "country 'Atlantis' does not occur in the data" in captured.err
    assert "proxy P(MET) =" in captured.out and "gold P(MET) =" in captured.out


def user_env(world: World) -> dict[str, str]:
    """What an MLflow user outside the project sets: the store, offline, no telemetry; the venv's tools."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"), "MLFLOW_TRACKING_URI": tracking_uri_for(world.home.root),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_every_champion_loads_by_alias_in_a_fresh_python(world, tmp_path):
    """`mlflow.pyfunc.load_model("models:/<name>@champion")` with nothing but the store's URI: the
    reward models score as the pipeline's do, the policy proposes, the model runs the `ml` code logged
    with it, and its requirements cover every package the load imports."""
    rows = read_split(world.home.exports / "splits", "test").dropna(subset=list(KEY_COLUMNS)).head(4)
    rows = rows[[*KEY_COLUMNS, "description"]].reset_index(drop=True)
    code = """
import sys
started_with = set(sys.modules)
import json
import mlflow, pandas as pd
rows = pd.DataFrame(json.loads(sys.argv[1]))
out = {name: mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(rows)["p_met"].tolist()
       for name in ("rlxf-reward-model", "rlxf-gold-reward-model")}
out["reward_modules"] = sorted({name.split(".")[0] for name in set(sys.modules) - started_with} - {"ml"})
policy = mlflow.pyfunc.load_model("models:/rlxf-policy-adapter@champion")
out["policy"] = policy.predict(rows.drop(columns="description").head(2), params={"n": 3, "seed": 5}).to_dict("list")
out["ml"] = sys.modules["ml"].__file__
out["modules"] = sorted({name.split(".")[0] for name in set(sys.modules) - started_with} - {"ml"})
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code, rows.to_json(orient="records")], cwd=tmp_path,
                          env=user_env(world), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    with world.registry() as registry:
        for name in (REWARD_MODEL_NAME, GOLD_REWARD_MODEL_NAME):
            expected = load_registered_reward(registry, {"name": name, "version": "1"}).score(rows)
            assert out[name] == pytest.approx(expected.tolist(), abs=1e-6), name
        requirements = {name: {line.split("==")[0] for line in
                               (registry.download(name, "1") / "requirements.txt").read_text().splitlines()}
                        for name in (REWARD_MODEL_NAME, POLICY_ADAPTER_NAME)}
    policy = pd.DataFrame(out["policy"])
    assert policy["input_row"].tolist() == [0, 0, 0, 1, 1, 1] and policy["sample"].tolist() == [0, 1, 2] * 2
    assert policy["proposal"].tolist() == [answer_to_condition(answer) for answer in policy["answer"]]
    assert {type(complete) for complete in policy["complete"]} == {bool}  # ended before the token limit or not
    # Each answer's least likely token: a word of the answer ("" for its EOS), drawn at a probability <= 1.
    assert all(word in answer for word, answer in zip(policy["least_likely_word"], policy["answer"]))
    assert all(logprob <= 0 for logprob in policy["least_likely_logprob"])
    assert Path(out["ml"]).is_relative_to(world.home.root / "mlartifacts")  # the code logged with the model

    installed = packages_distributions()
    for name, modules, optional in (
            (REWARD_MODEL_NAME, out["reward_modules"], OPTIONAL_IMPORTS | {"peft", "accelerate"}),
            (POLICY_ADAPTER_NAME, out["modules"], OPTIONAL_IMPORTS)):
        imported = {dist for module in modules if module not in sys.stdlib_module_names
                    for dist in installed.get(module, [])}
        assert imported - requirement_closure(requirements[name] | optional) == set(), name


# Imported when installed, needed by nothing: torch's datapipes probe dill, FastAPI orjson, pandas pytz
# (and transformers imports peft and accelerate, with their dependencies, when it finds them; only the
# policy needs them).
OPTIONAL_IMPORTS = {"dill", "orjson", "pytz"}


def requirement_closure(names: set[str]) -> set[str]:
    """The distributions `names` install, with their dependencies (extras left out), as installed here."""
    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen, todo = set(), [key(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [key(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]) for req in requires if "extra ==" not in req]
    return {dist for dist in {d for dists in packages_distributions().values() for d in dists} if key(dist) in seen}


def test_the_policy_model_prompts_as_the_policy_was_trained(world):
    prompts = pd.read_parquet(world.home.exports / "policy_prompts.parquet")
    test_prompts = prompts[prompts["split"] == "test"].head(3)
    with world.registry() as registry:
        policy = registry.load_model(POLICY_ADAPTER_NAME, "champion")
    python_model = policy.unwrap_python_model()
    for row in test_prompts.itertuples(index=False):
        assert python_model.prompt(row.country, row.arrangement_type, row.economic_area) == row.prompt
    assert "Precedents:" in test_prompts["prompt"].iloc[0]  # smoke grounds its prompts: the table travelled along
    request = test_prompts[list(KEY_COLUMNS)].head(2)
    first = policy.predict(request, params={"n": 2, "seed": 3})
    assert first.equals(policy.predict(request, params={"n": 2, "seed": 3}))  # a seed gives the same answers
    # Answers split over two draws of the precedents: the first draw's are those of the trained prompt.
    drawn = policy.predict(request, params={"n": 4, "seed": 3, "precedent_draws": 2})
    assert list(drawn["input_row"]) == [0] * 4 + [1] * 4 and list(drawn["sample"]) == [0, 1, 2, 3] * 2
    assert drawn[drawn["sample"] < 2].reset_index(drop=True).equals(first)
    assert any(python_model.prompt(*row, draw=1) != python_model.prompt(*row)
               for row in test_prompts[list(KEY_COLUMNS)].itertuples(index=False))


def test_the_served_reward_model_answers_as_rlxf_score(world, tmp_path):
    with world.registry() as registry:
        reward, _ = load_rl_reward(registry, None)
        champion = registry.champion_version(REWARD_MODEL_NAME).version
    assert reward.spec.proxy["version"] == champion  # `rlxf score`'s proxy is the served champion
    test_row = read_split(world.home.exports / "splits", "test").dropna(subset=list(KEY_COLUMNS)).iloc[0]
    rows = [{**{key: test_row[key] for key in KEY_COLUMNS}, "description": test_row["description"]},
            {"country": "Ghana", "description": "Submit to parliament a draft tax procedures law"}]
    port = free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{REWARD_MODEL_NAME}@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path, env=user_env(world), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"dataframe_records": rows}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = [p["p_met"] for p in json.loads(response.read())["predictions"]]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    scored = [score(world.home, row["country"], row.get("arrangement_type"), row.get("economic_area"),
                    row["description"]).proxy_p_met for row in rows]
    assert served == pytest.approx(scored, abs=1e-6)


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"{url} did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def test_recommend_and_score_use_the_champions(world, capsys):
    home = ["--home", str(world.home.root), "--profile", "smoke", "--country", "Ghana", "--arrangement", "ECF"]
    assert main(["recommend", *home, "--area", "Revenue administration, including customs", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert f"(policy: {POLICY_ADAPTER_NAME} v1, champion; reward: rlxf-rl-reward v1" in out
    assert "Precedents:" in out  # the prompt as the policy was trained on it
    assert main(["score", *home, "--condition", "Adopt a medium-term debt strategy"]) == 0
    assert re.search(r"proxy P\(MET\) = 0\.\d{3}", capsys.readouterr().out)


def test_every_version_carries_its_lineage(world):
    manifest = json.loads((world.home.exports / "splits" / "manifest.json").read_text())
    with world.registry() as registry:
        reward, reward_version = load_rl_reward(registry, None)
        for name in MODELS:
            version = registry.client.get_model_version(name, "1")
            tags = version.tags
            assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"]), name
            assert world.instance.get_run_by_id(tags["dagster_run_id"]) is not None, name
            assert tags["split_hash"] == manifest["content_hash"], name
            assert version.description, name  # the model card's opening paragraph
            run = registry.client.get_run(version.run_id)
            assert run.data.tags["mlflow.source.git.commit"] == tags["git_commit"]
            assert run.data.tags["dagster_run_id"] == tags["dagster_run_id"]
        policy = registry.version_tags(POLICY_ADAPTER_NAME, "1")
    assert (policy["rl_reward_version"], policy["reward_model_version"], policy["gold_model_version"]) == (
        reward_version, reward.spec.proxy["version"], reward.spec.gold["version"])


def test_second_file_triggers_one_retraining_run_and_applies_the_champion_rule(world):
    before = world.state()
    new_file, _ = write_synthetic_export(world.home.landing, world.home.truth, 600, seed=77, fmt="csv")
    request = world.sense()
    assert isinstance(request, dg.RunRequest)
    assert isinstance(world.sense(), dg.SkipReason)  # the same file never triggers twice
    result = world.execute("rlxf_retraining", tags=request.tags)
    assert result.success
    metadata = {event.asset_key.to_user_string(): event.materialization.metadata
                for event in result.get_asset_materialization_events()}
    assert metadata["raw_mona_conditions"]["files_loaded"].value == 1
    for asset in ("reward_model", "gold_reward_model", "evaluation_report"):
        assert {"promotion", "promotion_test", "promotion_p_value", "promotion_ci_low", "promotion_ci_high",
                "promotion_new_value", "promotion_champion_value"} <= metadata[asset].keys(), asset
    assert "paired bootstrap over" in (world.home.reports / "evaluation" / "report.md").read_text()

    after = world.state()
    with world.registry() as registry:
        for name in MODELS:
            versions, champion = after[name]
            assert versions == before[name][0] + 1, name
            newest = registry.versions(name)[-1]
            decision = newest.tags["promotion.decision"]
            if decision == "promoted":
                assert champion == newest.version
            else:  # not promoted: the champion is exactly where it was, the newcomer is challenger
                assert champion == before[name][1] and "challenger" in newest.aliases
            # Judged against the champion on the same data, by a paired test whose figures are tags.
            assert newest.tags["promotion.champion_version"] == before[name][1], name
            assert newest.tags["promotion.test"].startswith("paired bootstrap"), name
            low, high = float(newest.tags["promotion.ci_low"]), float(newest.tags["promotion.ci_high"])
            assert low <= high and (decision == "promoted") == (low > 0), name
            assert 0 < float(newest.tags["promotion.p_value"]) <= 1, name
            assert {"promotion.new_value", "promotion.champion_value", "promotion.level"} <= newest.tags.keys()
        # RL training, `rlxf score` and `recommend` read the newest RL reward, built on the champions.
        reward, _ = load_rl_reward(registry, None)
        assert reward.spec.proxy == {"name": REWARD_MODEL_NAME, "version": after[REWARD_MODEL_NAME][1]}
        assert reward.spec.gold == {"name": GOLD_REWARD_MODEL_NAME, "version": after[GOLD_REWARD_MODEL_NAME][1]}


def run_until_killed(world: World, asset: str, marker: str, timeout: float = 240, config: dict | None = None) -> str:
    """Materialize `asset` in a separate process and SIGKILL it once `marker` appears in its logs."""
    extra = ["--config-json", json.dumps(config)] if config else []
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "asset", "materialize", "--select", asset, "-m", "orchestration.definitions",
         *extra],
        cwd=REPO_ROOT, env=world.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    seen, deadline = [], time.monotonic() + timeout
    try:
        for line in process.stdout:
            seen.append(line)
            if marker in line:
                os.killpg(process.pid, signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"{asset} finished before {marker!r} appeared:\n{''.join(seen[-30:])}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-30:])
    return "".join(seen)


def test_sigkill_during_reward_training_changes_nothing_and_a_rerun_completes(world):
    before = world.state()
    run_until_killed(world, "reward_model", "step 10/")
    assert world.state() == before  # nothing registered, no champion moved
    result = world.execute("rlxf_full_pipeline", selection=[dg.AssetKey("reward_model")])
    assert result.success
    assert world.state()[REWARD_MODEL_NAME][0] == before[REWARD_MODEL_NAME][0] + 1


def test_sigkill_during_sft_keeps_the_previous_warm_start_and_a_rerun_completes(world):
    sft = world.home.models / "policy" / "sft"
    before = {path.relative_to(sft): path.read_bytes() for path in sft.rglob("*") if path.is_file()}
    run_until_killed(world, "sft_adapter", "sft step 1/")  # smoke SFT: two steps, saved after the last
    after = {path.relative_to(sft): path.read_bytes() for path in sft.rglob("*") if path.is_file()}
    assert after == before  # the killed run wrote nothing into the warm start PPO reads
    result = world.execute("rlxf_full_pipeline", selection=[dg.AssetKey("sft_adapter")])
    assert result.success
    assert (sft / "policy_stack.json").exists() and (sft / "sft_adapter" / "adapter_model.safetensors").exists()


def test_sigkill_during_ppo_resumes_from_the_last_checkpoint(world):
    before = world.state()
    run_until_killed(world, "ppo_adapter", "step 3/")  # smoke: a checkpoint every 2 steps
    assert world.state() == before
    # The trainer keeps them under checkpoints/<key>/checkpoints/last since the RL interface (ml/policy/rl.py).
    checkpoints = list((world.home.models / "policy" / "ppo" / "checkpoints").glob("**/last/state.json"))
    assert len(checkpoints) == 1 and json.loads(checkpoints[0].read_text())["step"] == 2

    result = world.execute("rlxf_full_pipeline", selection=[dg.AssetKey("ppo_adapter")])
    assert result.success
    logs = [e.message for e in world.instance.all_logs(result.run_id)]
    assert any("resumed from" in message and "at step 2/4" in message for message in logs)
    assert world.state()[POLICY_ADAPTER_NAME] == (before[POLICY_ADAPTER_NAME][0] + 1, before[POLICY_ADAPTER_NAME][1])


def test_sigkill_during_grpo_registers_nothing_and_a_rerun_completes(world):
    """GRPO (TRL, chosen for one run in the run config) killed mid-training: no version, no champion
    moved; the re-run trains from the start and registers one GRPO version."""
    before = world.state()
    grpo = {"ops": {"ppo_adapter": {"config": {"algorithm": "grpo"}}}}
    run_until_killed(world, "ppo_adapter", "grpo step 2/", config=grpo)
    assert world.state() == before
    result = world.execute("rlxf_full_pipeline", selection=[dg.AssetKey("ppo_adapter")], run_config=grpo)
    assert result.success
    assert world.state()[POLICY_ADAPTER_NAME] == (before[POLICY_ADAPTER_NAME][0] + 1, before[POLICY_ADAPTER_NAME][1])
    with world.registry() as registry:
        assert registry.versions(POLICY_ADAPTER_NAME)[-1].tags["algorithm"] == "grpo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def test_webserver_shows_every_definition_and_the_last_run(world):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
                               "-w", str(REPO_ROOT / "workspace.yaml")], cwd=REPO_ROOT, env=world.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("dagster webserver did not start")
                time.sleep(1)
        data = graphql(port, """{
          repositoriesOrError { ... on RepositoryConnection { nodes {
            jobs { name } sensors { name } schedules { name scheduleState { status } }
            assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
          } } }
          runsOrError(limit: 1) { ... on Runs { results { status jobName } } }
        }""")
        repository = data["repositoriesOrError"]["nodes"][0]
        assets = {"/".join(node["assetKey"]["path"]) for node in repository["assetNodes"]}
        expected_assets = {key.to_user_string() for key in world.defs.resolve_asset_graph().get_all_asset_keys()}
        assert expected_assets <= assets
        checks = {check["name"] for node in repository["assetNodes"]
                  for check in (node["assetChecksOrError"] or {}).get("checks", [])}
        assert {"great_expectations_suite", "macro_f1_above_threshold", "no_overoptimisation"} <= checks
        jobs = {j["name"] for j in repository["jobs"]}
        assert {"mona_data_platform", "rlxf_full_pipeline", "rlxf_retraining"} <= jobs
        assert [s["name"] for s in repository["sensors"]] == ["mona_landing_sensor"]
        schedule = repository["schedules"][0]
        assert schedule["name"] == "periodic_retraining" and schedule["scheduleState"]["status"] == "STOPPED"
        assert data["runsOrError"]["results"][0]["status"] == "SUCCESS"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_ppo_adapter_on_two_processes_launches_through_pipes_with_the_in_process_metadata(world):
    """#17: with two processes (a resource setting) the asset runs `accelerate launch` through Dagster
    Pipes, here with the policy's weights sharded (FSDP, a profile override): rank 0's progress reaches
    the asset's log, a version is registered, and the materialization has the same metadata entries, of
    the same types, as the in-process runs of the tests above."""
    key = dg.AssetKey("ppo_adapter")
    in_process = world.instance.get_latest_materialization_event(key).asset_materialization.metadata
    assert in_process["num_processes"].value == 1
    before = world.state()[POLICY_ADAPTER_NAME]
    # The run's profile overrides must reach the launched processes too.
    settings = RlxfSettings(profile="smoke", home=str(world.home.root), model_cache=str(shared_cache_dir()),
                            num_processes=2, overrides="[policy.ppo]\nsteps = 3\n[distributed]\nfsdp = true\n")
    defs = build_definitions(build_resources(settings))
    result = defs.resolve_job_def("rlxf_full_pipeline").execute_in_process(
        instance=world.instance, asset_selection=[key], raise_on_error=False)
    assert result.success
    launched = world.instance.get_latest_materialization_event(key).asset_materialization.metadata
    assert launched["num_processes"].value == 2
    assert {k: type(v) for k, v in launched.items()} == {k: type(v) for k, v in in_process.items()}
    logs = [e.message for e in world.instance.all_logs(result.run_id)]
    assert any(message.startswith("step 3/3") for message in logs)  # streamed from rank 0, 3 steps as overridden
    assert world.state()[POLICY_ADAPTER_NAME][0] == before[0] + 1
    from ml.registry import SETTINGS_ARTIFACT

    scratch = world.home.root / "pipes_settings"
    scratch.mkdir(exist_ok=True)
    with world.registry() as registry:
        path = registry.client.download_artifacts(launched["mlflow_run_id"].value, SETTINGS_ARTIFACT, str(scratch))
    assert json.loads(Path(path).read_text(encoding="utf-8"))["policy"]["ppo"]["steps"] == 3


def materialize(world: World, key: dg.AssetKey, num_processes: int, overrides: str = ""):
    settings = RlxfSettings(profile="smoke", home=str(world.home.root), model_cache=str(shared_cache_dir()),
                            num_processes=num_processes, overrides=overrides)
    result = build_definitions(build_resources(settings)).resolve_job_def("rlxf_full_pipeline").execute_in_process(
        instance=world.instance, asset_selection=[key], raise_on_error=False)
    assert result.success
    return result, world.instance.get_latest_materialization_event(key).asset_materialization.metadata


def test_reward_model_on_two_processes_launches_through_pipes_with_the_in_process_metadata_and_check(world):
    """#17: the reward model (and its macro-F1 check) at world size 2 through Pipes, against an in-process
    run on the same registry state (a champion to compare with) and with the same overrides: each registers
    a version, the materializations have the same metadata entries of the same types, and the check
    reaches Dagster from the launched rank 0 with the same result."""
    key = dg.AssetKey("reward_model")
    overrides = "[reward]\nepochs = 1\n"
    materializations, checks = {}, {}
    for num_processes in (1, 2):
        versions = world.state()[REWARD_MODEL_NAME][0]
        result, materializations[num_processes] = materialize(world, key, num_processes, overrides)
        assert world.state()[REWARD_MODEL_NAME][0] == versions + 1
        assert materializations[num_processes]["num_processes"].value == num_processes
        [checks[num_processes]] = result.get_asset_check_evaluations()
    in_process, launched = materializations[1], materializations[2]
    assert {k: type(v) for k, v in launched.items()} == {k: type(v) for k, v in in_process.items()}
    assert launched["mlflow_model"].value != in_process["mlflow_model"].value
    assert [c.check_name for c in checks.values()] == ["macro_f1_above_threshold"] * 2
    assert checks[2].passed == checks[1].passed
    assert checks[2].metadata.keys() == checks[1].metadata.keys() == {"test_macro_f1", "threshold"}
    assert checks[2].metadata["test_macro_f1"].value == launched["test_macro_f1"].value


def test_sft_adapter_on_two_processes_launches_through_pipes_with_the_in_process_metadata(world):
    """#17: the SFT warm start at world size 2 through Pipes: rank 0's progress reaches the asset's log,
    it alone writes the stack, and the metadata matches the in-process materialization's."""
    key = dg.AssetKey("sft_adapter")
    in_process = world.instance.get_latest_materialization_event(key).asset_materialization.metadata
    assert in_process["num_processes"].value == 1
    stack = world.home.models / "policy" / "sft" / "policy_stack.json"
    written = stack.stat().st_mtime_ns
    result, launched = materialize(world, key, 2)
    assert launched["num_processes"].value == 2
    assert {k: type(v) for k, v in launched.items()} == {k: type(v) for k, v in in_process.items()}
    assert launched["steps"].value == in_process["steps"].value
    assert any(e.message.startswith("sft step") for e in world.instance.all_logs(result.run_id))
    assert stack.stat().st_mtime_ns > written
