"""Cheap instruments beside the swap corners: how far each component of a tuned model M moved
from a reference R, measured without sampling a single image.

- each text encoder: the relative change of the states the UNet reads of it (SD: the last
  layer's; SDXL: the penultimate's, burnlab.models.encoding.TextConditioner) on the study's
  prompts, on unrelated prompts and on the empty prompt (what guidance subtracts). A
  text-encoder burn moves the study prompts' states; collateral damage moves the others too.
  SDXL's second encoder also gives the UNet its pooled vector: `pooled`, the same groups;
- UNet: the relative change of its noise prediction on fixed inputs (seeded noisy latents, R's
  conditioning of the study prompts; SDXL: uncropped square size ids) in three timestep ranges:
  early (noisy, composition), middle and late (nearly clean, texture);
- weights: the relative Frobenius distance of each component's weights and of each block's
  (a LoRA checkpoint's fused weights: the adapter's delta).

All are ratios ||M - R|| / ||R||, the same size whatever the number of prompts or blocks. They
explain and gate; the verdict is the swap's (burnlab/analysis/attribution.py).
"""

from __future__ import annotations

from typing import Dict, List

import torch

from burnlab.models.encoding import Conditioning, TextConditioner
from burnlab.models.precision import predict_noise
from burnlab.sampling.sampler import Component

# prompts a style fine-tune has no business changing: the toy world's other subjects, which are
# plain English for a real model too
UNRELATED_PROMPTS = ("a photo of bruno", "a red house", "a green tree", "blue squares")
TIMESTEP_RANGES = 3  # early / middle / late thirds of the noise schedule
TIMESTEPS_PER_RANGE = 3
NOISE_SEED = 0  # the fixed latents the UNet's prediction is compared on
PROMPT_GROUPS = ("study prompts", "unrelated prompts", "empty prompt")
VAE_SCALE = 8  # pixels per latent of every model here (SD, SDXL, the toys): SDXL's size ids are in pixels


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


def text_encoder_drift(
    name: str, reference: torch.nn.Module, tuned: torch.nn.Module, conditioner: TextConditioner, prompts, device
) -> Dict[str, Dict[str, float]]:
    """{name: {group: drift of its states}}, and for an encoder whose pooled vector the UNet
    reads (SDXL's second) {"pooled": {group: drift of that vector}} too."""
    groups = dict(zip(PROMPT_GROUPS, (prompts, list(UNRELATED_PROMPTS), [""])))
    found: Dict[str, Dict[str, float]] = {}
    for group, texts in groups.items():
        with torch.no_grad():
            changed = conditioner.encoder_outputs(name, tuned, texts, device)
            original = conditioner.encoder_outputs(name, reference, texts, device)
        found.setdefault(name, {})[group] = _relative(changed[0].float(), original[0].float())
        if original[1] is not None:
            found.setdefault("pooled", {})[group] = _relative(changed[1].float(), original[1].float())
    return found


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
    reference: torch.nn.Module, tuned: torch.nn.Module, conditioning: Conditioning, num_train_timesteps: int, device
) -> Dict[str, float]:
    config = reference.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    count = len(conditioning.states)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    latents = torch.randn((count, config.in_channels, size, size), generator=generator).to(device)
    pixels = size * VAE_SCALE
    time_ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], dtype=torch.float32).repeat(count, 1)
    found = {}
    for name, timesteps in timestep_ranges(num_train_timesteps).items():
        changed, original = [], []
        for t in timesteps:
            step = torch.full((count,), t, device=device)
            with torch.no_grad():
                original.append(predict_noise(reference, latents, step, conditioning, time_ids))
                changed.append(predict_noise(tuned, latents, step, conditioning, time_ids))
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
    reference: Dict[str, Component],
    tuned: Dict[str, Component],
    conditioner: TextConditioner,
    noise_scheduler,
    prompts: List[str],
    device,
) -> dict:
    """Every instrument for one pair: {<each text encoder>: {group: drift}, ["pooled": ...],
    "unet": {timestep range: drift}, "weights": {<each component>: weight_drift}}. A component
    the two share (the same Source or module) is loaded once: its drift is 0."""
    found: dict = {"weights": {}}
    encoders = {}
    for name in conditioner.encoders:
        original = _module(reference[name], name).to(device).eval()
        changed = original if reference[name] == tuned[name] else _module(tuned[name], name).to(device).eval()
        found.update(text_encoder_drift(name, original, changed, conditioner, prompts, device))
        found["weights"][name] = weight_drift(original, changed)
        encoders[name] = original
    with torch.no_grad():
        conditioning = conditioner.encode(encoders, prompts, device)
    unet_reference = _module(reference["unet"], "unet").to(device).eval()
    unet_tuned = (
        unet_reference if reference["unet"] == tuned["unet"] else _module(tuned["unet"], "unet").to(device).eval()
    )
    found["unet"] = unet_prediction_drift(
        unet_reference, unet_tuned, conditioning, int(noise_scheduler.config.num_train_timesteps), device
    )
    found["weights"]["unet"] = weight_drift(unet_reference, unet_tuned)
    return found
