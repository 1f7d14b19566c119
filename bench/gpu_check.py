"""make gpu-check: the GPU rows proved in one call (at most 8 minutes), one results file.

    .venv/bin/python bench/gpu_check.py [--out runs/gpu_check]          # a CUDA machine
    .venv/bin/python bench/gpu_check.py --dry-run                        # the same checks, CPU, toy size
    scripts/gpu_check_remote.sh                                          # the device machine (wheelhouse/)

Checks, each in a process of its own with its own time limit, so that one that fails, hangs or
runs out of memory is recorded and the next one runs:
- model: SD 1.5's architecture with random weights (model=sd15_random) built once, for the rest;
- train_bf16, train_fp16: a UNet-only stage (train=sd15) at 512 px in that precision: images/s
  after the first epoch (bench/train_throughput.py's timing), peak memory
  (torch.cuda.max_memory_allocated), MFU against the card's peak (its GPU_PEAKS and UNet FLOP
  count), loss finite;
- resume_fp16: an fp16 stage trained straight, and the same stage SIGKILLed right after the
  state at half its steps was published (tests/kill_during.py) and run again: identical weights;
- sampling_half: a testing plan sampled with sampling.dtype=float16 (base + one checkpoint, the
  study's prompt sets): images readable, not blank (a NaN decodes to black), seconds;
- attribution: burnlab-diagnose on that checkpoint against the base, measured with a CLIP model:
  its verdict and seconds;
- sdxl: SDXL's parts (two text encoders, the pooled vector, add_time_ids; StableDiffusionXLPipeline)
  on the toy SDXL: a baseline of every component and the second text encoder's burn, one epoch
  each, in bf16 autocast, sampled in float16, with the eight swap corners: images not blank, every
  pair's eight corners sampled;
- clip: the CLIP instruments (burnlab/analysis/features.py ClipModel) on CUDA against the CPU: image and
  text features agree. No CLIP can be downloaded on the device, so a CLIP with ViT-L/14's sizes
  and random weights is built (as the test suite builds a tiny one): it proves the code path and
  the cost, not what the scores mean.
Writes OUT/gpu_check.json (device, versions, each check's status pass/fail/skipped, seconds,
numbers, reason) and OUT/gpu_check.md (the same as a table). --dry-run runs every check on the
CPU with the toy model at 64 px, a tiny CLIP and a few steps (tests/test_gpu_check.py runs it, so
that this script cannot rot); its numbers prove nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import train_throughput as bench  # bench/ is this script's folder: its timing, FLOP count and GPU peaks
from burnlab.toy import asset_dir

# burnlab.analysis.features and burnlab.toy.build are imported by the checks that use them: they load
# transformers, which the driver process (and its one-paragraph refusals) does without

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480  # the 8 minutes, all checks together
# name -> its own limit in seconds on a GPU (estimates: no GPU was lent when this was written);
# a check gets at most what is left of the budget
LIMITS = {
    "model": 120,
    "train_bf16": 75,
    "train_fp16": 75,
    "resume_fp16": 100,
    "sampling_half": 45,
    "attribution": 45,
    "sdxl": 60,
    "clip": 30,
}
DRY_LIMIT_S = 120  # each check on the CPU at toy size


def settings(dry_run: bool, out: Path) -> dict:
    """What differs between the GPU run and its CPU dry run; everything else is the same code."""
    if dry_run:
        # burnlab trains fp16 only on CUDA (a CPU has no fp16 GradScaler path): the dry run's fp16
        # checks train in float32, the rest of their code the same
        return {
            "model": ["model=toy"],
            "model_path": str(asset_dir("base")),
            "train": ["train=toy"],
            "resolution": 64,
            "epochs": 2,
            "sampling": ["sampling=toy"],
            "clip": "tiny",
            "precision": {"bf16": "bf16", "fp16": "no"},
        }
    return {
        "model": ["model=sd15_random", f"model.path={out / 'models' / 'sd15_random-seed0'}"],
        "model_path": str(out / "models" / "sd15_random-seed0"),
        "train": ["train=sd15"],
        "resolution": 512,
        "epochs": 4,
        "sampling": ["sampling=study"],
        "clip": "vit-l-14",
        "precision": {"bf16": "bf16", "fp16": "fp16"},
    }


def quiet_study(s: dict, runs: Path, precision: str) -> list:
    """Overrides of a one-stage study (stages=[baseline]) on the check's model, for the CLI."""
    return [
        *s["model"],
        *s["train"],
        f"data.resolution={s['resolution']}",
        f"train.mixed_precision={precision}",
        f"paths.runs={runs}",
        "stages=[baseline]",
        "analyze=false",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        "validation.every_n_epochs=0",
    ]


def cli(args: list, timeout: float, wrapper: list = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, *(wrapper or ["-m", "burnlab.launch.cli"]), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done


def fresh(folder: Path) -> Path:
    """`folder`, emptied: a run left by an earlier gpu-check would be found complete and skipped."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def failed(done: subprocess.CompletedProcess, what: str) -> str:
    return f"{what} exited with {done.returncode}: " + " | ".join(
        (done.stderr or done.stdout).strip().splitlines()[-4:]
    )


# -- the checks: each returns (status, numbers, reason) ---------------------------------------------
def check_model(s: dict, out: Path, limit: float):
    """Builds sd15_random once (the base model does, when model.build names an architecture)."""
    started = time.perf_counter()
    runs = fresh(out / "model_runs")  # the runner checks a study: one stage, never trained here
    runner = bench.make_runner(bench.compose_study(s["model"], runs, 1, "unet"), runs)
    size = sum(f.stat().st_size for f in Path(runner.base.root).rglob("*") if f.is_file())
    return "pass", {"seconds": time.perf_counter() - started, "folder_bytes": size, "path": runner.base.root}, ""


def check_train(wanted: str):
    def run(s: dict, out: Path, limit: float):
        precision = s["precision"][wanted]
        overrides = [
            *s["model"],
            *s["train"],
            f"data.resolution={s['resolution']}",
            f"train.mixed_precision={precision}",
        ]
        runs = fresh(out / f"train_{wanted}")
        runner = bench.make_runner(bench.compose_study(overrides, runs, s["epochs"], "unet"), runs)
        row = bench.burnlab_stage(runner)
        row.update(images=s["epochs"] * len(runner.data.train), epochs=s["epochs"])
        speed = bench.speed(row)
        device = runner.accelerator.device
        flops = bench.unet_flops_per_image(runner)
        name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
        peak = next((v for k, v in bench.GPU_PEAKS.items() if name.startswith(k)), None)
        numbers = {
            "precision": precision,
            "images_per_s": speed,
            "peak_memory_gib": row["peak_bytes"] / 2**30,
            "peak_measure": row["measure"],
            "unet_tflop_per_image": flops / 1e12,
            "mfu": speed * flops / peak if peak else None,
            "card_peak_tflops": peak / 1e12 if peak else None,
            "batch_size": runner.config.train.batch_size,
            "resolution": s["resolution"],
            "gradient_checkpointing": runner.config.train.gradient_checkpointing,
            "steps": len(row["losses"]),
            "last_loss": row["losses"][-1],
            "stage_seconds": row["seconds"],
        }
        if not all(math.isfinite(loss) for loss in row["losses"]):
            return "fail", numbers, "a loss is not finite"
        return "pass", numbers, "" if peak or device.type != "cuda" else f"MFU: no peak known for {name} (GPU_PEAKS)"

    return run


def check_resume(s: dict, out: Path, limit: float):
    from safetensors.torch import load_file

    epochs = s["epochs"]
    finals = {}
    for name in ("straight", "killed"):
        runs = fresh(out / f"resume_{name}")
        args = quiet_study(s, runs, s["precision"]["fp16"]) + [
            "stages.baseline.train=[unet]",
            f"stages.baseline.epochs={epochs}",
            f"stages.baseline.save_epochs=[{epochs}]",
            f"train.state_every_epochs={epochs // 2}",
            "sampling.testing_plan=false",
            "sampling.every_n_epochs=0",
            "train.save_dtype=float32",
        ]  # train=sd15 saves a childless stage's checkpoint in float16: compare exact weights
        if name == "killed":
            # SIGKILL right after the state at epochs/2 is published: os.replace #1 writes its
            # state.json inside the temp folder, #2 publishes the folder
            done = cli(["replace", "after", "2", *args], limit, wrapper=[str(ROOT / "tests" / "kill_during.py")])
            if done.returncode != -signal.SIGKILL:
                return (
                    "fail",
                    {},
                    failed(done, "the run to be killed")
                    if done.returncode
                    else "the run to be killed finished: no state was published at half its epochs",
                )
            states = sorted((runs / "cache" / "stages").glob("*/state/step_*"))
            if not states:  # a rerun would then start afresh and prove nothing about resuming
                return "fail", {}, "the killed run left no published state to resume from"
            resumed_from_step = int(states[-1].name.split("_")[1])
        done = cli(args, limit)
        if done.returncode:
            return "fail", {}, failed(done, f"the {name} run")
        [final] = sorted((runs / "cache" / "stages").glob(f"*/checkpoints/epoch_{epochs:04d}"))
        finals[name] = load_file(final / "unet" / "diffusion_pytorch_model.safetensors")
    differing = [k for k in finals["straight"] if not torch.equal(finals["straight"][k], finals["killed"][k])]
    numbers = {
        "precision": s["precision"]["fp16"],
        "epochs": epochs,
        "killed_after_epoch": epochs // 2,
        "resumed_from_step": resumed_from_step,
        "tensors": len(finals["straight"]),
        "tensors_differing": len(differing),
    }
    return (
        ("pass", numbers, "")
        if not differing
        else ("fail", numbers, f"{len(differing)} tensors differ, e.g. {differing[0]}")
    )


def check_sampling(s: dict, out: Path, limit: float):
    import numpy as np
    from PIL import Image

    runs = fresh(out / "sampling")
    args = quiet_study(s, runs, "no") + [  # the training is a stand-in: a checkpoint to sample
        *s["sampling"],
        "sampling.dtype=float16",
        "sampling.images_per_prompt=2",
        "sampling.steps=10",
        "stages.baseline.train=[text_encoder]",
        "stages.baseline.epochs=1",
        "stages.baseline.save_epochs=[1]",
        "sampling.every_n_epochs=0",
    ]
    started = time.perf_counter()
    done = cli(args, limit)
    seconds = time.perf_counter() - started
    if done.returncode:
        return "fail", {}, failed(done, "the study")
    rows = [json.loads(line) for line in (runs / "study" / "samples.jsonl").read_text().splitlines() if line.strip()]
    spreads = [float(np.asarray(Image.open(runs / "study" / r["path"]).convert("RGB")).std()) for r in rows]
    numbers = {
        "images": len(rows),
        "seconds_whole_study": seconds,
        "sampling_dtype": "float16",
        "smallest_pixel_std": min(spreads) if spreads else None,
    }
    if not rows:
        return "fail", numbers, "no samples in samples.jsonl"
    blank = sum(spread == 0 for spread in spreads)
    return (
        ("pass", numbers, "")
        if not blank
        else ("fail", numbers, f"{blank} of {len(rows)} images are one flat colour (NaN?)")
    )


def check_attribution(s: dict, out: Path, limit: float):
    checkpoints = sorted((out / "sampling" / "cache" / "stages").glob("*/checkpoints/epoch_0001"))
    if not checkpoints:
        return "skipped", {}, "no checkpoint to examine: the sampling_half check made none"
    clip = random_clip(out / "clip_model", s["clip"])
    started = time.perf_counter()
    done = cli(
        [
            str(checkpoints[0]),
            "--base",
            s["model_path"],
            "--out",
            str(fresh(out / "attribution")),
            "--seeds",
            "2",
            "--steps",
            "4",
            "--resolution",
            str(s["resolution"]),
            "--clip-model",
            str(clip),
        ],
        limit,
        wrapper=["-m", "burnlab.attribution.diagnose"],
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        return "fail", {"seconds": seconds}, failed(done, "burnlab-diagnose")
    lines = done.stdout.strip().splitlines()
    verdict = next((before for before, line in zip(lines, lines[1:]) if line.strip().startswith("report:")), "")
    numbers = {"seconds": seconds, "verdict": verdict.split(":")[0]}
    found = json.loads((out / "attribution" / "analysis" / "attribution.json").read_text())
    numbers["analysis_keys"] = sorted(found)[:8]
    return "pass", numbers, ""


def check_sdxl(s: dict, out: Path, limit: float):
    import numpy as np
    from PIL import Image

    runs = fresh(out / "sdxl")
    args = [
        "experiment=followfox_xl",  # the toy SDXL at its 64 px, on the GPU as in the dry run
        "stages=[baseline,te2_burn]",
        f"paths.runs={runs}",
        "name=study",
        f"train.mixed_precision={s['precision']['bf16']}",
        "analyze=false",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        "validation.every_n_epochs=0",
        "sampling.dtype=float16",
        "sampling.images_per_prompt=2",
        "sampling.steps=10",
        *[
            f"stages.{stage}.{key}"
            for stage in ("baseline", "te2_lo", "te2_hi")
            for key in ("epochs=1", "save_epochs=[1]")
        ],
    ]
    started = time.perf_counter()
    done = cli(args, limit)
    seconds = time.perf_counter() - started
    if done.returncode:
        return "fail", {"seconds": seconds}, failed(done, "the toy SDXL study")
    rows = [json.loads(line) for line in (runs / "study" / "samples.jsonl").read_text().splitlines() if line.strip()]
    spreads = [float(np.asarray(Image.open(runs / "study" / r["path"]).convert("RGB")).std()) for r in rows]
    pairs = json.loads((runs / "study" / "attribution.json").read_text())["pairs"]
    numbers = {
        "seconds_whole_study": seconds,
        "images": len(rows),
        "smallest_pixel_std": min(spreads) if spreads else None,
        "pairs": len(pairs),
        "corners_per_pair": sorted({len(pair["corners"]) for pair in pairs}),
    }
    blank = sum(spread == 0 for spread in spreads)
    if not rows or blank:
        return "fail", numbers, f"{blank} of {len(rows)} images are one flat colour (NaN?)"
    if numbers["corners_per_pair"] != [8]:
        return "fail", numbers, f"swap pairs with {numbers['corners_per_pair']} corners, not SDXL's 8"
    return "pass", numbers, ""


def random_clip(folder: Path, size: str) -> Path:
    """A CLIP model folder with random weights: ViT-L/14's sizes (openai/clip-vit-large-patch14,
    what model=sd15 measures with) or tiny; the toy world's offline tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from burnlab.toy.build import build_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer(folder.parent / "clip_tokenizer")
    if size == "vit-l-14":
        text = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12}
        vision = {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "image_size": 224,
            "patch_size": 14,
        }
        projection, pixels = 768, 224
    else:
        text = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2}
        vision = {**text, "image_size": 32, "patch_size": 8}
        projection, pixels = 16, 32
    torch.manual_seed(0)
    CLIPModel(
        CLIPConfig(
            text_config={
                **text,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": tokenizer.model_max_length,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config=vision,
            projection_dim=projection,
        )
    ).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": pixels}, crop_size={"height": pixels, "width": pixels})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def check_clip(s: dict, out: Path, limit: float):
    import numpy as np

    from burnlab.analysis.features import ClipModel

    clip = ClipModel(random_clip(out / "clip_model", s["clip"]))
    images = np.random.default_rng(0).integers(0, 256, (16, s["resolution"], s["resolution"], 3), dtype=np.uint8)
    prompt = "a man wearing sunglasses in the zorblax ornament style"
    started = time.perf_counter()
    features = {clip.device: (clip.image_features(images), clip.text_features(prompt))}
    seconds = time.perf_counter() - started
    clip.model, clip.device = clip.model.to("cpu"), "cpu"  # the same model on the CPU, float32, for reference
    features.setdefault("cpu", (clip.image_features(images), clip.text_features(prompt)))
    device = next(d for d in features if d != "cpu") if len(features) > 1 else "cpu"
    cosine = min(
        float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for ours, theirs in zip(features[device], features["cpu"])
        for a, b in zip(ours, theirs)
    )
    numbers = {
        "device": device,
        "images": len(images),
        "seconds_on_device": seconds,
        "lowest_cosine_device_vs_cpu": cosine,
        "clip_size": s["clip"],
    }
    return ("pass", numbers, "") if cosine > 0.999 else ("fail", numbers, f"features on {device} differ from the CPU's")


CHECKS = {
    "model": check_model,
    "train_bf16": check_train("bf16"),
    "train_fp16": check_train("fp16"),
    "resume_fp16": check_resume,
    "sampling_half": check_sampling,
    "attribution": check_attribution,
    "sdxl": check_sdxl,
    "clip": check_clip,
}
assert CHECKS.keys() == LIMITS.keys()


# -- the driver --------------------------------------------------------------------------------------
def worker(name: str, out: Path, dry_run: bool, limit: float) -> None:
    """One check in this process: its result as JSON in OUT/checks/NAME.json."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    status, numbers, reason = CHECKS[name](settings(dry_run, out), out, limit)
    result = {
        "name": name,
        "status": status,
        "seconds": time.perf_counter() - started,
        "numbers": numbers,
        "reason": reason,
    }
    (out / "checks" / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))


def run_check(name: str, out: Path, dry_run: bool, limit: float) -> dict:
    result_file = out / "checks" / f"{name}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--worker", name, "--out", str(out), "--limit", str(limit)]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command + (["--dry-run"] if dry_run else []), capture_output=True, text=True, timeout=limit, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {
            "name": name,
            "status": "fail",
            "seconds": time.perf_counter() - started,
            "numbers": {},
            "reason": f"over its limit of {limit:.0f} s",
        }
    if done.returncode or not result_file.exists():
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {
            "name": name,
            "status": "fail",
            "seconds": time.perf_counter() - started,
            "numbers": {},
            "reason": f"exited with {done.returncode}: {tail}",
        }
    return json.loads(result_file.read_text())


def markdown(results: dict) -> str:
    lines = [
        f"# gpu-check: {results['device']} ({results['mode']})",
        "",
        f"torch {results['torch']}, {results['started']}, "
        f"{results['seconds']:.0f} s of a {results['budget_s']} s budget",
        "",
        "| check | status | seconds | numbers | reason |",
        "|---|---|---:|---|---|",
    ]
    for check in results["checks"]:
        numbers = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in check["numbers"].items())
        lines.append(
            f"| {check['name']} | {check['status']} | {check['seconds']:.1f} | {numbers} | {check['reason']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/gpu_check"), help="results folder (default runs/gpu_check)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="every check on the CPU at toy size (tests it, proves nothing)"
    )
    parser.add_argument("--only", help=f"comma-separated checks to run, of: {', '.join(CHECKS)}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    if args.worker:
        worker(args.worker, out, args.dry_run, args.limit)
        return 0
    only = args.only.split(",") if args.only else list(CHECKS)
    unknown = [name for name in only if name not in CHECKS]
    if unknown:
        print(
            f"gpu-check: --only {args.only}: {', '.join(unknown)} is no check; the checks are {', '.join(CHECKS)}.",
            file=sys.stderr,
        )
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"gpu-check: no CUDA device answers (torch {torch.__version__}); the checks prove GPU rows and need one. "
            f"On a CPU, `make gpu-check ARGS=--dry-run` runs them at toy size to test the script.",
            file=sys.stderr,
        )
        return 2
    (out / "checks").mkdir(parents=True, exist_ok=True)
    results = {
        "mode": "dry-run (CPU, toy)" if args.dry_run else "gpu",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budget_s": BUDGET_S,
        "checks": [],
    }
    started = time.perf_counter()
    for name in CHECKS:
        left = BUDGET_S - (time.perf_counter() - started)
        if name not in only:
            result = {"name": name, "status": "skipped", "seconds": 0.0, "numbers": {}, "reason": "not in --only"}
        elif left < 5 and not args.dry_run:
            result = {
                "name": name,
                "status": "skipped",
                "seconds": 0.0,
                "numbers": {},
                "reason": f"the {BUDGET_S} s budget was spent",
            }
        else:
            result = run_check(name, out, args.dry_run, DRY_LIMIT_S if args.dry_run else min(LIMITS[name], left))
        results["checks"].append(result)
        print(f"{name:14s} {result['status']:7s} {result['seconds']:6.1f} s  {result['reason']}", flush=True)
    results["seconds"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(results))
    print(f"gpu-check: {out / 'gpu_check.json'} and gpu_check.md")
    return 1 if any(c["status"] == "fail" for c in results["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
