"""Do the on-topic judges agree with a reader? The report's two judges of "about the area asked" (the
gold side's TF-IDF area classifier and MiniLM nearest neighbours) against a person's reading of the same
answers.

`bench/reader_labels.csv` holds 100 test answers of the e15ac1e fresh-clone demo (seed 2024): 40 of the
SFT policy, 40 of the PPO champion, 10 historical MET conditions and 10 random corpus conditions, drawn
with fixed seeds and shuffled. They were read with the policy hidden, and labelled 1 when the answer is
about the economic area asked (or one of its sub-areas, as the judges count), else 0. One reader, read
once: a reference, not a gold standard. The demo's data is seeded, so the judges of any demo home are
the ones that judged these answers. Writes bench/results/judges.json.

    .venv/bin/python bench/bench_judges.py [--home .rlxf/demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, write_result
from sklearn.metrics import cohen_kappa_score

from ml.config import get_profile
from ml.data.splits import read_split
from ml.evaluation.judges import EmbeddingAreaJudge
from ml.paths import DataHome
from ml.registry import Registry
from ml.reward.pipeline import load_rl_reward

LABELS = REPO / "bench" / "reader_labels.csv"


def agreement(judge: np.ndarray, reader: np.ndarray) -> dict:
    """How a judge's 0/1 verdicts compare with the reader's."""
    return {"agreement": float(np.mean(judge == reader)), "cohen_kappa": float(cohen_kappa_score(reader, judge)),
            "off_topic_where_reader_on": int(np.sum((judge == 0) & (reader == 1))),
            "on_topic_where_reader_off": int(np.sum((judge == 1) & (reader == 0)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(REPO / ".rlxf" / "demo"))
    parser.add_argument("--profile", default="demo")
    args = parser.parse_args()
    home = DataHome(Path(args.home))
    labels = pd.read_csv(LABELS)
    corpus = read_split(home.exports / "splits", "train")
    with Registry.for_home(home.root) as registry:
        try:
            reward, _ = load_rl_reward(registry, None)
        except LookupError as exc:
            raise SystemExit(f"{home.root}: {exc}") from None
    # The report's two judges, built as ml.evaluation.pipeline builds them.
    verdicts = {"classifier": reward.gold_area.on_topic(labels),
                "knn": EmbeddingAreaJudge(corpus, seed=get_profile(args.profile).data.seed).on_topic(labels)}
    reader = labels["reader"].to_numpy()
    judges = {name: agreement(verdict, reader) for name, verdict in verdicts.items()}
    # The historical and random conditions are easy cases (on and off topic); the policies' answers are not.
    tuned = labels["policy"].isin(["sft", "ppo"]).to_numpy()
    judges_on_tuned = {name: agreement(verdict[tuned], reader[tuned]) for name, verdict in verdicts.items()}
    rates = labels.assign(**verdicts).groupby("policy")[["reader", *verdicts]].mean()
    for name, figures in judges.items():
        print(f"{name}: agrees with the reader on {figures['agreement']:.0%} of {len(labels)} answers "
              f"(Cohen's kappa {figures['cohen_kappa']:.2f}); off topic where the reader says on: "
              f"{figures['off_topic_where_reader_on']}, on topic where the reader says off: "
              f"{figures['on_topic_where_reader_off']}; on the {tuned.sum()} SFT and PPO answers alone "
              f"{judges_on_tuned[name]['agreement']:.0%} (kappa {judges_on_tuned[name]['cohen_kappa']:.2f})")
    print("on-topic share per policy, by the reader and by each judge:")
    print(rates.round(3).to_string())
    write_result("judges", {"home": str(home.root), "answers": len(labels), "judges": judges,
                            "judges_on_sft_and_ppo_answers": judges_on_tuned,
                            "on_topic_share": {policy: row.to_dict() for policy, row in rates.iterrows()},
                            "answers_per_policy": labels["policy"].value_counts().to_dict()})


if __name__ == "__main__":
    main()
