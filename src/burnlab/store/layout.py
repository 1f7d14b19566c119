"""The run store's layout (docs/run_store.md): every file and folder name, the paths built from
them, and the records of study.json, for the writers (training, sampling, the runner) and the
readers (burnlab-verify, the analysis) alike. Imports nothing of burnlab but the store's file
primitives, so the analysis reads the store through it without importing training code.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from burnlab.store.files import hash_json

# the components a checkpoint can hold, each one's folder name, per model family: Stable Diffusion
# 1.x/2.x (one text encoder) and SDXL (a second, CLIPTextModelWithProjection, whose pooled vector
# the UNet reads too). A base model's record (`BaseModel.describe()`) names its family's tuple
# under "components"; records written before SDXL have none and are SD's.
COMPONENTS = ("unet", "text_encoder")
XL_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TRAINABLE = XL_COMPONENTS  # the closed set a stage's `train` list is checked against (then against its model's)
FAMILIES = {"sd": COMPONENTS, "sdxl": XL_COMPONENTS}  # model.family's values


def components_of(base: dict) -> Tuple[str, ...]:
    """The components of the base model that `base` (`BaseModel.describe()`) records."""
    return tuple(base.get("components") or COMPONENTS)


# -- swap corners (attribution.json's `corners`): which components a corner takes from M ------------
CORNER_SHORT_NAMES = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2"}


def corner_name(from_tuned: Tuple[str, ...], components: Tuple[str, ...]) -> str:
    """R (every component the reference's), M (every one the tuned model's), else each component
    marked: M_unet+R_te (SD), M_unet+R_te+M_te2 (SDXL)."""
    if not from_tuned:
        return "R"
    if set(from_tuned) == set(components):
        return "M"
    return "+".join(("M_" if c in from_tuned else "R_") + CORNER_SHORT_NAMES[c] for c in components)


def swap_corners(components: Tuple[str, ...]) -> Dict[str, Tuple[str, ...]]:
    """Every corner of the 2^n swap cube, name -> the components it takes from the tuned model:
    R first, then by how many components are swapped, M last (SD: R, M_unet+R_te, R_unet+M_te, M)."""
    return {
        corner_name(chosen, components): chosen
        for size in range(len(components) + 1)
        for chosen in itertools.combinations(components, size)
    }


# -- a run dir: runs/<study>/ (a sweep's job: runs/<study>_multirun/<overrides>/) ------------------
CONFIG = "config.yaml"  # the resolved config
STUDY = "study.json"  # stages, branches and the testing plan (StageRecord, PlanEntry)
SAMPLES_INDEX = "samples.jsonl"  # the testing plan's sample index, one row per image
ATTRIBUTION = "attribution.json"  # the swap corners of each branch's checkpoints and their drift
JOB = "job.json"  # a sweep job's overrides
ANALYSIS = "analysis"  # burnlab-analyze's products

# -- the shared cache: runs/cache/ -----------------------------------------------------------------
CACHE = "cache"
STAGES = "stages"  # cache/stages/<stage identity>/
SAMPLES = "samples"  # cache/samples/<checkpoint id>-<sampling hash>/ (and a stage's samples during training)
MODELS = "models"  # cache/models/: built random-weight models, converted single-file checkpoints

# -- a stage folder ---------------------------------------------------------------------------------
STAGE_RECORD = "stage.json"  # what the stage is (its trajectory is found there)
METRICS = "metrics.jsonl"  # training and validation rows
CHECKPOINTS = "checkpoints"  # checkpoints/epoch_0100/
STATE = "state"  # the latest resumable training state: state/step_0000000840/
CONTINUED = "continued_from.json"  # the stage took over another length's state: which, and at what epoch
COMPLETE = "COMPLETE"  # written last: the stage (or a sample folder) is finished
FAILED = "FAILED"  # the stage stopped at a NaN/inf loss (JSON: stage, reason); removed when it trains again

# -- a checkpoint folder ----------------------------------------------------------------------------
MANIFEST = "manifest.json"  # lineage and the sha256 of each file
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' file name (save_lora_weights / load_lora_weights)
VERIFIED = ".verified.json"  # files whose hash was checked: {path: {stat: [size, mtime_ns], sha256}}

# -- a sample folder --------------------------------------------------------------------------------
IMAGE_INDEX = "index.jsonl"  # one row per image (the same fields as a run's samples.jsonl)


def stages_dir(runs: Path) -> Path:
    return Path(runs) / CACHE / STAGES


def samples_dir(runs: Path) -> Path:
    return Path(runs) / CACHE / SAMPLES


def models_dir(runs: Path) -> Path:
    return Path(runs) / CACHE / MODELS


def epoch_folder(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def epoch_of(folder: Path) -> int:
    """The epoch an `epoch_0100` folder holds."""
    return int(Path(folder).name.removeprefix("epoch_"))


def checkpoint_dir(stage_dir: Path, epoch: int) -> Path:
    return Path(stage_dir) / CHECKPOINTS / epoch_folder(epoch)


def training_samples_dir(stage_dir: Path, epoch: int) -> Path:
    """The samples a stage makes during training (sampling.every_n_epochs)."""
    return Path(stage_dir) / SAMPLES / epoch_folder(epoch)


def checkpoint_id(stage_identity: str, epoch: int) -> str:
    """A checkpoint's identity: its stage's identity and epoch (the sample cache's key)."""
    return hash_json(["checkpoint", stage_identity, epoch])


class RecordError(ValueError):
    """A study.json record without a key it needs: the message names where, the key and what it holds."""


def required(raw: Any, key: str, where: str, expected: str) -> Any:
    """raw[key] of a record read from the store, or a RecordError naming where, the key and what it must hold."""
    if not isinstance(raw, dict):
        raise RecordError(
            f"{where}: expected a JSON object ({expected} under '{key}'), found "
            f"{type(raw).__name__} {str(raw)[:80]!r}; see docs/run_store.md."
        )
    if key not in raw:
        raise RecordError(f"{where}: key '{key}' is missing; expected {expected} (see docs/run_store.md).")
    return raw[key]


@dataclass(frozen=True)
class StageRecord:
    """One stage as study.json's `stages.<name>` holds it. The runner writes every field; a
    reader needs parent, train, epochs and epoch_offset, and takes the defaults for the rest
    (runs written before they were recorded)."""

    name: str  # the key it is stored under, not a field of the JSON object
    parent: str  # a stage name, or `base`
    train: Tuple[str, ...]  # the components it trains
    epochs: int
    epoch_offset: int  # the epochs its ancestors trained: where it starts on the branch's axis
    save_epochs: Tuple[int, ...] = ()  # its checkpoints (the last epoch among them)
    lr: Optional[float] = None
    text_encoder_lr: Optional[float] = None
    text_encoder_2_lr: Optional[float] = None  # SDXL
    identity: str = ""  # its folder under cache/stages/
    trajectory: str = ""  # the identity without its length (burnlab.plan.study)
    keep_states: bool = False
    continued_from: Optional[dict] = None  # the continued_from.json it took over, if any
    dir: str = ""  # its folder, relative to the run dir
    status: str = "complete"  # complete | failed | partial | pending

    @property
    def study_epoch_end(self) -> int:
        """Where the stage ends on the branch's shared epoch axis (a stage boundary)."""
        return self.epoch_offset + self.epochs

    def to_json(self) -> dict:
        record = dataclasses.asdict(self)
        del record["name"]
        return {**record, "train": list(self.train), "save_epochs": list(self.save_epochs)}

    @classmethod
    def from_json(cls, name: str, raw: Any, where: str) -> "StageRecord":
        at = f"{where}: stages.{name}"
        needed = {
            "parent": str(required(raw, "parent", at, "the parent stage's name or 'base'")),
            "train": tuple(required(raw, "train", at, "a list of components")),
            "epochs": int(required(raw, "epochs", at, "the number of epochs")),
            "epoch_offset": int(required(raw, "epoch_offset", at, "the epochs trained by ancestors")),
        }
        optional = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw and f.name not in needed}
        optional["save_epochs"] = tuple(int(e) for e in optional.get("save_epochs", ()))
        optional["status"] = str(optional.get("status", "complete"))
        return cls(name=name, **needed, **optional)


@dataclass(frozen=True)
class PlanEntry:
    """One checkpoint of a branch's testing plan (study.json `testing_plan.<branch>[i]`): index 0
    the base model, then the first stage's final epoch, then each save epoch of the later stages."""

    index: int
    label: str  # e.g. "2 unet_lo e100"
    stage: Optional[str]  # None for the base model
    epoch: int  # within the stage
    study_epoch: float  # on the branch's shared axis
    checkpoint_id: str  # the sample cache's key (checkpoint_id above; the base model's identity at 0)
    weights_id: str  # equal for equal weights (an epoch sweep's jobs up to the shorter length)
    dir: Optional[str] = None  # the checkpoint folder (None for the base model)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any, where: str) -> "PlanEntry":
        index = int(required(raw, "index", where, "the checkpoint's index in the plan"))
        at = f"{where}[{index}]"
        checkpoint = str(required(raw, "checkpoint_id", at, "the checkpoint's identity"))
        return cls(
            index=index,
            label=str(required(raw, "label", at, "a label such as '2 unet_lo e100'")),
            stage=raw.get("stage"),
            epoch=int(raw.get("epoch", 0)),
            study_epoch=float(required(raw, "study_epoch", at, "the epoch on the branch's axis")),
            checkpoint_id=checkpoint,
            weights_id=str(raw.get("weights_id") or checkpoint),
            dir=raw.get("dir"),
        )
