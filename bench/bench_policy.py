"""Benchmark the RL-tuned policy on the demo profile (issue #14). Run after `make demo`.

Prints, and writes to bench/results/policy.json:

1. the demo run's held-out evaluation (its test prompts x 2 samples, the registered champion): on-topic
   rate by the area classifier and by MiniLM nearest neighbours (targets: >= 90% for the tuned policy,
   >= 70% for SFT), judged reward and gold P(MET) against the historical MET conditions of the same
   prompts, the paired-bootstrap tests of the tuned policy against SFT, base and random (p < 0.01, with
   effect sizes), copies, distinct-2 and median length against the historical conditions (within 30%),
   and the share of the attainable judged reward;
2. throughput of the RL step (rollout tokens/s; update tokens/s and model-FLOPs utilisation 6 x N x
   answer tokens/s against a matmul peak measured in the same run), a few PPO steps with the demo's
   settings;
3. the reward-design ablation: PPO at equal training time from the same SFT policy with P(MET) alone
   (the paper), P(MET) x P(area)^w, the topic term as a constraint, normalise-then-sum, a conservative
   ensemble of three proxies, a reward model trained with relevance negatives, the default less the
   premium P(MET) pays for the answer's action (its first word), and the default less a penalty on the
   batch share of the answer's opening word; each measured on
   the test prompts by two gold judges (the gold model trained without and with relevance negatives,
   each times the gold area classifier's P(area)), the embedding judge's on-topic rate, and KL;
4. the algorithm ablation: PPO, GRPO and RLOO (TRL) at equal training time on the demo's reward;
5. the run-to-run spread of the demo's configuration over two training seeds;
6. SFT's run-to-run spread: the demo's SFT recipe trained again at other seeds (each seed draws its own
   sample of combinations, LoRA start and order), judged on the same held-out prompts as the demo's own
   SFT policy (target: on topic >= 70% by both judges).

The reward models the ablation needs beyond the demo's (without relevance negatives, and two more proxy
seeds for the ensemble) are trained here once and cached under <home>/models/bench.

    .venv/bin/python bench/bench_policy.py [--home .rlxf/demo] [--seconds 240] [--skip-ablation]
    .venv/bin/python bench/bench_policy.py --parts sft_seeds --throughput-steps 0 --name policy_sft_seeds
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import REPO, matmul_peak_flops, write_result
from variants import Judges, measure, paired_gain, summarise, train_variant

from ml.config import get_profile
from ml.data.splits import read_split
from ml.evaluation.judges import EmbeddingAreaJudge
from ml.paths import DataHome
from ml.policy.base import apply_lora
from ml.policy.pipeline import STACK_FILE, load_policy, prompt_records, train_sft_stage
from ml.policy.ppo import PPOConfig, PPOTrainer
from ml.policy.prompts import prompt_echoes
from ml.registry import Registry
from ml.reward.model import RewardModel
from ml.reward.pipeline import load_rl_reward
from ml.reward.rl_reward import RLReward, action_base_rates
from ml.reward.train import split_train_halves, train_reward_model
from ml.similarity import NoveltyIndex, name_record

TARGETS = {"on_topic_tuned": 0.90, "on_topic_sft": 0.70, "p_value": 0.01, "copy_share": 0.05,
           "relative_gap": 0.30, "rollout_speedup": 5.0, "update_mfu": 0.35, "rl_minutes": 12.0,
           "episodes_factor": 5.0}
# The engine before issue #14, measured on this machine with the same PPO steps and matmul peak
# (commit 4594eb3, demo settings: 8 prompts x 1 answer, HF generate): see bench/results/policy_baseline.json.
BASELINE_FILE = REPO / "bench" / "results" / "policy_baseline.json"


def held_out_figures(home: DataHome) -> dict:
    """Part 1: the demo's own evaluation report, as the registered champion was judged."""
    summary = json.loads((home.reports / "evaluation" / "headline.json").read_text())
    headline, tuned = summary["headline"], summary["algorithm"]

    def get(policy: str, key: str) -> float:
        return float(headline.get(f"{policy}_{key}", np.nan))

    figures = {"tuned": tuned, "attainable_judged_reward": headline.get("attainable_judged_reward")}
    for policy in ("base", "sft", tuned, "random", "historical"):
        figures[policy] = {key: get(policy, key) for key in (
            "judged_reward", "share_of_ceiling", "gold_p_met", "proxy_p_met", "on_topic_rate", "on_topic_rate_knn",
            "kl_to_reference", "kl_to_base", "words_median", "distinct_2", "opening_share", "copy_share",
            "unknown_name_share", "slip_share", "echo_share")}
    for control in ("sft", "base", "random"):
        figures[f"{tuned}_vs_{control}"] = {
            f"{metric}_{stat}": get(f"{tuned}_vs_{control}", f"{metric}_{stat}")
            for metric in ("judged", "gold") for stat in ("bootstrap_diff", "bootstrap_p", "paired_d")}
    t, h = figures[tuned], figures["historical"]
    figures["checks"] = {
        "on_topic_classifier": t["on_topic_rate"] >= TARGETS["on_topic_tuned"],
        "on_topic_embeddings": t["on_topic_rate_knn"] >= TARGETS["on_topic_tuned"],
        "sft_on_topic": (min(figures["sft"]["on_topic_rate"], figures["sft"]["on_topic_rate_knn"])
                         >= TARGETS["on_topic_sft"]),
        "gold_at_least_historical": t["gold_p_met"] >= h["gold_p_met"],
        "significant_vs_sft_base_random": all(figures[f"{tuned}_vs_{c}"]["gold_bootstrap_p"] < TARGETS["p_value"]
                                              for c in ("sft", "base", "random")),
        "copies": t["copy_share"] <= TARGETS["copy_share"],
        "distinct_2_within_30pct": abs(t["distinct_2"] / h["distinct_2"] - 1) <= TARGETS["relative_gap"],
        "median_words_within_30pct": abs(t["words_median"] / h["words_median"] - 1) <= TARGETS["relative_gap"]}
    return figures


def throughput(home: DataHome, settings, reward: RLReward, steps: int) -> dict:
    """Part 2: a few PPO steps with the demo's settings, next to the matmul peak measured now."""
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    sft = home.models / "policy" / "sft"
    model, tokenizer = load_policy(sft if sft.exists() else None, settings, home.models / "base_policy")
    if sft.exists():
        model = model.merge_and_unload()
    config = PPOConfig.for_policy(settings, seed=1, steps=steps, eval_every=0, checkpoint_every=0, max_seconds=None)
    trainer = PPOTrainer(apply_lora(model, settings), tokenizer, config, reward,
                         prompt_records(prompts[prompts["split"] == "train"], tokenizer), progress=print)
    peak = matmul_peak_flops()  # float32: the denominator, whatever the policy's dtype
    dtype = next(model.parameters()).dtype
    # bf16 matmuls (AMX) peak higher: the stricter denominator; a float32 policy reuses the measurement above.
    peak_in_dtype = peak if dtype == torch.float32 else matmul_peak_flops(dtype=dtype)
    history = trainer.train().history
    params = model.num_parameters()
    rollout = float(np.mean([s["tokens_per_s_rollout"] for s in history]))
    update = float(np.mean([s["tokens_per_s_update"] for s in history]))
    step_seconds = float(np.mean([s["step_seconds"] for s in history]))
    result = {"steps": steps, "answers_per_step": config.answers_per_step, "rollout_tokens_per_s": rollout,
              "update_tokens_per_s": update, "update_mfu": 6 * params * update / peak, "matmul_peak_gflops": peak / 1e9,
              "policy_dtype": str(dtype).removeprefix("torch."),
              "matmul_peak_gflops_in_policy_dtype": peak_in_dtype / 1e9,
              "update_mfu_in_policy_dtype": 6 * params * update / peak_in_dtype,
              "step_seconds": step_seconds, "episodes_in_12_min": 12 * 60 / step_seconds * config.answers_per_step,
              "parameters": params, "answer_length": float(np.mean([s["answer_length"] for s in history]))}
    if BASELINE_FILE.exists():
        baseline = json.loads(BASELINE_FILE.read_text())
        result["baseline"] = baseline
        result["rollout_speedup"] = rollout / baseline["rollout_tokens_per_s"]
        result["episodes_factor"] = result["episodes_in_12_min"] / baseline["episodes_in_12_min"]
    return result


def bench_reward_models(home: DataHome, profile, registry: Registry, reward: RLReward) -> dict[str, RewardModel]:
    """Reward models the ablation needs beside the demo's: the same recipe without relevance negatives
    (proxy on half a, gold on half b), and two more plain proxies with other seeds for the ensemble.
    Trained once, saved under <home>/models/bench."""
    folder = home.models / "bench"
    train = read_split(home.exports / "splits", "train")
    validation = read_split(home.exports / "splits", "validation")
    half_a, half_b = split_train_halves(train, seed=profile.reward.seed)
    plain = replace(profile.reward, cross_area_negatives=0.0, vague_negatives=0.0)
    wanted = {"proxy_plain": (half_a, profile.reward.seed), "gold_plain": (half_b, profile.reward.gold_seed),
              "proxy_plain_seed2": (half_a, profile.reward.seed + 1),
              "proxy_plain_seed3": (half_a, profile.reward.seed + 2)}
    models = {}
    for name, (data, seed) in wanted.items():
        path = folder / name
        if not (path / "model.safetensors").exists():
            print(f"training {name} ({len(data):,} rows, seed {seed})")
            trained = train_reward_model(data, validation, plain, seed=seed, progress=print)
            trained.reward_model().save(path)
        models[name] = RewardModel.load(path)
    return models


def held_out_judges(home: DataHome, profile, reward: RLReward, extra: dict[str, RewardModel]) -> Judges:
    """The judges of every variant: the demo's gold model; with the designs' reward models also the same
    recipe without relevance negatives. On the held-out test prompts, 2 samples each, as the report."""
    corpus = read_split(home.exports / "splits", "train")
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    test = prompts[prompts["split"] == "test"].reset_index(drop=True)
    gold_judges = {"gold": reward}
    if extra:
        gold_judges["plain_gold"] = reward.variant(proxy=extra["proxy_plain"], gold=extra["gold_plain"])
    return Judges(gold_judges, EmbeddingAreaJudge(corpus, seed=profile.data.seed),
                  NoveltyIndex(corpus["description"]), name_record(corpus),
                  prompt_echoes(corpus["description"]), test, samples=2, seed=profile.data.seed)


SPREAD_FIGURES = ("gold_judged", "gold_p_met", "gold_on_topic", "on_topic_knn", "copy_share", "words_median")


def sft_seed_spread(home: DataHome, profile, reward: RLReward, seeds: list[int]) -> dict:
    """Part 6: the demo's SFT recipe at other seeds beside the demo's own SFT policy (its seed is the data
    seed), each judged as the report judges. Each seed's stack is kept under <home>/models/bench/sft-<seed>,
    so a second run only measures."""
    settings, judges = profile.policy, held_out_judges(home, profile, reward, {})
    demo_sft = home.models / "policy" / "sft"
    if not (demo_sft / STACK_FILE).exists():
        raise SystemExit(f"{demo_sft} holds no SFT policy: the profile trains none, or `make demo` has not run")
    stacks = {profile.data.seed: demo_sft}
    for seed in seeds:
        stacks[seed] = home.models / "bench" / f"sft-{seed}"
        if not (stacks[seed] / STACK_FILE).exists():
            print(f"=== SFT, seed {seed}")
            train_sft_stage(home.exports / "splits", settings, home.models / "base_policy", stacks[seed], seed,
                            progress=print)
    rows = {}
    for seed, stack in stacks.items():
        rows[str(seed)] = summarise(measure("sft", home, settings, stack, judges), judges)
        print(f"SFT seed {seed}: " + ", ".join(f"{k} {rows[str(seed)][k]:.3f}" for k in SPREAD_FIGURES))
    figures = pd.DataFrame(rows).T[list(SPREAD_FIGURES)].astype(float)
    on_topic = figures[["gold_on_topic", "on_topic_knn"]]
    return {"demo_seed": profile.data.seed, "seeds": rows,
            "mean": figures.mean().to_dict(), "sd": figures.std(ddof=1).to_dict(),
            "seeds_at_target_by_both_judges": int((on_topic.min(axis=1) >= TARGETS["on_topic_sft"]).sum()),
            "mean_at_target_by_both_judges": bool(on_topic.mean().min() >= TARGETS["on_topic_sft"])}


def ablations(home: DataHome, profile, reward: RLReward, extra: dict[str, RewardModel], seconds: float,
              seeds: list[int], parts: set[str], save_partial=lambda results: None) -> dict:
    """Parts 3-5 (those in `parts`: designs, algorithms, seeds). `save_partial` gets the results after every
    run, so a long bench stopped early keeps them. Without `extra` (the designs' reward models), the second
    gold judge is left out."""
    settings = profile.policy
    corpus = read_split(home.exports / "splits", "train")
    spec = reward.spec
    judges = held_out_judges(home, profile, reward, extra)

    def variant_reward(design: str, proxy: RewardModel, ensemble=()) -> RLReward:
        return reward.variant(proxy=proxy, members=list(ensemble), design=design,
                              ensemble=tuple({"name": "bench", "version": str(i)} for i, _ in enumerate(ensemble)))

    default_label = f"relevance-trained RM, {spec.design} (demo default)"
    designs = {} if not extra else {
        "p_met (paper)": variant_reward("p_met", extra["proxy_plain"]),
        "product": variant_reward("product", extra["proxy_plain"]),
        "constraint": variant_reward("constraint", extra["proxy_plain"]),
        "normalize_then_sum": variant_reward("normalize_then_sum", extra["proxy_plain"]),
        "ensemble of 3": variant_reward("ensemble", extra["proxy_plain"],
                                        [extra["proxy_plain_seed2"], extra["proxy_plain_seed3"]]),
        "relevance-trained RM, p_met": variant_reward("p_met", reward.proxy),
    }
    designs[default_label] = variant_reward(spec.design, reward.proxy)
    # The proxy's training half gives each action's met share: the reward then pays for what an answer adds over it.
    proxy_half = split_train_halves(corpus, seed=profile.reward.seed)[0]
    rates, overall = action_base_rates(proxy_half)
    designs["the default less the action's premium"] = reward.variant(action_rates=rates, action_overall=overall)
    if not spec.floor_unknown_names:
        designs["the default with names the record never names floored"] = reward.variant(
            floor_unknown_names=True, name_record=name_record(proxy_half).tolist())
    if not spec.opening_penalty:
        designs["the default less 0.3 x its opening's share of the batch"] = reward.variant(opening_penalty=0.3)
    if spec.quote_threshold > 0 or spec.copy_threshold > 0 or spec.floor_repeats or spec.floor_unknown_names:
        designs["the default without its floor rules (quotes, copies, repeats, unknown names)"] = reward.variant(
            quote_threshold=0.0, copy_threshold=0.0, copy_ramp_from=0.0, floor_repeats=False, floor_unknown_names=False)
    work = home.models / "bench" / "runs"
    answers: dict[str, pd.DataFrame] = {}
    results: dict = {"seconds": seconds, "reward_designs": {}, "algorithms": {}, "seeds": {}}
    base_answers = measure("base", home, settings, None, judges)
    sft = home.models / "policy" / "sft"
    sft_answers = measure("sft", home, settings, sft if sft.exists() else None, judges)
    results["references"] = {"base": summarise(base_answers, judges), "sft": summarise(sft_answers, judges)}

    def run(label: str, variant: RLReward, algorithm: str, seed: int) -> dict:
        print(f"=== {label}: {algorithm}, seed {seed}, {seconds:.0f} s of training")
        stack, info = train_variant(home, settings, variant, algorithm, seconds, seed, work / f"{algorithm}-{seed}",
                                    progress=print)
        rows = measure(algorithm, home, settings, stack, judges)
        answers[label] = rows
        figures = {**{k: v for k, v in info.items() if k != "validation_history"}, **summarise(rows, judges),
                   "vs_sft": paired_gain(rows, sft_answers, reward, seed)}
        print(json.dumps(figures, indent=1, default=float))
        return figures

    def run_and_save(table: str, key: str, *args) -> None:
        results[table][key] = run(*args)
        save_partial(results)

    # The demo's own configuration first, with its second seed, then the other algorithms, then the designs.
    run_and_save("reward_designs", default_label, default_label, designs[default_label], "ppo", seeds[0])
    results["algorithms"]["ppo"] = results["seeds"][str(seeds[0])] = results["reward_designs"][default_label]
    for seed in seeds[1:] if "seeds" in parts else []:
        run_and_save("seeds", str(seed), f"demo configuration, seed {seed}", reward, settings.algorithm, seed)
    for algorithm in ("grpo", "rloo") if "algorithms" in parts else ():
        run_and_save("algorithms", algorithm, f"{algorithm} (demo reward)", reward, algorithm, seeds[0])
    for label, variant in designs.items() if "designs" in parts else ():
        if label != default_label:
            run_and_save("reward_designs", label, label, variant, "ppo", seeds[0])
    return results


def table(rows: dict[str, dict]) -> str:
    columns = ["episodes", "gold_judged", "plain_gold_judged", "gold_p_met", "gold_on_topic", "on_topic_knn",
               "kl_to_reference", "copy_share", "quote_share", "repeat_share", "unknown_name_share", "slip_share",
               "echo_share", "words_median", "opening_share"]
    frame = pd.DataFrame({name: {c: row.get(c, np.nan) for c in columns} for name, row in rows.items()}).T
    return frame.dropna(axis=1, how="all").round(3).to_markdown()  # a judge this run did not train: no column


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(REPO / ".rlxf" / "demo"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--seconds", type=float, default=240, help="training time of each ablation variant")
    parser.add_argument("--throughput-steps", type=int, default=3, help="0 skips the throughput part")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 7])
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--parts", nargs="+", choices=["designs", "algorithms", "seeds", "sft_seeds"],
                        default=["designs", "algorithms", "seeds", "sft_seeds"], help="which ablations to run")
    parser.add_argument("--sft-seeds", type=int, nargs="+", default=[7, 1],
                        help="SFT seeds beside the demo's own (the data seed) for the sft_seeds part")
    parser.add_argument("--name", default="policy",
                        help="results file bench/results/NAME.json (keeps one part's run beside another's)")
    args = parser.parse_args()
    home, profile = DataHome(Path(args.home)), get_profile(args.profile)
    if not (home.reports / "evaluation" / "headline.json").exists():
        raise SystemExit(f"{home.reports / 'evaluation'} has no report: run `make demo` first")
    started = time.perf_counter()
    result = {"profile": args.profile, "targets": TARGETS, "held_out": held_out_figures(home)}
    print(json.dumps(result["held_out"], indent=1, default=float))
    with Registry.for_home(home.root) as registry:
        reward, version = load_rl_reward(registry, None)
        result["rl_reward_version"] = version
        if args.throughput_steps > 0:
            result["throughput"] = throughput(home, profile.policy, reward, args.throughput_steps)
            print(json.dumps(result["throughput"], indent=1, default=float))
        rl_parts = set(args.parts) - {"sft_seeds"}
        if not args.skip_ablation and rl_parts:
            extra = bench_reward_models(home, profile, registry, reward) if "designs" in args.parts else {}
            result["ablation"] = ablations(home, profile, reward, extra, args.seconds, args.seeds, rl_parts,
                                           lambda partial: write_result(args.name, {**result, "ablation": partial}))
            print("\nReward designs (PPO, equal training time):\n" + table(result["ablation"]["reward_designs"]))
            print("\nAlgorithms (demo reward, equal training time):\n" + table(result["ablation"]["algorithms"]))
            print("\nSeeds (demo configuration):\n" + table(result["ablation"]["seeds"]))
        if not args.skip_ablation and "sft_seeds" in args.parts:
            result["sft_seeds"] = sft_seed_spread(home, profile, reward, args.sft_seeds)
            write_result(args.name, result)
            print("\nSFT seeds (the demo's recipe; the demo's own seed first):\n" + table(result["sft_seeds"]["seeds"]))
            print(json.dumps({k: v for k, v in result["sft_seeds"].items() if k != "seeds"}, indent=1, default=float))
    result["bench_seconds"] = time.perf_counter() - started
    write_result(args.name, result)


if __name__ == "__main__":
    main()
