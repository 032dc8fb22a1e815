"""Benchmark the RL-tuned policy on the demo profile (issue #4). Run after `make demo`.

- held-out mean P(MET) of the base, SFT and PPO policies from the demo run's evaluation (the same
  prompts and samples; target: PPO >= base + 0.10), their on-topic rate and answer length, and PPO's
  mean KL to its reference (target < 8 nats): in training, and on answers to the held-out test prompts
  (the registered policy against its reference, the SFT adapter merged into the base);
- PPO wall time from the demo run (target < 15 min);
- tokens/s of rollout generation and of the PPO update, and the update's model-FLOPs utilisation
  (6 x parameters x tokens / time) against a torch matmul peak measured in this run (a few PPO steps);
- PPO against GRPO at equal wall time: GRPO (TRL) trains for PPO's wall time on the same prompts and is
  evaluated on the same held-out prompts.

    .venv/bin/python bench/bench_policy.py [--home .rlxf/demo] [--skip-grpo]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, matmul_peak_flops, write_result

from ml.config import get_profile
from ml.data.splits import read_split
from ml.evaluation.collect import collect_answers, model_answers
from ml.paths import DataHome
from ml.policy.base import apply_lora
from ml.policy.pipeline import (POLICY_ADAPTER_NAME, PolicyStack, load_policy, prompt_records,
                                reward_fns, write_stack)
from ml.policy.ppo import PPOConfig, PPOTrainer
from ml.registry import Registry
from ml.reward.pipeline import GOLD_REWARD_MODEL_NAME, REWARD_MODEL_NAME, load_champion_reward
from ml.reward.topic import AreaClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(REPO / ".rlxf" / "demo"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--throughput-steps", type=int, default=3)
    parser.add_argument("--skip-grpo", action="store_true")
    args = parser.parse_args()
    home, profile = DataHome(Path(args.home)), get_profile(args.profile)
    settings = profile.policy
    answers_path = home.reports / "evaluation" / "answers.parquet"
    if not answers_path.exists():
        raise SystemExit(f"{answers_path} is missing: run `make demo` first")
    answers = pd.read_parquet(answers_path)
    held_out = answers.groupby("policy")[["proxy_reward", "gold_reward", "kl_to_base", "n_tokens"]].mean()
    # The on-topic rate as the evaluation measured it: a generic answer can score P(MET) without
    # being a condition for the area the prompt asked for.
    headline = json.loads((home.reports / "evaluation" / "headline.json").read_text())["headline"]
    held_out["on_topic"] = [headline.get(f"{policy}_on_topic_rate", np.nan) for policy in held_out.index]
    print(held_out.round(3).to_string())

    with Registry.for_home(home.root) as registry:
        proxy, _ = load_champion_reward(registry, REWARD_MODEL_NAME, home.models / "registry")
        gold, _ = load_champion_reward(registry, GOLD_REWARD_MODEL_NAME, home.models / "registry")
        proxy_fn, _ = reward_fns(home.exports / "splits", settings, proxy, gold, profile.reward.seed)
        candidate = registry.versions(POLICY_ADAPTER_NAME)[-1]
        run = registry.client.get_run(candidate.run_id)
        with tempfile.TemporaryDirectory() as scratch:
            logged = json.loads(Path(registry.client.download_artifacts(
                candidate.run_id, "training/history.json", scratch)).read_text())
    history = logged["history"]
    ppo_seconds = float(run.data.metrics["train_seconds"])
    ppo_kl = float(np.mean([row["kl"] for row in history[-5:]]))
    # The registered adapter is the checkpoint at the gold peak within the KL budget: the KL that
    # budget judged it by is that of the steps since the evaluation before it.
    best_step = int(candidate.tags["best_step"])
    ppo_kl_at_best = next(e["kl_since_previous_eval"] for e in logged["eval_history"] if e["step"] == best_step)

    cache = home.models / "base_policy"
    sft_dir = home.models / "policy" / "sft"
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    # PPO's reference, as train_rl_stage builds it: the SFT adapter merged into the base.
    model, tokenizer = load_policy(sft_dir if sft_dir.exists() else None, settings, cache)
    if sft_dir.exists():
        model = model.merge_and_unload()
    policy, _ = load_policy(home.models / "policy" / settings.algorithm / "policy", settings, cache)
    config = PPOConfig.for_policy(settings, seed=1)
    # The evaluation's KL-to-base column, with the reference in the base's place.
    kl_to_reference_heldout = float(model_answers(
        settings.algorithm, policy, model, tokenizer, prompts[prompts["split"] == "test"], settings, samples=2,
        seed=profile.data.seed, temperature=config.temperature)["kl_to_base"].mean())
    del policy

    # Throughput and MFU of rollout and update, measured here next to the matmul peak.
    peak = matmul_peak_flops()
    params = model.num_parameters()
    train_records = prompt_records(prompts[prompts["split"] == "train"], tokenizer)
    config.steps, config.eval_every, config.checkpoint_every = args.throughput_steps, 0, 0
    trainer = PPOTrainer(apply_lora(model, settings), tokenizer, config, proxy_fn, train_records,
                         progress=print)
    stats = trainer.train().history
    rollout_tps = float(np.mean([s["tokens_per_s_rollout"] for s in stats]))
    update_tps = float(np.mean([s["tokens_per_s_update"] for s in stats]))
    update_mfu = 6 * params * update_tps / peak

    result = {
        "profile": args.profile, "base_model": settings.base_model, "policy_version": candidate.version,
        "heldout_p_met": {policy: float(row.proxy_reward) for policy, row in held_out.iterrows()},
        "heldout_gold": {policy: float(row.gold_reward) for policy, row in held_out.iterrows()},
        "heldout_on_topic": {policy: float(row.on_topic) for policy, row in held_out.iterrows()},
        "heldout_answer_tokens": {policy: float(row.n_tokens) for policy, row in held_out.iterrows()},
        "topic_weight": settings.topic_weight,
        "ppo_minus_base_p_met": float(held_out.loc["ppo", "proxy_reward"] - held_out.loc["base", "proxy_reward"]),
        "ppo_kl_to_reference_last_steps": ppo_kl, "ppo_best_step": best_step,
        "ppo_kl_to_reference_at_best_step": ppo_kl_at_best,
        "ppo_kl_to_base_heldout": float(held_out.loc["ppo", "kl_to_base"]),
        "ppo_kl_to_reference_heldout": kl_to_reference_heldout,
        "ppo_wall_seconds": ppo_seconds, "rollout_tokens_per_s": rollout_tps, "update_tokens_per_s": update_tps,
        "matmul_peak_gflops": peak / 1e9, "update_mfu": update_mfu, "parameters": params,
        "targets": {"ppo_minus_base_p_met": 0.10, "ppo_kl": 8.0, "ppo_wall_seconds": 900},
    }
    print(f"PPO - base held-out P(MET): {result['ppo_minus_base_p_met']:+.3f} (target +0.10); "
          f"KL to reference {ppo_kl_at_best:.2f} nats over the steps up to the registered step {best_step} "
          f"({ppo_kl:.2f} over the last 5; {kl_to_reference_heldout:.2f} on held-out answers; target < 8); "
          f"PPO wall time {ppo_seconds / 60:.1f} min")
    print(f"rollout {rollout_tps:,.0f} tokens/s, update {update_tps:,.0f} tokens/s, update MFU {update_mfu:.1%} "
          f"of {peak / 1e9:.0f} GFLOP/s")

    if not args.skip_grpo:
        from ml.policy.grpo import train_grpo_adapter

        base, tokenizer = load_policy(sft_dir if sft_dir.exists() else None, settings, cache)
        if sft_dir.exists():
            base = base.merge_and_unload()
        with tempfile.TemporaryDirectory() as scratch:
            grpo = train_grpo_adapter(base, tokenizer, prompts[prompts["split"] == "train"], proxy_fn,
                                      settings, Path(scratch), steps=10_000, seed=1, progress=print,
                                      learning_rate=config.learning_rate, temperature=config.temperature,
                                      max_seconds=ppo_seconds)
            adapters = {"sft_adapter": sft_dir / "sft_adapter"} if sft_dir.exists() else {}
            stack = write_stack(Path(scratch) / "grpo_policy", PolicyStack(
                settings.base_model, [*adapters, "rl_adapter"], "grpo"), {**adapters, "rl_adapter": grpo.adapter_dir})
            test_prompts = prompts[prompts["split"] == "test"].reset_index(drop=True)
            corpus = read_split(home.exports / "splits", "train")
            grpo_answers = collect_answers(test_prompts, corpus, {"grpo": stack},
                                           settings, cache, proxy, gold, samples=2, seed=profile.data.seed)
        grpo_rows = grpo_answers[grpo_answers.policy == "grpo"]
        on_topic = AreaClassifier.fit(corpus, seed=profile.data.seed).on_topic_rate(grpo_rows)
        result["grpo"] = {"wall_seconds": grpo.seconds, "steps": grpo.steps,
                          "heldout_p_met": float(grpo_rows.proxy_reward.mean()),
                          "heldout_gold": float(grpo_rows.gold_reward.mean()),
                          "kl_to_base_heldout": float(grpo_rows.kl_to_base.mean()), "on_topic": on_topic,
                          "answer_tokens": float(grpo_rows.n_tokens.mean())}
        print(f"GRPO at equal wall time ({grpo.seconds / 60:.1f} min, {grpo.steps} steps): held-out P(MET) "
              f"{result['grpo']['heldout_p_met']:.3f} vs PPO {held_out.loc['ppo', 'proxy_reward']:.3f}")
    write_result("policy", result)


if __name__ == "__main__":
    main()
