"""Continuous retraining end to end on the smoke profile, in one persistent Dagster instance:

first MONA files -> sensor -> full run -> champions; a second file with new reviews -> sensor ->
retraining run -> new versions with the champion rule applied; SIGKILL in the middle of reward-model
training and of PPO leaves nothing half-registered and no champion changed, and a re-run completes
(PPO resumes from its checkpoint); the Dagster webserver shows every definition and the last run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from ml.config import get_profile
from ml.data.landing import seed_landing
from ml.data.synthetic import write_synthetic_export
from ml.paths import REPO_ROOT, DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME
from ml.policy.tiny import shared_cache_dir
from ml.registry import Registry
from ml.reward.pipeline import GOLD_REWARD_MODEL_NAME, REWARD_MODEL_NAME, load_rl_reward
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
        reward, _ = load_rl_reward(registry, version.tags["rl_reward_version"], world.home.models / "registry")
    records = candidate[["country", "arrangement_type", "economic_area"]].to_dict("records")
    expected = float(np.mean(reward.judged(records, candidate["answer"].tolist())))
    assert recorded == pytest.approx(expected, abs=1e-6)
    assert recorded == pytest.approx(candidate["judged_reward"].mean(), abs=1e-6)
    assert recorded < candidate["gold_reward"].mean()


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

    assert main(["score", *home, "--country", "Atlantis", "--area", prompt.economic_area, "--condition", " "]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["score", *home, "--country", "Atlantis", "--area", prompt.economic_area,
                 "--condition", "Submit to parliament a draft budget law"]) == 0
    captured = capsys.readouterr()
    assert "country 'Atlantis' does not occur in the data" in captured.err
    assert "proxy P(MET) =" in captured.out and "gold P(MET) =" in captured.out


def test_second_file_triggers_one_retraining_run_and_applies_the_champion_rule(world):
    before = world.state()
    new_file, _ = write_synthetic_export(world.home.landing, world.home.truth, 600, seed=77, fmt="csv")
    request = world.sense()
    assert isinstance(request, dg.RunRequest)
    assert isinstance(world.sense(), dg.SkipReason)  # the same file never triggers twice
    result = world.execute("rlxf_retraining", tags=request.tags)
    assert result.success
    raw = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_mona_conditions")]
    assert raw[-1].materialization.metadata["files_loaded"].value == 1

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
        # RL training, `rlxf score` and `recommend` read the newest RL reward, built on the champions.
        reward, _ = load_rl_reward(registry, None, world.home.models / "registry")
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
    checkpoints = list((world.home.models / "policy" / "ppo" / "checkpoints").glob("*/last/state.json"))
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
        assert {"mona_data_platform", "rlxf_full_pipeline", "rlxf_retraining"} <= {j["name"] for j in repository["jobs"]}
        assert [s["name"] for s in repository["sensors"]] == ["mona_landing_sensor"]
        schedule = repository["schedules"][0]
        assert schedule["name"] == "periodic_retraining" and schedule["scheduleState"]["status"] == "STOPPED"
        assert data["runsOrError"]["results"][0]["status"] == "SUCCESS"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
