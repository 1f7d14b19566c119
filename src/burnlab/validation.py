"""Validation and "stabilized" losses, EveryDream2-style.

Every pass draws its noise and timesteps from a generator seeded with `validation.seed`, so two
passes differ only by the weights, and the training RNG is never touched: the training
trajectory is the same with validation on or off. With `validation.timesteps` set, every image
is scored at each of those timesteps and the per-timestep means are reported too.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from burnlab.config import ValidationConfig
from burnlab.encoding import LatentCache, diffusion_target, encode_text


@torch.no_grad()
def diffusion_loss(unet, text_encoder, tokenizer, scheduler, latents: LatentCache, captions,
                   config: ValidationConfig, device, autocast) -> Tuple[Optional[float], Dict[str, float]]:
    """Mean loss over `repeats` seeded draws per image; per-timestep means for the fixed grid."""
    if len(captions) == 0:
        return None, {}
    generator = torch.Generator().manual_seed(config.seed)
    count = len(captions)
    draws = [t for t in config.timesteps for _ in range(config.repeats)] or [None] * config.repeats
    was_training = unet.training, text_encoder.training
    unet.eval()
    text_encoder.eval()
    losses_by_t: Dict[str, list] = {}
    all_losses = []
    for timestep in draws:
        indices = torch.arange(count)
        clean = latents.sample(indices, torch.zeros(count, dtype=torch.bool), generator)
        noise = torch.randn(clean.shape, generator=generator)
        if timestep is None:
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (count,), generator=generator)
        else:
            timesteps = torch.full((count,), timestep, dtype=torch.long)
        for start in range(0, count, config.batch_size):
            part = slice(start, start + config.batch_size)
            with autocast():
                states = encode_text(tokenizer, text_encoder, captions[part], device)
                noisy = scheduler.add_noise(clean[part], noise[part], timesteps[part]).to(device)
                prediction = unet(noisy, timesteps[part].to(device), states).sample
            target = diffusion_target(scheduler, clean[part], noise[part], timesteps[part]).to(device)
            per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            all_losses.append(per_image.cpu())
            if timestep is not None:
                losses_by_t.setdefault(str(timestep), []).append(per_image.cpu())
    unet.train(was_training[0])
    text_encoder.train(was_training[1])
    by_t = {t: torch.cat(values).mean().item() for t, values in losses_by_t.items()}
    return torch.cat(all_losses).mean().item(), by_t
