"""Training throughput: burnlab's stages against the loop the diffusers example runs, in one run.

    .venv/bin/python bench/train_throughput.py                      # make bench-train (the toy, CPU)
    .venv/bin/python bench/train_throughput.py --epochs 3 model=sd15_random model.path=/data/sd15_random \\
        train=sd15 train.mixed_precision=bf16 train.batch_size=4 data.resolution=512      # a GPU

Every row trains one stage from the base model on the same data, batches, noise, timesteps,
batch size and precision (any Hydra override after the flags picks them), each in a process
of its own so that its peak memory is its own:
- reference: the step of diffusers' examples/text_to_image/train_text_to_image.py — images
  decoded, resized, cropped, normalised and flipped and captions tokenized every step (the
  example's dataset transform runs on every access), the VAE encoding and the text
  encoder running every step, UNet forward/backward, gradient clipping, torch's default AdamW;
- naive TE / naive both: the same step training the text encoder (alone, or with the UNet)
  through a UNet that still takes weight gradients;
- burnlab UNet-only / TE-only / both: burnlab's StageTrainer (validation, sampling and states
  off), timed with everything it does: loading, encoding latents and captions, the final save.
The reference loops are timed over their steps only. Every row also runs for one epoch, and
its images/s are those of the other epochs: (images - one epoch's) / (seconds - the one-epoch
run's), which takes out burnlab's start-up (loading, encoding, the save) and both loops'
first-step warm-up, as one would time the example itself; the start-up is printed beside it.
Each row runs `--rounds` times, in alternating order, and the table shows its fastest round
(the ratio of each round is printed too). Prints images/s, the ratios, peak memory
(RSS on a CPU, torch.cuda.max_memory_allocated on a GPU), MFU on a GPU (FLOPs of one
forward+backward counted by torch), and the study's checkpoint storage against one full
pipeline per checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

STAGE = "bench"  # the stage name seeds the batch schedule: the reference loops follow it
TRAINED = {"unet": ["unet"], "text_encoder": ["text_encoder"], "both": ["unet", "text_encoder"]}
# dense bf16/fp16 tensor-core peaks (FLOP/s), by the start of torch.cuda.get_device_name()
GPU_PEAKS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 989e12,
             "NVIDIA A100": 312e12}


def compose_study(overrides: list, runs: Path, epochs: int = 0, train: str = ""):
    """The config with quiet settings; with `train`, one stage STAGE from the base model."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from burnlab.config.compose import CONF_DIR, register_configs
    from burnlab.config.schema import StageConfig

    register_configs()
    quiet = [f"paths.runs={runs}", "logger.wandb.mode=disabled", "logger.progress=false", "analyze=false",
             "sampling.testing_plan=false", "sampling.every_n_epochs=0", "validation.every_n_epochs=0",
             "train.state_every_epochs=1000000"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=quiet + list(overrides))
    if train:
        with open_dict(cfg):
            cfg.stages[STAGE] = OmegaConf.structured(StageConfig(train=TRAINED[train], lr=1e-5, epochs=epochs))
    return cfg


def make_runner(cfg, runs: Path):
    from omegaconf import OmegaConf

    from burnlab.config.compose import load_config
    from burnlab.launch.runner import StudyRunner

    runner = StudyRunner(load_config(cfg), runs / "bench", OmegaConf.to_yaml(cfg), {})
    runner.setup()
    return runner


def burnlab_stage(runner) -> dict:
    """burnlab's stage, timed whole; its losses and peak memory from its metrics.jsonl."""
    from burnlab.store.files import read_jsonl

    started = time.perf_counter()
    runner.run_stage(STAGE)
    seconds = time.perf_counter() - started
    rows = list(read_jsonl(runner.stage_dirs[STAGE] / "metrics.jsonl"))
    memory = next(r for r in rows if r["type"] == "memory")
    return {"seconds": seconds, "losses": [r["train_loss"] for r in rows if r["type"] == "train"],
            "peak_bytes": memory["peak_bytes"], "measure": memory["measure"]}


def reference_loop(runner, train: str, epochs: int, flops: bool = False) -> dict:
    """The diffusers example's step on burnlab's batch schedule (same images, flips, captions,
    latent draws, noise and timesteps as the stage named STAGE)."""
    from PIL import ImageColor

    from burnlab.data.dataset import load_image
    from burnlab.models.encoding import diffusion_target, pixels, tokenize
    from burnlab.plan.study import epoch_seed
    from burnlab.runtime.memory import PeakMemory

    config, base, device = runner.config, runner.base, runner.accelerator.device
    frozen = runner.frozen_dtype
    trained = TRAINED[train]
    vae = base.source("vae").load("vae", frozen).to(device).requires_grad_(False)
    text_encoder = base.source("text_encoder").load(
        "text_encoder", torch.float32 if "text_encoder" in trained else frozen).to(device)
    unet = base.source("unet").load("unet", torch.float32).to(device)  # it takes weight gradients either way
    text_encoder.requires_grad_("text_encoder" in trained).train("text_encoder" in trained)
    unet.requires_grad_(True).train()
    tokenizer, scheduler = base.tokenizer(), base.noise_scheduler()
    params = [p for name, model in (("unet", unet), ("text_encoder", text_encoder)) if name in trained
              for p in model.parameters()]
    train_cfg = config.train
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=tuple(train_cfg.betas), eps=train_cfg.eps,
                                  weight_decay=train_cfg.weight_decay)
    autocast = torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        train_cfg.mixed_precision, torch.float32), enabled=train_cfg.mixed_precision != "no")
    data = runner.data.train
    resolution, max_pixels = config.data.resolution, config.data.max_image_pixels
    background = ImageColor.getrgb(config.data.background)
    losses, images_seen = [], 0

    def step(batch, flips, dropped, generator):
        # the example's dataset transform decodes, resizes and crops each image on every access
        pixel_values = pixels(torch.stack([load_image(data.files[i], resolution, background, max_pixels)
                                           for i in batch.tolist()]))
        pixel_values = torch.where(flips[batch, None, None, None], pixel_values.flip(-1), pixel_values).to(device)
        input_ids = tokenize(tokenizer, ["" if dropped[i] else data.captions[i] for i in batch.tolist()]).to(device)
        with autocast:
            with torch.no_grad():
                latents = vae.encode(pixel_values.to(frozen)).latent_dist.sample(generator).float().cpu()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
            noisy = scheduler.add_noise(latents, noise, timesteps).to(device)
            target = diffusion_target(scheduler, latents, noise, timesteps).to(device)
            with torch.set_grad_enabled("text_encoder" in trained):
                states = text_encoder(input_ids)[0]
            prediction = unet(noisy, timesteps.to(device), states.to(unet.dtype)).sample
        loss = F.mse_loss(prediction.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if flops:  # one forward+backward of the UNet-only step, counted
        from torch.utils.flop_counter import FlopCounterMode

        batch = torch.arange(min(train_cfg.batch_size, len(data)))
        counter = FlopCounterMode(display=False)
        with counter:
            step(batch, torch.zeros(len(data), dtype=torch.bool), torch.zeros(len(data), dtype=torch.bool),
                 torch.Generator().manual_seed(0))
        return {"flops_per_image": counter.get_total_flops() / len(batch)}
    with PeakMemory(device) as peak:
        started = time.perf_counter()
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(epoch_seed(train_cfg.seed, STAGE, epoch))
            order = torch.randperm(len(data), generator=generator)
            flips = torch.rand(len(data), generator=generator) < config.data.flip_p
            dropped = torch.rand(len(data), generator=generator) < config.data.caption_dropout
            for number, start in enumerate(range(0, len(data), train_cfg.batch_size)):
                batch = order[start:start + train_cfg.batch_size]
                generator_b = torch.Generator().manual_seed(epoch_seed(train_cfg.seed, STAGE, epoch, number))
                losses.append(step(batch, flips, dropped, generator_b).item())  # the example logs every step
                images_seen += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "losses": losses, "peak_bytes": peak.peak_bytes, "measure": peak.kind}


def one(variant: str, train: str, epochs: int, overrides: list) -> dict:
    """One row, in this process."""
    runs = Path(tempfile.mkdtemp(prefix="burnlab_bench_train_"))
    try:
        cfg = compose_study(overrides, runs, epochs, train)
        runner = make_runner(cfg, runs)
        if variant == "flops":
            return reference_loop(runner, "unet", 1, flops=True)
        result = burnlab_stage(runner) if variant == "burnlab" else reference_loop(runner, train, epochs)
        result["images"] = epochs * len(runner.data.train)
        result["device"] = str(runner.accelerator.device)
        if runner.accelerator.device.type == "cuda":
            result["gpu"] = torch.cuda.get_device_name()
        return result
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def storage(overrides: list) -> dict:
    """Bytes of a short followfox study's checkpoints (save_dtype float32 and float16) against
    one full pipeline folder per checkpoint."""
    from burnlab.launch.cli import run
    from burnlab.models.checkpoint import materialize

    sizes = {}
    for save_dtype in ("float32", "float16"):
        runs = Path(tempfile.mkdtemp(prefix="burnlab_bench_storage_"))
        try:
            cfg = compose_study(overrides + [f"train.save_dtype={save_dtype}", "experiment=followfox"]
                                + [f"stages.{s}.epochs=2" for s in ("baseline", "unet_lo", "unet_hi", "te_lo", "te_hi")]
                                + [f"stages.{s}.save_epochs=[1]" for s in ("unet_lo", "unet_hi", "te_lo", "te_hi")]
                                + ["stages.baseline.save_epochs=[2]"],
                                runs)
            study = run(cfg, runs / "followfox")
            checkpoints = sorted(p for p in (runs / "cache" / "stages").glob("*/checkpoints/epoch_*"))
            sizes[save_dtype] = sum(f.stat().st_size for c in checkpoints for f in c.rglob("*") if f.is_file())
            pipeline = materialize(checkpoints[0], runs / "pipeline")
            sizes["pipeline"] = sum(f.stat().st_size for f in pipeline.rglob("*") if f.is_file())
            sizes["checkpoints"] = len(checkpoints)
            planned = {e["checkpoint_id"] for plan in study["testing_plan"].values() for e in plan if e["dir"]}
            assert len(planned) == len(checkpoints)
        finally:
            shutil.rmtree(runs, ignore_errors=True)
    return sizes


def in_subprocess(args: list) -> dict:
    output = subprocess.run([sys.executable, __file__, "--one", *args], check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def speed(row: dict) -> float:
    """Images per second with the start-up differenced out."""
    return row["steady_images"] / row["steady_seconds"]


def start_up_differenced_out(row: dict, one_epoch: dict, epochs: int) -> dict:
    """`row` with the images and seconds of its epochs after the first (`one_epoch`: the same
    row run for one epoch) and its start-up: the one-epoch run less one such epoch."""
    steady_images, steady_seconds = row["images"] - one_epoch["images"], row["seconds"] - one_epoch["seconds"]
    return {**row, "steady_images": steady_images, "steady_seconds": steady_seconds,
            "start_up_seconds": one_epoch["seconds"] - steady_seconds / (epochs - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs each row trains (default 60)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "TRAIN"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2,
                        help="times each row runs, in alternating order; the table shows its fastest (default 2)")
    parser.add_argument("--no-storage", action="store_true", help="skip the checkpoint storage comparison")
    args, overrides = parser.parse_known_args()
    if args.one:
        print(json.dumps(one(*args.one, args.epochs, overrides)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; overrides: {' '.join(overrides) or 'none'}")
    if args.epochs < 2:
        parser.error(f"--epochs {args.epochs}: at least 2 (one epoch is run apart and differenced out)")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1")
    rounds = {}  # (variant, train) -> that row in each round
    for train in ("unet", "text_encoder", "both"):
        for number in range(args.rounds):
            # the order flips every round, so that a machine slowing down or speeding up over
            # the run favours neither side
            for variant in ("reference", "burnlab")[::1 if number % 2 == 0 else -1]:
                rounds.setdefault((variant, train), []).append(start_up_differenced_out(
                    in_subprocess([variant, train, "--epochs", str(args.epochs), *overrides]),
                    in_subprocess([variant, train, "--epochs", "1", *overrides]), args.epochs))
    rows = {key: max(measured, key=speed) for key, measured in rounds.items()}
    first = rows["reference", "unet"]
    print(f"device: {first.get('gpu', first['device'])}; {first['images']} images per row "
          f"({args.epochs} epochs), images/s over the last {args.epochs - 1}, the faster of {args.rounds} "
          f"round{'s' if args.rounds > 1 else ''}")
    names = {"unet": "UNet-only", "text_encoder": "TE-only", "both": "both"}
    peak = None
    if "gpu" in first:
        flops = in_subprocess(["flops", "unet", "--epochs", "1", *overrides])["flops_per_image"]
        peak = next((v for k, v in GPU_PEAKS.items() if first["gpu"].startswith(k)), None)
    print(f"{'row':34s} {'images/s':>9s} {'ratio':>6s} {'start-up':>9s} {'peak memory':>14s}" + ("  MFU" if peak else ""))
    for train in ("unet", "text_encoder", "both"):
        reference, ours = rows["reference", train], rows["burnlab", train]
        for label, row in ((f"reference ({'diffusers example' if train == 'unet' else 'naive ' + names[train]})",
                            reference), (f"burnlab {names[train]}", ours)):
            ratio = speed(row) / speed(reference)
            line = (f"{label:34s} {speed(row):9.2f} {ratio:5.2f}x {row['start_up_seconds']:7.2f} s "
                    f"{row['peak_bytes'] / 2 ** 30:9.2f} GiB {row['measure']}")
            if peak and train == "unet":
                line += f"  {speed(row) * flops / peak:.1%}"
            print(line)
        gap = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours["losses"], reference["losses"]))
        first_gap = abs(ours["losses"][0] - reference["losses"][0])
        print(f"  losses: first step |diff| {first_gap:.2e}, largest relative diff over "
              f"{len(ours['losses'])} steps {gap:.2e}")
        if args.rounds > 1:
            print("  ratio in each round: " + ", ".join(
                f"{speed(b) / speed(r):.2f}x" for r, b in zip(rounds["reference", train], rounds["burnlab", train])))
    if not args.no_storage:
        sizes = storage(overrides)
        full = sizes["checkpoints"] * sizes["pipeline"]
        print(f"storage of a followfox study's {sizes['checkpoints']} checkpoints against one full pipeline "
              f"({sizes['pipeline'] / 2 ** 20:.1f} MiB) per checkpoint ({full / 2 ** 20:.1f} MiB):")
        for save_dtype in ("float32", "float16"):
            print(f"  train.save_dtype={save_dtype}: {sizes[save_dtype] / 2 ** 20:.1f} MiB = "
                  f"{sizes[save_dtype] / full:.2f}x")


if __name__ == "__main__":
    main()
