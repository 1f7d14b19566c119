"""Precision: the dtype each part runs in, and the casts where parts of different dtypes meet.

`auto` (the default of `model.dtype` and `sampling.dtype`) is float16 on CUDA and float32
elsewhere: CPUs run float16 many times slower than float32. Trained components always keep
float32 weights (`train.mixed_precision` adds autocast); frozen ones and the VAE use
`model.dtype`, so a stage may pair a float32 UNet with a float16 text encoder or the reverse.
"""

from __future__ import annotations

import copy

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def predict_noise(unet, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning, time_ids=None) -> torch.Tensor:
    """The UNet's prediction in float32, its inputs cast to the UNet's dtype (a float16 frozen
    UNet may be fed by a float32 text encoder, and the latents are float32). `conditioning`: a
    burnlab.models.encoding.Conditioning; SDXL's UNet also reads its pooled vector and the
    images' `time_ids` (size and crop)."""
    dtype = model_dtype(unet)
    added = None
    if conditioning.pooled is not None:
        added = {"text_embeds": conditioning.pooled.to(dtype), "time_ids": time_ids.to(noisy.device, dtype)}
    return unet(noisy.to(dtype), timesteps, conditioning.states.to(dtype), added_cond_kwargs=added).sample.float()


def in_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` itself when it already has `dtype`, else a copy in `dtype` (the original, which
    may be training, keeps its weights exactly)."""
    if model_dtype(model) == dtype:
        return model
    return copy.deepcopy(model).to(dtype)
