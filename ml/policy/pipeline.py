"""The policy stages as the pipeline runs them: base model, prompts, SFT warm start, RL tuning.

A tuned policy is a *stack*: the base model, optionally the SFT adapter merged into it, and the RL
adapter on top. Merging SFT first makes the SFT policy PPO's reference (the adapter switched off),
as in the RLHF recipe, so the KL penalty measures drift from SFT and starts at zero. The stack is
saved as one folder (`policy_stack.json` + adapters as safetensors) and registered in MLflow as a
version of `rlxf-policy-adapter`, tagged with the reward models it was trained and judged against.
Promotion happens later, in the evaluation report, on the held-out gold reward.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.config import PolicySettings
from ml.data.splits import read_split
from ml.policy.base import apply_lora, load_adapter, load_base_policy
from ml.policy.generate import generate_answers
from ml.policy.ppo import PPOConfig, PPOTrainer, RewardFn
from ml.policy.prompts import answer_to_condition, build_policy_prompts, build_sft_examples, chat_text
from ml.registry import Registry
from ml.reward.model import RewardModel
from ml.reward.topic import AreaClassifier
from ml.reward.train import split_train_halves

POLICY_ADAPTER_NAME = "rlxf-policy-adapter"
POLICY_EXPERIMENT = "rlxf-policy"
STACK_FILE = "policy_stack.json"
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Prompts and reward


def policy_prompt_table(snapshot: Path, settings: PolicySettings, seed: int = 0) -> pd.DataFrame:
    """Prompts of every split: all train combinations (RL), a sample of validation combinations
    (checkpoint selection during RL) and of test combinations (the held-out evaluation)."""
    frames = []
    for split, limit in (("train", None), ("validation", settings.n_eval_prompts), ("test", settings.n_eval_prompts)):
        frames.append(build_policy_prompts(read_split(snapshot, split), split, limit=limit, seed=seed))
    return pd.concat(frames, ignore_index=True)


def prompt_records(prompts: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
    """PPO's prompt records: the rendered chat text plus the fields the reward model needs."""
    return [{"prompt_text": chat_text(tokenizer, row.prompt), "prompt_id": row.prompt_id, "country": row.country,
             "arrangement_type": row.arrangement_type, "economic_area": row.economic_area}
            for row in prompts.itertuples(index=False)]


def reward_fn_for(model: RewardModel, topic: AreaClassifier | None = None, topic_weight: float = 0.0) -> RewardFn:
    """P(MET) of each answer, read as a condition proposed for its prompt's country, arrangement and
    area; with a `topic` classifier and `topic_weight` w > 0, times P(asked area | answer)^w, so that
    the reward is high only for an implementable condition about the area the prompt asked for."""

    def reward(records: list[dict], answers: list[str]) -> list[float]:
        rows = [{"country": r.get("country"), "arrangement_type": r.get("arrangement_type"),
                 "economic_area": r.get("economic_area"), "description": answer_to_condition(a)}
                for r, a in zip(records, answers)]
        factor = topic_factor(topic, topic_weight, [row["description"] for row in rows],
                              [row["economic_area"] for row in rows])
        return (model.score(rows) * factor).tolist()

    return reward


def topic_factor(topic: AreaClassifier | None, topic_weight: float, conditions: list[str],
                 areas: list[object]) -> np.ndarray:
    """P(asked area | condition)^topic_weight per condition: what the topic term multiplies P(MET) by
    (1 without a topic term)."""
    if topic is None or topic_weight == 0:
        return np.ones(len(conditions))
    return topic.asked_area_probability(conditions, areas) ** topic_weight


def topic_classifiers(snapshot: Path, settings: PolicySettings,
                      reward_seed: int) -> tuple[AreaClassifier | None, AreaClassifier | None]:
    """The proxy's and the gold side's area classifiers, each fitted on the training half its reward
    model learned from, so the judge shares none of the proxy's data; (None, None) without a topic term."""
    if settings.topic_weight == 0:
        return None, None
    half_a, half_b = split_train_halves(read_split(snapshot, "train"), seed=reward_seed)
    return AreaClassifier.fit(half_a, seed=reward_seed), AreaClassifier.fit(half_b, seed=reward_seed + 1)


def reward_fns(snapshot: Path, settings: PolicySettings, proxy: RewardModel, gold: RewardModel,
               reward_seed: int) -> tuple[RewardFn, RewardFn]:
    """The proxy reward PPO trains on and the gold reward that judges it."""
    proxy_topic, gold_topic = topic_classifiers(snapshot, settings, reward_seed)
    return (reward_fn_for(proxy, proxy_topic, settings.topic_weight),
            reward_fn_for(gold, gold_topic, settings.topic_weight))


# ---------------------------------------------------------------------------------------------
# Policy stacks


@dataclass
class PolicyStack:
    """What a policy is: a base model plus adapters applied in order (all but the last merged)."""

    base_model: str
    adapters: list[str] = field(default_factory=list)  # folders relative to the stack folder
    algorithm: str = "base"  # "base", "sft", "ppo", "grpo"
    info: dict = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        (Path(folder) / STACK_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> PolicyStack:
        return cls(**json.loads((Path(folder) / STACK_FILE).read_text(encoding="utf-8")))


def load_policy(folder: Path | None, settings: PolicySettings, cache_dir: Path, trainable_last: bool = False,
                base_name: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy saved in `folder` (None: the base model): base, merged adapters, the last on top."""
    stack = PolicyStack.load(folder) if folder is not None else PolicyStack(base_name or settings.base_model)
    model, tokenizer = load_base_policy(stack.base_model, cache_dir, dtype=settings.dtype, device=settings.device)
    for index, adapter in enumerate(stack.adapters):
        last = index == len(stack.adapters) - 1
        model = load_adapter(model, Path(folder) / adapter, is_trainable=last and trainable_last)
        if not last:
            model = model.merge_and_unload()
    return model, tokenizer


def write_stack(folder: Path, stack: PolicyStack, adapter_sources: dict[str, Path]) -> Path:
    """Copy adapters into a fresh stack folder, atomically (temp folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    for name, source in adapter_sources.items():
        shutil.copytree(source, staging / name)
    stack.save(staging)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Stages


def prepare_base_policy(settings: PolicySettings, cache_dir: Path, progress: Progress = print) -> dict:
    """Load (and on first use convert and cache) the base policy; report its size and a sample answer."""
    started = time.perf_counter()
    model, tokenizer = load_base_policy(settings.base_model, cache_dir, dtype=settings.dtype, device=settings.device)
    seconds = time.perf_counter() - started
    prompt = chat_text(tokenizer, "Given the economic indicators and historical performance of Ghana, what would "
                                  "be an appropriate policy proposal under the ECF arrangement for achieving "
                                  "Revenue administration, including customs? Describe the proposed condition.")
    sample = generate_answers(model, tokenizer, [prompt], settings.max_new_tokens, do_sample=False)[0]
    progress(f"base policy {settings.base_model}: {model.num_parameters():,} parameters, loaded in {seconds:.1f} s")
    return {"base_model": settings.base_model, "parameters": int(model.num_parameters()),
            "load_seconds": round(seconds, 2), "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "sample_answer": sample}


def train_sft_stage(snapshot: Path, settings: PolicySettings, cache_dir: Path, out_dir: Path, seed: int,
                    progress: Progress = print) -> dict:
    """LoRA SFT on historically MET conditions as answers to their prompts; saves an SFT stack."""
    from ml.policy.sft import train_sft_adapter  # TRL import is slow: only when SFT runs

    examples = build_sft_examples(read_split(snapshot, "train"), "train", settings.sft_max_examples, seed=seed)
    model, tokenizer = load_base_policy(settings.base_model, cache_dir, dtype=settings.dtype, device=settings.device)
    with tempfile.TemporaryDirectory() as scratch:
        result = train_sft_adapter(model, tokenizer, examples, settings, Path(scratch), seed=seed, progress=progress)
        write_stack(out_dir, PolicyStack(settings.base_model, ["sft_adapter"], "sft",
                                         {"examples": len(examples), "first_loss": result.first_loss,
                                          "last_loss": result.last_loss, "seconds": result.seconds}),
                    {"sft_adapter": result.adapter_dir})
    return {"examples": len(examples), "steps": result.steps, "first_loss": result.first_loss,
            "last_loss": result.last_loss, "seconds": result.seconds, "loss_history": result.train_loss}


@dataclass
class RLRun:
    algorithm: str
    version: str
    run_id: str
    stack_dir: Path
    history: list[dict]
    eval_history: list[dict]
    best_step: int | None
    best_gold: float | None
    seconds: float


def train_rl_stage(snapshot: Path, prompts: pd.DataFrame, settings: PolicySettings, cache_dir: Path,
                   sft_dir: Path | None, proxy: RewardModel, gold: RewardModel, versions: dict[str, str],
                   registry: Registry, work_dir: Path, profile: str, seed: int, reward_seed: int,
                   progress: Progress = print) -> RLRun:
    """PPO (or GRPO) against the proxy reward; every `eval_every` steps the validation prompts are
    scored by proxy and gold, and the adapter at the gold reward's peak is the one registered."""
    work_dir = Path(work_dir)
    model, tokenizer = load_policy(sft_dir, settings, cache_dir)
    if sft_dir is not None:
        model = model.merge_and_unload()  # SFT becomes the reference: the RL adapter starts from it
    train_records = prompt_records(prompts[prompts["split"] == "train"], tokenizer)
    eval_records = prompt_records(prompts[prompts["split"] == "validation"], tokenizer)
    proxy_fn, gold_fn = reward_fns(snapshot, settings, proxy, gold, reward_seed)
    config = PPOConfig.for_policy(settings, seed)
    base_adapters = {"sft_adapter": Path(sft_dir) / "sft_adapter"} if sft_dir is not None else {}
    params = {**{f"policy.{k}": v for k, v in asdict(settings).items() if k != "ppo"},
              **{f"ppo.{k}": v for k, v in asdict(config).items()}, "profile": profile,
              "reward_model_version": versions["proxy"], "gold_model_version": versions["gold"],
              "train_prompts": len(train_records), "eval_prompts": len(eval_records)}
    started = time.perf_counter()
    with registry.run(POLICY_EXPERIMENT, run_name=f"{settings.algorithm}-{profile}", params=params,
                      tags={"algorithm": settings.algorithm, "base_model": settings.base_model,
                            "profile": profile}) as run:

        def evaluate(trainer: PPOTrainer, step: int) -> dict:
            answers = trainer.generate_answers(eval_records, do_sample=True)
            scores = {"proxy_reward": float(np.mean(proxy_fn(eval_records, answers))),
                      "gold_reward": float(np.mean(gold_fn(eval_records, answers)))}
            run.log_metrics({f"eval_{k}": v for k, v in scores.items()}, step=step)
            progress(f"eval step {step}: proxy {scores['proxy_reward']:.3f} gold {scores['gold_reward']:.3f}")
            return scores

        if settings.algorithm == "ppo":
            policy = apply_lora(model, settings)
            checkpoints = checkpoint_dir_for(work_dir, snapshot, settings, config, versions, sft_dir)
            trainer = PPOTrainer(policy, tokenizer, config, proxy_fn, train_records,
                                 checkpoint_dir=checkpoints, progress=progress,
                                 log_metrics=lambda stats, step: run.log_metrics(stats, step=step),
                                 evaluate=evaluate)
            result = trainer.train()
            best = result.best_checkpoint or result.last_checkpoint
            history, eval_history = result.history, result.eval_history
            best_step, best_gold = result.best_step, result.best_metric
            rl_adapter = best / "adapter"
        elif settings.algorithm == "grpo":
            from ml.policy.grpo import train_grpo_adapter

            grpo = train_grpo_adapter(model, tokenizer, prompts[prompts["split"] == "train"], proxy_fn, settings,
                                      work_dir / "grpo", steps=config.steps, seed=seed, progress=progress,
                                      learning_rate=config.learning_rate, temperature=config.temperature)
            for row in grpo.history:
                run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
            final = load_adapter(model, grpo.adapter_dir)
            scores = evaluate_adapter_on(final, tokenizer, eval_records, config, proxy_fn, gold_fn)
            run.log_metrics({f"eval_{k}": v for k, v in scores.items()}, step=config.steps)
            history, eval_history = grpo.history, [{"step": config.steps, **scores}]
            best_step, best_gold, rl_adapter = config.steps, scores["gold_reward"], grpo.adapter_dir
        else:
            raise ValueError(f"unknown algorithm {settings.algorithm!r}; use 'ppo' or 'grpo'")
        seconds = time.perf_counter() - started
        stack = PolicyStack(settings.base_model, [*base_adapters, "rl_adapter"], settings.algorithm, {
            "reward_model_version": versions["proxy"], "gold_model_version": versions["gold"],
            "best_step": best_step, "best_gold_reward": best_gold, "steps": config.steps})
        stack_dir = write_stack(work_dir / "policy", stack, {**base_adapters, "rl_adapter": rl_adapter})
        run.log_dict({"history": history, "eval_history": eval_history}, "training/history.json")
        run.log_metrics({"train_seconds": seconds, "best_step": float(best_step or 0),
                         "best_gold_reward": float(best_gold) if best_gold is not None else math.nan})
        version = registry.register_model(run, stack_dir, POLICY_ADAPTER_NAME, tags={
            "algorithm": settings.algorithm, "base_model": settings.base_model, "profile": profile,
            "reward_model_version": versions["proxy"], "gold_model_version": versions["gold"],
            "best_step": best_step, "best_gold_reward": best_gold})
        run_id = run.run_id
    if settings.algorithm == "ppo":
        shutil.rmtree(checkpoints, ignore_errors=True)  # registered: a later run starts fresh
    progress(f"{POLICY_ADAPTER_NAME} v{version.version} registered ({settings.algorithm}, best step {best_step}, "
             f"gold {best_gold})")
    return RLRun(settings.algorithm, version.version, run_id, stack_dir, history, eval_history, best_step,
                 best_gold, seconds)


def checkpoint_dir_for(work_dir: Path, snapshot: Path, settings: PolicySettings, config: PPOConfig,
                       versions: dict[str, str], sft_dir: Path | None) -> Path:
    """Checkpoints of one training, keyed by everything it depends on: a re-run after a crash finds
    and resumes them, a run on new data or new reward models starts fresh."""
    manifest = json.loads((Path(snapshot) / "manifest.json").read_text(encoding="utf-8"))
    sft_info = PolicyStack.load(sft_dir).info if sft_dir is not None else {}
    key = json.dumps({"data": manifest["content_hash"], "versions": versions, "policy": asdict(settings),
                      "ppo": asdict(config), "sft": sft_info}, sort_keys=True, default=str)
    return Path(work_dir) / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]


def evaluate_adapter_on(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[dict],
                        config: PPOConfig, proxy_fn: RewardFn, gold_fn: RewardFn) -> dict:
    texts = [r["prompt_text"] for r in records]
    answers = generate_answers(model, tokenizer, texts, config.max_new_tokens, temperature=config.temperature,
                               seed=config.seed, max_prompt_tokens=config.max_prompt_tokens)
    return {"proxy_reward": float(np.mean(proxy_fn(records, answers))),
            "gold_reward": float(np.mean(gold_fn(records, answers)))}
