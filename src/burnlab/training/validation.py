"""Validation and "stabilized" losses, EveryDream2-style.

Every pass draws its noise and timesteps from a generator seeded with `validation.seed`, so two
passes differ only by the weights, and the training RNG is never touched: the training
trajectory is the same with validation on or off. With `validation.timesteps` set, every image
is scored at each of those timesteps and the per-timestep means are reported too. Several
processes share a pass: each scores its share of the images (the draws are made for all images
on every process, so the numbers do not depend on the number of processes).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from burnlab.config.schema import ValidationConfig
from burnlab.models.encoding import LatentCache, diffusion_target, encode_text
from burnlab.models.precision import predict_noise
from burnlab.runtime.distributed import shard


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@torch.no_grad()
def diffusion_loss(
    unet,
    text_encoder,
    tokenizer,
    scheduler,
    latents: LatentCache,
    captions,
    config: ValidationConfig,
    device,
    autocast,
    rank: int = 0,
    world: int = 1,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = _same,
) -> Tuple[Optional[float], Dict[str, float]]:
    """Mean loss over `repeats` seeded draws per image; per-timestep means for the fixed grid.
    `reduce_sum` adds a tensor over the processes (a collective: every rank calls it)."""
    if len(captions) == 0:
        return None, {}
    generator = torch.Generator().manual_seed(config.seed)
    count = len(captions)
    draws = [t for t in config.timesteps for _ in range(config.repeats)] or [None] * config.repeats
    was_training = unet.training, text_encoder.training
    unet.eval()
    text_encoder.eval()
    losses = torch.zeros(len(draws), count)  # this rank's images filled in, zeros elsewhere
    mine = shard(count, world, rank)
    for draw, timestep in enumerate(draws):
        indices = torch.arange(count)
        clean = latents.sample(indices, torch.zeros(count, dtype=torch.bool), generator)
        noise = torch.randn(clean.shape, generator=generator)
        if timestep is None:
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (count,), generator=generator)
        else:
            timesteps = torch.full((count,), timestep, dtype=torch.long)
        for start in range(mine.start, mine.stop, config.batch_size):
            part = slice(start, min(start + config.batch_size, mine.stop))
            with autocast():
                states = encode_text(tokenizer, text_encoder, captions[part], device)
                noisy = scheduler.add_noise(clean[part], noise[part], timesteps[part]).to(device)
                prediction = predict_noise(unet, noisy, timesteps[part].to(device), states)
            target = diffusion_target(scheduler, clean[part], noise[part], timesteps[part]).to(device)
            losses[draw, part] = F.mse_loss(prediction, target.float(), reduction="none").mean(dim=(1, 2, 3)).cpu()
    unet.train(was_training[0])
    text_encoder.train(was_training[1])
    losses = reduce_sum(losses)
    by_t = {str(t): losses[[i for i, d in enumerate(draws) if d == t]].mean().item() for t in config.timesteps}
    return losses.mean().item(), by_t
