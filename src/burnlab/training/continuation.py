"""Epoch sweeps share their prefix: a stage starts from the training state another stage of its
trajectory (the same stage but for `epochs`/`save_epochs`, burnlab.plan.study) saved at an epoch it
passes through, instead of from epoch 0.

    burnlab -m experiment=burn_unet stages.unet_hi.epochs=100,300,500   # unet_hi trains 500 epochs, not 900

A stage draws its randomness per (seed, stage, epoch, batch), and its LR schedule (constant or
with warmup) does not depend on its length, so every stage of a trajectory holds the same
weights and optimizer state after epoch D: continuing from another's state at D ends exactly
where an uninterrupted run ends. The runner calls `take_over` under the trajectory's lock for
a stage with no state of its own; it copies what this stage would have written up to D — the
checkpoints before D (with this stage's manifest), the training samples, the metrics rows —
and the state itself last, as this stage's own (hard links where the file system allows). The
trainer then saves the checkpoint at D and trains on. States outlive a stage only under
train.keep_states (at its checkpoint epochs, burnlab.training.state).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from burnlab.models.checkpoint import publish_checkpoint, read_manifest
from burnlab.plan.study import PlannedStage
from burnlab.store.files import (
    atomic_write_json,
    publish_dir,
    read_json,
    read_jsonl,
    temp_dir_for,
    write_jsonl,
)
from burnlab.store.layout import (
    CONTINUED,
    MANIFEST,
    METRICS,
    STAGE_RECORD,
    STATE,
    checkpoint_dir,
)
from burnlab.training.state import STATE_FILE, Position, read_state, saved_states

log = logging.getLogger("burnlab")


@dataclass(frozen=True)
class Donor:
    stage_dir: Path
    epochs: int  # the donor stage's length
    state: Path  # its state folder at the end of epoch `position.epoch`
    position: Position


def find_donor(stages_root: Path, planned: PlannedStage, validation_every: int) -> Optional[Donor]:
    """The state of another stage of `planned`'s trajectory at the latest epoch this stage
    passes through, whose folder holds this stage's checkpoints before that epoch; None if none."""
    best: Optional[Donor] = None
    for record_path in Path(stages_root).glob(f"*/{STAGE_RECORD}"):
        stage_dir = record_path.parent
        try:
            record = read_json(record_path)
        except (OSError, ValueError):
            continue  # a folder being written, or not burnlab's
        if stage_dir.name == planned.identity or record.get("trajectory") != planned.trajectory:
            continue
        for folder in saved_states(stage_dir):
            position, owner = read_state(folder)
            if owner == record.get("identity") and _can_start_from(
                stage_dir, record["epochs"], position, planned, validation_every
            ):
                if best is None or position.epoch > best.position.epoch:
                    best = Donor(stage_dir, record["epochs"], folder, position)
    return best


def _can_start_from(
    stage_dir: Path, donor_epochs: int, position: Position, planned: PlannedStage, validation_every: int
) -> bool:
    epoch, epochs = position.epoch, planned.config.epochs
    if position.batch or not 0 < epoch <= epochs:
        return False
    if epoch == epochs and validation_every and epoch % validation_every and epoch != donor_epochs:
        return False  # this stage's final validation pass at `epoch` was never run by the donor
    return all(
        (checkpoint_dir(stage_dir, e) / MANIFEST).exists() for e in planned.config.checkpoint_epochs() if e < epoch
    )


def take_over(donor: Donor, stage_dir: Path, planned: PlannedStage, validation_every: int) -> None:
    """Main process, under the trajectory's lock: `stage_dir` as this stage would have left it at
    the donor's epoch. The state is published last: a kill before leaves no state, and the next
    attempt takes over again."""
    stage_dir, epoch = Path(stage_dir), donor.position.epoch
    for saved in planned.config.checkpoint_epochs():
        if saved < epoch:
            _copy_checkpoint(checkpoint_dir(donor.stage_dir, saved), checkpoint_dir(stage_dir, saved), planned, saved)
    samples = donor.stage_dir / "samples"
    for folder in sorted(samples.glob("epoch_*")) if samples.is_dir() else []:
        if int(folder.name.removeprefix("epoch_")) <= epoch:
            tmp = temp_dir_for(stage_dir / "samples" / folder.name)
            _link_files(folder, tmp)
            publish_dir(tmp, stage_dir / "samples" / folder.name)
    write_jsonl(
        stage_dir / METRICS,
        [
            row
            for row in read_jsonl(donor.stage_dir / METRICS)
            if _logged_by_now(row, donor.position, planned, validation_every)
        ],
    )
    atomic_write_json(
        stage_dir / CONTINUED,
        {"identity": donor.stage_dir.name, "epochs": donor.epochs, "epoch": epoch, "step": donor.position.step},
    )
    target = stage_dir / STATE / donor.state.name
    tmp = temp_dir_for(target)
    _link_files(donor.state, tmp, leave_out=STATE_FILE)
    state = read_json(donor.state / STATE_FILE)
    atomic_write_json(tmp / STATE_FILE, {**state, "stage_identity": planned.identity})
    publish_dir(tmp, target)
    log.info(
        "stage %s: continues from epoch %d of the %d-epoch run of it in the cache (%s)",
        planned.name,
        epoch,
        donor.epochs,
        donor.stage_dir,
    )


def continued_from(stage_dir: Path) -> Optional[dict]:
    """The stage whose state `stage_dir` took over (identity, its epochs, the epoch and step), if any."""
    record = Path(stage_dir) / CONTINUED
    return read_json(record) if record.exists() else None


def _logged_by_now(row: dict, position: Position, planned: PlannedStage, validation_every: int) -> bool:
    """Whether this stage, trained from epoch 0, would have logged `row` (the donor's) by the end of
    `position.epoch`: its train and validation rows up to there, but not a validation pass the
    donor ran only because its last epoch fell there."""
    if row.get("step", 0) > position.step:
        return False
    if row.get("type") == "train":
        return True
    if row.get("type") == "val":
        epoch = row["epoch"]
        return (
            epoch < position.epoch
            or (validation_every and epoch % validation_every == 0)
            or epoch == planned.config.epochs
        )
    return False  # the donor's peak-memory row: this stage records its own


def _copy_checkpoint(source: Path, target: Path, planned: PlannedStage, epoch: int) -> None:
    """The donor's checkpoint files under this stage's manifest (its own checkpoint id): the files
    it inherits from the shared parent are named relative to the folder, at the same depth."""
    manifest = read_manifest(source)
    tmp = temp_dir_for(target)
    _link_files(source, tmp, leave_out=MANIFEST)
    publish_checkpoint(
        tmp,
        target,
        manifest["components"],
        stage=planned.name,
        stage_identity=planned.identity,
        epoch=epoch,
        lineage=planned.lineage,
        base=manifest["base"],
    )


def _link_files(source: Path, target: Path, leave_out: str = "") -> None:
    """Every file below `source` into `target`: a hard link (no space), or a copy across file systems."""
    for path in sorted(Path(source).rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or str(relative) == leave_out:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target / relative)
        except OSError:
            shutil.copy2(path, target / relative)
