"""What the registered models do once `mlflow.pyfunc.load_model` has loaded them.

- `RewardPyfunc` (`rlxf-reward-model`, `rlxf-gold-reward-model`): a DataFrame of conditions (`country`,
  `arrangement_type`, `economic_area`, `description`) -> `p_met`, the calibrated P(MET). The input-text
  format and the temperature are the saved reward model's (`ml.reward.model.RewardModel`), so a caller
  gets exactly the number training, the evaluation and `rlxf score` use.
- `PolicyPyfunc` (`rlxf-policy-adapter`): a DataFrame of requests (`country`, `arrangement_type`,
  `economic_area`) -> `n` sampled answers per row (params `n`, `seed`, `temperature`), each with the
  proposal cut out of it as RL scored it and whether it ended before the token limit (`complete`). The prompt
  is built as the policy was trained: the paper's question, grounded in the country's record and precedents
  when the profile grounds its prompts (the training split's precedent table is part of the artifact). The
  adapters are in the artifact; the base model is named, not copied, and `ml.policy.base.load_base_policy`
  resolves it on the loading machine.

Runtime choices are the logged `model_config`, overridable at load: `device` for both, and for the
policy `base_model_cache`, where the converted base model is cached (SmolLM2 is converted from its
packaged GGUF on first use there).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from ml.config import PolicySettings
from ml.policy.grounding import Grounding
from ml.policy.prompts import KEY_COLUMNS, answer_to_condition, chat_text, grounded, render_prompt
from ml.policy.sampling import answer_logprobs, decode_answers, generate_batches, least_likely_words
from ml.reward.model import TEXT_FIELDS, RewardModel

# Fields a request may leave out: the reward text and the prompt write them "Unknown" (as `rlxf score`
# without --arrangement or --area does).
OPTIONAL_FIELDS = {"arrangement_type", "economic_area"}
REWARD_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", name, required=name not in OPTIONAL_FIELDS) for name in TEXT_FIELDS]),
    outputs=Schema([ColSpec("double", "p_met")]))
POLICY_OUTPUT = Schema([ColSpec("long", "input_row"), ColSpec("long", "sample"), ColSpec("string", "proposal"),
                        ColSpec("string", "answer"), ColSpec("boolean", "complete"),
                        ColSpec("string", "least_likely_word"), ColSpec("double", "least_likely_logprob")])


def policy_signature(temperature: float) -> ModelSignature:
    """The policy's signature; `temperature` defaults to the one it was trained and evaluated at."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", name, required=name != "arrangement_type") for name in KEY_COLUMNS]),
        outputs=POLICY_OUTPUT,
        params=ParamSchema([ParamSpec("n", "long", 1), ParamSpec("seed", "long", 0),
                            ParamSpec("temperature", "double", float(temperature)),
                            ParamSpec("precedent_draws", "long", 1)]))


class RewardPyfunc(mlflow.pyfunc.PythonModel):
    """Calibrated P(MET) of conditions from a saved `RewardModel` (artifact `reward_model`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.reward_model = RewardModel.load(Path(context.artifacts["reward_model"]),
                                             device=context.model_config.get("device", "auto"))

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        return pd.DataFrame({"p_met": self.reward_model.score(model_input)})


class PolicyPyfunc(mlflow.pyfunc.PythonModel):
    """Proposals from a policy stack (artifact `policy`: base model name and adapters), generated as it
    was trained (artifact `generation`: precision, prompt and answer lengths, temperature, grounding),
    with its precedent table (artifact `precedents`, when its prompts were grounded)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here: ml.policy.pipeline registers its policies through ml.serving.
        from ml.policy.pipeline import load_policy

        generation = json.loads(Path(context.artifacts["generation"]).read_text(encoding="utf-8"))
        self.settings = PolicySettings(**generation["settings"], device=context.model_config.get("device", "auto"))
        self.model, self.tokenizer = load_policy(Path(context.artifacts["policy"]), self.settings,
                                                 Path(context.model_config["base_model_cache"]))
        precedents = context.artifacts.get("precedents")
        self.grounding = (Grounding(pd.read_parquet(precedents), n_precedents=self.settings.grounding_precedents,
                                    seed=generation["grounding_seed"]) if precedents else None)

    def prompt(self, country: str | None, arrangement_type: str | None, economic_area: str | None,
               draw: int = 0) -> str:
        """The question as the policy was trained on it (with the record and precedents if grounded;
        `draw` > 0 shows another draw of the precedents)."""
        return grounded(render_prompt(country, arrangement_type, economic_area), country, economic_area,
                        self.grounding, draw=draw)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        """`n` answers per row. With `precedent_draws` d > 1 (grounded policies), the n answers of a row
        are split over d prompts that show different draws of the precedents (the first the trained one),
        so that they start from different parts of the record instead of all from the same precedent.
        Each answer comes with whether it ended within the token budget (`complete`) and its least likely
        token's log-probability at the sampling temperature, with the word around it (`least_likely_*`)."""
        params = params or {}
        n, seed = int(params.get("n", 1)), int(params.get("seed", 0))
        temperature = float(params.get("temperature", self.settings.temperature))
        draws = max(1, min(int(params.get("precedent_draws", 1)), n)) if self.grounding is not None else 1
        requests = model_input.reindex(columns=KEY_COLUMNS).astype(object)
        requests = requests.where(requests.notna(), None)  # a missing field is "Unknown" in the prompt
        frames = []
        for draw, samples in enumerate(np.array_split(np.arange(n), draws)):
            texts = [chat_text(self.tokenizer, self.prompt(*row, draw=draw))
                     for row in requests.itertuples(index=False)]
            batches = generate_batches(self.model, self.tokenizer, texts, max_new_tokens=self.settings.max_new_tokens,
                                       temperature=temperature, n_per_prompt=len(samples), seed=seed + draw,
                                       max_prompt_tokens=self.settings.max_prompt_tokens, keep_prefill=True)
            answers = decode_answers(self.tokenizer, batches)
            # Each answer's least likely token, at the temperature it was drawn at: a slip of sampling.
            token_logprobs = answer_logprobs(self.model, batches, temperature, prompts_sampled_by_model=batches)
            least = least_likely_words(self.tokenizer, batches, token_logprobs)
            complete = (np.concatenate([b.answers.has_eos.cpu().numpy() for b in batches]) if batches
                        else np.zeros(0, bool))
            frames.append(pd.DataFrame({"input_row": np.repeat(np.arange(len(texts)), len(samples)),
                                        "sample": np.tile(samples, len(texts)),
                                        "proposal": [answer_to_condition(answer) for answer in answers],
                                        "answer": answers, "complete": complete.astype(bool),
                                        "least_likely_word": [word for word, _ in least],
                                        "least_likely_logprob": [logprob for _, logprob in least]}))
        return pd.concat(frames).sort_values(["input_row", "sample"], kind="stable").reset_index(drop=True)
