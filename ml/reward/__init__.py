"""The reward model: a BERT classifier whose calibrated P(MET) is PPO's reward.

`train_reward_model` fine-tunes it (and `split_train_halves` gives the proxy and gold models
disjoint data), `RewardModel` saves, loads and scores it, `evaluate_reward_model` measures it on the
test split against baselines, `save_plots` draws the figures.
"""

from ml.reward.calibration import expected_calibration_error, fit_temperature, reliability_curve
from ml.reward.encoder import (
    LABELS,
    PACKAGED_MINILM,
    TINY_BERT,
    EncoderInfo,
    EncoderUnavailableError,
    describe_encoder,
    load_encoder,
)
from ml.reward.evaluate import RewardEvaluation, classification_metrics, evaluate_reward_model
from ml.reward.model import RewardModel, texts_for_rows
from ml.reward.plots import save_plots
from ml.reward.train import TrainedReward, split_train_halves, train_reward_model

__all__ = [
    "LABELS",
    "PACKAGED_MINILM",
    "TINY_BERT",
    "EncoderInfo",
    "EncoderUnavailableError",
    "RewardEvaluation",
    "RewardModel",
    "TrainedReward",
    "classification_metrics",
    "describe_encoder",
    "evaluate_reward_model",
    "expected_calibration_error",
    "fit_temperature",
    "load_encoder",
    "reliability_curve",
    "save_plots",
    "split_train_halves",
    "texts_for_rows",
    "train_reward_model",
]
