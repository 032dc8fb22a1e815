"""Does RL learn to copy although the reward floors copies? The SFT policy and the champion, sampled on
training and test prompts of a trained data home, counted by the training reward's own rules.

Per policy and split (`--prompts` prompts drawn with a fixed seed, `--samples` answers each, the demo's
sampling settings): the share of answers that the copy rule floors (`RLReward.copies`: word TF-IDF to a
condition the proxy learned from at least the reward's `copy_threshold`), that quote a precedent their
prompt shows (`RLReward.quotes`), and the mean training reward of the floored answers against the rest,
which shows whether the floor acts. Writes bench/results/copies.json.

    .venv/bin/python bench/bench_copies.py [--home .rlxf/demo] [--prompts 32] [--samples 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from common import REPO, write_result

from ml.config import get_profile
from ml.paths import DataHome
from ml.policy.pipeline import load_policy, prompt_records
from ml.policy.prompts import answer_to_condition
from ml.policy.sampling import decode_answers, generate_batches
from ml.recommend import load_champion
from ml.registry import Registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(REPO / ".rlxf" / "demo"))
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    home, settings = DataHome(Path(args.home)), get_profile(args.profile).policy
    cache = home.models / "base_policy"
    with Registry.for_home(home.root) as registry:
        try:
            champion, tuned, reward, reward_version = load_champion(
                registry, {"device": settings.device, "base_model_cache": str(cache)})
        except LookupError as exc:
            raise SystemExit(f"{home.root}: {exc}") from None
    sft, tokenizer = load_policy(home.models / "policy" / "sft", settings, cache)
    policies = {"sft": sft, "champion": tuned.unwrap_python_model().model}
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    rows = []
    for split in ("train", "test"):
        chosen = prompts[prompts["split"] == split].sample(args.prompts, random_state=0)
        records = prompt_records(chosen, tokenizer)
        per_answer = [r for r in records for _ in range(args.samples)]
        for name, model in policies.items():
            batches = generate_batches(model, tokenizer, [r["prompt_text"] for r in records],
                                       max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                       n_per_prompt=args.samples, seed=args.seed,
                                       max_prompt_tokens=settings.max_prompt_tokens)
            conditions = [answer_to_condition(a) for a in decode_answers(tokenizer, batches)]
            copies, quotes = reward.copies(conditions), reward.quotes(per_answer, conditions)
            floored = reward.floored(per_answer, conditions)
            train_reward = reward.train_reward(per_answer, conditions)
            rows.append({"split": split, "policy": name, "answers": len(conditions),
                         "copy_share": float(copies.mean()), "quote_share": float(quotes.mean()),
                         "floored_share": float(floored.mean()),
                         "floored_train_reward": float(train_reward[floored].mean()) if floored.any() else None,
                         "other_train_reward": float(train_reward[~floored].mean()) if (~floored).any() else None})
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    write_result("copies", {"home": str(home.root), "champion_version": champion.version,
                            "rl_reward_version": reward_version, "copy_threshold": reward.spec.copy_threshold,
                            "quote_threshold": reward.spec.quote_threshold, "prompts": args.prompts,
                            "samples": args.samples, "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()
