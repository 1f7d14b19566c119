"""Does the toy base follow prompts? Samples the study's three prompts and asks the probe.

    .venv/bin/python -m burnlab.toy.check_base            # the shipped base and probe
    .venv/bin/python -m burnlab.toy.check_base --base PATH --probe PATH --grid /tmp/grid.png

For each of the toy study's prompt sets (conf/sampling/toy.yaml, what the study samples with):
27 fixed-seed samples with its scheduler, steps and guidance, the
fraction the probe classifies as the prompted subject (the issue asks >= 80%), the fraction that
also matches the expected identity, and the mean style probability. Also writes the samples as a
grid, one prompt per three rows, for a person to look at.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from omegaconf import OmegaConf

from burnlab.config.schema import SamplingConfig
from burnlab.sampling.sampler import SCHEDULERS
from burnlab.toy import asset_dir
from burnlab.toy.probe import load_probe
from burnlab.toy.world import image_grid


def toy_sampling() -> SamplingConfig:
    """The toy study's sampling config, conf/sampling/toy.yaml: the one source of its prompts."""
    from burnlab.config.compose import CONF_DIR

    schema = OmegaConf.structured(SamplingConfig)
    return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(CONF_DIR / "sampling" / "toy.yaml")))


def sample_prompt(
    pipeline: StableDiffusionPipeline, prompt: str, seeds: list[int], sampling: SamplingConfig
) -> np.ndarray:
    """uint8 [len(seeds), 64, 64, 3]: one sample per seed, batched."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    images = pipeline(
        [prompt] * len(seeds),
        generator=generators,
        output_type="np",
        num_inference_steps=sampling.steps,
        guidance_scale=sampling.guidance_scale,
    ).images
    return (images * 255).round().astype(np.uint8)


def prompt_following(base: str | os.PathLike, probe_folder: str | os.PathLike, samples: int = 27) -> tuple[dict, dict]:
    """Per prompt set: rates measured by the probe, and the sampled images."""
    diffusers_logging.disable_progress_bar()
    sampling = toy_sampling()
    # the class model_index.json names: StableDiffusionPipeline, or the toy SDXL's StableDiffusionXLPipeline
    pipeline = DiffusionPipeline.from_pretrained(base)
    pipeline.scheduler = SCHEDULERS[sampling.scheduler].from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    probe = load_probe(probe_folder)
    rates, images = {}, {}
    for name, spec in sampling.prompts.items():
        images[name] = sample_prompt(pipeline, spec.prompt, list(range(samples)), sampling)
        predicted = probe.predict(images[name])
        subject = np.array(predicted["subject"]) == spec.expect["subject"]
        identity = np.array([i == spec.expect.get("identity") for i in predicted["identity"]])
        rates[name] = {
            "prompt": spec.prompt,
            "subject": float(subject.mean()),
            "subject_and_identity": float((subject & identity).mean()),
            "style": float(predicted["style"].mean()),
        }
    return rates, images


def print_table(
    base: str | os.PathLike,
    probe_folder: str | os.PathLike,
    samples: int = 27,
    grid: str | os.PathLike = "/tmp/toy_base_check.png",
) -> dict:
    rates, images = prompt_following(base, probe_folder, samples)
    sampling = toy_sampling()
    print(
        f"base follows prompts ({samples} fixed-seed samples each, {sampling.scheduler} "
        f"{sampling.steps} steps, guidance {sampling.guidance_scale}):"
    )
    print(f"| {'prompt':<56} | subject | +identity | style |")
    print(f"|{'-' * 58}|---------|-----------|-------|")
    for row in rates.values():
        print(
            f"| {row['prompt']:<56} | {row['subject']:>7.0%} | "
            f"{row['subject_and_identity']:>9.0%} | {row['style']:>5.2f} |"
        )
    ordered = [image for prompt_set in images.values() for image in prompt_set]
    image_grid(ordered, columns=9).save(grid)
    print(f"samples: {grid}")
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, default=asset_dir("base"))
    parser.add_argument("--probe", type=Path, default=asset_dir("probe"))
    parser.add_argument("--samples", type=int, default=27)
    parser.add_argument("--grid", type=Path, default=Path("/tmp/toy_base_check.png"))
    args = parser.parse_args(argv)
    print_table(args.base, args.probe, args.samples, args.grid)


if __name__ == "__main__":
    main()
