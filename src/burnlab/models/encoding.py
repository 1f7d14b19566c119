"""Model inputs: images to VAE latents, captions to text-encoder states, noise to noisy latents.

The VAE never trains, so each image's latent distribution (mean, std) is computed once per
stage and sampled with an explicit generator at every step — the same draws as encoding the
image again, at a fraction of the cost. Likewise a stage that trains no text encoder encodes
each distinct caption (and the empty one, for caption dropout) once. SDXL's conditioning (two
encoders' states, the pooled vector, the size and crop `add_time_ids`) is made here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch


@dataclass
class LatentCache:
    """Latent distribution of every image, unflipped [:, 0] and horizontally flipped [:, 1]."""

    mean: torch.Tensor  # [N, 2, C, h, w]
    std: torch.Tensor
    scaling_factor: float
    # SDXL's add_time_ids of every image, unflipped and flipped: original size, crop top-left,
    # target size (`size_conditioning`); None for a UNet without size conditioning
    time_ids: Optional[torch.Tensor] = None  # float [N, 2, 6]

    def sample(self, indices: torch.Tensor, flips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean = self.mean[indices, flips.long()]
        std = self.std[indices, flips.long()]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * noise) * self.scaling_factor

    def sizes(self, indices: torch.Tensor, flips: torch.Tensor) -> Optional[torch.Tensor]:
        """The images' add_time_ids as trained (flipped or not), or None."""
        return None if self.time_ids is None else self.time_ids[indices, flips.long()]


def size_conditioning(sizes: Optional[torch.Tensor], count: int, resolution: int) -> torch.Tensor:
    """float [N, 2, 6]: SDXL's add_time_ids, (original height, width, crop top, left, target
    height, width), from an ImageSet's `sizes` (None: squares of the training size, uncropped)."""
    if sizes is None:
        sizes = torch.tensor([resolution, resolution, 0, 0]).repeat(count, 2, 1)
    target = torch.tensor([resolution, resolution]).repeat(count, 2, 1)
    return torch.cat([sizes, target], dim=-1).float()


def pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] to the VAE's float range [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


@torch.no_grad()
def encode_latents(
    vae, images_uint8: torch.Tensor, device, time_ids: Optional[torch.Tensor] = None, batch_size: int = 32
) -> LatentCache:
    if len(images_uint8) == 0:  # no validation images (validation.split_proportion=0), say: nothing to encode
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        size = (images_uint8.shape[-2] // factor, images_uint8.shape[-1] // factor)
        empty = torch.zeros(0, 2, vae.config.latent_channels, *size)
        return LatentCache(empty, empty.clone(), float(vae.config.scaling_factor), time_ids)
    means, stds = [], []
    dtype = next(vae.parameters()).dtype
    for start in range(0, len(images_uint8), batch_size):
        chunk = pixels(images_uint8[start : start + batch_size])
        both = torch.stack([chunk, chunk.flip(-1)], dim=1).flatten(0, 1).to(device, dtype)
        dist = vae.encode(both).latent_dist
        means.append(dist.mean.float().cpu().unflatten(0, (-1, 2)))
        stds.append(dist.std.float().cpu().unflatten(0, (-1, 2)))
    return LatentCache(torch.cat(means), torch.cat(stds), float(vae.config.scaling_factor), time_ids)


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


# the tokenizer folder of each text encoder in a diffusers pipeline folder
TOKENIZER_FOLDERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


@dataclass
class Conditioning:
    """What the UNet reads of a batch of captions: the text states (SDXL: both encoders'
    penultimate states, concatenated on the feature axis) and, for SDXL, the second encoder's
    pooled, projected vector."""

    states: torch.Tensor  # [B, tokens, width]
    pooled: Optional[torch.Tensor] = None  # [B, width of text_encoder_2] (SDXL), else None

    def rows(self, indices: List[int]) -> "Conditioning":
        return Conditioning(self.states[indices], None if self.pooled is None else self.pooled[indices])

    @staticmethod
    def cat(parts: List["Conditioning"]) -> "Conditioning":
        pooled = [part.pooled for part in parts]
        return Conditioning(
            torch.cat([part.states for part in parts]), None if pooled[0] is None else torch.cat(pooled)
        )


class TextConditioner:
    """Captions to the UNet's conditioning, the way the model's pipeline makes it: Stable
    Diffusion reads its one text encoder's last states; SDXL (two encoders, each with its own
    tokenizer) reads both encoders' penultimate states concatenated, and the pooled vector of the
    second only (StableDiffusionXLPipeline.encode_prompt, without clip skip)."""

    def __init__(self, tokenizers: Dict[str, object]):
        self.tokenizers = dict(tokenizers)  # text encoder component name -> its tokenizer
        self.encoders = tuple(self.tokenizers)  # ("text_encoder",) or ("text_encoder", "text_encoder_2")
        self.is_xl = "text_encoder_2" in self.tokenizers

    @property
    def tokenizer(self):
        """The first encoder's tokenizer (SD's only one): captions' length limits are its."""
        return self.tokenizers["text_encoder"]

    def encoder_outputs(
        self, name: str, text_encoder, captions: List[str], device
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the states the UNet reads of encoder `name`, its pooled vector where the UNet reads one)."""
        ids = tokenize(self.tokenizers[name], captions).to(device)
        if not self.is_xl:
            return text_encoder(ids)[0], None
        out = text_encoder(ids, output_hidden_states=True)
        return out.hidden_states[-2], (out.text_embeds if name == "text_encoder_2" else None)

    def encode(self, text_encoders: Dict[str, torch.nn.Module], captions: List[str], device) -> Conditioning:
        outputs = [self.encoder_outputs(name, text_encoders[name], captions, device) for name in self.encoders]
        pooled = next((pooled for _, pooled in outputs if pooled is not None), None)
        return Conditioning(torch.cat([states for states, _ in outputs], dim=-1), pooled)


@dataclass
class TextStateCache:
    """Frozen text encoders' conditioning of a set of captions, on the training device."""

    rows: Dict[str, int]
    conditioning: Conditioning

    def lookup(self, captions: List[str]) -> Conditioning:
        return self.conditioning.rows([self.rows[caption] for caption in captions])


@torch.no_grad()
def encode_captions_once(
    conditioner: TextConditioner, text_encoders, captions: Iterable[str], device, batch_size: int = 64
) -> TextStateCache:
    """The conditioning of every distinct caption; call it under the autocast the steps would use."""
    distinct = sorted(set(captions))
    parts = [
        conditioner.encode(text_encoders, distinct[start : start + batch_size], device)
        for start in range(0, len(distinct), batch_size)
    ]
    return TextStateCache({caption: row for row, caption in enumerate(distinct)}, Conditioning.cat(parts))


def diffusion_target(scheduler, latents, noise, timesteps):
    """What the UNet is trained to predict for the scheduler's prediction type."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise
