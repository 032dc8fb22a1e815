"""One RL variant, trained for a fixed time from the demo's SFT policy and measured on held-out prompts.

Shared by `bench_policy.py` (the reward-design and algorithm ablations at equal wall time, the seed
spread) so every variant is trained and judged the same way: the same reference policy, prompts and
validation evaluation as the pipeline (`ml.policy.pipeline.rl_job`), the same held-out answers and
judges as the evaluation report (`ml.evaluation.collect`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ml.config import PolicySettings
from ml.evaluation.collect import model_answers, score_answers
from ml.evaluation.metrics import distinct_n, is_slip, paired_bootstrap, tokens, top_opening
from ml.paths import DataHome
from ml.policy.grounding import quotes_precedent
from ml.policy.pipeline import PolicyStack, load_policy, rl_job, write_stack
from ml.policy.rl import train_rl
from ml.reward.rl_reward import RLReward, on_topic
from ml.similarity import NoveltyIndex, PromptEchoes, repeats_itself, unknown_names


@dataclass
class Judges:
    """Everything a variant is measured by, fixed for the whole benchmark."""

    rewards: dict[str, RLReward]  # name -> an RL reward whose gold side judges (components, judged)
    embedding: object  # EmbeddingAreaJudge
    novelty: NoveltyIndex
    name_record: pd.Series  # `ml.similarity.name_record` of the training split, as the report's
    echoes: PromptEchoes  # the question's words no training condition uses, as the report's
    prompts: pd.DataFrame  # held-out test prompts
    samples: int
    seed: int


def train_variant(home: DataHome, settings: PolicySettings, reward: RLReward, algorithm: str, seconds: float,
                  seed: int, work_dir: Path, progress=print) -> tuple[Path, dict]:
    """Train `algorithm` against `reward` for `seconds` of training time; returns the policy stack folder
    and what the run did (steps, episodes, training seconds, best step)."""
    sft_dir = home.models / "policy" / "sft"
    sft = sft_dir if (sft_dir / "policy_stack.json").exists() else None
    prompts = pd.read_parquet(home.exports / "policy_prompts.parquet")
    shutil.rmtree(work_dir, ignore_errors=True)
    settings = replace(settings, algorithm=algorithm)
    job = rl_job(prompts, settings, home.models / "base_policy", sft, reward, work_dir, seed, progress,
                 max_seconds=seconds)
    started = time.perf_counter()
    result = train_rl(algorithm, job)
    adapters = {"sft_adapter": sft / "sft_adapter"} if sft else {}
    stack = write_stack(work_dir / "policy", PolicyStack(settings.base_model, [*adapters, "rl_adapter"], algorithm),
                        {**adapters, "rl_adapter": result.adapter_dir})
    per_step = settings.ppo.batch_size * settings.ppo.answers_per_prompt if algorithm == "ppo" \
        else settings.group_rl.prompts_per_step * settings.group_rl.num_generations
    return stack, {"algorithm": algorithm, "steps": result.steps, "episodes": result.steps * per_step,
                   "train_seconds": result.seconds, "wall_seconds": time.perf_counter() - started,
                   "best_step": result.best_step, "best_validation_judged_reward": result.best_metric,
                   "validation_history": result.eval_history}


def measure(name: str, home: DataHome, settings: PolicySettings, stack: Path | None, judges: Judges) -> pd.DataFrame:
    """Held-out answers of a policy stack (None: the base), scored by every judge."""
    base, tokenizer = load_policy(None, settings, home.models / "base_policy")
    model = base if stack is None else load_policy(stack, settings, home.models / "base_policy")[0]
    answers = model_answers(name, model, base, tokenizer, judges.prompts, settings, judges.samples, judges.seed)
    return answers


def summarise(answers: pd.DataFrame, judges: Judges) -> dict:
    """Per judge: judged reward, gold P(MET), on-topic; plus KL, length, diversity, copies, repeats, names
    no training condition names and slips of sampling."""
    out: dict = {"n": len(answers)}
    areas = answers["economic_area"].tolist()
    for judge, reward in judges.rewards.items():
        scored = score_answers(answers, reward)
        out[f"{judge}_judged"] = float(scored["judged_reward"].mean())
        out[f"{judge}_p_met"] = float(scored["gold_reward"].mean())
        out[f"{judge}_on_topic"] = float(np.nanmean(on_topic(reward.gold_area, answers["answer"].tolist(), areas)))
    out["on_topic_knn"] = float(np.nanmean(judges.embedding.on_topic(answers)))
    out["kl_to_reference"] = float(answers["kl_to_reference"].mean())
    out["kl_to_base"] = float(answers["kl_to_base"].mean())
    words = [len(tokens(a)) for a in answers["answer"]]
    out["words_median"] = float(np.median(words))
    out["distinct_2"] = distinct_n(answers["answer"], 2)
    out["opening_word"], out["opening_share"] = top_opening(answers["answer"])
    out["copy_share"] = float(judges.novelty.nearest(answers["answer"])["is_copy"].mean())
    out["quote_share"] = float(np.mean(quotes_precedent(answers["prompt"], answers["answer"],
                                                        judges.novelty.copy_threshold)))
    out["repeat_share"] = float(answers["answer"].map(repeats_itself).mean())
    out["unknown_name_share"] = float(np.mean([bool(names) for names in
                                               unknown_names(answers["answer"], judges.name_record)]))
    out["slip_share"] = float(np.mean(is_slip(answers["least_token_logprob"].to_numpy())))
    out["echo_share"] = float(np.mean([bool(words) for words in judges.echoes.echoes(answers["answer"])]))
    return out


def paired_gain(a: pd.DataFrame, b: pd.DataFrame, reward: RLReward, seed: int) -> dict:
    """Paired bootstrap over prompts of the judged reward of a minus b."""
    sa, sb = score_answers(a, reward), score_answers(b, reward)
    boot = paired_bootstrap(sa.set_index("prompt_id")["judged_reward"], sb.set_index("prompt_id")["judged_reward"],
                            seed=seed)
    return {"diff": boot.mean_diff, "ci_low": boot.ci_low, "ci_high": boot.ci_high, "p": boot.p,
            "effect_size": boot.effect_size, "n_pairs": boot.n_pairs}
