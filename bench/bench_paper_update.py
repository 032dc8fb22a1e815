"""Time the `paper` profile's PPO step on a GPU (issue #4): rollout generation and the PPO update of a
LoRA adapter on a Llama-2-7B-shaped model, with the paper profile's PPO settings (64 answers per rollout,
minibatches of 16, 4 PPO epochs, up to 96 new tokens), next to a bf16 matmul peak measured in the same run.

The weights are randomly initialised in the Llama-2-7B shape (hidden 4096, 32 layers, 11008 MLP), so the
figure needs no hub download; the tokenizer is SmolLM2's (49k vocabulary instead of Llama's 32k, +0.4B
embedding parameters that cost no matmul in the update). A random model never emits EOS, so every answer
runs the full 96 tokens: the rollout is timed at its longest. The reward is a stand-in (answer length):
what is timed is the PPO machinery, not what it learns.

    python bench/bench_paper_update.py --tokenizer DIR [--steps 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import matmul_peak_flops
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ml.config import get_profile
from ml.policy.base import apply_lora
from ml.policy.ppo import PPOConfig, PPOTrainer
from ml.policy.prompts import chat_text, render_prompt

SCENARIOS = [("Ghana", "ECF", "Revenue administration, including customs"),
             ("Egypt", "EFF", "Public enterprise reform and pricing"), ("Pakistan", "SBA", "Financial sector"),
             ("Ukraine", "EFF", "Central bank operations and reforms")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    settings = get_profile("paper").policy
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                         else tokenizer.eos_token_id)
    started = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config.pad_token_id = config.pad_token_id
    params = model.num_parameters()
    print(f"Llama-2-7B-shaped model: {params / 1e9:.2f}B parameters, built in {time.perf_counter() - started:.0f} s")

    # The paper's prompt through the tokenizer's chat template, as the pipeline's prompt records have it.
    prompts = [{"prompt_text": chat_text(tokenizer, render_prompt(*SCENARIOS[i % len(SCENARIOS)]))}
               for i in range(256)]
    ppo = replace(PPOConfig.for_policy(settings, seed=0), steps=args.steps, eval_every=0, checkpoint_every=0)

    def answer_length(_records: list[dict], answers: list[str]) -> list[float]:
        return [min(len(a.split()), 40) / 40 for a in answers]

    trainer = PPOTrainer(apply_lora(model, settings), tokenizer, ppo, answer_length, prompts, progress=print)
    history = trainer.train().history
    peak = matmul_peak_flops(size=8192, dtype=torch.bfloat16, device="cuda")
    timed = history[1:] if len(history) > 1 else history  # the first step pays CUDA warm-up
    mean = lambda key: sum(s[key] for s in timed) / len(timed)  # noqa: E731
    update_tps = mean("tokens_per_s_update")
    result = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "parameters": params,
        "batch_size": ppo.batch_size, "mini_batch_size": ppo.mini_batch_size, "ppo_epochs": ppo.ppo_epochs,
        "max_new_tokens": ppo.max_new_tokens, "steps_timed": len(timed),
        "step_seconds": mean("step_seconds"), "rollout_tokens_per_s": mean("tokens_per_s_rollout"),
        "update_tokens_per_s": update_tps, "bf16_matmul_peak_tflops": peak / 1e12,
        "update_mfu": 6 * params * update_tps / peak,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
