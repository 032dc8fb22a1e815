"""Where a model runs and in what precision: the one reading of a profile's `device` and `dtype` settings,
shared by the reward model and the policy."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" = the GPU when there is one; anything else is passed to torch as is."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """"auto" = "bfloat16" where the hardware computes it natively (a CUDA GPU with bf16; an x86 CPU
    with AVX512-BF16 or AMX, where a bf16 matmul runs about twice as fast as float32), else "float32".
    Other values are returned as they are."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:  # private helpers, but the only way torch tells whether bf16 is native or emulated
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:
        native = False
    return "bfloat16" if native else "float32"


def named_dtype(name: str) -> torch.dtype:
    """The torch dtype of a concrete name ("float32", "bfloat16", "float16"), with a clear error for an unknown one."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def torch_dtype(dtype: str, device: str | torch.device = "auto") -> torch.dtype:
    """The torch dtype a `dtype` setting means on `device`, "auto" resolved (`resolve_dtype`)."""
    return named_dtype(resolve_dtype(dtype, resolve_device(device)))
