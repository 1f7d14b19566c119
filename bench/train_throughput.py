"""Training throughput: burnlab's stages against diffusers' own example, in one run.

    .venv/bin/python bench/train_throughput.py                      # make bench-train (the toy, CPU)
    .venv/bin/python bench/train_throughput.py --epochs 3 model=sd15_random model.path=/data/sd15_random \\
        train=sd15 train.mixed_precision=bf16 train.batch_size=4 data.resolution=512      # a GPU

The reference is diffusers' examples/text_to_image/train_text_to_image.py itself, unmodified
(bench/peers/: fetched at a pinned commit by `make bench-peers`, run by
bench/peers/launch_example.py), training the UNet of the same base model on the same training
images and captions (the stage's split, as an imagefolder with metadata.jsonl), with the same
batch size, resolution, learning rate, AdamW settings, clipping, precision, seed and threads.
It is timed as one times the example: the wall clock of its process.
burnlab's rows (UNet-only, TE-only, both) are burnlab's StageTrainer (validation, sampling and
states off) timed with everything it does: loading, encoding latents and captions, the final
save. Each row runs in a process of its own so that its peak memory is its own. The example
cannot train the text encoder, so the TE-only and both rows have no peer: their ratio is
against the example training the UNet, the same images per second a user of the example gets.

Both sides are timed the same way, from inside their process: the moment each optimizer step
ends (the example logs its loss with accelerator.log every step, which bench/peers/
launch_example.py timestamps; burnlab writes a metrics row, timestamped here; both read the
loss first, so on a GPU the step has finished). images/s are those of the epochs after the
first: (images - one epoch's) / (last step's end - first epoch's last step's end), which takes
out start-up (imports, loading, encoding, the final save) and first-step warm-up, as one times
the example itself; the whole run's seconds are printed beside them. Each row runs `--rounds`
times, the order of the rows reversed every round, and the table shows its fastest round (the
ratio of each round is printed too). Prints images/s, the ratios, peak memory (RSS on a CPU;
torch.cuda.max_memory_allocated for burnlab's rows on a GPU, where the example's process is not
measured), MFU on a GPU (FLOPs of one UNet forward+backward counted by torch), a loss check,
and the study's checkpoint storage against one full pipeline per checkpoint.

The loss check: the example's step cannot be fed burnlab's batch schedule, so
`reference_loop` re-writes its arithmetic (images decoded and transformed every step, VAE and
text encoder every step, default AdamW, clipping) on burnlab's batches, noise and timesteps;
burnlab's losses must equal it step for step (tests/test_throughput.py holds them to 1e-5).
It is checked, never timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

STAGE = "bench"  # the stage name seeds the batch schedule: the reference loops follow it
STEP_ENDS_ENV = "BURNLAB_BENCH_STEP_ENDS"  # where launch_example.py writes the example's step end times
EXAMPLE_LAUNCHER = Path(__file__).resolve().parent / "peers" / "launch_example.py"
TRAINED = {"unet": ["unet"], "text_encoder": ["text_encoder"], "both": ["unet", "text_encoder"]}
# dense bf16/fp16 tensor-core peaks (FLOP/s), by the start of torch.cuda.get_device_name()
GPU_PEAKS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def compose_study(overrides: list, runs: Path, epochs: int = 0, train: str = ""):
    """The config with quiet settings; with `train`, one stage STAGE from the base model."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from burnlab.config.compose import CONF_DIR, register_configs
    from burnlab.config.schema import StageConfig

    register_configs()
    quiet = [
        f"paths.runs={runs}",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        "analyze=false",
        "sampling.testing_plan=false",
        "sampling.every_n_epochs=0",
        "validation.every_n_epochs=0",
        "train.state_every_epochs=1000000",
    ]
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
    """burnlab's stage, timed whole and step by step (when each train row is written); its
    losses and peak memory from its metrics.jsonl."""
    from burnlab.store.files import read_jsonl
    from burnlab.store.layout import METRICS
    from burnlab.training.trainer import StageTrainer

    step_ends, record = [], StageTrainer._record

    def timed_record(trainer, row):
        if row["type"] == "train":
            step_ends.append(time.perf_counter())
        record(trainer, row)

    StageTrainer._record = timed_record
    try:
        started = time.perf_counter()
        runner.run_stage(STAGE)
        seconds = time.perf_counter() - started
    finally:
        StageTrainer._record = record
    rows = list(read_jsonl(runner.stage_dirs[STAGE] / METRICS))
    memory = next(r for r in rows if r["type"] == "memory")
    return {
        "seconds": seconds,
        "step_ends": step_ends,
        "losses": [r["train_loss"] for r in rows if r["type"] == "train"],
        "peak_bytes": memory["peak_bytes"],
        "measure": memory["measure"],
    }


def unet_flops_per_image(runner) -> float:
    """FLOPs of one UNet forward+backward per image at the stage's batch size and resolution,
    counted by torch (the work MFU is measured against)."""
    from torch.utils.flop_counter import FlopCounterMode

    config, device = runner.config, runner.accelerator.device
    unet = runner.base.source("unet").load("unet", torch.float32).to(device).train()
    text_encoder = runner.base.source("text_encoder").load("text_encoder", runner.frozen_dtype).to(device)
    batch = min(config.train.batch_size, len(runner.data.train))
    side = config.data.resolution // 8  # SD's VAE: 8x smaller latents
    latents = torch.randn(batch, unet.config.in_channels, side, side, device=device)
    ids = torch.zeros(batch, text_encoder.config.max_position_embeddings, dtype=torch.long, device=device)
    with torch.no_grad():
        states = text_encoder(ids)[0].float()
    counter = FlopCounterMode(display=False)
    with counter:
        unet(latents, torch.full((batch,), 500, device=device), states).sample.float().square().mean().backward()
    return counter.get_total_flops() / batch


def reference_loop(runner, train: str, epochs: int) -> dict:
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
    text_encoder = (
        base.source("text_encoder")
        .load("text_encoder", torch.float32 if "text_encoder" in trained else frozen)
        .to(device)
    )
    unet = base.source("unet").load("unet", torch.float32).to(device)  # it takes weight gradients either way
    text_encoder.requires_grad_("text_encoder" in trained).train("text_encoder" in trained)
    unet.requires_grad_(True).train()
    tokenizer, scheduler = base.tokenizer(), base.noise_scheduler()
    params = [
        p
        for name, model in (("unet", unet), ("text_encoder", text_encoder))
        if name in trained
        for p in model.parameters()
    ]
    train_cfg = config.train
    optimizer = torch.optim.AdamW(
        params, lr=1e-5, betas=tuple(train_cfg.betas), eps=train_cfg.eps, weight_decay=train_cfg.weight_decay
    )
    autocast = torch.autocast(
        device.type,
        dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(train_cfg.mixed_precision, torch.float32),
        enabled=train_cfg.mixed_precision != "no",
    )
    data = runner.data.train
    resolution, max_pixels = config.data.resolution, config.data.max_image_pixels
    background = ImageColor.getrgb(config.data.background)
    losses, images_seen = [], 0

    def step(batch, flips, dropped, generator):
        # the example's dataset transform decodes, resizes and crops each image on every access
        pixel_values = pixels(
            torch.stack([load_image(data.files[i], resolution, background, max_pixels)[0] for i in batch.tolist()])
        )
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

    with PeakMemory(device) as peak:
        started = time.perf_counter()
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(epoch_seed(train_cfg.seed, STAGE, epoch))
            order = torch.randperm(len(data), generator=generator)
            flips = torch.rand(len(data), generator=generator) < config.data.flip_p
            dropped = torch.rand(len(data), generator=generator) < config.data.caption_dropout
            for number, start in enumerate(range(0, len(data), train_cfg.batch_size)):
                batch = order[start : start + train_cfg.batch_size]
                generator_b = torch.Generator().manual_seed(epoch_seed(train_cfg.seed, STAGE, epoch, number))
                losses.append(step(batch, flips, dropped, generator_b).item())  # the example logs every step
                images_seen += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "losses": losses, "peak_bytes": peak.peak_bytes, "measure": peak.kind}


def write_imagefolder(images, folder: Path) -> Path:
    """The stage's training images and captions as the example reads them: an imagefolder with
    a metadata.jsonl of file_name and text (links, not copies)."""
    folder.mkdir(parents=True)
    rows = []
    for number, (file, caption) in enumerate(zip(images.files, images.captions)):
        name = f"{number:05d}{Path(file).suffix.lower()}"  # flat and unique: the split may span subfolders
        (folder / name).symlink_to(Path(file).resolve())
        rows.append(json.dumps({"file_name": name, "text": caption}) + "\n")
    (folder / "metadata.jsonl").write_text("".join(rows))
    return folder


def example_arguments(config, model: str, data: Path, work: Path, epochs: int) -> list:
    """The example's flags for the stage STAGE of `config`: same batch, resolution, lr, AdamW,
    clipping, precision and seed; no checkpoints or validation in between."""
    train, stage = config.train, config.stages[STAGE]
    if config.data.flip_p not in (0.0, 0.5):
        raise SystemExit(
            f"data.flip_p={config.data.flip_p}: the example flips with probability 0 or 0.5 "
            "(--random_flip); choose one of those for a like-for-like reference"
        )
    arguments = [
        "--pretrained_model_name_or_path",
        model,
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(work / "output"),
        "--cache_dir",
        str(work / "cache"),
        "--resolution",
        str(config.data.resolution),
        "--center_crop",
        "--train_batch_size",
        str(train.batch_size),
        "--num_train_epochs",
        str(epochs),
        "--gradient_accumulation_steps",
        str(train.gradient_accumulation_steps),
        "--learning_rate",
        str(stage.lr),
        "--lr_scheduler",
        train.lr_scheduler,
        "--lr_warmup_steps",
        str(train.lr_warmup_steps),
        "--adam_beta1",
        str(train.betas[0]),
        "--adam_beta2",
        str(train.betas[1]),
        "--adam_weight_decay",
        str(train.weight_decay),
        "--adam_epsilon",
        str(train.eps),
        "--max_grad_norm",
        str(train.max_grad_norm),
        "--mixed_precision",
        train.mixed_precision,
        "--seed",
        str(train.seed),
        "--checkpointing_steps",
        str(10**9),
        "--dataloader_num_workers",
        "0",
    ]
    if config.data.flip_p:
        arguments.append("--random_flip")
    if train.gradient_checkpointing:
        arguments.append("--gradient_checkpointing")
    if train.tf32:
        arguments.append("--allow_tf32")
    return arguments


def example_row(runner, epochs: int, work: Path) -> dict:
    """diffusers' train_text_to_image.py training the UNet, timed as its whole process."""
    import resource

    data = write_imagefolder(runner.data.train, work / "data")
    command = [
        sys.executable,
        str(EXAMPLE_LAUNCHER),
        *example_arguments(runner.config, runner.base.root, data, work, epochs),
    ]
    step_file = work / "step_ends.json"
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, STEP_ENDS_ENV: str(step_file)})
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(
            f"the diffusers example exited with {done.returncode}; its last lines:\n"
            + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        )
    on_gpu = runner.accelerator.device.type == "cuda"
    # ru_maxrss of the children: the example's process, the only child of this one (KiB on Linux)
    return {
        "seconds": seconds,
        "step_ends": json.loads(step_file.read_text()),
        "peak_bytes": None if on_gpu else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "measure": "not measured (the example's own process)" if on_gpu else "rss",
    }


def loss_check(runner, train: str, epochs: int) -> dict:
    """burnlab's losses against the example's arithmetic on the same batches (`reference_loop`)."""
    ours, reference = burnlab_stage(runner)["losses"], reference_loop(runner, train, epochs)["losses"]
    return {
        "steps": len(ours),
        "first": abs(ours[0] - reference[0]),
        "largest": max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, reference)),
    }


def one(variant: str, train: str, epochs: int, overrides: list) -> dict:
    """One row, in this process."""
    runs = Path(tempfile.mkdtemp(prefix="burnlab_bench_train_"))
    try:
        cfg = compose_study(overrides, runs, epochs, train)
        runner = make_runner(cfg, runs)
        if variant == "flops":
            return {"flops_per_image": unet_flops_per_image(runner)}
        if variant == "check":
            return loss_check(runner, train, epochs)
        result = example_row(runner, epochs, runs / "example") if variant == "example" else burnlab_stage(runner)
        result["images"] = epochs * len(runner.data.train)
        result["epochs"] = epochs
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
            cfg = compose_study(
                overrides
                + [f"train.save_dtype={save_dtype}", "experiment=followfox"]
                + [f"stages.{s}.epochs=2" for s in ("baseline", "unet_lo", "unet_hi", "te_lo", "te_hi")]
                + [f"stages.{s}.save_epochs=[1]" for s in ("unet_lo", "unet_hi", "te_lo", "te_hi")]
                + ["stages.baseline.save_epochs=[2]"],
                runs,
            )
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
    """Images per second over the epochs after the first (start-up and warm-up left out)."""
    ends, epochs = row["step_ends"], row["epochs"]
    if epochs < 2 or len(ends) % epochs:
        raise ValueError(f"{len(ends)} steps over {epochs} epochs: images/s needs >= 2 whole epochs")
    first_epoch_end = ends[len(ends) // epochs - 1]
    return row["images"] * (epochs - 1) / epochs / (ends[-1] - first_epoch_end)


ROWS = (("example", "unet"), ("burnlab", "unet"), ("burnlab", "text_encoder"), ("burnlab", "both"))
LABELS = {
    ("example", "unet"): "diffusers example, UNet",
    ("burnlab", "unet"): "burnlab UNet-only",
    ("burnlab", "text_encoder"): "burnlab TE-only (no peer)",
    ("burnlab", "both"): "burnlab both (no peer)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs each row trains (default 60)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "TRAIN"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="times each row runs, the order reversed every round; the table shows its fastest (default 2)",
    )
    parser.add_argument("--no-storage", action="store_true", help="skip the checkpoint storage comparison")
    args, overrides = parser.parse_known_args()
    if args.one:
        print(json.dumps(one(*args.one, args.epochs, overrides)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; overrides: {' '.join(overrides) or 'none'}")
    if args.epochs < 2:
        parser.error(f"--epochs {args.epochs}: at least 2 (the first epoch's steps are left out of images/s)")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1")
    rounds = {}  # (variant, train) -> that row in each round
    for number in range(args.rounds):
        # the order reverses every round, so that a machine slowing down or speeding up over
        # the run favours no row
        for variant, train in ROWS[:: 1 if number % 2 == 0 else -1]:
            rounds.setdefault((variant, train), []).append(
                in_subprocess([variant, train, "--epochs", str(args.epochs), *overrides])
            )
    rows = {key: max(measured, key=speed) for key, measured in rounds.items()}
    example = rows["example", "unet"]
    print(
        f"device: {example.get('gpu', example['device'])}; {example['images']} images per row "
        f"({args.epochs} epochs), images/s over the last {args.epochs - 1}, the fastest of {args.rounds} "
        f"round{'s' if args.rounds > 1 else ''}; every ratio is against the diffusers example training the "
        "UNet (train_text_to_image.py cannot train the text encoder: the TE-only and both rows have no peer)"
    )
    peak = None
    if "gpu" in example:
        flops = in_subprocess(["flops", "unet", "--epochs", "1", *overrides])["flops_per_image"]
        peak = next((v for k, v in GPU_PEAKS.items() if example["gpu"].startswith(k)), None)
    print(
        f"{'row':28s} {'images/s':>9s} {'ratio':>6s} {'whole run':>9s} {'peak memory':>14s}"
        + ("  MFU (UNet step)" if peak else "")
        + "  ratio in each round"
    )
    for key in ROWS:
        row = rows[key]
        memory = f"{row['peak_bytes'] / 2**30:9.2f} GiB {row['measure']}" if row["peak_bytes"] else row["measure"]
        line = (
            f"{LABELS[key]:28s} {speed(row):9.2f} {speed(row) / speed(example):5.2f}x {row['seconds']:7.2f} s {memory}"
        )
        if peak and key[1] == "unet":
            line += f"  {speed(row) * flops / peak:.1%}"
        if key != ("example", "unet"):
            line += "  " + ", ".join(
                f"{speed(ours) / speed(theirs):.2f}x" for ours, theirs in zip(rounds[key], rounds["example", "unet"])
            )
        print(line)
    for train in TRAINED:
        check = in_subprocess(["check", train, "--epochs", "3", *overrides])
        print(
            f"  losses, burnlab {train} against the example's step on the same batches (reference_loop): "
            f"first step |diff| {check['first']:.2e}, largest relative diff over {check['steps']} steps "
            f"{check['largest']:.2e}"
        )
    if not args.no_storage:
        sizes = storage(overrides)
        full = sizes["checkpoints"] * sizes["pipeline"]
        print(
            f"storage of a followfox study's {sizes['checkpoints']} checkpoints against one full pipeline "
            f"({sizes['pipeline'] / 2**20:.1f} MiB) per checkpoint ({full / 2**20:.1f} MiB):"
        )
        for save_dtype in ("float32", "float16"):
            print(
                f"  train.save_dtype={save_dtype}: {sizes[save_dtype] / 2**20:.1f} MiB = "
                f"{sizes[save_dtype] / full:.2f}x"
            )


if __name__ == "__main__":
    main()
