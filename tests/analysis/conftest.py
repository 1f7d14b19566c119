"""A tiny synthetic run store (docs/run_store.md) for the analysis tests: a UNet-burn run and a
TE-burn run sharing base and baseline, 8 checkpoints each, 2 prompt sets x 9 seeds of 16x16 PNGs;
and a sweep: a multirun folder of 3 UNet-burn jobs that differ in the hi stage's learning rate.

The pictures are made to burn the way the study saw it: on the UNet branch colours saturate
and the seeds converge (variability falls); on the TE branch colours stay put but the subject
marker (pixel 0,0: white = what the prompt asked, black = something else) goes wrong, which
`MarkerProbe` reads as a stand-in for the toy probe. The hi stage burns in proportion to its
learning rate (HI_LR: as hard as above).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from burnlab.analysis.features import Instruments

SIZE = 16
SEEDS = list(range(1000, 1009))
PROMPT_SETS = {
    "person": {"prompt": "a photo of ada", "activation": False, "expect": {"subject": "person"}, "hue": (200, 120, 90)},
    "sunglasses": {
        "prompt": "a man wearing sunglasses, zorblax style",
        "activation": True,
        "expect": {"subject": "sunglasses"},
        "hue": (90, 140, 190),
    },
}
BURNS = {  # run name -> (leaf branch, trained component, lo stage, hi stage)
    "burn_unet": ("unet_hi", "unet", "unet_lo", "unet_hi"),
    "burn_te": ("te_hi", "text_encoder", "te_lo", "te_hi"),
}
BASELINE_EPOCHS, BURN_EPOCHS, SAVE_EPOCHS = 5, 10, [2, 6, 10]
HI_LR = 6e-4  # the hi stage's learning rate
SWEEP_LRS = ("1e-3", "1e-4", "3e-4")  # the sweep's jobs job0, job1, job2, as typed: neither folder
# nor text order is value order


def burn_level(index: int, hi_strength: float = 1.0) -> float:
    """0 for base and baseline, rising to 0.5 at the lo stage's end and to 0.5 + 0.5 *
    hi_strength at the last checkpoint."""
    level = max(0, index - 1) / 6
    return level if level <= 0.5 else 0.5 + (level - 0.5) * hi_strength


def sample_pixels(prompt_set: str, seed: int, index: int, component: str, hi_strength: float = 1.0) -> np.ndarray:
    """A 16x16 sample: the prompt set's colour with a per-seed pattern, burnt by the branch."""
    rng = np.random.default_rng(seed)
    base = np.array(PROMPT_SETS[prompt_set]["hue"], dtype=float)
    pattern = rng.uniform(-50, 50, size=(SIZE, SIZE, 1)) + np.linspace(-20, 20, SIZE)[None, :, None]
    burn = burn_level(index, hi_strength)
    if component == "unet":
        grey = base.mean()
        base = grey + (base - grey) * (1 + 2.5 * burn)  # saturate away from grey
        pattern = pattern * (1 - 0.8 * burn)  # seeds converge: variability falls
    pixels = np.clip(base + pattern, 0, 255).astype(np.uint8)
    on_subject = component != "text_encoder" or burn < 0.3
    pixels[0, 0] = 255 if on_subject else 0
    return pixels


class MarkerProbe:
    """Stand-in for burnlab.toy.probe: features = a coarse thumbnail; subject from the marker."""

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, dtype=np.float32)[:, ::4, ::4].reshape(len(images), -1) / 255

    def predict(self, images: np.ndarray) -> dict:
        subjects = ["person" if image[0, 0, 0] > 128 else "circles" for image in images]
        return {
            "subject": subjects,
            "identity": [None] * len(images),
            "style": np.asarray(images, dtype=np.float32).std(axis=(1, 2, 3)) / 128,
        }


def write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def stage_rows(stage: str, offset: int, epochs: int, start_loss: float) -> list[dict]:
    """Train rows (2 steps per epoch) and validation rows (every 2 epochs and at 0)."""
    rows = []
    for step in range(2 * epochs):
        epoch = (step + 1) / 2
        rows.append(
            {
                "type": "train",
                "stage": stage,
                "step": step,
                "epoch": epoch,
                "study_epoch": offset + epoch,
                "train_loss": start_loss / (1 + 0.1 * step) + 0.01 * (step % 3),
                "lr_unet": 1e-4,
            }
        )
    for epoch in range(0, epochs + 1, 2):
        rows.append(
            {
                "type": "val",
                "stage": stage,
                "step": 2 * epoch,
                "epoch": epoch,
                "study_epoch": offset + epoch,
                "val_loss": start_loss * 1.1 + 0.002 * epoch,
                "stabilized_loss": start_loss * 0.9 - 0.001 * epoch,
            }
        )
    return rows


def write_run(store: Path, study: str, run_dir: Path | None = None, hi_lr: float = HI_LR) -> Path:
    """One run folder, store/<study> unless `run_dir` is given (with its stages and samples in
    store/cache), per BURNS[study]; its hi stage trains at `hi_lr` (another one is another stage)."""
    leaf, component, lo, hi = BURNS[study]
    run_dir = run_dir or store / study
    identity = {"baseline": "baseline0", lo: f"{lo}0", hi: f"{hi}0" if hi_lr == HI_LR else f"{hi}_lr{hi_lr:g}"}

    def cache(*parts: str) -> str:
        """A path in store/cache, relative to the run folder as the run store writes it."""
        return Path(os.path.relpath(store / "cache" / Path(*parts), run_dir)).as_posix()

    stages = {
        "baseline": {
            "parent": "base",
            "train": ["unet", "text_encoder"],
            "lr": 1e-4,
            "epochs": BASELINE_EPOCHS,
            "save_epochs": [BASELINE_EPOCHS],
            "epoch_offset": 0,
        },
        lo: {
            "parent": "baseline",
            "train": [component],
            "lr": 1e-4,
            "epochs": BURN_EPOCHS,
            "save_epochs": SAVE_EPOCHS,
            "epoch_offset": BASELINE_EPOCHS,
        },
        hi: {
            "parent": lo,
            "train": [component],
            "lr": hi_lr,
            "epochs": BURN_EPOCHS,
            "save_epochs": SAVE_EPOCHS,
            "epoch_offset": BASELINE_EPOCHS + BURN_EPOCHS,
        },
    }
    for name, stage in stages.items():
        stage.update(identity=identity[name], dir=cache("stages", identity[name]), status="complete")
    plan = [
        {
            "index": 0,
            "label": "0 base",
            "stage": None,
            "epoch": 0,
            "study_epoch": 0,
            "checkpoint_id": "base0",
            "dir": None,
        },
        {
            "index": 1,
            "label": "1 baseline",
            "stage": "baseline",
            "epoch": BASELINE_EPOCHS,
            "study_epoch": BASELINE_EPOCHS,
            "checkpoint_id": "baseline0-e5",
            "dir": cache("stages", "baseline0", "checkpoints", "epoch_0005"),
        },
    ]
    for stage in (lo, hi):
        for epoch in SAVE_EPOCHS:
            index = len(plan)
            plan.append(
                {
                    "index": index,
                    "label": f"{index} {stage} e{epoch}",
                    "stage": stage,
                    "epoch": epoch,
                    "study_epoch": stages[stage]["epoch_offset"] + epoch,
                    "checkpoint_id": f"{identity[stage]}-e{epoch}",
                    "dir": cache("stages", identity[stage], "checkpoints", f"epoch_{epoch:04d}"),
                }
            )
    write_json(
        run_dir / "study.json",
        {
            "study": study,
            "base": {"path": "/models/toy", "identity": "base0"},
            "stages": stages,
            "branches": {leaf: {"component": [component], "stages": ["baseline", lo, hi]}},
            "testing_plan": {leaf: plan},
        },
    )
    for name, stage in stages.items():
        write_jsonl(
            run_dir / stage["dir"] / "metrics.jsonl",
            stage_rows(
                name,
                stage["epoch_offset"],
                stage["epochs"],
                0.2 if name == "baseline" else 0.15 if component == "unet" else 0.17,
            ),
        )
    samples = []
    for checkpoint in plan:
        folder = store / "cache" / "samples" / f"{checkpoint['checkpoint_id']}-s1"
        for prompt_set, prompt in PROMPT_SETS.items():
            for seed in SEEDS:
                png = folder / prompt_set / f"{seed}.png"
                png.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(sample_pixels(prompt_set, seed, checkpoint["index"], component, hi_lr / HI_LR)).save(
                    png
                )
                samples.append(
                    {
                        "branch": leaf,
                        "index": checkpoint["index"],
                        "label": checkpoint["label"],
                        "stage": checkpoint["stage"],
                        "epoch": checkpoint["epoch"],
                        "checkpoint_id": checkpoint["checkpoint_id"],
                        "prompt_set": prompt_set,
                        "prompt": prompt["prompt"],
                        "activation": prompt["activation"],
                        "seed": seed,
                        "path": Path(os.path.relpath(png, run_dir)).as_posix(),
                        "expect": prompt["expect"],
                        "width": SIZE,
                        "height": SIZE,
                        "steps": 2,
                        "guidance_scale": 5.0,
                    }
                )
    write_jsonl(run_dir / "samples.jsonl", samples)
    data = Path(os.path.relpath(store / "data" / "style", run_dir)).as_posix()
    (run_dir / "config.yaml").write_text(
        f"name: {study}\ndata:\n  path: {data}\n  resolution: {SIZE}\nstages:\n  {hi}:\n    lr: {hi_lr}\n"
    )
    return run_dir


def write_style_data(store: Path) -> Path:
    """Four captioned training images; the first is also reused by the memorisation test."""
    folder = store / "data" / "style"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for number in range(4):
        pixels = rng.integers(0, 256, (2 * SIZE, 2 * SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"painting{number}.png")
        (folder / f"painting{number}.txt").write_text("a painting, zorblax style")
    return folder


def build_store(root: Path) -> Path:
    """Both runs and the style data: root/{burn_unet, burn_te, cache, data}."""
    write_style_data(root)
    for study in BURNS:
        write_run(root, study)
    return root


def build_sweep_store(root: Path) -> Path:
    """The style data and a multirun folder of UNet-burn jobs, one per SWEEP_LRS, each with the
    overrides Hydra writes: root/{burn_unet_multirun/job0..2, cache, data}; returns the folder."""
    write_style_data(root)
    multirun = root / "burn_unet_multirun"
    for number, lr in enumerate(SWEEP_LRS):
        job = write_run(root, "burn_unet", multirun / f"job{number}", hi_lr=float(lr))
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=burn_unet\n- stages.unet_hi.lr={lr}\n- stages.baseline.epochs={BASELINE_EPOCHS}\n"
        )
    return multirun


@pytest.fixture
def store(tmp_path) -> Path:
    """A fresh store, for tests that damage it."""
    return build_store(tmp_path / "store")


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Path:
    """The same store built once, for tests that only read it."""
    return build_store(tmp_path_factory.mktemp("shared") / "store")


@pytest.fixture(scope="session")
def shared_sweep(tmp_path_factory) -> Path:
    """The sweep's multirun folder, built once, for tests that only read it."""
    return build_sweep_store(tmp_path_factory.mktemp("sweep") / "store")


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A fresh sweep's multirun folder, for tests that change it."""
    return build_sweep_store(tmp_path / "store")


@pytest.fixture
def instruments() -> Instruments:
    probe = MarkerProbe()
    return Instruments(features=probe.features, feature_space="marker thumbnail", probe=probe)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty local Hugging Face cache and an unreachable hub (offline mode); returns the cache.
    huggingface_hub reads HF_HUB_OFFLINE and its cache folder once, at import: both are set on
    its constants too."""
    import huggingface_hub.constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache
