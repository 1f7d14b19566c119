"""What a stage trains with: its components loaded in their dtypes (trained ones float32 and
trainable, frozen ones in `model.dtype` and frozen), every image's latents encoded once, the
optimizer and LR schedule, all prepared by accelerate.

The VAE never trains, so it is loaded, used for the latents and let go here; only the UNet and
the text encoder(s) stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from diffusers.optimization import get_scheduler

from burnlab.config.schema import ADAMW_IMPLS
from burnlab.models import adapters
from burnlab.models.encoding import LatentCache, TextConditioner, encode_latents, size_conditioning
from burnlab.plan.study import epoch_seed, steps_per_epoch
from burnlab.training.fast_paths import apply_fast_paths


@dataclass
class StageSetup:
    models: Dict[str, torch.nn.Module]  # unet, text_encoder(s); trained ones as accelerate prepared them
    trained: List[str]
    conditioner: TextConditioner  # captions to the UNet's conditioning
    noise_scheduler: object  # the training noise schedule (DDPM)
    latents: Dict[str, LatentCache]  # train, validation, stabilize
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    steps_per_epoch: int  # optimizer steps


def set_up_stage(job) -> StageSetup:
    """`job`: a burnlab.training.trainer.StageJob."""
    cfg, accelerator, device = job.config, job.accelerator, job.accelerator.device
    trained = list(job.stage.config.train)
    models = {
        name: job.parent_sources[name].load(name, torch.float32 if name in trained else job.frozen_dtype)
        for name in job.base.components
    }
    vae = job.base.source("vae").load("vae", job.frozen_dtype).to(device)
    vae.requires_grad_(False)
    conditioner = job.base.conditioner()
    resolution = cfg.data.resolution
    latents = {
        name: encode_latents(
            vae,
            images.images,
            device,
            size_conditioning(images.sizes, len(images), resolution) if conditioner.is_xl else None,
        )
        for name, images in (
            ("train", job.data.train),
            ("validation", job.data.validation),
            ("stabilize", job.data.stabilize),
        )
    }
    del vae
    for name, model in models.items():
        model.requires_grad_(name in trained)
        model.train(name in trained)
        if name in trained and cfg.train.gradient_checkpointing:
            _enable_gradient_checkpointing(model)
        model.to(device)
    if cfg.train.adapter == "lora":  # only the trained components' adapters learn (burnlab.models.adapters)
        adapters.attach(models, trained, cfg.lora, epoch_seed(cfg.train.seed, job.stage.name, "lora"))
    apply_fast_paths(models["unet"], cfg.train, device)
    optimizer = torch.optim.AdamW(
        _param_groups(job.stage.config, models, trained),
        betas=tuple(cfg.train.betas),
        eps=cfg.train.eps,
        weight_decay=cfg.train.weight_decay,
        **ADAMW_IMPLS[cfg.train.adamw_impl],
    )
    steps = steps_per_epoch(len(job.data.train), cfg.train, accelerator.num_processes)
    lr_scheduler = get_scheduler(
        cfg.train.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.train.lr_warmup_steps,
        num_training_steps=steps * job.stage.config.epochs,
    )
    prepared = accelerator.prepare(*[models[name] for name in trained], optimizer)
    models.update(zip(trained, prepared[:-1]))
    return StageSetup(
        models, trained, conditioner, job.base.noise_scheduler(), latents, prepared[-1], lr_scheduler, steps
    )


def _param_groups(stage, models, trained) -> List[dict]:
    groups = []
    for name in trained:
        parameters = [p for p in models[name].parameters() if p.requires_grad]
        groups.append({"params": parameters, "lr": stage.component_lr(name), "name": name})
    return groups


def _enable_gradient_checkpointing(model) -> None:
    if hasattr(model, "enable_gradient_checkpointing"):  # diffusers
        model.enable_gradient_checkpointing()
    else:  # transformers
        model.activation_checkpointing_enable()
