"""The policy stages as the pipeline runs them: base model, prompts, SFT warm start, RL tuning.

A tuned policy is a *stack*: the base model, optionally the SFT adapter merged into it, and the RL
adapter on top. Merging SFT first makes the SFT policy PPO's reference (the adapter switched off),
as in the RLHF recipe, so the KL penalty measures drift from SFT and starts at zero. The stack is
saved as one folder (`policy_stack.json` + adapters as safetensors) and registered in MLflow as a
version of `rlxf-policy-adapter`, an MLflow Model that generates proposals (`ml.serving`), tagged with
the reward models it was trained and judged against.
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
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml import distributed
from ml.config import PolicySettings
from ml.data.splits import read_split
from ml.io import atomic_folder
from ml.policy.base import load_adapter, load_base_policy
from ml.policy.grounding import Grounding
from ml.policy.ppo import PPOConfig
from ml.policy.prompts import answer_to_condition, build_policy_prompts, build_sft_examples, chat_text
from ml.policy.rl import Evaluate, RLJob, train_rl
from ml.policy.sampling import answer_logprob_sums, decode_answers, generate_answers, generate_batches
from ml.registry import Registry
from ml.reward.rl_reward import RLReward, on_topic
from ml.serving.publish import log_policy

POLICY_ADAPTER_NAME = "rlxf-policy-adapter"
POLICY_EXPERIMENT = "rlxf-policy"
STACK_FILE = "policy_stack.json"
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Prompts and reward


def policy_prompt_table(snapshot: Path, settings: PolicySettings, seed: int = 0) -> pd.DataFrame:
    """Prompts of every split: all train combinations (RL), a sample of validation combinations
    (checkpoint selection during RL) and of test combinations (the held-out evaluation)."""
    grounding = grounding_for(snapshot, settings, seed)
    frames = []
    for split, limit in (("train", None), ("validation", settings.n_eval_prompts), ("test", settings.n_test_prompts)):
        frames.append(build_policy_prompts(read_split(snapshot, split), split, limit=limit, seed=seed,
                                           grounding=grounding))
    return pd.concat(frames, ignore_index=True)


def grounding_for(snapshot: Path, settings: PolicySettings, seed: int) -> Grounding | None:
    """The profile's grounding (record and precedents from the training split), or None without one."""
    if not settings.grounding_precedents:
        return None
    return Grounding(read_split(snapshot, "train"), n_precedents=settings.grounding_precedents, seed=seed)


def prompt_records(prompts: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
    """PPO's prompt records: the rendered chat text plus the fields the reward model needs."""
    return [{"prompt_text": chat_text(tokenizer, row.prompt), "prompt_id": row.prompt_id, "country": row.country,
             "arrangement_type": row.arrangement_type, "economic_area": row.economic_area}
            for row in prompts.itertuples(index=False)]


def validation_evaluator(reward: RLReward, records: list[dict], tokenizer: PreTrainedTokenizerBase,
                         settings: PolicySettings, temperature: float, seed: int) -> Evaluate:
    """Scores the current policy on held-out prompts, one sampled answer each (the same seed at every
    evaluation, so evaluations differ by the policy, not by sampling noise): proxy and gold P(MET), the
    gold side's on-topic rate, the judged reward (gold P(MET) x P(asked area)) and the KL to the
    reference (the same network with its RL adapter off), in nats per answer."""
    texts = [r["prompt_text"] for r in records]

    def evaluate(model: torch.nn.Module, step: int) -> dict:
        batches = generate_batches(model, tokenizer, texts, max_new_tokens=settings.max_new_tokens,
                                   temperature=temperature, max_prompt_tokens=settings.max_prompt_tokens, seed=seed,
                                   keep_prefill=True)
        answers = decode_answers(tokenizer, batches)
        policy_logprob = answer_logprob_sums(model, batches, temperature, prompts_sampled_by_model=batches)
        with model.disable_adapter():
            reference_logprob = answer_logprob_sums(model, batches, temperature)
        conditions = [answer_to_condition(a) for a in answers]
        parts = reward.components(records, conditions)
        on_topic_flags = on_topic(reward.gold_area, conditions, [r.get("economic_area") for r in records])
        return {"judged_reward": float(parts["judged_reward"].mean()),
                "proxy_p_met": float(parts["proxy_p_met"].mean()), "gold_p_met": float(parts["gold_p_met"].mean()),
                "on_topic_rate": float(np.nanmean(on_topic_flags)) if np.isfinite(on_topic_flags).any() else math.nan,
                "kl_to_reference": float(np.mean(policy_logprob - reference_logprob))}

    return evaluate


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
    """Copy adapters into a fresh stack folder, swapped in whole (ml.io.atomic_folder)."""
    def write(staging: Path) -> None:
        for name, source in adapter_sources.items():
            shutil.copytree(source, staging / name)
        stack.save(staging)

    return atomic_folder(folder, write)


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
                    progress: Progress = print) -> dict | None:
    """LoRA SFT on historically MET conditions as answers to their prompts; saves an SFT stack.
    Under a launcher every rank trains its shard; rank 0 alone writes the stack and returns the
    summary (None elsewhere)."""
    from ml.policy.sft import train_sft_adapter  # TRL import is slow: only when SFT runs

    examples = build_sft_examples(read_split(snapshot, "train"), "train", settings.sft_max_examples, seed=seed,
                                  grounding=grounding_for(snapshot, settings, seed),
                                  balance_areas=settings.sft_balance_areas)
    model, tokenizer = load_base_policy(settings.base_model, cache_dir, dtype=settings.dtype, device=settings.device)
    with tempfile.TemporaryDirectory() as scratch:
        result = train_sft_adapter(model, tokenizer, examples, settings, Path(scratch), seed=seed, progress=progress)
        if not distributed.current().is_main:
            return None  # rank 0 saved the adapter (the same on every rank) in its own scratch folder
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
    best_judged: float | None
    seconds: float


def rl_job(prompts: pd.DataFrame, settings: PolicySettings, cache_dir: Path, sft_dir: Path | None, reward: RLReward,
           work_dir: Path, seed: int, progress: Progress = print, max_seconds: float | None = None) -> RLJob:
    """The reference policy (SFT merged in, so the KL is measured from SFT), its prompts, the reward
    and the validation evaluation, ready for any algorithm of `ml.policy.rl`."""
    model, tokenizer = load_policy(sft_dir, settings, cache_dir)
    if sft_dir is not None:
        model = model.merge_and_unload()  # SFT becomes the reference: the RL adapter starts from it
    train_records = prompt_records(prompts[prompts["split"] == "train"], tokenizer)
    eval_records = prompt_records(prompts[prompts["split"] == "validation"], tokenizer)
    temperature = settings.temperature
    return RLJob(model=model, tokenizer=tokenizer, train_records=train_records, reward=reward,
                 evaluate=validation_evaluator(reward, eval_records, tokenizer, settings, temperature, seed),
                 settings=settings, work_dir=Path(work_dir), seed=seed, max_seconds=max_seconds, progress=progress)


def train_rl_stage(snapshot: Path, prompts: pd.DataFrame, settings: PolicySettings, cache_dir: Path,
                   sft_dir: Path | None, reward: RLReward, reward_version: str, registry: Registry, work_dir: Path,
                   profile: str, seed: int, progress: Progress = print) -> RLRun | None:
    """The profile's RL algorithm against the RL reward; the adapter of the best validation
    evaluation (judged reward, within the KL budget) is registered as a version of the policy.
    Under a launcher every rank trains; rank 0 alone logs, registers and returns the run (None elsewhere)."""
    work_dir = Path(work_dir)
    algorithm = settings.algorithm
    checkpoints = checkpoint_dir_for(work_dir, snapshot, settings, reward_version, sft_dir)
    job = rl_job(prompts, settings, cache_dir, sft_dir, reward, checkpoints, seed, progress)
    if not distributed.current().is_main:
        train_rl(algorithm, job)  # in step with rank 0, which records the run
        return None
    base_adapters = {"sft_adapter": Path(sft_dir) / "sft_adapter"} if sft_dir is not None else {}
    config = PPOConfig.for_policy(settings, seed)
    spec = reward.spec
    params = {**{f"policy.{k}": v for k, v in asdict(settings).items() if k not in ("ppo", "group_rl")},
              **({f"ppo.{k}": v for k, v in asdict(config).items()} if algorithm == "ppo" else
                 {f"group_rl.{k}": v for k, v in asdict(settings.group_rl).items()}),
              "profile": profile, "rl_reward_version": reward_version, "reward_design": spec.design,
              "reward_model_version": spec.proxy["version"], "gold_model_version": spec.gold["version"],
              "train_prompts": len(job.train_records)}
    lineage = {"algorithm": algorithm, "base_model": settings.base_model, "profile": profile,
               "rl_reward_version": reward_version, "reward_design": spec.design,
               "reward_model_version": spec.proxy["version"], "gold_model_version": spec.gold["version"]}
    with registry.run(POLICY_EXPERIMENT, run_name=f"{algorithm}-{profile}", params=params, tags=lineage) as run:
        job.log_metrics = lambda stats, step: run.log_metrics(mlflow_names(stats), step=step)
        evaluate = job.evaluate

        def logged_evaluate(model: torch.nn.Module, step: int) -> dict:
            scores = evaluate(model, step)
            run.log_metrics({f"validation_{k}": v for k, v in scores.items()}, step=step)
            progress(f"eval step {step}: judged reward {scores['judged_reward']:.3f} (gold P(MET) "
                     f"{scores['gold_p_met']:.3f}, on topic {scores['on_topic_rate']:.0%}), proxy P(MET) "
                     f"{scores['proxy_p_met']:.3f}, KL to reference {scores['kl_to_reference']:.2f}")
            return scores

        job.evaluate = logged_evaluate
        result = train_rl(algorithm, job)
        stack = PolicyStack(settings.base_model, [*base_adapters, "rl_adapter"], algorithm, {
            **lineage, "best_step": result.best_step, "best_judged_reward": result.best_metric,
            "steps": result.steps})
        stack_dir = write_stack(work_dir / "policy", stack, {**base_adapters, "rl_adapter": result.adapter_dir})
        run.log_dict({"history": result.history, "eval_history": result.eval_history}, "training/history.json")
        run.log_metrics({"train_seconds": result.seconds, "best_step": float(result.best_step or 0),
                         "best_validation_judged_reward": result.best_metric if result.best_metric is not None
                         else math.nan})
        version = log_policy(registry, POLICY_ADAPTER_NAME, stack_dir, settings, snapshot, cache_dir, seed,
                             prompts[prompts["split"] == "test"], tags={
            **lineage, "best_step": result.best_step, "best_validation_judged_reward": result.best_metric})
        run_id = run.run_id
    shutil.rmtree(checkpoints, ignore_errors=True)  # registered: a later run starts fresh
    progress(f"{POLICY_ADAPTER_NAME} v{version.version} registered ({algorithm}, best step {result.best_step}, "
             f"validation judged reward {result.best_metric})")
    return RLRun(algorithm, version.version, run_id, stack_dir, result.history, result.eval_history,
                 result.best_step, result.best_metric, result.seconds)


# PPO's stable stat names (ml/policy/ppo.py) say what they are inside PPO; in MLflow, next to the
# validation judges, the names say which reward and which KL.
MLFLOW_NAMES = {"score_mean": "train_reward_mean", "score_std": "train_reward_std",
                "reward_mean": "train_reward_normalised_mean", "reward_std": "train_reward_normalised_std",
                "kl": "kl_to_reference", "non_score_reward": "kl_penalty"}


def mlflow_names(stats: dict) -> dict:
    return {MLFLOW_NAMES.get(name, name): value for name, value in stats.items()}


def checkpoint_dir_for(work_dir: Path, snapshot: Path, settings: PolicySettings, reward_version: str,
                       sft_dir: Path | None) -> Path:
    """Checkpoints of one training, keyed by everything it depends on: a re-run after a crash finds
    and resumes them, a run on new data or a new reward starts fresh."""
    manifest = json.loads((Path(snapshot) / "manifest.json").read_text(encoding="utf-8"))
    sft_info = PolicyStack.load(sft_dir).info if sft_dir is not None else {}
    key = json.dumps({"data": manifest["content_hash"], "reward": reward_version, "policy": asdict(settings),
                      "sft": sft_info}, sort_keys=True, default=str)
    return Path(work_dir) / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]
