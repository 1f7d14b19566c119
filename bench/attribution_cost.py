"""What one examined checkpoint costs: the swap corners' samples and the drift instruments.

    .venv/bin/python bench/attribution_cost.py                       # the toy, the study's sampling
    .venv/bin/python bench/attribution_cost.py --model sd15_random --resolution 64 --seeds 3 --steps 4

R is the base model, M the base with its UNet and text encoder perturbed (seeded), held in memory as
burnlab-diagnose holds a user's model. Each row runs burnlab.attribution.swap.attribute_pair into an
empty sample cache and prints its seconds: all four corners sampled (a model nothing was sampled
of before, as in burnlab-diagnose), then again with R's and M's samples cached so that only the
two hybrids are new (a study's checkpoint, whose own samples the testing plan made), and the
instruments alone. Beside them the time to sample one corner, the unit the rest is made of.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from burnlab.attribution.drift import measure
from burnlab.attribution.swap import Model, attribute_pair
from burnlab.config.compose import CONF_DIR
from burnlab.config.schema import ModelConfig, SamplingConfig
from burnlab.models.components import base_pipeline
from burnlab.models.encoding import TextConditioner
from burnlab.sampling.sampler import Sampler, sample_jobs
from burnlab.store.files import hash_json


def sampling(args) -> SamplingConfig:
    raw = OmegaConf.load(CONF_DIR / "sampling" / ("toy.yaml" if args.model == "toy" else "study.yaml"))
    for key, value in (
        ("images_per_prompt", args.seeds),
        ("steps", args.steps),
        ("width", args.resolution),
        ("height", args.resolution),
    ):
        if value is not None:
            raw[key] = value
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SamplingConfig), raw))


def base_folder(model: str) -> str:
    from hydra import compose, initialize_config_dir

    from burnlab.config.compose import register_configs
    from burnlab.models.components import BaseModel

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    config = OmegaConf.to_object(cfg.model)
    return BaseModel(config if isinstance(config, ModelConfig) else ModelConfig(**config)).root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="a model group: toy (default) or sd15_random")
    parser.add_argument("--seeds", type=int, help="images per prompt (default: the sampling group's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the sampling group's)")
    parser.add_argument("--resolution", type=int, help="sample size (default: the sampling group's)")
    args = parser.parse_args(argv)
    config = sampling(args)
    root = base_folder(args.model)
    base = {"path": root, "revision": None, "variant": None, "allow_pickle_weights": False}
    pipeline = base_pipeline(base)
    tuned_pipeline = base_pipeline(base)
    conditioner = TextConditioner({"text_encoder": pipeline.tokenizer})  # the SD toy's one text encoder
    tuned_unet, tuned_text_encoder = tuned_pipeline.unet, tuned_pipeline.text_encoder
    with torch.no_grad():  # both components moved: every corner is a model of its own
        generator = torch.Generator().manual_seed(0)
        for parameter in [*tuned_unet.parameters(), *tuned_text_encoder.parameters()]:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-2)
    reference = Model("R", hash_json(["cost", root]), {"unet": pipeline.unet, "text_encoder": pipeline.text_encoder})
    tuned = Model("M", hash_json(["cost", root, "tuned"]), {"unet": tuned_unet, "text_encoder": tuned_text_encoder})
    images = len(sample_jobs(config))
    print(
        f"model {args.model} ({root}); {images} images a corner ({len(config.prompts)} prompts x "
        f"{config.images_per_prompt} seeds), {config.steps} steps, {config.width or 'native'} px, "
        f"{torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as cache:
        sampler = Sampler(config, base, Path(cache), Accelerator(cpu=not torch.cuda.is_available()))
        sampler.pipeline  # noqa: B018 -- load the pipeline before timing, as a study has it loaded
        start = time.perf_counter()
        sampler.checkpoint_samples("warm-up", tuned.components)
        one_corner = time.perf_counter() - start

        def attributed() -> float:  # seconds
            start = time.perf_counter()
            attribute_pair(sampler, reference, tuned, Path(cache), conditioner, pipeline.scheduler)
            return time.perf_counter() - start

        all_four = attributed()
        for corner in Path(cache).glob("*-*"):  # keep R's and M's samples, drop the hybrids'
            if corner.is_dir() and not corner.name.startswith((reference.id, tuned.id)):
                for file in sorted(corner.rglob("*"), reverse=True):
                    file.unlink() if file.is_file() else file.rmdir()
                corner.rmdir()
        hybrids_only = attributed()
        prompts = list(dict.fromkeys(job["prompt"] for job in sample_jobs(config)))
        start = time.perf_counter()
        measure(
            reference.components,
            tuned.components,
            conditioner,
            pipeline.scheduler,
            prompts,
            sampler.device,
        )
        instruments = time.perf_counter() - start
    print(f"one corner sampled:                      {one_corner:6.1f} s")
    print(f"one examined checkpoint, 4 corners new:  {all_four:6.1f} s  (burnlab-diagnose)")
    print(f"one examined checkpoint, 2 hybrids new:  {hybrids_only:6.1f} s  (a study's checkpoint)")
    print(f"  of which the drift instruments:        {instruments:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
