"""Sampling throughput: burnlab's testing-plan sampler against a naive loop, in one run.

    .venv/bin/python bench/sampling_throughput.py            # make bench
    .venv/bin/python bench/sampling_throughput.py --model /path/to/diffusers/folder

Trains a followfox-shaped study for a few epochs on the toy model (8 checkpoints per branch,
as in the study), then samples its whole testing plan twice with the same scheduler, steps,
prompts and seeds:
- naive: a new pipeline per checkpoint of each branch and one pipeline call per prompt (the
  per-prompt loop of diffusers' training scripts' `log_validation`);
- planned: burnlab.sampling.sampler — one pipeline, only the changed component swapped in, all of a
  checkpoint's prompts in one batched call, base/baseline samples shared by the branches.
Prints both times, the ratio, and the largest pixel difference between the two image sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from burnlab.config.compose import CONF_DIR, load_config, register_configs
from burnlab.launch.cli import run
from burnlab.launch.runner import StudyRunner
from burnlab.models.checkpoint import base_sources, component_sources
from burnlab.sampling.sampler import Sampler, generate, load_pipeline, sample_jobs

PIXEL_TOLERANCE = 2  # uint8 levels: batched and per-prompt calls may differ by float rounding


def study_config(runs: Path, model: str | None):
    overrides = [
        "experiment=followfox",
        f"paths.runs={runs}",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        "analyze=false",
        "sampling.testing_plan=false",
        "validation.every_n_epochs=0",
        "stages.baseline.epochs=2",
        "stages.baseline.save_epochs=[2]",
    ]
    for stage in ("unet_lo", "unet_hi", "te_lo", "te_hi"):
        overrides += [f"stages.{stage}.epochs=3", f"stages.{stage}.save_epochs=[1,2,3]"]
    if model:
        overrides.append(f"model.path={model}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def naive_testing_plan(study: dict, run_dir: Path, config) -> dict:
    """A new pipeline per checkpoint, one call per prompt; returns {(branch, index, set, seed): image}."""
    images = {}
    jobs = sample_jobs(config.sampling)
    for branch, plan in study["testing_plan"].items():
        for entry in plan:
            pipeline = load_pipeline(study["base"], config.sampling, "cpu")
            sources = base_sources(study["base"]) if entry["dir"] is None else component_sources(run_dir / entry["dir"])
            for name, source in sources.items():
                setattr(pipeline, name, source.load(name).eval())
            for prompt_set in config.sampling.prompts:
                prompt_jobs = [job for job in jobs if job["prompt_set"] == prompt_set]
                one_call = dataclasses.replace(config.sampling, batch_size=len(prompt_jobs))
                for job, image in zip(prompt_jobs, generate(pipeline, one_call, prompt_jobs)):
                    images[(branch, entry["index"], prompt_set, job["seed"])] = image
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a diffusers folder (default: the toy base model)")
    args = parser.parse_args()
    register_configs()
    torch.manual_seed(0)
    runs = Path(tempfile.mkdtemp(prefix="burnlab_bench_"))
    try:
        cfg = study_config(runs, args.model)
        print("training a short followfox-shaped study for its checkpoints ...")
        study = run(cfg, runs / "followfox")
        config = load_config(cfg)
        run_dir = runs / "followfox"
        checkpoints = sum(len(plan) for plan in study["testing_plan"].values())
        print(
            f"testing plan: {checkpoints} checkpoints x {len(sample_jobs(config.sampling))} images, "
            f"{config.sampling.steps} {config.sampling.scheduler} steps, torch threads {torch.get_num_threads()}"
        )

        started = time.perf_counter()
        naive = naive_testing_plan(study, run_dir, config)
        naive_s = time.perf_counter() - started

        runner = StudyRunner(config, run_dir, (run_dir / "config.yaml").read_text(), {})
        runner.setup()
        sampler = Sampler(config.sampling, study["base"], runner.cache / "samples", runner.accelerator)
        started = time.perf_counter()
        rows = sampler.sample_testing_plan(study, run_dir)
        planned_s = time.perf_counter() - started

        worst = 0
        for row in rows:
            planned_image = np.asarray(Image.open(run_dir / row["path"]), dtype=np.int16)
            reference = naive[(row["branch"], row["index"], row["prompt_set"], row["seed"])].astype(np.int16)
            worst = max(worst, int(np.abs(planned_image - reference).max()))
        print(f"naive   (pipeline per checkpoint, call per prompt): {naive_s:7.2f} s  ({len(naive)} images)")
        print(f"planned (one pipeline, swaps, batched, shared):     {planned_s:7.2f} s  ({len(rows)} rows)")
        print(f"speed-up: {naive_s / planned_s:.2f}x")
        print(
            f"largest pixel difference: {worst} uint8 levels (tolerance {PIXEL_TOLERANCE}) -> "
            f"{'same images' if worst <= PIXEL_TOLERANCE else 'IMAGES DIFFER'}"
        )
    finally:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
