"""Pretrains the toy SDXL (`model=toy_xl`) on the toy world: its UNet and both text encoders.

    .venv/bin/python -m burnlab.toy.pretrain_xl       # the shipped assets/base_xl (times in the README)
    .venv/bin/python -m burnlab.toy.pretrain_xl --smoke --work-dir /tmp/xl_smoke --out /tmp/xl_smoke/assets

It reuses the SD toy's pretraining (burnlab.toy.pretrain) rather than repeating it: the VAE is the
shipped SD toy's (not retrained), the training set is the SD toy's latent pool (`encode_pool`,
the same world seed and VAE, so the same latents; `--pool-dir runs/toy_pretrain` reads the one
`make base` left, else it is encoded again), the probe that checks prompts is the SD toy's, and
the resumable state, learning-rate schedule, EMA and per-step seeds are pretrain's own functions.

Phases, in order: latents, unet (UNet + text_encoder + text_encoder_2, jointly, as the SD toy's
UNet and text encoder are trained), export (assets/base_xl, a StableDiffusionXLPipeline folder
whose vae/ links to assets/base/vae), check (the "base follows prompts" table, burnlab.toy
.check_base). A phase done is skipped; the unet phase saves its state every `save_every` steps,
and step k's data, noise and timesteps come from seeds derived from k, so re-running the command
continues exactly where it stopped.

A step does what SDXL trainers do (diffusers' train_text_to_image_sdxl.py): the prompt through
both encoders, their penultimate hidden states concatenated, the second encoder's pooled
projection as `text_embeds`, and `time_ids` (original size, crop top-left, target size) computed
per image from the data; an empty caption for caption dropout (so the folder encodes the empty
negative prompt instead of zeroing it: force_zeros_for_empty_prompt=false).
"""

from __future__ import annotations

import os

# As in pretrain.py: passive OpenMP waiting, set before torch loads its runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.nn import functional as F
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from burnlab.store.files import atomic_write_json
from burnlab.toy import ASSETS, asset_dir
from burnlab.toy.build import build_tokenizer, training_scheduler
from burnlab.toy.build_xl import build_xl_components, encode_prompt_ids, parameter_counts, save_xl_pipeline, time_ids
from burnlab.toy.check_base import print_table
from burnlab.toy.pretrain import (
    SEEDS,
    SMOKE,
    Settings,
    _learning_rate,
    _load_state,
    _save_state,
    _step_generator,
    _update_ema,
    caption_tokens,
    encode_pool,
)

PHASES = ("latents", "unet", "export", "check")
# The SD toy's recipe (lr, warmup, EMA, caption dropout, pool) at a batch of 64: at one CPU
# thread a step of 128 took ~2 s against ~0.85 s for 64, and the run had about an hour.
XL_SETTINGS = dataclasses.replace(Settings(), unet_steps=4000, unet_batch=64)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell (8 for SD's and the toy's VAE), as the pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def pool_time_ids(pool: dict, vae: AutoencoderKL) -> torch.Tensor:
    """float [N, 6]: each pool image's SDXL size and crop conditioning, read from the data.

    The pool holds whole world images, encoded without resizing or cropping (encode_pool), so
    an image's original size is its latents' size times the VAE's factor, its crop top-left is
    (0, 0) and the target size is the size trained at, the same. A dataset that resized or
    cropped would record each image's own numbers here, as SDXL trainers do.
    """
    count, _, height, width = pool["mean"].shape
    pixels = (height * vae_scale_factor(vae), width * vae_scale_factor(vae))
    return time_ids(original_size=pixels, crop_top_left=(0, 0), target_size=pixels, batch=count)


def train_unet_xl(
    settings: Settings, work: Path, vae: AutoencoderKL, pool: dict, captions: list[str], tokenizer: CLIPTokenizer
) -> tuple[UNet2DConditionModel, CLIPTextModel, CLIPTextModelWithProjection]:
    final = work / "unet_xl_final.safetensors"
    text_encoder, text_encoder_2, unet = build_xl_components(tokenizer, SEEDS["model"])
    ema = {
        "ema_unet": copy.deepcopy(unet),
        "ema_text_encoder": copy.deepcopy(text_encoder),
        "ema_text_encoder_2": copy.deepcopy(text_encoder_2),
    }
    if final.exists():
        _load_state(final, ema, None)
        return ema["ema_unet"], ema["ema_text_encoder"], ema["ema_text_encoder_2"]
    models = {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    modules = {**models, **ema}
    trained = [param for model in models.values() for param in model.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=settings.unet_lr, weight_decay=1e-2)
    state = work / "unet_xl_state.safetensors"
    start = _load_state(state, modules, optimizer)
    scheduler = training_scheduler()
    scaling = vae.config.scaling_factor
    tokens, empty = caption_tokens(tokenizer, captions)
    add_time_ids = pool_time_ids(pool, vae)
    for model in models.values():
        model.train()
    log = (work / "unet_xl_loss.jsonl").open("a")
    progress = tqdm(
        range(start, settings.unet_steps),
        initial=start,
        total=settings.unet_steps,
        desc="unet_xl",
        unit="step",
        mininterval=30,
    )
    for step in progress:
        generator = _step_generator("latents", step)
        index = torch.randint(len(captions), (settings.unet_batch,), generator=generator)
        latents = pool["mean"][index] + pool["std"][index] * torch.randn(pool["mean"][index].shape, generator=generator)
        latents = latents * scaling
        dropped = torch.rand(settings.unet_batch, generator=generator) < settings.caption_dropout
        input_ids = tokens[torch.where(dropped, empty, index)]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (settings.unet_batch,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden, pooled = encode_prompt_ids(text_encoder, text_encoder_2, input_ids)
        prediction = unet(
            noisy, timesteps, hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": add_time_ids[index]}
        ).sample
        loss = F.mse_loss(prediction, noise)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings.unet_steps, settings.unet_lr, settings.warmup_steps)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        for name, model in models.items():
            _update_ema(ema[f"ema_{name}"], model, settings.ema_decay, step)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % settings.save_every == 0:
            _save_state(state, modules, optimizer, step + 1)
            log.write(json.dumps({"step": step + 1, "loss": loss.item(), "time": time.time()}) + "\n")
            log.flush()
    log.close()
    _save_state(final, ema, None, settings.unet_steps)
    return ema["ema_unet"], ema["ema_text_encoder"], ema["ema_text_encoder_2"]


def export_xl(
    out: Path,
    vae_folder: Path,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer: CLIPTokenizer,
    vae: AutoencoderKL,
) -> Path:
    """out/base_xl; its vae/ links to `vae_folder` when that lies under `out` (the shipped
    assets: one VAE for both toys), else is a copy."""
    shared = vae_folder.resolve().is_relative_to(out.resolve())
    folder = save_xl_pipeline(
        out / "base_xl",
        text_encoder.eval(),
        text_encoder_2.eval(),
        unet.eval(),
        tokenizer,
        vae=None if shared else vae,
        share_vae=vae_folder if shared else None,
    )
    sizes = {
        part: sum(f.stat().st_size for f in (folder / part).iterdir())
        for part in ("unet", "text_encoder", "text_encoder_2")
    }
    print(
        f"export: wrote {folder} (vae {'linked to ' + str(vae_folder) if shared else 'copied'}); "
        f"bytes: {json.dumps(sizes)}, together {sum(sizes.values()) / 1e6:.1f} MB"
    )
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs/toy_pretrain_xl"),
        help="where phase results and resumable state live",
    )
    parser.add_argument(
        "--pool-dir",
        type=Path,
        default=None,
        help="a folder holding the SD toy's latent pool (latents.safetensors + "
        "captions.json, e.g. make base's runs/toy_pretrain); default: "
        "--work-dir, encoded there with the shipped VAE when missing",
    )
    parser.add_argument(
        "--vae",
        type=Path,
        default=asset_dir("base") / "vae",
        help="the VAE folder (default: the shipped SD toy's, shared)",
    )
    parser.add_argument(
        "--probe",
        type=Path,
        default=asset_dir("probe"),
        help="the probe folder the check asks (default: the shipped one)",
    )
    parser.add_argument(
        "--out", type=Path, default=ASSETS, help="where base_xl/ is exported (default: the shipped assets)"
    )
    parser.add_argument("--until", choices=PHASES, default=PHASES[-1], help="stop after this phase")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every phase")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else XL_SETTINGS
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "settings.json", dataclasses.asdict(settings))
    last = PHASES.index(args.until)
    started = time.time()
    timings = {}

    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    pool, captions = encode_pool(settings, args.pool_dir or work, vae)
    timings["latents"] = time.time() - started
    if last >= PHASES.index("unet"):
        tokenizer = build_tokenizer(work / "tokenizer")
        unet, text_encoder, text_encoder_2 = train_unet_xl(settings, work, vae, pool, captions, tokenizer)
        print("parameters (unet, text_encoder, text_encoder_2):", parameter_counts(unet, text_encoder, text_encoder_2))
        timings["unet"] = time.time() - started - sum(timings.values())
    if last >= PHASES.index("export"):
        export_xl(args.out, args.vae, unet, text_encoder, text_encoder_2, tokenizer, vae)
    if last >= PHASES.index("check"):
        mark = time.time()
        rates = print_table(
            args.out / "base_xl", args.probe, samples=9 if args.smoke else 27, grid=work / "check_grid.png"
        )
        atomic_write_json(work / "check.json", rates)
        timings["check"] = time.time() - mark
    atomic_write_json(work / "timings.json", {k: round(v, 1) for k, v in timings.items()})
    print(f"pretrain_xl: done in {(time.time() - started) / 60:.1f} minutes (this session)")


if __name__ == "__main__":
    main()
