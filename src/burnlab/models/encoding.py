"""Model inputs: images to VAE latents, captions to text-encoder states, noise to noisy latents.

The VAE never trains, so each image's latent distribution (mean, std) is computed once per
stage and sampled with an explicit generator at every step — the same draws as encoding the
image again, at a fraction of the cost. Likewise a stage that does not train the text encoder
encodes each distinct caption (and the empty one, for caption dropout) once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch


@dataclass
class LatentCache:
    """Latent distribution of every image, unflipped [:, 0] and horizontally flipped [:, 1]."""

    mean: torch.Tensor  # [N, 2, C, h, w]
    std: torch.Tensor
    scaling_factor: float

    def sample(self, indices: torch.Tensor, flips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean = self.mean[indices, flips.long()]
        std = self.std[indices, flips.long()]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * noise) * self.scaling_factor


def pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] to the VAE's float range [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


@torch.no_grad()
def encode_latents(vae, images_uint8: torch.Tensor, device, batch_size: int = 32) -> LatentCache:
    means, stds = [], []
    dtype = next(vae.parameters()).dtype
    for start in range(0, len(images_uint8), batch_size):
        chunk = pixels(images_uint8[start : start + batch_size])
        both = torch.stack([chunk, chunk.flip(-1)], dim=1).flatten(0, 1).to(device, dtype)
        dist = vae.encode(both).latent_dist
        means.append(dist.mean.float().cpu().unflatten(0, (-1, 2)))
        stds.append(dist.std.float().cpu().unflatten(0, (-1, 2)))
    return LatentCache(torch.cat(means), torch.cat(stds), float(vae.config.scaling_factor))


def tokenize(tokenizer, captions: List[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def cut_words(tokenizer, captions: List[str]) -> List[Optional[str]]:
    """The words `tokenize` cuts off each caption, decoded back to text (None where nothing is
    cut). Truncation keeps `model_max_length` tokens counting BOS and EOS, so a caption keeps
    that many less the special tokens."""
    if not captions:
        return []
    room = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add()
    # verbose=False: the tokenizer's own "sequence is longer than" warning would repeat ours
    tokens = tokenizer(captions, add_special_tokens=False, verbose=False).input_ids
    return [tokenizer.decode(ids[room:]).strip() if len(ids) > room else None for ids in tokens]


def encode_text(tokenizer, text_encoder, captions: List[str], device) -> torch.Tensor:
    return text_encoder(tokenize(tokenizer, captions).to(device))[0]


@dataclass
class TextStateCache:
    """A frozen text encoder's states of a set of captions, on the training device."""

    rows: Dict[str, int]
    states: torch.Tensor  # [captions, tokens, width]

    def lookup(self, captions: List[str]) -> torch.Tensor:
        return self.states[[self.rows[caption] for caption in captions]]


@torch.no_grad()
def encode_captions_once(
    tokenizer, text_encoder, captions: Iterable[str], device, batch_size: int = 64
) -> TextStateCache:
    """The states of every distinct caption; call it under the autocast the steps would use."""
    distinct = sorted(set(captions))
    states = [
        encode_text(tokenizer, text_encoder, distinct[start : start + batch_size], device)
        for start in range(0, len(distinct), batch_size)
    ]
    return TextStateCache({caption: row for row, caption in enumerate(distinct)}, torch.cat(states))


def diffusion_target(scheduler, latents, noise, timesteps):
    """What the UNet is trained to predict for the scheduler's prediction type."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise
