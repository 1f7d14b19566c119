"""Cheap instruments beside the swap corners: how far each component of a tuned model M moved
from a reference R, measured without sampling a single image.

- text encoder: the relative change of its output states (what the UNet attends to) on the
  study's prompts, on unrelated prompts and on the empty prompt (what guidance subtracts). A
  text-encoder burn moves the study prompts' states; collateral damage moves the others too;
- UNet: the relative change of its noise prediction on fixed inputs (seeded noisy latents, R's
  text states of the study prompts) in three timestep ranges: early (noisy, composition), middle
  and late (nearly clean, texture);
- weights: the relative Frobenius distance of each component's weights and of each block's
  (a LoRA checkpoint's fused weights: the adapter's delta).

All are ratios ||M - R|| / ||R||, the same size whatever the number of prompts or blocks. They
explain and gate; the verdict is the swap's (burnlab/analysis/attribution.py).
"""

from __future__ import annotations

from typing import Dict, List

import torch

from burnlab.sampling.sampler import Component

# prompts a style fine-tune has no business changing: the toy world's other subjects, which are
# plain English for a real model too
UNRELATED_PROMPTS = ("a photo of bruno", "a red house", "a green tree", "blue squares")
TIMESTEP_RANGES = 3  # early / middle / late thirds of the noise schedule
TIMESTEPS_PER_RANGE = 3
NOISE_SEED = 0  # the fixed latents the UNet's prediction is compared on


def _module(component: Component, name: str) -> torch.nn.Module:
    """The component in float32; a LoRA checkpoint's adapter merged into its weights."""
    if isinstance(component, torch.nn.Module):
        return component
    model = component.load(name, torch.float32)
    if component.lora:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.merge()
    return model


def _plain_weights(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Its floating-point weights under the plain model's names: a merged adapter's own
    parameters left out, a wrapped layer's `base_layer` level removed."""
    return {
        name.replace(".base_layer.", "."): value
        for name, value in model.state_dict().items()
        if value.is_floating_point() and ".lora_" not in name
    }


def _relative(changed: torch.Tensor, reference: torch.Tensor) -> float:
    return float((changed.double() - reference.double()).norm() / reference.double().norm().clamp_min(1e-12))


def _states(text_encoder: torch.nn.Module, tokenizer, prompts: List[str], device) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    with torch.no_grad():
        return text_encoder(ids)[0].float()


def text_encoder_drift(
    reference: torch.nn.Module, tuned: torch.nn.Module, tokenizer, prompts: List[str], device
) -> Dict[str, float]:
    groups = {"study prompts": prompts, "unrelated prompts": list(UNRELATED_PROMPTS), "empty prompt": [""]}
    return {
        group: _relative(_states(tuned, tokenizer, texts, device), _states(reference, tokenizer, texts, device))
        for group, texts in groups.items()
    }


def timestep_ranges(num_train_timesteps: int) -> Dict[str, List[int]]:
    """Three ranges, each with evenly spaced timesteps: {"t 0-332": [55, 166, 277], ...}."""
    width = num_train_timesteps / TIMESTEP_RANGES
    ranges = {}
    for index in range(TIMESTEP_RANGES):
        start, end = round(index * width), round((index + 1) * width) - 1
        step = width / TIMESTEPS_PER_RANGE
        ranges[f"t {start}-{end}"] = [int(index * width + (k + 0.5) * step) for k in range(TIMESTEPS_PER_RANGE)]
    return ranges


def unet_prediction_drift(
    reference: torch.nn.Module, tuned: torch.nn.Module, text_states: torch.Tensor, num_train_timesteps: int, device
) -> Dict[str, float]:
    config = reference.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    generator = torch.Generator().manual_seed(NOISE_SEED)
    latents = torch.randn((len(text_states), config.in_channels, size, size), generator=generator).to(device)
    found = {}
    for name, timesteps in timestep_ranges(num_train_timesteps).items():
        changed, original = [], []
        for t in timesteps:
            step = torch.full((len(latents),), t, device=device)
            with torch.no_grad():
                original.append(reference(latents, step, encoder_hidden_states=text_states).sample.float())
                changed.append(tuned(latents, step, encoder_hidden_states=text_states).sample.float())
        found[name] = _relative(torch.stack(changed), torch.stack(original))
    return found


def block_of(parameter: str) -> str:
    """The block a parameter belongs to: its name up to the first index (down_blocks.1,
    text_model.encoder.layers.0), else its module's first two levels (conv_in, text_model.embeddings)."""
    parts = parameter.split(".")
    for position, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: position + 1])
    return ".".join(parts[:-1][:2])


def weight_drift(reference: torch.nn.Module, tuned: torch.nn.Module) -> dict:
    """{"total": ||W_M - W_R|| / ||W_R|| over every weight, "blocks": {block: the same per block}}."""
    squares: Dict[str, List[float]] = {}
    tuned_weights = _plain_weights(tuned)
    for name, value in _plain_weights(reference).items():
        delta = (tuned_weights[name].double().cpu() - value.double().cpu()).pow(2).sum().item()
        size = value.double().cpu().pow(2).sum().item()
        entry = squares.setdefault(block_of(name), [0.0, 0.0])
        entry[0] += delta
        entry[1] += size
    total_delta = sum(delta for delta, _ in squares.values())
    total_size = sum(size for _, size in squares.values())
    return {
        "total": (total_delta / max(total_size, 1e-24)) ** 0.5,
        "blocks": {block: (delta / max(size, 1e-24)) ** 0.5 for block, (delta, size) in squares.items()},
    }


def measure(
    reference: Dict[str, Component], tuned: Dict[str, Component], tokenizer, noise_scheduler, prompts: List[str], device
) -> dict:
    """Every instrument for one pair. A component the two share (the same Source or module) is
    not loaded: its drift is 0."""
    same = {name: reference[name] == tuned[name] for name in ("unet", "text_encoder")}
    te_reference = _module(reference["text_encoder"], "text_encoder").to(device).eval()
    te_tuned = (
        te_reference if same["text_encoder"] else _module(tuned["text_encoder"], "text_encoder").to(device).eval()
    )
    found = {
        "text_encoder": text_encoder_drift(te_reference, te_tuned, tokenizer, prompts, device),
        "weights": {"text_encoder": weight_drift(te_reference, te_tuned)},
    }
    text_states = _states(te_reference, tokenizer, prompts, device)
    unet_reference = _module(reference["unet"], "unet").to(device).eval()
    unet_tuned = unet_reference if same["unet"] else _module(tuned["unet"], "unet").to(device).eval()
    found["unet"] = unet_prediction_drift(
        unet_reference, unet_tuned, text_states, int(noise_scheduler.config.num_train_timesteps), device
    )
    found["weights"]["unet"] = weight_drift(unet_reference, unet_tuned)
    return found
