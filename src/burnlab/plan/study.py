"""The study as a graph of stages: order, lineage, identities, branches and the testing plan.

A stage's identity hashes everything that decides its weights and logs: its own settings, its
parent's identity, the base model and the dtype of its frozen parts, the data and the
train/validation settings (and, for LoRA stages, the adapter settings). Two studies (or
two sweep jobs) naming the same stage share its directory in the cache and train it once.
Its trajectory hashes the same without its length (`epochs`, `save_epochs`): stages of one
trajectory pass through the same weights epoch by epoch, so a longer one continues from a
shorter one's saved state (burnlab.training.continuation) — unless the LR schedule depends on the length.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Collection, Dict, List, Optional, Tuple

from burnlab.config.schema import BASE, BurnlabConfig, StageConfig
from burnlab.errors import ConfigError
from burnlab.store.files import hash_json
from burnlab.store.layout import COMPONENTS, PlanEntry, checkpoint_dir, checkpoint_id

# how often the state is saved, and whether a NaN batch is skipped or stops the stage, change
# nothing in a stage that trains through without one: a stage resumes under either setting, and
# one stopped by a NaN continues from its last state with train.skip_nonfinite=true
RESUME_ONLY_KEYS = ("state_every_epochs", "skip_nonfinite", "keep_states")
# LR schedules whose value at a step depends on the stage's length: each length trains apart
LENGTH_DEPENDENT_SCHEDULES = ("linear", "cosine")


@dataclass
class PlannedStage:
    name: str
    config: StageConfig
    identity: str
    lineage: List[str]  # base, ..., this stage
    epoch_offset: int  # epochs trained by the ancestors
    trajectory: str = ""  # the identity without the stage's length: a longer stage of it continues a shorter one
    has_children: bool = False  # a later stage starts from its final checkpoint, which is then saved exactly
    # its training states at checkpoint epochs stay (train.keep_states), for longer runs to continue
    keep_states: bool = False


def stage_order(stages: Dict[str, StageConfig]) -> List[str]:
    """Parents before children; siblings in config order."""
    order: List[str] = []

    def visit(name: str) -> None:
        if name == BASE or name in order:
            return
        visit(stages[name].parent)
        order.append(name)

    for name in stages:
        visit(name)
    return order


def plan_stages(
    config: BurnlabConfig,
    base_identity: str,
    data_identity: str,
    frozen_dtype: str,
    epochs_swept: Collection[str] = (),
    components: Tuple[str, ...] = COMPONENTS,
) -> Dict[str, PlannedStage]:
    """`frozen_dtype`: `model.dtype` resolved on the training device (frozen parts in half
    precision give other weights than in float32). `epochs_swept`: the stages whose epochs a
    sweep job's overrides set, which keep their states under train.keep_states=auto.
    `components`: the base model's (`BaseModel.components`), which a stage's `train` list is
    checked against and a stage without one trains; each planned stage's config names them."""
    planned: Dict[str, PlannedStage] = {}
    shared = {
        "base": base_identity,
        "frozen_dtype": frozen_dtype,
        "data": data_identity,
        # `data_identity` hashes the files used and their captions, which is all that the folders'
        # paths and the settings choosing or decoding the files decide: moving a folder, or
        # skipping bad files in a folder without any, trains nothing again
        "data_config": _settings(config.data, "path", "skip_bad", "max_image_pixels", "caption_encoding"),
        "train": _settings(config.train, *RESUME_ONLY_KEYS, "adapter"),
        "validation": _settings(config.validation, "path"),
    }
    if config.train.adapter != "full":  # so full-weight stages keep the identities they had before adapters
        shared["adapter"] = {"kind": config.train.adapter, "lora": dataclasses.asdict(config.lora)}
    parents = {stage.parent for stage in config.stages.values()}
    for name in stage_order(config.stages):
        stage = with_components(name, config.stages[name], components)
        parent = planned.get(stage.parent)
        parts = {
            "name": name,
            "stage": _stage_settings(stage),
            "parent": parent.identity if parent else BASE,
            **shared,
        }
        unsized = {**parts, "stage": _stage_settings(stage, "epochs", "save_epochs")}
        if config.train.lr_scheduler in LENGTH_DEPENDENT_SCHEDULES:
            unsized["epochs"] = stage.epochs
        if config.train.save_dtype != "float32":
            # its final checkpoint is exact only where a child starts from it: a leaf in one study
            # cannot serve as a parent in another
            parts["exact_final"] = name in parents
        planned[name] = PlannedStage(
            name=name,
            config=stage,
            identity=hash_json(parts),
            lineage=(parent.lineage if parent else [BASE]) + [name],
            epoch_offset=(parent.epoch_offset + parent.config.epochs) if parent else 0,
            trajectory=hash_json(["trajectory", unsized]),
            has_children=name in parents,
            keep_states=config.train.keep_states == "always"
            or (config.train.keep_states == "auto" and name in epochs_swept),
        )
    return planned


def _settings(group, *left_out: str) -> dict:
    return {k: v for k, v in dataclasses.asdict(group).items() if k not in left_out}


def _stage_settings(stage: StageConfig, *left_out: str) -> dict:
    """A stage's settings as its identity hashes them: SDXL's text_encoder_2_lr only where set,
    so that the stages of Stable Diffusion models keep the identities they had before it."""
    settings = _settings(stage, *left_out)
    if settings.get("text_encoder_2_lr") is None:
        settings.pop("text_encoder_2_lr", None)
    return settings


def with_components(name: str, stage: StageConfig, components: Tuple[str, ...]) -> StageConfig:
    """`stage` with its `train` list resolved (null: every component of the model), each of its
    components checked to be the model's."""
    train = list(components) if stage.train is None else list(stage.train)
    foreign = [component for component in train if component not in components]
    if foreign:
        raise ConfigError(
            f"stages.{name}.train",
            train,
            f"components of the base model, which has {', '.join(components)} "
            f"(`{foreign[0]}` is SDXL's second text encoder: train it on an SDXL model such as model=toy_xl)"
            if foreign[0] == "text_encoder_2"
            else f"components of the base model, which has {', '.join(components)}",
        )
    return dataclasses.replace(stage, train=train)


def epoch_seed(seed: int, *parts) -> int:
    """A seed of its own for each (stage, epoch[, batch]) of a study: every epoch's data order,
    noise and timesteps follow from train.seed alone, whichever run trained the epochs before."""
    return int(hash_json([seed, *parts]), 16) % (2**63)


def steps_per_epoch(train_images: int, train, processes: int) -> int:
    """Optimizer steps per epoch: the same for every stage of a study (same data, batch and
    processes), which the dashboards' study_step relies on. `train`: the TrainConfig."""
    micro_batches = math.ceil(train_images / (train.batch_size * processes))
    return math.ceil(micro_batches / train.gradient_accumulation_steps)


def leaves(stages: Dict[str, StageConfig]) -> List[str]:
    parents = {stage.parent for stage in stages.values()}
    return [name for name in stage_order(stages) if name not in parents]


def testing_plan(
    planned: Dict[str, PlannedStage], leaf: str, base_identity: str, stage_dirs: Dict[str, str]
) -> List[dict]:
    """The checkpoints a branch is judged on: the base, the first stage's final epoch, then every
    save epoch of each later stage (the study's 0 base, 1 baseline, 2-4 lo, 5-7 hi), as study.json's
    PlanEntry records."""
    rows = [
        PlanEntry(
            index=0,
            label="0 base",
            stage=None,
            epoch=0,
            study_epoch=0,
            checkpoint_id=base_identity,
            weights_id=base_identity,
            dir=None,
        )
    ]
    for position, name in enumerate(planned[leaf].lineage[1:]):
        stage = planned[name]
        epochs = [stage.config.epochs] if position == 0 else stage.config.checkpoint_epochs()
        for epoch in epochs:
            index = len(rows)
            rows.append(
                PlanEntry(
                    index=index,
                    label=f"{index} {name}" if position == 0 else f"{index} {name} e{epoch}",
                    stage=name,
                    epoch=epoch,
                    study_epoch=stage.epoch_offset + epoch,
                    checkpoint_id=checkpoint_id(stage.identity, epoch),
                    weights_id=weights_id(stage, epoch),
                    dir=str(checkpoint_dir(stage_dirs[name], epoch)),
                )
            )
    return [row.to_json() for row in rows]


def weights_id(stage: PlannedStage, epoch: int) -> str:
    """Equal for checkpoints with equal weights: the same epoch of one trajectory (an epoch sweep's
    jobs share it up to the shorter length), saved the same way (a parent's final stays float32)."""
    return hash_json(["weights", stage.trajectory, epoch, epoch == stage.config.epochs and stage.has_children])


def branch_of(planned: Dict[str, PlannedStage], leaf: str) -> dict:
    return {"component": list(planned[leaf].config.train), "stages": planned[leaf].lineage[1:]}


def parent_of(planned: Dict[str, PlannedStage], name: str) -> Optional[PlannedStage]:
    return planned.get(planned[name].config.parent)
