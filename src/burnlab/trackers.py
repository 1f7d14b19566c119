"""Mirrors of the run store in W&B and TensorBoard, through accelerate's trackers.

One W&B run per study run (grouped by the study's name); every stage's rows are logged under
`<stage>/<metric>` with `study_epoch` as the x axis, so the UNet and text-encoder stages of a
followfox study sit on one dashboard. Stages taken from the cache are replayed from their
metrics.jsonl, so the dashboard is complete even when nothing was trained. W&B mode `auto` is
online when an API key is configured and offline otherwise; these machines only ever use offline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List

from burnlab.config import BurnlabConfig
from burnlab.errors import ConfigError
from burnlab.wandb_key import wandb_key_present


def wandb_mode(configured: str) -> str:
    if configured == "online" and not wandb_key_present():  # else wandb fails inside accelerate
        raise ConfigError("logger.wandb.mode", configured, "`online` only with a W&B API key (WANDB_API_KEY or "
                          "`wandb login`); without one use auto (offline files), offline or disabled")
    if configured != "auto":
        return configured
    return "online" if wandb_key_present() else "offline"


def tracker_names(config: BurnlabConfig) -> List[str]:
    names = []
    if wandb_mode(config.logger.wandb.mode) != "disabled":
        names.append("wandb")
    if config.logger.tensorboard:
        names.append("tensorboard")
    return names


def flatten_config(nested: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, lists and None as text: what TensorBoard's hparams take."""
    flat = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def init_trackers(accelerator, config: BurnlabConfig, run_dir: Path, flat_config: dict) -> None:
    if not accelerator.log_with:
        return
    wandb = config.logger.wandb
    kwargs = {"wandb": {"mode": wandb_mode(wandb.mode), "group": config.name, "name": f"{config.name}-{run_dir.name}" if run_dir.name != config.name else config.name,
                        "dir": str(run_dir), "entity": wandb.entity, "job_type": "study"}}
    accelerator.init_trackers(wandb.project, config=flat_config, init_kwargs=kwargs)
    if "wandb" in tracker_names(config) and accelerator.is_main_process:  # other ranks hold blank trackers
        run = accelerator.get_tracker("wandb", unwrap=True)
        run.define_metric("study_epoch")
        run.define_metric("*", step_metric="study_epoch")


def log_row(accelerator, row: dict) -> None:
    """A metrics.jsonl row as `<stage>/<key>` scalars (per-timestep maps flattened)."""
    if not accelerator.log_with:
        return
    values = {"study_epoch": row["study_epoch"]}
    for key, value in row.items():
        if key in ("stage", "type", "study_epoch"):
            continue
        if isinstance(value, dict):
            values.update({f"{row['stage']}/{key}/t{t}": v for t, v in value.items()})
        else:
            values[f"{row['stage']}/{key}"] = value
    accelerator.log(values)


def replay_rows(accelerator, rows: Iterable[dict]) -> None:
    for row in rows:
        log_row(accelerator, row)


def log_study(accelerator, study: dict) -> None:
    """study.json into the W&B run's config: what the analysis reads back through the W&B API."""
    if "wandb" in [t.name for t in accelerator.trackers]:
        accelerator.get_tracker("wandb", unwrap=True).config.update(
            {"study_json": json.dumps(study)}, allow_val_change=True)


def log_samples(accelerator, rows: List[dict], run_dir: Path) -> None:
    """Testing-plan samples: one W&B table (checkpoint, prompt, seed, image), an artifact per
    checkpoint, and TensorBoard images."""
    if not accelerator.log_with or not rows:
        return
    from PIL import Image

    if "wandb" in [t.name for t in accelerator.trackers]:
        import wandb

        run = accelerator.get_tracker("wandb", unwrap=True)
        table = wandb.Table(columns=["branch", "index", "checkpoint", "prompt_set", "prompt", "seed", "image"])
        artifacts = {}
        for row in rows:
            path = (run_dir / row["path"]).resolve()
            table.add_data(row["branch"], row["index"], row["label"], row["prompt_set"], row["prompt"],
                           row["seed"], wandb.Image(str(path)))
            artifact = artifacts.setdefault(row["checkpoint_id"], wandb.Artifact(
                f"samples-{row['checkpoint_id']}", type="samples", metadata={"label": row["label"]}))
            name = f"{row['prompt_set']}/{path.name}"
            if name not in artifact.manifest.entries:
                artifact.add_file(str(path), name=name)
        run.log({"samples": table})
        for artifact in artifacts.values():
            run.log_artifact(artifact)
    if "tensorboard" in [t.name for t in accelerator.trackers]:
        import numpy as np

        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for row in rows:
            image = np.asarray(Image.open(run_dir / row["path"]).convert("RGB"))
            writer.add_image(f"{row['branch']}/{row['prompt_set']}/seed{row['seed']}", image,
                             global_step=row["index"], dataformats="HWC")
