"""Fixed-seed samples of every checkpoint in the testing plan, and during training.

One pipeline serves the whole plan: between checkpoints only the component that changed is
swapped in, every checkpoint's prompts go through in batched calls, and each image's noise
comes from its own seeded generator, so a seed starts from the same noise at every checkpoint
whatever the batch. Samples are cached by (checkpoint identity, sampling settings): the base
and baseline samples that the UNet and text-encoder branches share are made once.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       StableDiffusionPipeline)
from PIL import Image

from burnlab.checkpoint import CHECKPOINT_COMPONENTS, base_sources, component_sources
from burnlab.components import Source
from burnlab.config import SamplingConfig
from burnlab.store import hash_json, read_jsonl, write_jsonl

SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "euler": EulerDiscreteScheduler,
              "dpm": DPMSolverMultistepScheduler}


def sampling_identity(config: SamplingConfig) -> str:
    """What decides the pixels: prompts, seeds, steps, guidance, scheduler, size."""
    keys = ("images_per_prompt", "seed", "guidance_scale", "steps", "scheduler", "negative_prompt", "width", "height")
    prompts = {name: p.prompt for name, p in config.prompts.items()}
    return hash_json({"prompts": prompts, **{k: getattr(config, k) for k in keys}})


def load_pipeline(base: dict, config: SamplingConfig, device, dtype=torch.float32) -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(
        base["path"], revision=base.get("revision"), variant=base.get("variant"), use_safetensors=True,
        safety_checker=None, requires_safety_checker=False, torch_dtype=dtype)
    pipeline.scheduler = SCHEDULERS[config.scheduler].from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def generate(pipeline, config: SamplingConfig, jobs: List[dict]) -> List[np.ndarray]:
    """uint8 HxWx3 images for jobs [{prompt, seed}], `config.batch_size` per pipeline call."""
    images: List[np.ndarray] = []
    for start in range(0, len(jobs), config.batch_size):
        batch = jobs[start:start + config.batch_size]
        with torch.no_grad():
            out = pipeline(
                prompt=[job["prompt"] for job in batch], negative_prompt=[config.negative_prompt] * len(batch),
                generator=[torch.Generator().manual_seed(job["seed"]) for job in batch],
                num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
                height=config.height, width=config.width, output_type="np")
        images.extend((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))
    return images


def sample_jobs(config: SamplingConfig) -> List[dict]:
    return [{"prompt_set": name, "prompt": prompt.prompt, "activation": prompt.activation,
             "expect": dict(prompt.expect), "seed": config.seed + i}
            for name, prompt in config.prompts.items() for i in range(config.images_per_prompt)]


def write_images(folder: Path, jobs: List[dict], images: List[np.ndarray]) -> List[dict]:
    rows = []
    for job, image in zip(jobs, images):
        relative = Path(job["prompt_set"]) / f"{job['seed']}.png"
        (folder / relative.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / relative)
        rows.append({**job, "path": str(relative), "height": image.shape[0], "width": image.shape[1]})
    return rows


class Sampler:
    """Samples for one study run; holds one pipeline and swaps components into it."""

    def __init__(self, runner):
        self.runner = runner
        self.config: SamplingConfig = runner.config.sampling
        self.device = runner.accelerator.device
        self.base = runner.base.describe()
        self.cache = runner.cache / "samples"
        self.identity = sampling_identity(self.config)
        self._pipeline: Optional[StableDiffusionPipeline] = None
        self._loaded: Dict[str, Source] = {}

    @property
    def pipeline(self) -> StableDiffusionPipeline:
        if self._pipeline is None:
            self._pipeline = load_pipeline(self.base, self.config, self.device)
            self._loaded = base_sources(self.base)
        return self._pipeline

    def _swap_in(self, sources: Dict[str, Source]) -> None:
        for name in CHECKPOINT_COMPONENTS:
            if self._loaded.get(name) != sources[name]:
                model = sources[name].load(name).to(self.device).eval()
                setattr(self.pipeline, name, model)
                self._loaded[name] = sources[name]

    def checkpoint_samples(self, checkpoint_id: str, sources: Dict[str, Source]) -> Path:
        """The sample folder of one checkpoint, made unless already in the cache."""
        folder = self.cache / f"{checkpoint_id}-{self.identity}"
        if (folder / "COMPLETE").exists():
            return folder
        jobs = sample_jobs(self.config)
        pipeline = self.pipeline
        self._swap_in(sources)
        images = generate(pipeline, self.config, jobs)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        rows = write_images(tmp, jobs, images)
        common = {"checkpoint_id": checkpoint_id, "steps": self.config.steps,
                  "guidance_scale": self.config.guidance_scale, "scheduler": self.config.scheduler}
        write_jsonl(tmp / "index.jsonl", [{**row, **common} for row in rows])
        (tmp / "COMPLETE").write_text("complete\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder

    def sample_testing_plan(self, study: dict) -> List[dict]:
        """Every checkpoint of every branch; writes the run's samples.jsonl and returns its rows."""
        run_dir = self.runner.run_dir
        rows: List[dict] = []
        if self.runner.is_main:
            for branch, plan in study["testing_plan"].items():
                for entry in plan:
                    sources = base_sources(self.base) if entry["dir"] is None else \
                        component_sources(run_dir / entry["dir"])
                    folder = self.checkpoint_samples(entry["checkpoint_id"], sources)
                    for row in read_jsonl(folder / "index.jsonl"):
                        rows.append({**row, "branch": branch, "index": entry["index"], "label": entry["label"],
                                     "stage": entry["stage"], "epoch": entry["epoch"],
                                     "study_epoch": entry["study_epoch"],
                                     "path": os.path.relpath(folder / row["path"], run_dir)})
            write_jsonl(run_dir / "samples.jsonl", rows)
        self.runner.accelerator.wait_for_everyone()
        return rows

    def training_hook(self, stage_name: str):
        """A callback for the trainer: samples the in-memory models every N epochs into the
        stage's samples/ folder. Uses only its own seeded generators (the training RNG is
        untouched) and puts the models back in the mode it found them."""
        stage_dir = self.runner.stage_dirs[stage_name]

        def on_epoch_end(epoch: int, models: Dict[str, torch.nn.Module]) -> None:
            if epoch % self.config.every_n_epochs or not self.runner.is_main:
                return
            pipeline = self.pipeline
            saved = {name: (getattr(pipeline, name), models[name].training) for name in CHECKPOINT_COMPONENTS}
            for name in CHECKPOINT_COMPONENTS:
                setattr(pipeline, name, models[name].eval())
            try:
                jobs = sample_jobs(self.config)
                folder = stage_dir / "samples" / f"epoch_{epoch:04d}"
                write_jsonl(folder / "index.jsonl", write_images(folder, jobs, generate(pipeline, self.config, jobs)))
            finally:
                for name, (original, training) in saved.items():
                    models[name].train(training)
                    setattr(pipeline, name, original)

        return on_epoch_end
