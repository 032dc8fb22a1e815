"""`RewardModel`: the trained classifier as PPO's reward function, calibrated P(MET) per condition.

Scoring builds each text with `reward_input_text`, the paper's training-sample format, so a policy
answer is scored exactly as the corpus was trained. It must be cheap inside a PPO loop: no autograd,
texts grouped by token length so a batch pads to similar lengths (results come back in input order),
truncation at the training `max_length`. A BERT classifier reads only the [CLS] position's last
hidden state (through its pooler), so scoring runs the last layer's query, attention output and
feed-forward for that one position (`_last_layer_for_cls_only`): the same logits, ~14% fewer FLOPs.

A saved model is a plain folder: `model.safetensors` + `config.json` + tokenizer files (what
`save_pretrained` writes) and `reward_meta.json` (temperature, max_length, label order, text format,
and the precision it was evaluated in, which loading keeps so that it scores as it was measured).
Loading reads safetensors only; no pickle is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import MethodType

import numpy as np
import pandas as pd
import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertLayer, eager_attention_forward

from ml.data.text import reward_input_text
from ml.device import resolve_device, resolve_dtype
from ml.reward.calibration import positive_probability
from ml.reward.encoder import LABELS, autocast_dtype, pad_batch, tokenize

# `_cls_only_layer_forward` re-implements `BertLayer.forward` from transformers' internals; it was
# checked against this release (requirements.lock pins it) and runs only under it. Another release gets
# the full forward until tests/unit/test_reward.py's exactness tests pass on it and this line moves.
CLS_ONLY_CHECKED_TRANSFORMERS = "5.24.0"

META_FILE = "reward_meta.json"
META_VERSION = 1
# The training-sample format with its fields as placeholders; a saved model records the format it
# learned, and loading refuses a model trained on another one.
TEXT_FORMAT = reward_input_text("{country}", "{arrangement_type}", "{economic_area}", "{description}")
TEXT_FIELDS = ("country", "arrangement_type", "economic_area", "description")

Rows = pd.DataFrame | Iterable[Mapping[str, object]]


class RewardModel:
    """Calibrated P(MET) from a BERT sequence classifier (logit index 1 = MET)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, temperature: float = 1.0,
                 max_length: int = 128, batch_size: int = 64, device: str = "auto", dtype: str = "float32"):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.temperature = float(temperature)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.dtype = resolve_dtype(dtype, self.device)
        self._autocast = autocast_dtype(self.dtype)

    # ----------------------------------------------------------------------------- scoring

    def score(self, rows: Rows, batch_size: int | None = None) -> np.ndarray:
        """Calibrated P(MET) per row (DataFrame or mappings with the four TEXT_FIELDS); missing,
        empty or NaN fields are written as the format's "Unknown", unknown values are scored as text."""
        return self.score_texts(texts_for_rows(rows), batch_size)

    def score_texts(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Calibrated P(MET) per text already in the training-sample format, in input order."""
        return positive_probability(self.logits(texts, batch_size), self.temperature)

    def logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Uncalibrated (N, 2) logits, in input order; batches are formed over length-sorted texts."""
        sequences = tokenize(self.tokenizer, list(texts), self.max_length)
        out = np.zeros((len(sequences), len(LABELS)), dtype=np.float32)
        order = np.argsort([len(s) for s in sequences], kind="stable")
        size = batch_size or self.batch_size
        with torch.inference_mode(), self._precision(), _last_layer_for_cls_only(self.model):
            for start in range(0, len(order), size):
                chosen = order[start:start + size]
                batch = pad_batch([sequences[i] for i in chosen], self.tokenizer.pad_token_id)
                batch = {key: value.to(self.device) for key, value in batch.items()}
                out[chosen] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def _precision(self):
        if self._autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast)

    # ----------------------------------------------------------------------------- persistence

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        meta = {"version": META_VERSION, "temperature": self.temperature, "max_length": self.max_length,
                "labels": list(LABELS), "positive_label": LABELS[1], "text_format": TEXT_FORMAT,
                "dtype": self.dtype}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path, batch_size: int = 64, device: str = "auto", dtype: str | None = None) -> RewardModel:
        """The model saved in `folder`; `dtype` None = the precision it was saved (and evaluated) in."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} is missing: {folder} is not a saved reward model")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("text_format") != TEXT_FORMAT or tuple(meta.get("labels", ())) != LABELS:
            raise ValueError(f"reward model in {folder} was trained on text format {meta.get('text_format')!r} "
                             f"with labels {meta.get('labels')}; this code scores {TEXT_FORMAT!r} with {LABELS}")
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(for_scoring(model, resolve_device(device)), tokenizer, temperature=meta["temperature"],
                   max_length=meta["max_length"], batch_size=batch_size, device=device,
                   dtype=dtype or meta.get("dtype", "float32"))


def for_scoring(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """`model`, set up for scoring only (not for a model still in training, whose attention kernel stays
    as it was trained): the texts are a few dozen tokens, and on CPU plain matmul attention beats the
    fused SDPA kernel, built for long sequences, by ~6% texts/s on MiniLM; on GPU the fused kernel wins."""
    if device.type == "cpu":
        model.set_attn_implementation("eager")
    return model


@contextmanager
def _last_layer_for_cls_only(model: PreTrainedModel):
    """While scoring, the last encoder layer of a BERT classifier computes only the [CLS] position,
    the one its pooler reads; any other model runs its full forward. Exact: each position's query,
    attention output and feed-forward depend on no other position once keys and values are known."""
    config = model.config
    if not (transformers.__version__ == CLS_ONLY_CHECKED_TRANSFORMERS
            and isinstance(model, BertForSequenceClassification) and model.bert.pooler is not None
            and not config.is_decoder and config._attn_implementation in ("eager", "sdpa")):
        yield
        return
    last = model.bert.encoder.layer[-1]
    last.forward = MethodType(_cls_only_layer_forward, last)  # on the instance: weights and saving untouched
    try:
        yield
    finally:
        del last.forward


def _cls_only_layer_forward(layer: BertLayer, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            *args, **kwargs) -> torch.Tensor:
    """`BertLayer.forward` for position 0 only: (B, T, H) -> (B, 1, H)."""
    attention = layer.attention.self
    batch = hidden_states.shape[0]
    cls = hidden_states[:, :1]

    def heads(states: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, heads, T, head size)
        return states.view(batch, states.shape[1], -1, attention.attention_head_size).transpose(1, 2)

    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :1, :]  # the [CLS] query's row (a broadcast row stays one)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = attend(attention, heads(attention.query(cls)), heads(attention.key(hidden_states)),
                        heads(attention.value(hidden_states)), attention_mask, dropout=0.0, scaling=attention.scaling)
    attended = layer.attention.output(context.reshape(batch, 1, -1), cls)
    return layer.feed_forward_chunk(attended)


def texts_for_rows(rows: Rows) -> list[str]:
    """The training-sample text of each row, via `reward_input_text`."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.reindex(columns=list(TEXT_FIELDS)).to_dict("records")  # absent columns read as missing
    return [reward_input_text(*(_present(record.get(field)) for field in TEXT_FIELDS)) for record in rows]


def _present(value: object) -> str | None:
    """The value as text, or None when missing (None, NaN, pd.NA), which the format writes "Unknown"."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return str(value)
