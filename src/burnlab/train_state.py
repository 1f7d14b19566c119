"""A stage's resumable state: the trained weights, optimizer, LR schedule, fp16 GradScaler and
the epoch, saved every `train.state_every_epochs` epochs into `<stage>/state/`.

All randomness is derived from (train.seed, stage, epoch, batch), so these are all a resumed stage
needs to end with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from burnlab.store import atomic_write_json, read_json, read_jsonl, replace_dir, write_jsonl

STATE = "state"


def save_state(stage_dir: Path, setup, accelerator, identity: str, epoch: int, step: int) -> None:
    """Main process only: written into state.tmp, then swapped in."""
    if not accelerator.is_main_process:
        return
    target = Path(stage_dir) / STATE
    tmp = target.with_name(STATE + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in setup.trained:
        weights = accelerator.unwrap_model(setup.models[name]).state_dict()
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / f"{name}.safetensors")
    scaler = accelerator.scaler
    torch.save({"optimizer": setup.optimizer.state_dict(), "lr_scheduler": setup.lr_scheduler.state_dict(),
                "grad_scaler": scaler.state_dict() if scaler is not None else None}, tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", {"epoch": epoch, "step": step, "stage_identity": identity})
    replace_dir(tmp, target)


def load_state(stage_dir: Path, setup, accelerator) -> int:
    """Load the latest saved state into `setup`, if any; returns the epoch to start from. The
    stage's metrics rows after that epoch (or all of them, with no state) are dropped."""
    target = Path(stage_dir) / STATE
    metrics = Path(stage_dir) / "metrics.jsonl"
    if not (target / "state.json").exists():
        if accelerator.is_main_process and metrics.exists():
            metrics.unlink()  # rows of a run that died before its first saved state
        return 0
    state = read_json(target / "state.json")
    for name in setup.trained:
        accelerator.unwrap_model(setup.models[name]).load_state_dict(load_file(target / f"{name}.safetensors"))
    saved = torch.load(target / "optimizer.pt", map_location="cpu", weights_only=True)
    setup.optimizer.load_state_dict(saved["optimizer"])
    setup.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if accelerator.scaler is not None and saved.get("grad_scaler"):
        accelerator.scaler.load_state_dict(saved["grad_scaler"])
    if accelerator.is_main_process:
        write_jsonl(metrics, [row for row in read_jsonl(metrics) if row["epoch"] <= state["epoch"]])
    return int(state["epoch"])
