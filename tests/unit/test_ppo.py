"""PPO on a tiny random Llama with a LoRA adapter and a toy reward: the math helpers against plain
references, the invariants at step 0, that training raises the reward while only LoRA and the value
head move, checkpoint/resume determinism, the KL controller and the answer penalties."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ml.policy.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PolicyWithValueHead,
    PPOConfig,
    PPOTrainer,
    apply_answer_penalties,
    compute_gae,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    truncate_after_eos,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "<s>", "</s>"]
WORDS = ("met not partly delayed the program condition fiscal tax revenue reform budget deficit "
         "central bank law adopt measure country area policy debt arrears audit wage").split()
PROMPTS = [
    {"prompt_text": text, "country": country, "area": area}
    for text, country, area in [
        ("the program condition fiscal", "Kenya", "fiscal"),
        ("central bank law", "Peru", "central bank"),
        ("tax revenue reform", "Ghana", "tax"),
        ("budget deficit measure", "Chile", "fiscal"),
        ("country area policy", "Egypt", "other"),
        ("debt arrears audit", "Nepal", "debt"),
        ("wage policy reform", "Benin", "wage"),
        ("adopt the budget law", "Haiti", "fiscal"),
    ]
]
# The settings under which PPO reliably learns the toy task in a few dozen steps: a high learning
# rate suits a rank-4 adapter, six-token answers keep rollouts cheap, and a small fixed KL
# coefficient without penalties leaves the score as the only strong signal.
LEARNING = dict(batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=3e-2, max_new_tokens=6,
                init_kl_coef=0.01, target_kl=None, early_stop_kl=None, empty_answer_penalty=0.0,
                truncated_answer_penalty=0.0, checkpoint_every=0, eval_every=0, seed=0)
# Tiny models' matmuls are too small to split across threads (tests/conftest.py); peft 0.21 reads a
# property that transformers 5 deprecated, not ours to fix.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]
TIMING_STATS = {"tokens_per_s_rollout", "tokens_per_s_update", "step_seconds"}
STAT_NAMES = {"reward_mean", "reward_std", "score_mean", "kl", "kl_coef", "entropy", "policy_loss", "value_loss",
              "clipfrac", "approx_kl", "explained_variance", "answer_length", "truncated_share",
              "tokens_per_s_rollout", "tokens_per_s_update", "step_seconds"}


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="[PAD]", unk_token="[UNK]")


def make_policy(tokenizer: PreTrainedTokenizerFast, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A fresh 2-layer Llama (weights in `dtype`) with a LoRA adapter on q_proj/v_proj; identical for the
    same seed."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        # The frozen lm_head caps a logit at |w_token| * |h|; at the default 0.02 init no adapter can
        # make any token likelier than ~6%, so the toy task would be unlearnable.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):  # LoRA's A matrices are random too: seed them with the base
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return get_peft_model(model, lora)


def met_share(records: list[dict], answers: list[str]) -> list[float]:
    """Toy reward: the share of 'met' among the answer's words (0 for an empty answer)."""
    assert all("country" in record for record in records)  # the caller's metadata reaches the reward
    return [answer.split().count("met") / len(answer.split()) if answer.split() else 0.0 for answer in answers]


def make_trainer(tokenizer, checkpoint_dir=None, reward_fn=met_share, dtype=torch.float32, **overrides) -> PPOTrainer:
    config = PPOConfig(**{**LEARNING, **overrides})
    return PPOTrainer(make_policy(tokenizer, dtype=dtype), tokenizer, config, reward_fn, PROMPTS,
                      checkpoint_dir=checkpoint_dir, progress=lambda line: None)


def deterministic(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in stats.items() if k not in TIMING_STATS} for stats in history]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def trained(tokenizer):
    """One 30-step toy run shared by the tests that inspect a trained policy."""
    trainer = make_trainer(tokenizer, steps=30)
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    lines: list[str] = []
    trainer.progress = lines.append
    result = trainer.train()
    return trainer, result, initial, lines


# ---- pure helpers ------------------------------------------------------------------------------------


def test_masked_helpers_equal_unmasked_references_on_masked_in_elements():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 7, generator=generator)
    mask = (torch.rand(4, 7, generator=generator) > 0.4).float()
    mask[:, 0] = 1  # every row keeps at least one element
    kept = values[mask.bool()]

    assert masked_mean(values, mask) == pytest.approx(kept.mean().item(), abs=1e-6)
    row_means = torch.stack([values[i][mask[i].bool()].mean() for i in range(4)])
    assert torch.allclose(masked_mean(values, mask, axis=1), row_means, atol=1e-6)
    assert masked_var(values, mask) == pytest.approx(kept.var(unbiased=True).item(), abs=1e-6)
    assert masked_var(values, mask, unbiased=False) == pytest.approx(kept.var(unbiased=False).item(), abs=1e-6)
    whitened = masked_whiten(values, mask)[mask.bool()]
    assert torch.allclose(whitened, (kept - kept.mean()) / kept.std(), atol=1e-5)
    kept_mean = masked_whiten(values, mask, shift_mean=False)[mask.bool()]
    assert torch.allclose(kept_mean, (kept - kept.mean()) / kept.std() + kept.mean(), atol=1e-5)


def test_logprob_and_entropy_helpers_equal_categorical():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.randint(11, (2, 5), generator=generator)
    reference = torch.distributions.Categorical(logits=logits)
    assert torch.allclose(logprobs_from_logits(logits, labels), reference.log_prob(labels), atol=1e-6)
    assert torch.allclose(entropy_from_logits(logits), reference.entropy(), atol=1e-5)


def test_compute_gae_matches_hand_computed_example():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2 ends after two tokens
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 1: δ2 = 2 - 1.5 = 0.5; δ1 = 0 + 0.9*1.5 - 1 = 0.35, A1 = 0.35 + 0.72*0.5 = 0.71;
    #        δ0 = 1 + 0.9*1 - 0.5 = 1.4, A0 = 1.4 + 0.72*0.71 = 1.9112.
    # Row 2: the episode ends at t=1, so V(s_2) counts as 0 and t=2 is ignored:
    #        δ1 = 2 - 1 = 1, A1 = 1; δ0 = 1.4, A0 = 1.4 + 0.72*1 = 2.12.
    assert torch.allclose(advantages, torch.tensor([[1.9112, 0.71, 0.5], [2.12, 1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[2.4112, 1.71, 2.0], [2.62, 2.0, 0.0]]), atol=1e-6)


def test_truncate_after_eos_keeps_the_first_eos_and_pads_the_rest():
    eos, pad = 3, 0
    raw = torch.tensor([[5, 6, eos, 7, eos], [eos, 8, 9, 9, 9], [5, 5, 5, 5, 5]])
    responses, mask, has_eos = truncate_after_eos(raw, [eos], pad)
    assert responses.tolist() == [[5, 6, eos, pad, pad], [eos, pad, pad, pad, pad], [5, 5, 5, 5, 5]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False]


def test_adaptive_kl_controller_moves_coefficient_toward_the_target():
    above = AdaptiveKLController(init_kl_coef=0.1, target=1.0, horizon=10)
    above.update(current_kl=10.0, n_steps=10)  # error clipped to +0.2: β *= 1 + 0.2 * 10/10
    assert above.kl_coef == pytest.approx(0.12)
    below = AdaptiveKLController(init_kl_coef=0.1, target=1.0, horizon=10)
    below.update(current_kl=0.0, n_steps=10)  # error clipped to -0.2
    assert below.kl_coef == pytest.approx(0.08)
    slight = AdaptiveKLController(init_kl_coef=0.1, target=1.0, horizon=100)
    slight.update(current_kl=1.1, n_steps=10)  # unclipped: β *= 1 + 0.1 * 10/100
    assert slight.kl_coef == pytest.approx(0.101)
    fixed = FixedKLController(0.1)
    fixed.update(current_kl=10.0, n_steps=10)
    assert fixed.kl_coef == 0.1


def test_apply_answer_penalties_subtracts_each_configured_penalty():
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    is_empty = torch.tensor([True, False, False, True])
    is_truncated = torch.tensor([False, True, False, True])
    penalised = apply_answer_penalties(scores, is_empty, is_truncated, empty_answer_penalty=1.0,
                                       truncated_answer_penalty=0.25)
    assert penalised.tolist() == [-0.5, 0.25, 0.5, -0.75]


# ---- the trainer -------------------------------------------------------------------------------------


def test_rollout_penalises_empty_and_truncated_answers(tokenizer, monkeypatch):
    from ml.policy.sampling import Answers

    trainer = make_trainer(tokenizer, steps=1, batch_size=3, mini_batch_size=3, max_new_tokens=4,
                           reward_fn=lambda records, answers: [0.5] * len(answers),
                           reward_normalization=False, empty_answer_penalty=1.0, truncated_answer_penalty=0.25)
    eos, pad, met, tax = (tokenizer.convert_tokens_to_ids(t) for t in ("</s>", "[PAD]", "met", "tax"))
    generated = torch.tensor([[eos, pad, pad, pad],  # empty answer
                              [tax, met, tax, met],  # no EOS within max_new_tokens: truncated
                              [met, eos, pad, pad]])  # a proper one-word answer

    def fake_generate(prompts, do_sample=True, uniforms=None, keep_prefill=False):
        encoded = tokenizer([p["prompt_text"] for p in prompts], padding=True, padding_side="left",
                            return_tensors="pt")
        # No prompt pass kept: the rollout runs the prompts itself.
        return encoded["input_ids"], encoded["attention_mask"], Answers(generated, torch.ones_like(generated),
                                                                        torch.ones(3, dtype=torch.bool), 1)

    monkeypatch.setattr(trainer, "generate", fake_generate)
    rollout = trainer.rollout(PROMPTS[:3])
    assert rollout.answers == ["", "tax met tax met", "met"]
    assert rollout.is_empty.tolist() == [True, False, False]
    assert rollout.is_truncated.tolist() == [False, True, False]
    assert rollout.raw_scores.tolist() == [0.5, 0.5, 0.5]
    assert rollout.scores.tolist() == [-0.5, 0.25, 0.5]
    assert rollout.response_mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert rollout.is_floored.tolist() == [False, False, False]  # a plain reward function floors nothing


class FloorsEveryOther:
    """A reward with a floor rule, as `RLReward` has; the rule floors every other answer, so the share it
    floors does not depend on what the untrained policy happens to sample on a given CPU."""

    def __call__(self, records, answers):
        self.last_floored = np.arange(len(answers)) % 2 == 0
        return [0.0 if floored else 1.0 for floored in self.last_floored]


def test_each_step_logs_the_share_of_answers_the_rewards_floor_rules_floored(tokenizer):
    trainer = make_trainer(tokenizer, steps=1, reward_fn=FloorsEveryOther())
    stats = trainer.step()
    assert stats["floored_share"] == pytest.approx(np.mean(trainer.reward_fn.last_floored))
    assert stats["floored_share"] == pytest.approx(0.5)
    assert make_trainer(tokenizer, steps=1).step()["floored_share"] == 0.0


def test_only_lora_and_value_head_are_trainable(tokenizer):
    trainer = make_trainer(tokenizer)
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("value_head.") for name in trainable)
    assert {"value_head.summary.weight", "value_head.summary.bias"} <= trainable
    assert sum(p.numel() for p in trainer.trainable_params) == sum(
        p.numel() for name, p in trainer.model.named_parameters() if name in trainable)


def test_step_zero_policy_equals_reference_and_ratio_is_one(tokenizer):
    trainer = make_trainer(tokenizer, steps=1)
    stats = trainer.train().history[0]
    assert abs(stats["kl"]) < 1e-5  # LoRA's B starts at zero: adapter on == adapter off
    assert stats["ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6)  # π_θ = π_old before updating
    assert stats["kl_coef"] == LEARNING["init_kl_coef"]
    assert STAT_NAMES <= stats.keys()


def test_ppo_raises_the_toy_reward(trained):
    _, result, _, lines = trained
    scores = [stats["score_mean"] for stats in result.history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.3, f"reward curve: {[round(s, 2) for s in scores]}"
    assert result.history[-1]["kl"] > 1.0  # the policy moved away from the reference to get there
    assert result.final_step == 30 and len(result.history) == 30
    assert re.fullmatch(r"step 30/30 reward \d\.\d\d±\d\.\d\d kl -?[\d.]+ ent [\d.]+ pl -?[\d.]+ vl [\d.]+ "
                        r"clip [\d.]+ len \d+ ETA \d+s", lines[-1]), lines[-1]


def test_a_bfloat16_base_trains_float32_adapters_and_raises_the_toy_reward(tokenizer):
    # The demo's policy on a CPU with native bf16 ("auto"): frozen weights in bf16; the adapter, the value
    # head and every log-prob in float32, so the update is as exact as the bf16 forward allows.
    trainer = make_trainer(tokenizer, dtype=torch.bfloat16, steps=30)
    assert {p.dtype for p in trainer.trainable_params} == {torch.float32}
    history = trainer.train().history
    assert history[0]["ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-3)
    scores = [stats["score_mean"] for stats in history]
    assert sum(scores[-5:]) / 5 > sum(scores[:5]) / 5 + 0.3, f"reward curve: {[round(s, 2) for s in scores]}"


def test_only_lora_and_value_head_weights_change(trained, tokenizer):
    trainer, _, initial, _ = trained
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, initial[name])}
    assert changed, "training changed nothing"
    assert all("lora_" in name or name.startswith("value_head.") for name in changed), sorted(changed)
    assert any(name.startswith("value_head.") for name in changed)
    assert any("lora_B" in name for name in changed)
    # The reference (adapter off) is still exactly the untrained base: a fresh model with the same
    # seed, whose zero-initialised adapter makes it the base, gives the same logprobs.
    fresh = PolicyWithValueHead(make_policy(tokenizer)).eval()
    queries = tokenizer(["central bank law"], return_tensors="pt")
    responses = torch.tensor([[tokenizer.convert_tokens_to_ids("met")] * 3])
    args = (queries["input_ids"], queries["attention_mask"], responses, torch.ones_like(responses), 1.0)
    assert torch.equal(trainer.model.reference_logprobs(*args), fresh.response_outputs(*args)[0])
    assert not torch.allclose(trainer.model.response_outputs(*args)[0], fresh.response_outputs(*args)[0])


def test_early_stop_on_approx_kl_ends_the_epochs(tokenizer):
    # Any update makes approx_kl of the next minibatch positive, so a tiny threshold allows exactly one.
    trainer = make_trainer(tokenizer, steps=1, early_stop_kl=1e-12)
    stats = trainer.train().history[0]
    assert stats["ppo_updates"] == 1.0
    full = make_trainer(tokenizer, steps=1).train().history[0]
    assert full["ppo_updates"] == LEARNING["ppo_epochs"] * LEARNING["batch_size"] / LEARNING["mini_batch_size"]


def test_a_time_budget_stops_training_only_after_the_minimum_steps(tokenizer):
    # A budget every step overruns: one step without a floor, `min_steps` with one, never over `steps`.
    assert make_trainer(tokenizer, steps=4, max_seconds=1e-9).train().final_step == 1
    assert make_trainer(tokenizer, steps=4, max_seconds=1e-9, min_steps=3).train().final_step == 3
    assert make_trainer(tokenizer, steps=2, max_seconds=1e-9, min_steps=3).train().final_step == 2
    with pytest.raises(ValueError, match="min_steps"):
        PPOConfig(min_steps=-1)


def test_resume_continues_exactly_like_a_straight_run(tokenizer, tmp_path):
    small = dict(batch_size=8, mini_batch_size=4, target_kl=1.0, kl_horizon=100, reward_normalization=True)
    straight = make_trainer(tokenizer, steps=4, **small).train()

    first = make_trainer(tokenizer, checkpoint_dir=tmp_path, steps=2, checkpoint_every=2, **small).train()
    last = tmp_path / "last"
    assert first.last_checkpoint == last
    for name in ("adapter/adapter_model.safetensors", "value_head.safetensors", "optimizer.pt",
                 "rng_state.pt", "state.json"):
        assert (last / name).is_file(), name
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary folder left behind
    assert json.loads((last / "state.json").read_text())["step"] == 2

    resumed_trainer = make_trainer(tokenizer, checkpoint_dir=tmp_path, steps=4, checkpoint_every=2, **small)
    messages: list[str] = []
    resumed_trainer.progress = messages.append
    resumed = resumed_trainer.train()
    assert messages[0].startswith("resumed from") and "at step 2/4" in messages[0]
    assert resumed.final_step == 4 and [s["step"] for s in resumed.history] == [1, 2, 3, 4]
    # Same weights, optimizer moments, KL coefficient, reward statistics and RNG: identical steps 3-4.
    assert deterministic(resumed.history) == deterministic(straight.history)
    assert resumed.history[2]["kl_coef"] != LEARNING["init_kl_coef"]  # the controller state was restored


def test_evaluation_keeps_best_checkpoint_and_does_not_disturb_training(tokenizer, tmp_path):
    gold = {0: 0.1, 2: 0.6, 4: 0.3}

    def evaluate(trainer: PPOTrainer, step: int) -> dict:
        answers = trainer.generate_answers(PROMPTS[:2])  # consumes RNG; training must not notice
        return {"judged_reward": gold[step], "proxy_p_met": sum(met_share(PROMPTS[:2], answers)) / 2}

    small = dict(batch_size=8, mini_batch_size=4, steps=4, eval_every=2)
    trainer = make_trainer(tokenizer, checkpoint_dir=tmp_path, **small)
    trainer.evaluate = evaluate
    logged: list[int] = []
    trainer.log_metrics = lambda stats, step: logged.append(step)
    result = trainer.train()
    assert logged == [1, 2, 3, 4]
    assert [e["step"] for e in result.eval_history] == [0, 2, 4]
    assert (result.best_step, result.best_metric) == (2, 0.6)
    assert result.best_checkpoint == tmp_path / "best"
    assert (tmp_path / "best" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "best" / "state.json").read_text())["step"] == 2

    without_evaluation = make_trainer(tokenizer, **small).train()
    assert deterministic(result.history) == deterministic(without_evaluation.history)


def test_kl_budget_keeps_an_over_budget_peak_from_becoming_best(tokenizer, tmp_path):
    gold = {0: 0.1, 2: 0.3, 4: 0.9}
    small = dict(batch_size=8, mini_batch_size=4, steps=4, eval_every=2)
    free = make_trainer(tokenizer, **small)
    free.evaluate = lambda trainer, step: {"judged_reward": gold[step]}
    history = free.train().history
    kl_steps_3_4 = (history[2]["kl"] + history[3]["kl"]) / 2
    # A budget below the KL of steps 3-4 (and above that of steps 1-2) rules out the step-4 peak.
    budget = (kl_steps_3_4 + max(row["kl"] for row in history[:2])) / 2
    assert kl_steps_3_4 > budget
    capped = make_trainer(tokenizer, checkpoint_dir=tmp_path, best_max_kl=budget, **small)
    capped.evaluate = lambda trainer, step: {"judged_reward": gold[step]}
    messages: list[str] = []
    capped.progress = messages.append
    result = capped.train()
    assert (result.best_step, result.best_metric) == (2, 0.3)
    assert any("over the budget" in m for m in messages)


def test_resume_reads_the_previous_checkpoint_when_a_save_was_cut_between_renames(tokenizer, tmp_path):
    small = dict(batch_size=8, mini_batch_size=4, checkpoint_every=1)
    make_trainer(tokenizer, checkpoint_dir=tmp_path, steps=1, **small).train()
    (tmp_path / "last").rename(tmp_path / "last.old")  # the state between the two renames of a save
    resumed = make_trainer(tokenizer, checkpoint_dir=tmp_path, steps=2, **small).train()
    assert [s["step"] for s in resumed.history] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_scoring_from_the_prompt_pass_a_network_kept_when_it_sampled_equals_a_fresh_pass(tokenizer):
    """The evaluation scores every policy's answers with the base, starting from the prompt passes the
    base kept when it answered the same prompts: the same log-probabilities as the base's fresh pass."""
    from ml.policy.sampling import answer_logprob_sums, generate_batches

    trainer = make_trainer(tokenizer, steps=2, temperature=0.7, answers_per_prompt=2, batch_size=4,
                           mini_batch_size=2)
    trainer.train()  # the adapter's network and the base now differ
    texts = [p["prompt_text"] for p in PROMPTS[:4]]
    sampling = {"max_new_tokens": 6, "temperature": 0.7, "n_per_prompt": 2, "batch_size": 2, "keep_prefill": True}
    tuned = generate_batches(trainer.policy, tokenizer, texts, seed=3, **sampling)
    tuned_lp = answer_logprob_sums(trainer.policy, tuned, 0.7, prompts_sampled_by_model=tuned)
    with trainer.policy.disable_adapter():
        own = generate_batches(trainer.policy, tokenizer, texts, seed=4, **sampling)
        fresh = answer_logprob_sums(trainer.policy, tuned, 0.7)
        reused = answer_logprob_sums(trainer.policy, tuned, 0.7, prompts_sampled_by_model=own)
        with pytest.raises(ValueError, match="other prompts"):
            answer_logprob_sums(trainer.policy, tuned, 0.7, prompts_sampled_by_model=own[::-1])
    np.testing.assert_allclose(reused, fresh, atol=1e-5)
    assert abs(tuned_lp - fresh).max() > 1e-3  # the base's pass, not the tuned network's


def test_evaluation_kl_equals_the_trainers_kl_on_the_same_samples(tokenizer):
    """One log-probability path (issue #14): the KL the evaluation reports for an answer (policy vs its
    reference, from the generated ids at the sampling temperature) is the KL PPO trained with."""
    from ml.policy.sampling import SampledBatch, answer_logprob_sums, generate_batches

    trainer = make_trainer(tokenizer, steps=3, temperature=0.7, answers_per_prompt=2, batch_size=4,
                           mini_batch_size=2)
    trainer.train()  # move the adapter away from the reference, so the KL is not zero
    texts = [p["prompt_text"] for p in PROMPTS[:4]]
    [batch] = generate_batches(trainer.policy, tokenizer, texts, max_new_tokens=6, temperature=0.7,
                               n_per_prompt=2, seed=3, batch_size=4, keep_prefill=True)
    policy_lp = answer_logprob_sums(trainer.policy, [batch], 0.7, prompts_sampled_by_model=[batch])
    # Starting from the prompt pass sampling kept is running the prompts again, without the cost.
    np.testing.assert_allclose(policy_lp, answer_logprob_sums(trainer.policy, [batch], 0.7), atol=1e-5)
    with trainer.policy.disable_adapter():
        reference_lp = answer_logprob_sums(trainer.policy, [batch], 0.7)
    evaluation_kl = policy_lp - reference_lp

    sample = trainer.generate

    def same_answers(prompts, do_sample=True, uniforms=None, keep_prefill=False):
        # The trainer's own prompt pass (with the states its value head reads), the evaluation's answers.
        queries, query_mask, kept = sample(prompts, uniforms=uniforms, keep_prefill=keep_prefill)
        assert torch.equal(queries, batch.prompt_ids) and keep_prefill
        return queries, query_mask, dataclasses.replace(batch.answers, prefill=kept.prefill)

    trainer.generate = same_answers
    rollout = trainer.rollout(PROMPTS[:4])
    trainer_kl = ((rollout.logprobs - rollout.ref_logprobs) * rollout.response_mask).sum(dim=1)
    assert abs(trainer_kl).max() > 1e-3
    np.testing.assert_allclose(evaluation_kl, trainer_kl.numpy(), atol=1e-5)
    # π_old and V_old from the rollout's kept prompt pass are those of a fresh pass over the prompts.
    with torch.no_grad():
        logprobs, _, values = trainer.model.response_outputs(rollout.queries, rollout.query_mask, rollout.responses,
                                                             rollout.response_mask, 0.7)
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.logprobs[mask], logprobs[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.values[mask], values[mask], atol=1e-5, rtol=0)
    assert isinstance(batch, SampledBatch)


def test_sampling_draws_from_the_tempered_distribution_the_logprobs_score(tokenizer):
    """Sampled token frequencies match softmax(logits / T) at the first answer position, and the KV-cache
    shared by a prompt's answers gives the same log-probs as scoring each answer on its own."""
    from ml.policy.sampling import answer_token_stats, encode_prompts, sample_answers

    trainer = make_trainer(tokenizer, steps=1)
    policy = trainer.policy.eval()
    ids, mask = encode_prompts(tokenizer, [PROMPTS[0]["prompt_text"], PROMPTS[1]["prompt_text"]])
    torch.manual_seed(0)
    answers = sample_answers(policy, ids, mask, n_per_prompt=3000, max_new_tokens=1, temperature=0.5,
                             eos_ids=trainer.eos_token_ids, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logits = policy(input_ids=ids, attention_mask=mask).logits[:, -1] / 0.5
    expected = torch.softmax(logits, -1)  # (2, V)
    for prompt in range(2):
        drawn = answers.responses[prompt * 3000:(prompt + 1) * 3000, 0]
        observed = torch.bincount(drawn, minlength=expected.shape[1]).float() / 3000
        assert (observed - expected[prompt]).abs().max() < 0.03
    few = sample_answers(policy, ids, mask, n_per_prompt=2, max_new_tokens=5, temperature=0.5,
                         eos_ids=trainer.eos_token_ids, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        shared = answer_token_stats(policy, ids, mask, few.responses, few.response_mask, 0.5).logprobs
        one_by_one = torch.cat([answer_token_stats(policy, ids[i // 2:i // 2 + 1], mask[i // 2:i // 2 + 1],
                                                   few.responses[i:i + 1], few.response_mask[i:i + 1], 0.5).logprobs
                                for i in range(4)])
    torch.testing.assert_close(shared * few.response_mask, one_by_one * few.response_mask, atol=1e-5, rtol=0)


class CountingReward:
    """A reward with state of its own, like the constraint design's multiplier."""

    def __init__(self):
        self.calls = 0

    def __call__(self, records, answers):
        self.calls += 1
        return met_share(records, answers)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


def test_a_resumed_run_restores_the_rewards_own_state(tokenizer, tmp_path):
    small = dict(batch_size=4, mini_batch_size=2, checkpoint_every=2)
    first = CountingReward()
    make_trainer(tokenizer, checkpoint_dir=tmp_path, steps=2, reward_fn=first, **small).train()
    assert first.calls == 2
    resumed = CountingReward()
    make_trainer(tokenizer, checkpoint_dir=tmp_path, steps=3, reward_fn=resumed, **small).train()
    assert resumed.calls == 3  # 2 restored from the checkpoint + 1 new step


def test_inverse_cdf_sampling_follows_the_probabilities_and_never_draws_a_zero_probability_token():
    from ml.policy.sampling import inverse_cdf_sample

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).repeat(20_000, 1)
    uniforms = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(inverse_cdf_sample(probs, uniforms), minlength=4).float() / 20_000
    assert frequencies[1] == 0
    torch.testing.assert_close(frequencies, probs[0], atol=0.015, rtol=0)
    # u near 1 with a CDF that rounds below 1 still lands on the last token of non-zero probability.
    assert inverse_cdf_sample(torch.tensor([[0.3, 0.6999, 0.0]]), torch.tensor([0.99999994])).item() == 1


def test_answer_streams_depend_on_seed_step_and_index_in_the_global_batch_only():
    """#17: an answer's random numbers are the same whichever process (shard) draws it."""
    from ml.distributed import Distributed
    from ml.policy.sampling import answer_uniforms

    whole = answer_uniforms(seed=0, step=3, first_answer=0, n_answers=8, max_new_tokens=5)
    second_half = answer_uniforms(seed=0, step=3, first_answer=4, n_answers=4, max_new_tokens=5)
    assert torch.equal(whole[4:], second_half)
    assert not torch.equal(answer_uniforms(0, 4, 0, 8, 5), whole)  # a new step draws anew
    assert not torch.equal(answer_uniforms(1, 3, 0, 8, 5), whole)  # and so does another seed
    shards = [Distributed(rank=r, world_size=3, local_rank=r, device=torch.device("cpu")).shard_of(7) for r in range(3)]
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 5), (5, 7)]
