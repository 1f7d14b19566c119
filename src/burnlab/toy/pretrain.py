"""Pretrains the toy base model and its probe on the toy world (`make base`).

    .venv/bin/python -m burnlab.toy.pretrain    # 68 min on the 2-core machine shared with other jobs
    .venv/bin/python -m burnlab.toy.pretrain --smoke --work-dir /tmp/smoke --out /tmp/smoke/assets

Phases, in order: vae (the image codec), probe (the classifier that measures samples), latents
(a pool of encoded world images), unet (UNet + text encoder, jointly), export (the pipeline and
probe folders into --out), check (the "base follows prompts" table). Every phase keeps its
result in --work-dir and is skipped when done; the long ones save their training state every
`Settings.save_every` steps, so re-running the command continues where it stopped. Data,
noise and timesteps of step k are drawn from seeds derived from k, so a resumed run trains on
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Busy-waiting OpenMP threads stall when another process holds a core (on the 2-core machine a
# VAE step went from 0.5 s to 5 s); passive waiting keeps that cost small. It must be set before
# torch loads its OpenMP runtime, hence before the imports below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from burnlab.store.files import atomic_write_json
from burnlab.toy import ASSETS
from burnlab.toy import probe as probe_module
from burnlab.toy.build import (
    build_components,
    build_tokenizer,
    save_pipeline,
    training_scheduler,
    vae_config,
)
from burnlab.toy.world import SIZE, draw_sample, make_world, sample_rng

# Every data stream has its own world seed, so no image is shared between them by accident.
SEEDS = {"vae": 1, "codec": 2, "probe": 3, "latents": 4, "vae_holdout": 5, "model": 0}
PHASES = ("vae", "probe", "latents", "unet", "export", "check")


@dataclass(frozen=True)
class Settings:
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    probe_images: int = 9000
    probe_steps: int = 1000
    latent_pool: int = 32768
    unet_steps: int = 3000
    unet_batch: int = 128
    unet_lr: float = 5e-4
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch of guidance
    ema_decay: float = 0.999
    warmup_steps: int = 100
    save_every: int = 100


SMOKE = Settings(
    vae_steps=4,
    vae_batch=8,
    probe_images=96,
    probe_steps=4,
    latent_pool=64,
    unet_steps=4,
    unet_batch=8,
    warmup_steps=2,
    save_every=2,
)


# ---------------------------------------------------------------------------------------------
# training state: safetensors only (weights, EMA copies and AdamW moments), written atomically


def _save_state(path: Path, modules: dict, optimizer: torch.optim.Optimizer | None, step: int) -> None:
    tensors = {
        f"{name}.{key}": value.detach().clone().contiguous()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    for index, param in enumerate(_parameters(optimizer)):
        for key, value in optimizer.state[param].items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().clone().contiguous()
    partial = path.with_suffix(".partial")
    save_file(tensors, partial, metadata={"step": str(step)})
    os.replace(partial, path)


def _load_state(path: Path, modules: dict, optimizer: torch.optim.Optimizer | None) -> int:
    if not path.exists():
        return 0
    tensors = load_file(path)
    with safe_open(path, "pt") as handle:
        step = int(handle.metadata()["step"])
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)})
    for index, param in enumerate(_parameters(optimizer)):
        prefix = f"optimizer.{index}."
        state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        if state:
            optimizer.state[param] = state
    return step


def _parameters(optimizer: torch.optim.Optimizer | None) -> list:
    if optimizer is None:
        return []
    return [param for group in optimizer.param_groups for param in group["params"]]


def _learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _step_generator(stream: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEEDS[stream] * 1_000_003 + step)


def _to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _to_images(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------
# phase: vae


def _codec_pattern(rng: np.random.Generator) -> np.ndarray:
    """A random two-colour texture (stripes, checks or dots at any angle and scale), half the
    time with a world subject on it. Only the VAE sees these: a codec should handle any image,
    as SD's VAE does, and not just the world's flat backdrops."""
    canvas = 2 * SIZE
    y, x = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(12, 48)  # 6 to 24 pixels at 64x64
    u = (x * np.cos(angle) + y * np.sin(angle)) / period
    v = (-x * np.sin(angle) + y * np.cos(angle)) / period
    kind = rng.integers(3)
    if kind == 0:
        mask = np.floor(u) % 2 == 0
    elif kind == 1:
        mask = (np.floor(u) + np.floor(v)) % 2 == 0
    else:
        mask = (np.abs(u - np.round(u)) < 0.2) & (np.abs(v - np.round(v)) < 0.2)
    colours = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    pixels = np.where(mask[..., None], colours[0], colours[1]).astype(np.uint8)
    texture = pixels.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    if rng.random() < 0.5:
        subject = draw_sample(rng).subject.resize((SIZE, SIZE))
        layer = np.asarray(subject, dtype=np.float32)
        alpha = layer[..., 3:] / 255
        texture = texture * (1 - alpha) + layer[..., :3] * alpha
    return texture.round().astype(np.uint8)


def _vae_batch(step: int, batch: int) -> torch.Tensor:
    """Three quarters world images, one quarter codec patterns; fresh ones at every step."""
    world = batch - batch // 4
    images = [image for image, _, _ in make_world(world, SEEDS["vae"], start=step * world)]
    images += [_codec_pattern(sample_rng(SEEDS["codec"], step * batch + k)) for k in range(batch - world)]
    return _to_pixels(np.stack(images))


def train_vae(settings: Settings, work: Path) -> AutoencoderKL:
    final = work / "vae"
    if (final / "config.json").exists():
        return AutoencoderKL.from_pretrained(final)
    torch.manual_seed(SEEDS["model"])
    vae = AutoencoderKL(**vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    state = work / "vae_state.safetensors"
    start = _load_state(state, {"vae": vae}, optimizer)
    progress = tqdm(range(start, settings.vae_steps), initial=start, total=settings.vae_steps, desc="vae", unit="step")
    for step in progress:
        pixels = _vae_batch(step, settings.vae_batch)
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample(_step_generator("vae", step))).sample
        mse = F.mse_loss(recon, pixels)
        # SD's KL weight (1e-6 against a per-pixel sum) expressed against per-pixel means.
        kl = posterior.kl().mean() / pixels[0].numel()
        loss = mse + F.l1_loss(recon, pixels) + 1e-6 * kl
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings.vae_steps, settings.vae_lr, settings.warmup_steps)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        progress.set_postfix(mse=f"{mse.item():.4f}")
        if (step + 1) % settings.save_every == 0:
            _save_state(state, {"vae": vae}, optimizer, step + 1)
    vae.eval()
    scaling, holdout_mse = _measure_vae(vae)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(final, safe_serialization=True)
    atomic_write_json(work / "vae_metrics.json", {"holdout_mse": holdout_mse, "scaling_factor": scaling})
    print(f"vae: held-out reconstruction MSE {holdout_mse:.4f}, scaling factor {scaling:.4f}")
    return vae


@torch.no_grad()
def _measure_vae(vae: AutoencoderKL, count: int = 512) -> tuple[float, float]:
    """Stable Diffusion's recipe: scaling factor = 1 / std of sampled latents."""
    pixels = _to_pixels(np.stack([image for image, _, _ in make_world(count, SEEDS["vae_holdout"])]))
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.sample(torch.Generator().manual_seed(0))
    recon = vae.decode(posterior.mode()).sample
    return float(1 / latents.std()), float(F.mse_loss(recon, pixels))


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Images encoded and decoded by the VAE (what a sample looks like at best)."""
    out = []
    for start in range(0, len(images), batch):
        posterior = vae.encode(_to_pixels(images[start : start + batch])).latent_dist
        out.append(_to_images(vae.decode(posterior.mode()).sample))
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# phase: probe


def train_probe(settings: Settings, work: Path, vae: AutoencoderKL) -> probe_module.Probe:
    folder = work / "probe"
    if (folder / probe_module.CONFIG_FILE).exists():
        return probe_module.load_probe(folder)
    clean, targets = probe_module.labelled_images(settings.probe_images, SEEDS["probe"])
    net = probe_module.train_probe(clean, round_trip(vae, clean), targets, settings.probe_steps)
    probe = probe_module.Probe(net)
    accuracy = probe_module.holdout_accuracy(probe)
    probe_module.save_probe(net, folder, accuracy)
    print("probe: held-out accuracy", json.dumps(accuracy))
    return probe


# ---------------------------------------------------------------------------------------------
# phase: latents


def encode_pool(settings: Settings, work: Path, vae: AutoencoderKL) -> tuple[dict, list[str]]:
    """The UNet's training set: posterior mean and std of pool world images, and captions."""
    latents_file, captions_file = work / "latents.safetensors", work / "captions.json"
    if latents_file.exists() and captions_file.exists():
        return load_file(latents_file), json.loads(captions_file.read_text())
    means, stds, captions, batch = [], [], [], 256
    with torch.no_grad():
        for start in tqdm(range(0, settings.latent_pool, batch), desc="latents", unit="batch"):
            samples = make_world(min(batch, settings.latent_pool - start), SEEDS["latents"], start)
            posterior = vae.encode(_to_pixels(np.stack([s[0] for s in samples]))).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
            captions += [caption for _, caption, _ in samples]
    pool = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}
    save_file(pool, latents_file)
    atomic_write_json(captions_file, captions)
    return pool, captions


def caption_tokens(tokenizer, captions: list) -> tuple:
    """Token ids of every pool caption, padded to the tokenizer's length, then of the empty caption
    (caption dropout); returns (ids, the empty caption's row)."""
    ids = tokenizer(
        captions + [""],
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    return ids, len(captions)


# ---------------------------------------------------------------------------------------------
# phase: unet


def train_unet(
    settings: Settings, work: Path, vae: AutoencoderKL, pool: dict, captions: list[str], tokenizer: CLIPTokenizer
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    final = work / "unet_final.safetensors"
    _, text_encoder, unet = build_components(tokenizer, SEEDS["model"])
    ema = {"ema_unet": copy.deepcopy(unet), "ema_text_encoder": copy.deepcopy(text_encoder)}
    if final.exists():
        _load_state(final, ema, None)
        return ema["ema_unet"], ema["ema_text_encoder"]
    modules = {"unet": unet, "text_encoder": text_encoder, **ema}
    trained = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(trained, lr=settings.unet_lr, weight_decay=1e-2)
    state = work / "unet_state.safetensors"
    start = _load_state(state, modules, optimizer)
    scheduler = training_scheduler()
    scaling = vae.config.scaling_factor
    tokens, empty = caption_tokens(tokenizer, captions)
    unet.train()
    text_encoder.train()
    progress = tqdm(
        range(start, settings.unet_steps), initial=start, total=settings.unet_steps, desc="unet", unit="step"
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
        prediction = unet(noisy, timesteps, text_encoder(input_ids)[0]).sample
        loss = F.mse_loss(prediction, noise)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings.unet_steps, settings.unet_lr, settings.warmup_steps)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        _update_ema(ema["ema_unet"], unet, settings.ema_decay, step)
        _update_ema(ema["ema_text_encoder"], text_encoder, settings.ema_decay, step)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % settings.save_every == 0:
            _save_state(state, modules, optimizer, step + 1)
    _save_state(final, ema, None, settings.unet_steps)
    return ema["ema_unet"], ema["ema_text_encoder"]


@torch.no_grad()
def _update_ema(average: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    # Warm-started decay: early averages would otherwise be dominated by the random init.
    decay = min(decay, (1 + step) / (10 + step))
    for averaged, current in zip(average.parameters(), model.parameters()):
        averaged.lerp_(current, 1 - decay)


# ---------------------------------------------------------------------------------------------
# phases: export and check


def export(
    out: Path,
    work: Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
) -> None:
    save_pipeline(out / "base", vae, text_encoder.eval(), unet.eval(), tokenizer)
    if (out / "probe").exists():
        shutil.rmtree(out / "probe")
    shutil.copytree(work / "probe", out / "probe")
    print(f"export: wrote {out / 'base'} and {out / 'probe'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--work-dir", type=Path, default=Path("runs/toy_pretrain"), help="where phase results and resumable state live"
    )
    parser.add_argument(
        "--out", type=Path, default=ASSETS, help="where base/ and probe/ are exported (default: the shipped assets)"
    )
    parser.add_argument("--until", choices=PHASES, default=PHASES[-1], help="stop after this phase")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every phase")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else Settings()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "settings.json", asdict(settings))
    last = PHASES.index(args.until)
    started = time.time()

    vae = train_vae(settings, work).eval()
    if last >= PHASES.index("probe"):
        train_probe(settings, work, vae)
    if last >= PHASES.index("latents"):
        pool, captions = encode_pool(settings, work, vae)
    if last >= PHASES.index("unet"):
        tokenizer = build_tokenizer(work / "tokenizer")
        unet, text_encoder = train_unet(settings, work, vae, pool, captions, tokenizer)
    if last >= PHASES.index("export"):
        export(args.out, work, vae, unet, text_encoder, tokenizer)
    if last >= PHASES.index("check"):
        from burnlab.toy.check_base import print_table

        print_table(args.out / "base", args.out / "probe", samples=9 if args.smoke else 27)
    print(f"pretrain: done in {(time.time() - started) / 60:.1f} minutes (this session)")


if __name__ == "__main__":
    main()
