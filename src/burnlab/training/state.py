"""A stage's resumable state: the trained weights (a LoRA stage's: its adapters'), optimizer,
LR schedule, fp16 GradScaler and
the position in training (epoch, batch, step), saved every `train.state_every_epochs` epochs and
when a signal stops the stage, into `<stage>/state/step_<step>/`.

All randomness is derived from (train.seed, stage, epoch, batch), so these are all a resumed stage
needs to end with exactly the weights of an uninterrupted run. Each save is a new folder
published by an atomic rename (burnlab.store.files); the older ones are removed only after it, so a
kill at any instruction leaves at least one complete state, and resume takes the newest. The
states at `kept` epochs (a stage's checkpoint epochs under train.keep_states) outlive the
stage, for a longer stage of its trajectory to continue from (burnlab.training.continuation).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from burnlab.errors import UserError
from burnlab.models.adapters import load_trained_weights, trained_weights
from burnlab.store.files import (
    atomic_write_json,
    publish_dir,
    read_json,
    read_jsonl,
    temp_dir_for,
    write_jsonl,
)
from burnlab.store.layout import METRICS, STATE

STATE_FILE = "state.json"  # written last into a state folder


@dataclass(frozen=True)
class Position:
    """Where training stands: `epoch` whole epochs done, then the batches before `batch` of the
    next one; `step` optimizer steps in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def saved_states(stage_dir: Path) -> list:
    """The stage's complete state folders, newest first."""
    folder = Path(stage_dir) / STATE
    found = [p for p in folder.glob("step_*") if (p / STATE_FILE).exists()] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name, reverse=True)


def read_state(folder: Path) -> Tuple[Position, Optional[str]]:
    """A state folder's position and the stage identity it belongs to."""
    state = read_json(Path(folder) / STATE_FILE)
    return Position(int(state["epoch"]), int(state["batch"]), int(state["step"])), state.get("stage_identity")


def prune_states(stage_dir: Path, kept: Collection[int] = (), newest: Optional[Path] = None) -> None:
    """Remove the stage's states other than `newest` and those at the end of a `kept` epoch."""
    for folder in saved_states(stage_dir):
        position, _ = read_state(folder)
        if folder != newest and not (position.batch == 0 and position.epoch in kept):
            shutil.rmtree(folder)


def save_state(
    stage_dir: Path, setup, accelerator, identity: str, position: Position, kept: Collection[int] = ()
) -> None:
    """Main process only: written into a temp folder, published, and then the older ones
    removed, but for those at `kept` epochs."""
    if not accelerator.is_main_process:
        return
    target = Path(stage_dir) / STATE / f"step_{position.step:010d}"
    tmp = temp_dir_for(target)
    for name in setup.trained:
        weights = trained_weights(accelerator.unwrap_model(setup.models[name]))
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / f"{name}.safetensors")
    scaler = accelerator.scaler
    torch.save(
        {
            "optimizer": setup.optimizer.state_dict(),
            "lr_scheduler": setup.lr_scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "optimizer.pt",
    )  # LoRA dropout draws from it
    atomic_write_json(tmp / STATE_FILE, {**asdict(position), "stage_identity": identity})
    publish_dir(tmp, target)
    prune_states(stage_dir, kept, newest=target)


def load_state(stage_dir: Path, setup, accelerator, identity: str) -> Optional[Position]:
    """Load the newest saved state into `setup`; None when there is none. The stage's metrics rows
    after it (or all of them, with no state) are dropped, a torn last line with them."""
    stage_dir = Path(stage_dir)
    metrics = stage_dir / METRICS
    states = saved_states(stage_dir)
    if not states:
        if accelerator.is_main_process and metrics.exists():
            metrics.unlink()  # rows of a run that died before its first saved state
        return None
    folder = states[0]
    position, owner = read_state(folder)
    if owner != identity:
        raise UserError(
            f"the saved training state {folder} belongs to stage identity "
            f"{owner!r}, but it lies in the folder of stage {identity!r}: "
            f"the folder was copied or edited by hand. Nothing was changed or deleted; move "
            f"{stage_dir} aside to train the stage afresh."
        )
    for name in setup.trained:
        load_trained_weights(accelerator.unwrap_model(setup.models[name]), load_file(folder / f"{name}.safetensors"))
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    setup.optimizer.load_state_dict(saved["optimizer"])
    setup.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if accelerator.scaler is not None and saved.get("grad_scaler"):
        accelerator.scaler.load_state_dict(saved["grad_scaler"])
    if saved.get("torch_rng") is not None:
        torch.set_rng_state(saved["torch_rng"])
    if accelerator.is_main_process:
        write_jsonl(metrics, [row for row in read_jsonl(metrics) if row.get("step", 0) <= position.step])
    return position
