"""Fixed-seed samples of every checkpoint in the testing plan, and during training.

One pipeline (StableDiffusionPipeline, or StableDiffusionXLPipeline for SDXL) serves the whole
plan: between checkpoints only the component that changed is
swapped in (on LoRA runs only the adapters: one LoRA file in, the last one out; a swap corner
whose components carry adapters of two files loads each component with its own), every
checkpoint's prompts go through in batched calls, and each image's noise comes from its own
seeded generator, so a seed starts from the same noise at every checkpoint
whatever the batch (and whichever process made it). Samples are cached by (checkpoint identity,
sampling settings, dtype): the base and baseline samples that the UNet and text-encoder branches
share are made once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)
from filelock import FileLock
from PIL import Image

from burnlab.config.schema import SAMPLING_SCHEDULERS, SamplingConfig
from burnlab.models.adapters import swap_adapters
from burnlab.models.checkpoint import base_sources, component_sources
from burnlab.models.components import Source, base_pipeline
from burnlab.models.precision import dtype_name, in_dtype, resolve_dtype
from burnlab.runtime.distributed import any_rank, gather_shards, shard
from burnlab.runtime.stopping import StopSignals
from burnlab.store.files import (
    hash_json,
    publish_dir,
    read_jsonl,
    remove_folder,
    remove_temp,
    temp_dir_for,
    write_jsonl,
)
from burnlab.store.integrity import sample_folder_damage
from burnlab.store.layout import COMPLETE, IMAGE_INDEX, SAMPLES_INDEX, components_of, training_samples_dir

log = logging.getLogger("burnlab")

# a component to sample: where its weights are, or (burnlab-diagnose) a model already in memory
Component = Union[Source, torch.nn.Module]

# the diffusers class of each of the schema's sampling.scheduler names, in its order
SCHEDULERS = dict(
    zip(
        SAMPLING_SCHEDULERS,
        (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler),
        strict=True,
    )
)


def sampling_identity(config: SamplingConfig, dtype: torch.dtype) -> str:
    """What decides the pixels: prompts, seeds, steps, guidance, scheduler, size, precision."""
    keys = ("images_per_prompt", "seed", "guidance_scale", "steps", "scheduler", "negative_prompt", "width", "height")
    prompts = {name: p.prompt for name, p in config.prompts.items()}
    return hash_json({"prompts": prompts, "dtype": dtype_name(dtype), **{k: getattr(config, k) for k in keys}})


def load_pipeline(
    base: dict, config: SamplingConfig, device, dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    pipeline = base_pipeline(base, dtype=dtype)
    pipeline.scheduler = SCHEDULERS[config.scheduler].from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def generate(pipeline, config: SamplingConfig, jobs: List[dict]) -> List[np.ndarray]:
    """uint8 HxWx3 images for jobs [{prompt, seed}], `config.batch_size` per pipeline call."""
    images: List[np.ndarray] = []
    for start in range(0, len(jobs), config.batch_size):
        batch = jobs[start : start + config.batch_size]
        with torch.no_grad():
            out = pipeline(
                prompt=[job["prompt"] for job in batch],
                negative_prompt=[config.negative_prompt] * len(batch),
                generator=[torch.Generator().manual_seed(job["seed"]) for job in batch],
                num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale,
                height=config.height,
                width=config.width,
                output_type="np",
            )
        images.extend((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))
    return images


def sample_jobs(config: SamplingConfig) -> List[dict]:
    return [
        {
            "prompt_set": name,
            "prompt": prompt.prompt,
            "activation": prompt.activation,
            "expect": dict(prompt.expect),
            "seed": config.seed + i,
        }
        for name, prompt in config.prompts.items()
        for i in range(config.images_per_prompt)
    ]


def write_images(folder: Path, jobs: List[dict], images: List[np.ndarray]) -> List[dict]:
    rows = []
    for job, image in zip(jobs, images):
        relative = Path(job["prompt_set"]) / f"{job['seed']}.png"
        (folder / relative.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / relative)
        rows.append({**job, "path": str(relative), "height": image.shape[0], "width": image.shape[1]})
    return rows


def _lora_of(component: Component) -> Optional[str]:
    return component.lora if isinstance(component, Source) else None


class Sampler:
    """Samples for one study run; holds one pipeline and swaps components into it.

    Built from what it needs: the sampling config, the base model (`BaseModel.describe()`), the
    sample cache folder and the accelerator (device, ranks). With several processes every rank
    makes its share of each checkpoint's images and the main process writes them all.
    """

    def __init__(
        self, config: SamplingConfig, base: dict, cache_dir: Path, accelerator, stop: Optional[StopSignals] = None
    ):
        self.config = config
        self.stop = stop or StopSignals()
        self.base = base
        self.cache = Path(cache_dir)
        self.accelerator = accelerator
        self.device = accelerator.device
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.identity = sampling_identity(config, self.dtype)
        self._pipeline: Optional[StableDiffusionPipeline] = None
        self._loaded: Dict[str, Component] = {}
        self._adapters: Optional[str] = None  # the LoRA file whose adapters the pipeline carries

    @property
    def pipeline(self) -> StableDiffusionPipeline:
        if self._pipeline is None:
            self._pipeline = load_pipeline(self.base, self.config, self.device, self.dtype)
            self._loaded = base_sources(self.base)
        return self._pipeline

    def _swap_in(self, sources: Dict[str, Component]) -> None:
        """Put each component of `sources` into the pipeline, loading only what changed. A Source's
        LoRA adapters ride on the pipeline (one file in, the last one out) when every component
        takes them from the same file; components whose adapters come from different files (a
        swap corner of two LoRA checkpoints, burnlab.attribution.swap) each load their own."""
        shared = len({_lora_of(source) for source in sources.values()}) == 1
        if not shared and self._adapters is not None:
            self.pipeline.unload_lora_weights()
            self._adapters = None
        for name in components_of(self.base):
            wanted = sources[name]
            if isinstance(wanted, Source) and shared:
                wanted = dataclasses.replace(wanted, lora=None)  # its adapter is swapped below, not its component
            if self._loaded.get(name) != wanted:  # a Source by its fields, a module by identity
                model = wanted.load(name, self.dtype) if isinstance(wanted, Source) else in_dtype(wanted, self.dtype)
                setattr(self.pipeline, name, model.to(self.device).eval())
                self._loaded[name] = wanted
        if shared:
            self._adapters = swap_adapters(self.pipeline, self._adapters, sources)

    def _generate_shared(self, jobs: List[dict]) -> List[np.ndarray]:
        """All of `jobs`' images on every rank, each rank making its share."""
        mine = jobs[shard(len(jobs), self.accelerator.num_processes, self.accelerator.process_index)]
        return gather_shards(self.accelerator, generate(self.pipeline, self.config, mine) if mine else [])

    def _folder(self, checkpoint_id: str) -> Path:
        return self.cache / f"{checkpoint_id}-{self.identity}"

    def checkpoint_samples(self, checkpoint_id: str, sources: Dict[str, Component]) -> Path:
        """Make the samples of one checkpoint into the cache (every rank calls this). Concurrent
        sweep jobs sampling the same checkpoint take turns on its lock, and the later ones find it
        made; each writes into its own temp folder, published by one rename."""
        folder = self._folder(checkpoint_id)
        lock = FileLock(str(folder) + ".lock")
        if self.accelerator.is_main_process:
            self.cache.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            made = any_rank(
                self.accelerator,
                self.accelerator.is_main_process
                and (folder / COMPLETE).exists()
                and self._sound(checkpoint_id, folder),
            )
            if not made:
                self._make(checkpoint_id, sources, folder)
        finally:
            if self.accelerator.is_main_process:
                lock.release()
        return folder

    def _make(self, checkpoint_id: str, sources: Dict[str, Component], folder: Path) -> None:
        jobs = sample_jobs(self.config)
        self._swap_in(sources)
        images = self._generate_shared(jobs)
        if self.accelerator.is_main_process:
            remove_temp(self.cache, prefix=folder.name, recursive=False)  # a killed job's, under the lock
            tmp = temp_dir_for(folder)
            rows = write_images(tmp, jobs, images)
            common = {
                "checkpoint_id": checkpoint_id,
                "steps": self.config.steps,
                "guidance_scale": self.config.guidance_scale,
                "scheduler": self.config.scheduler,
            }
            write_jsonl(tmp / IMAGE_INDEX, [{**row, **common} for row in rows])
            (tmp / COMPLETE).write_text("complete\n")
            publish_dir(tmp, folder)

    def _usable(self, checkpoint_id: str) -> bool:
        """Main process: whether the checkpoint's sample folder is made and sound. A damaged one
        (an index row that does not parse, a PNG that does not decode in full) is removed under
        the folder's lock, named in the log, and sampled again."""
        folder = self._folder(checkpoint_id)
        if not (folder / COMPLETE).exists():
            return False
        with FileLock(str(folder) + ".lock"):
            if not (folder / COMPLETE).exists():  # another job's repair came first
                return False
            return self._sound(checkpoint_id, folder)

    @staticmethod
    def _sound(checkpoint_id: str, folder: Path) -> bool:
        """Under the folder's lock: whether a complete sample folder is undamaged; a damaged one is
        named in the log and removed, so that it is sampled again."""
        damage = sample_folder_damage(folder)
        if damage:
            log.warning("samples of checkpoint %s: %s; they are sampled again", checkpoint_id, damage[0])
            remove_folder(folder)
        return not damage

    def sample_testing_plan(self, study: dict, run_dir: Path) -> List[dict]:
        """Every checkpoint of every branch; writes the run's samples.jsonl (main process) and
        returns its rows. Checkpoints already in the cache, or shared by branches, are made once."""
        run_dir = Path(run_dir)
        entries = {entry["checkpoint_id"]: entry for plan in study["testing_plan"].values() for entry in plan}
        missing = [cid for cid in entries if not self._usable(cid)] if self.accelerator.is_main_process else []
        if self.accelerator.num_processes > 1:  # the main process's view decides, for every rank
            from accelerate.utils import broadcast_object_list

            missing = broadcast_object_list([missing])[0]
        for checkpoint_id in missing:
            entry = entries[checkpoint_id]
            sources = base_sources(self.base) if entry["dir"] is None else component_sources(run_dir / entry["dir"])
            self.checkpoint_samples(checkpoint_id, sources)
            if any_rank(self.accelerator, self.stop.received is not None):
                raise self.stop.interrupted(
                    "while sampling the testing plan; the checkpoints sampled so far are kept in the sample cache"
                )
        rows: List[dict] = []
        if self.accelerator.is_main_process:
            for branch, plan in study["testing_plan"].items():
                for entry in plan:
                    folder = self._folder(entry["checkpoint_id"])
                    for row in read_jsonl(folder / IMAGE_INDEX):
                        rows.append(
                            {
                                **row,
                                "branch": branch,
                                "index": entry["index"],
                                "label": entry["label"],
                                "stage": entry["stage"],
                                "epoch": entry["epoch"],
                                "study_epoch": entry["study_epoch"],
                                "path": os.path.relpath(folder / row["path"], run_dir),
                            }
                        )
            write_jsonl(run_dir / SAMPLES_INDEX, rows)
        return rows

    def training_hook(self, stage_dir: Path):
        """A callback for the trainer (every rank calls it): samples the in-memory models every N
        epochs into the stage's samples/ folder. Uses only its own seeded generators (the training
        RNG is untouched), runs the models in the sampling dtype (a copy where theirs differs)
        and puts them back in the mode it found them."""

        def on_epoch_end(epoch: int, models: Dict[str, torch.nn.Module]) -> None:
            if epoch % self.config.every_n_epochs:
                return
            pipeline = self.pipeline
            saved = {name: (getattr(pipeline, name), models[name].training) for name in components_of(self.base)}
            for name in saved:
                setattr(pipeline, name, in_dtype(models[name], self.dtype).eval())
            try:
                jobs = sample_jobs(self.config)
                images = self._generate_shared(jobs)
            finally:
                for name, (original, training) in saved.items():
                    models[name].train(training)
                    setattr(pipeline, name, original)
            if self.accelerator.is_main_process:
                folder = training_samples_dir(stage_dir, epoch)
                write_jsonl(folder / IMAGE_INDEX, write_images(folder, jobs, images))

        return on_epoch_end
