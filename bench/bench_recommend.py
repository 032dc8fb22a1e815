"""What `rlxf recommend` gives an analyst, on held-out queries of a trained data home: are its n proposals
different from one another, and how good are they, with the answers sampled under one draw of the
precedents (the trained prompt) and under `PRECEDENT_DRAWS` draws (the default).

Per query (the first test prompt of each of `--queries` countries): the highest similarity between two of
its proposals by two judges, TF-IDF over the area's conditions (the measure the rewording flag uses) and
MiniLM sentence embeddings (another kind); the proposals' judged reward (gold P(MET) x gold P(asked area))
and the share that carry any flag. Prints the proposals and writes bench/results/recommend.json.

    .venv/bin/python bench/bench_recommend.py [--home .rlxf/demo] [--seeds 1 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, write_result

from ml.evaluation.judges import embed, minilm_encoder
from ml.paths import DataHome
from ml.policy.pipeline import POLICY_ADAPTER_NAME
from ml.recommend import PRECEDENT_DRAWS, AreaRecord, analyst_flags, corpus_of, declares_precedent_draws, recommend
from ml.registry import Registry


def most_similar_pair(vectors) -> float:
    similarity = np.asarray(vectors @ vectors.T)
    np.fill_diagonal(similarity, 0.0)
    return float(similarity.max()) if len(similarity) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(REPO / ".rlxf" / "demo"))
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("-n", type=int, default=3)
    args = parser.parse_args()
    home = DataHome(Path(args.home))
    with Registry.for_home(home.root) as registry:
        champion = registry.champion_version(POLICY_ADAPTER_NAME)
        if champion is None:
            raise SystemExit(f"{home.root} has no champion policy: run `make demo` first")
        if not declares_precedent_draws(registry.load_model(POLICY_ADAPTER_NAME, champion.version)):
            raise SystemExit("the champion was registered before `precedent_draws` existed: retrain (make demo)")
    corpus = corpus_of(home)
    encoder, tokenizer = minilm_encoder()
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    queries = (prompts[prompts["split"] == "test"].drop_duplicates("country").sort_values("country")
               .head(args.queries))
    rows = []
    for draws in (1, PRECEDENT_DRAWS):
        for seed in args.seeds:
            for query in queries.itertuples(index=False):
                result = recommend(home, query.country, query.arrangement_type, query.economic_area, n=args.n,
                                   seed=seed, precedent_draws=draws)
                texts = [p.text for p in result.items]
                print(f"\n[{draws} draw(s), seed {seed}] {query.country} / {query.arrangement_type} / "
                      f"{query.economic_area}")
                for p in result.items:
                    print(f"- {p.text} (gold {p.gold_p_met:.2f}, P(area) {p.p_area:.2f})")
                rows.append({
                    "draws": draws, "seed": seed, "country": query.country,
                    "tfidf_most_similar_pair": most_similar_pair(
                        AreaRecord(corpus, query.economic_area).vectorizer.transform(texts).toarray()),
                    "minilm_most_similar_pair": most_similar_pair(embed(texts, encoder, tokenizer)),
                    "judged_reward": float(np.mean([p.gold_p_met * p.p_area for p in result.items])),
                    "flagged_share": float(np.mean([any(flags) or p.rewords is not None for p, flags in
                                                    zip(result.items, zip(*analyst_flags(result.items)))])),
                })
    table = pd.DataFrame(rows)
    summary = table.groupby("draws")[["tfidf_most_similar_pair", "minilm_most_similar_pair", "judged_reward",
                                      "flagged_share"]].mean()
    print("\nMean over queries and seeds (most similar pair: lower is more different proposals)")
    print(summary.round(3).to_string())
    write_result("recommend", {"home": str(home.root), "queries": args.queries, "seeds": args.seeds, "n": args.n,
                               "summary": summary.reset_index().to_dict("records"), "per_query": rows})


if __name__ == "__main__":
    main()
