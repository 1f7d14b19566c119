"""Mirrors of the run store in W&B and TensorBoard: one dashboard run per branch.

A study's question is "UNet burn vs text-encoder burn", so a dashboard must overlay the two
branches with no hand-built panel. Both mirrors therefore keep one run per branch (W&B run
`<study>-<leaf>` grouped by the study, TensorBoard folder `tensorboard/<leaf>`), and the same
quantity has the same key in every run, every branch and every study (`loss/val`,
`loss/stabilized`, `loss/train`, `lr/<component>`, `loss_by_t/val/t<T>`): the default chart of
`loss/val` then draws each branch of a study, and `make burn-unet` beside `make burn-te`, as
overlaid lines. A stage shared by both branches (the baseline) is logged into each branch's run.
The stage is not in the key: `stage/index` (its position along the branch, a step function)
marks the stage boundaries, and stage, branch and component sit in the run's config.

x-axes: W&B plots against `study_epoch` (define_metric) and keeps one history row per metrics
row (its own `_step`: a stage's epoch-0 validation shares its step with the parent's last rows,
and W&B would merge rows logged at one step). TensorBoard steps on `study_step`, the optimizer
steps along the branch (ancestors' epochs x steps per epoch + the stage's own step), an integer
that grows monotonically along a branch, with `study_epoch` as a scalar of its own. Bookkeeping fields of a
metrics row (type, stage, step, epoch) are not logged. Stages taken from the cache are replayed
from their metrics.jsonl in study order. burnlab opens the W&B runs itself (accelerate's tracker
holds one run per process); wandb and tensorboard are imported only when enabled. Only the main
process logs. W&B mode `auto` is online with an API key and offline otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List

from burnlab.config.schema import BurnlabConfig
from burnlab.dashboards.keys import (
    BOOKKEEPING,
    KEYS,
    SAMPLE_COLUMNS,
    SAMPLES_ARTIFACT_PREFIX,
    SAMPLES_ARTIFACT_TYPE,
    STUDY_CONFIG_KEY,
)
from burnlab.dashboards.wandb_key import wandb_key_present
from burnlab.errors import ConfigError


def wandb_mode(configured: str) -> str:
    if configured == "online" and not wandb_key_present():  # else wandb fails at init
        raise ConfigError(
            "logger.wandb.mode",
            configured,
            "`online` only with a W&B API key (WANDB_API_KEY or "
            "`wandb login`); without one use auto (offline files), offline or disabled",
        )
    if configured != "auto":
        return configured
    return "online" if wandb_key_present() else "offline"


def dashboard_values(row: dict) -> Dict[str, float]:
    """A metrics.jsonl row as dashboard scalars (the same keys for every stage and branch)."""
    values = {}
    for key, value in row.items():
        if key in BOOKKEEPING:
            continue
        name = f"lr/{key[3:]}" if key.startswith("lr_") else KEYS.get(key, f"other/{key}")
        if isinstance(value, dict):
            values.update({f"{name}/t{t}": v for t, v in value.items()})
        elif isinstance(value, (int, float)):
            values[name] = float(value)
    return values


class Dashboards:
    """The W&B runs and TensorBoard writers of one study run, one per branch (main process only).

    `branches`: leaf -> the stages along it (study.json's branches); `offsets`: stage -> its
    epoch_offset; `steps_per_epoch`: optimizer steps per epoch, the same for every stage."""

    def __init__(
        self,
        config: BurnlabConfig,
        run_dir: Path,
        flat_config: dict,
        branches: Dict[str, List[str]],
        offsets: Dict[str, int],
        steps_per_epoch: int,
    ):
        self.run_dir, self.branches, self.offsets = Path(run_dir), branches, offsets
        self.steps_per_epoch = steps_per_epoch
        self.wandb: Dict[str, object] = {}
        self.writers: Dict[str, object] = {}
        study = run_dir.name
        mode = wandb_mode(config.logger.wandb.mode)
        if mode != "disabled":
            import wandb

            for leaf, stages in branches.items():
                run = wandb.init(
                    project=config.logger.wandb.project,
                    entity=config.logger.wandb.entity,
                    mode=mode,
                    group=study,
                    name=f"{study}-{leaf}",
                    job_type="branch",
                    dir=str(self.run_dir),
                    reinit="create_new",
                    config={**flat_config, "study_run": study, "branch": leaf, "stages": list(stages)},
                )
                run.define_metric("study_epoch")
                run.define_metric("*", step_metric="study_epoch")
                self.wandb[leaf] = run
        if config.logger.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            for leaf in branches:
                self.writers[leaf] = SummaryWriter(str(self.run_dir / "tensorboard" / leaf))

    @property
    def active(self) -> bool:
        return bool(self.wandb or self.writers)

    def study_step(self, stage: str, row: dict) -> int:
        """Optimizer steps along the branch: the ancestors' plus the stage's own."""
        if "step" in row:
            return self.offsets[stage] * self.steps_per_epoch + int(row["step"])
        return round(row["study_epoch"] * self.steps_per_epoch)  # memory rows: at a whole epoch

    def _branches_of(self, stage: str) -> List[str]:
        return [leaf for leaf, stages in self.branches.items() if stage in stages]

    def log_row(self, row: dict) -> None:
        values = dashboard_values(row)
        step = self.study_step(row["stage"], row)
        for leaf in self._branches_of(row["stage"]):
            index = float(self.branches[leaf].index(row["stage"]))
            if leaf in self.wandb:
                self.wandb[leaf].log({**values, "study_epoch": row["study_epoch"], "stage/index": index})
            if leaf in self.writers:
                writer = self.writers[leaf]
                for key, value in {**values, "study_epoch": row["study_epoch"], "stage/index": index}.items():
                    writer.add_scalar(key, value, global_step=step)

    def replay_rows(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.log_row(row)

    def log_training_samples(self, stage: str, epoch: int, rows: List[dict], folder: Path) -> None:
        """In-training samples (stage's samples/epoch_NNNN/index.jsonl rows) at their epoch's step."""
        study_epoch = self.offsets[stage] + epoch
        step = study_epoch * self.steps_per_epoch
        label = f"{stage} e{epoch}"
        for leaf in self._branches_of(stage):
            if leaf in self.wandb:
                import wandb

                media = {}
                for row in rows:
                    media.setdefault(f"training_samples/{row['prompt_set']}", []).append(
                        wandb.Image(str(folder / row["path"]), caption=f"{label} seed {row['seed']}")
                    )
                self.wandb[leaf].log({**media, "study_epoch": study_epoch})
            if leaf in self.writers:
                for row in rows:
                    self.writers[leaf].add_image(
                        f"training_samples/{row['prompt_set']}/seed{row['seed']}",
                        _pixels(folder / row["path"]),
                        global_step=step,
                        dataformats="HWC",
                    )

    def log_samples(self, rows: List[dict]) -> None:
        """Testing-plan samples (samples.jsonl rows). W&B: a table per branch run, the images per
        prompt set captioned with their checkpoint, and one `samples` artifact per checkpoint
        (what the analysis downloads). TensorBoard: each image at its checkpoint's step."""
        if not self.active or not rows:
            return
        for leaf in self.branches:
            mine = [row for row in rows if row["branch"] == leaf]
            if leaf in self.wandb and mine:
                self._wandb_samples(self.wandb[leaf], mine)
            if leaf in self.writers:
                for row in mine:
                    self.writers[leaf].add_image(
                        f"samples/{row['prompt_set']}/seed{row['seed']}",
                        _pixels(self.run_dir / row["path"]),
                        global_step=round(row["study_epoch"] * self.steps_per_epoch),
                        dataformats="HWC",
                    )

    def _wandb_samples(self, run, rows: List[dict]) -> None:
        import wandb

        table = wandb.Table(columns=SAMPLE_COLUMNS)
        media: Dict[str, list] = {}
        artifacts: Dict[str, object] = {}
        for row in rows:
            path = str((self.run_dir / row["path"]).resolve())
            table.add_data(
                row["index"],
                row["label"],
                row["stage"],
                row["study_epoch"],
                row["prompt_set"],
                row["prompt"],
                row["seed"],
                wandb.Image(path),
            )
            media.setdefault(f"samples/{row['prompt_set']}", []).append(
                wandb.Image(path, caption=f"{row['label']} seed {row['seed']}")
            )
            artifact = artifacts.setdefault(
                row["checkpoint_id"],
                wandb.Artifact(
                    f"{SAMPLES_ARTIFACT_PREFIX}{row['checkpoint_id']}",
                    type=SAMPLES_ARTIFACT_TYPE,
                    metadata={"label": row["label"]},
                ),
            )
            name = f"{row['prompt_set']}/{Path(path).name}"
            if name not in artifact.manifest.entries:
                artifact.add_file(path, name=name)
        run.log({"samples/table": table, **media})  # after training: at the branch's last step
        for artifact in artifacts.values():
            run.log_artifact(artifact)

    def study_finished(self, study: dict) -> None:
        """study.json into each W&B run's config: what the analysis reads back through the W&B API."""
        for leaf, run in self.wandb.items():
            run.config.update(
                {STUDY_CONFIG_KEY: json.dumps(study), "component": ",".join(study["branches"][leaf]["component"])},
                allow_val_change=True,
            )

    def log_analysis(self, products) -> None:
        """In each branch run's summary the component swap's verdict of its final checkpoint against
        the baseline (attribution/*) and its symptom profile (symptoms/*); its metric table, and the
        progression GIFs as W&B videos (TensorBoard has no video)."""
        if not self.wandb or products is None:
            return
        import wandb

        from burnlab.analysis.tracking import branch_summary  # the analysis's one rule for these keys

        columns = list(products.table.rows[0]) if products.table.rows else []
        for leaf, run in self.wandb.items():
            for profile in products.profiles:
                if profile.branch == leaf:
                    run.summary.update(branch_summary(products, profile))
            rows = [row for row in products.table.rows if row.get("branch") == leaf]
            media = {"analysis/metrics": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}
            for (title, prompt_set), made in products.per_branch.items():
                if made.gif is not None and Path(made.gif).parent.parent.name == leaf:
                    media[f"progression/{prompt_set}"] = wandb.Video(str(made.gif), format="gif")
            run.log(media)

    def finish(self, exit_code: int = 0) -> None:
        for run in self.wandb.values():
            run.finish(exit_code=exit_code)
        for writer in self.writers.values():
            writer.close()


class NoDashboards:
    """What the processes other than the main one observe with: nothing (only rank 0 logs)."""

    def log_row(self, row: dict) -> None:
        pass

    def replay_rows(self, rows: Iterable[dict]) -> None:
        pass

    def log_samples(self, rows: List[dict]) -> None:
        pass

    def study_finished(self, study: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))
