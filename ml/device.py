"""Where a model runs: the one reading of a profile's `device` setting, shared by the reward model and the policy."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """"auto" = the GPU when there is one; anything else is passed to torch as is."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
