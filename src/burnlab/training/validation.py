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
from burnlab.models.encoding import LatentCache, TextConditioner, diffusion_target
from burnlab.models.precision import predict_noise
from burnlab.runtime.distributed import shard


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@torch.no_grad()
def diffusion_loss(
    models: Dict[str, torch.nn.Module],
    conditioner: TextConditioner,
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
    `models`: the UNet and the text encoder(s) by component name. `reduce_sum` adds a tensor over
    the processes (a collective: every rank calls it)."""
    if len(captions) == 0:
        return None, {}
    generator = torch.Generator().manual_seed(config.seed)
    count = len(captions)
    draws = [t for t in config.timesteps for _ in range(config.repeats)] or [None] * config.repeats
    was_training = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    unflipped = torch.zeros(count, dtype=torch.bool)
    losses = torch.zeros(len(draws), count)  # this rank's images filled in, zeros elsewhere
    mine = shard(count, world, rank)
    for draw, timestep in enumerate(draws):
        indices = torch.arange(count)
        clean = latents.sample(indices, unflipped, generator)
        sizes = latents.sizes(indices, unflipped)
        noise = torch.randn(clean.shape, generator=generator)
        if timestep is None:
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (count,), generator=generator)
        else:
            timesteps = torch.full((count,), timestep, dtype=torch.long)
        for start in range(mine.start, mine.stop, config.batch_size):
            part = slice(start, min(start + config.batch_size, mine.stop))
            with autocast():
                conditioning = conditioner.encode(models, captions[part], device)
                noisy = scheduler.add_noise(clean[part], noise[part], timesteps[part]).to(device)
                part_sizes = None if sizes is None else sizes[part]
                prediction = predict_noise(models["unet"], noisy, timesteps[part].to(device), conditioning, part_sizes)
            target = diffusion_target(scheduler, clean[part], noise[part], timesteps[part]).to(device)
            losses[draw, part] = F.mse_loss(prediction, target.float(), reduction="none").mean(dim=(1, 2, 3)).cpu()
    for name, model in models.items():
        model.train(was_training[name])
    losses = reduce_sum(losses)
    by_t = {str(t): losses[[i for i, d in enumerate(draws) if d == t]].mean().item() for t in config.timesteps}
    return losses.mean().item(), by_t
