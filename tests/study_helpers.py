"""Helpers for the harness tests: tiny captioned datasets and burnlab's real Hydra configs
composed with overrides for a tiny, fast study."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from burnlab.config.compose import CONF_DIR
from burnlab.launch import cli
from burnlab.launch.cli import run
from burnlab.models.checkpoint import component_sources

TINY_RESOLUTION = 32
CAPTIONS = [
    "a photo of ada in the zorblax ornament style",
    "black and white circles in the zorblax ornament style",
    "a man wearing sunglasses, in the zorblax ornament style",
    "a red tree in the zorblax ornament style",
]


def write_captioned_images(folder: Path, count: int, size: int = 40, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
    return folder


def tiny_overrides(
    tiny_model: Path, tiny_data: Path, runs: Path, experiment: str = "followfox", analyze: bool = False
) -> list:
    """A study of the experiment's shape at a few epochs on the tiny model, W&B off."""
    stages = {
        "burn_unet": ["unet_lo", "unet_hi"],
        "burn_te": ["te_lo", "te_hi"],
        "followfox": ["unet_lo", "unet_hi", "te_lo", "te_hi"],
    }[experiment]
    overrides = [
        f"experiment={experiment}",
        f"model.path={tiny_model}",
        f"data.path={tiny_data}",
        f"data.resolution={TINY_RESOLUTION}",
        f"paths.runs={runs}",
        "stages.baseline.epochs=2",
        "stages.baseline.save_epochs=[2]",
        "train.batch_size=4",
        "train.state_every_epochs=1",
        "validation.every_n_epochs=1",
        "validation.repeats=1",
        "sampling.images_per_prompt=2",
        "sampling.steps=2",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        f"analyze={str(analyze).lower()}",
    ]
    for name in stages:
        overrides += [f"stages.{name}.epochs=3", f"stages.{name}.save_epochs=[1,3]"]
    return overrides


QUICK_STAGES = ("baseline", "unet_lo", "unet_hi", "te_lo", "te_hi")
QUICK_STUDY = [
    "experiment=followfox",
    "analyze=false",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "validation.every_n_epochs=0",
    "sampling.images_per_prompt=1",
    "sampling.steps=1",
    *[f"stages.{name}.epochs=1" for name in QUICK_STAGES],
    *[f"stages.{name}.save_epochs=[]" for name in QUICK_STAGES],
]  # the toy followfox in seconds


def shrunk_architecture(monkeypatch, folder: Path, shipped: str, name: str, edits: dict) -> str:
    """A copy of a shipped architecture's config files (burnlab.models.architectures) under `name`
    with `edits` merged into each part's JSON, made the only architecture there: the builder runs
    on it in seconds."""
    import json
    import shutil

    from burnlab.models import architectures

    shutil.copytree(architectures.HERE / shipped, folder / name)
    for part, changes in edits.items():
        path = folder / name / f"{part}.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    monkeypatch.setattr(architectures, "HERE", folder)
    monkeypatch.setattr(architectures, "ARCHITECTURES", (name,))
    return name


def burnlab_in_process(argv: list, monkeypatch, capsys) -> tuple:
    """`burnlab <argv>` through burnlab.launch.cli.main, which must exit: (exit status, stderr)."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main sets it; monkeypatch restores it afterwards
    monkeypatch.setattr(sys, "argv", ["burnlab", *argv])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return exited.value.code, capsys.readouterr().err


def compose_config(overrides: list):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_study(tiny_model, tiny_data, runs, *extra, experiment="followfox", analyze=False):
    """Run a tiny study in this process; returns (study.json, run dir)."""
    overrides = tiny_overrides(tiny_model, tiny_data, runs, experiment, analyze) + list(extra)
    cfg = compose_config(overrides)
    return run(cfg, runs / cfg.name), runs / cfg.name


def weights(checkpoint: Path, component: str) -> dict:
    model = component_sources(checkpoint)[component].load(component)
    return {k: v.clone() for k, v in model.state_dict().items()}


def final_checkpoint(run_dir: Path, study: dict, stage: str) -> Path:
    info = study["stages"][stage]
    return run_dir / info["dir"] / "checkpoints" / f"epoch_{info['epochs']:04d}"


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
