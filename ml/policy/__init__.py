"""The policy side of RLXF: the LLaMA-architecture causal LM, its prompts, generation and LoRA tuning.

`base` loads the base model offline (tiny random Llama, packaged SmolLM2 GGUF cached as safetensors,
or a local/hub-cached checkpoint), `prompts` renders the paper's prompt template per (country,
arrangement, area), `generate` samples answers, `sft` warm-starts a LoRA adapter on historically MET
conditions and `grpo` / `ppo` tune it against the reward model's P(MET).
"""
