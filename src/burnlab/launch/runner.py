"""The runner: trains a study's stages in dependency order, then samples and analyses them.

Each stage lives in the shared cache under its identity (burnlab.plan.study): a stage already complete
is skipped, a stage interrupted mid-way resumes from its last saved state, a new stage continues
from a state another length of it saved (burnlab.training.continuation: an epoch sweep), and concurrent
sweep jobs that need the same stage (or another length of it) wait on its trajectory's file lock
instead of training it twice. The run dir (Hydra's output dir, the same on every rank) gets the
resolved config and study.json (docs/run_store.md), which also records the captions longer than the
tokenizer's limit (burnlab.data.captions, warned about once); only the main process writes. After each
stage the accelerator lets go of that stage's models and optimizer, so a chain of stages needs the
memory of one; each stage's peak memory is recorded in its metrics.jsonl. The main process mirrors
every row, sample and the analysis onto the dashboards (burnlab.dashboards.trackers: one W&B run and
TensorBoard folder per branch). A SIGINT/SIGTERM (burnlab.runtime.stopping) stops the study after the step,
stage or sampled checkpoint in progress; a stage stopped by a NaN loss is marked FAILED.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Collection, Dict, List

import torch
from accelerate import Accelerator
from filelock import FileLock

from burnlab.attribution.swap import attribute_study
from burnlab.config.compose import resolve_path
from burnlab.config.schema import BASE, BurnlabConfig
from burnlab.dashboards import trackers
from burnlab.data import captions
from burnlab.data.dataset import load_study_data
from burnlab.errors import ConfigError, NonFiniteLoss, UserError
from burnlab.launch.outputs import PostRunAnalysis
from burnlab.models.checkpoint import base_sources, component_sources, stage_damage
from burnlab.models.components import BaseModel, Source
from burnlab.models.precision import dtype_name
from burnlab.plan.study import (
    LENGTH_DEPENDENT_SCHEDULES,
    branch_of,
    leaves,
    plan_stages,
    stage_order,
    steps_per_epoch,
    testing_plan,
)
from burnlab.runtime.distributed import any_rank
from burnlab.runtime.memory import PeakMemory
from burnlab.runtime.stopping import StopSignals
from burnlab.sampling.sampler import Sampler
from burnlab.store.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    remove_folder,
    remove_temp,
)
from burnlab.store.integrity import Damage, DamagedStore, jsonl_damage
from burnlab.store.layout import (
    CACHE,
    COMPLETE,
    CONFIG,
    FAILED,
    IMAGE_INDEX,
    METRICS,
    STAGE_RECORD,
    STATE,
    STUDY,
    StageRecord,
    checkpoint_dir,
    models_dir,
    samples_dir,
    stages_dir,
    training_samples_dir,
)
from burnlab.training.continuation import continued_from, find_donor, take_over
from burnlab.training.state import saved_states
from burnlab.training.trainer import StageJob, train_stage

log = logging.getLogger("burnlab")


class StudyRunner:
    """One study run, in three steps: `setup()` plans it (the base model, the data, the stage graph
    and its identities) and prepares the run dir and the observers; `run()` trains, samples and
    attributes; `cleanup()` closes the observers. `with StudyRunner(...) as runner: runner.run()`
    does all three. Observers see the run and change nothing in it: the dashboards (main process)
    mirror every row and sample, and the post-run analysis builds the report from the run store."""

    def __init__(
        self,
        config: BurnlabConfig,
        run_dir: Path,
        resolved_yaml: str,
        flat_config: dict,
        epochs_swept: Collection[str] = (),
    ):
        """`epochs_swept`: the stages whose epochs this sweep job's overrides set (train.keep_states=auto)."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.resolved_yaml, self.flat_config, self.epochs_swept = resolved_yaml, flat_config, epochs_swept
        self.cache = resolve_path(config.paths.runs) / CACHE

    def __enter__(self) -> "StudyRunner":
        self.setup()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.cleanup(failed=kind is not None)

    def setup(self) -> None:
        config = self.config
        if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("train.mixed_precision = 'fp16' needs a CUDA GPU; on a CPU use 'bf16' or 'no'.")
        # cpu=True without CUDA: a multi-process launch (torchrun, `accelerate launch --multi_gpu`)
        # then forms one gloo group instead of separate processes that each train alone
        try:
            self.accelerator = Accelerator(
                mixed_precision=config.train.mixed_precision,
                cpu=not torch.cuda.is_available(),
                project_dir=str(self.run_dir),
            )
        except ValueError as error:
            if "already been initialized" not in str(error):
                raise
            raise UserError(
                f"train.mixed_precision = {config.train.mixed_precision!r}, but this process already "
                f"ran a study with another precision, and accelerate keeps one per process: run "
                f"each precision in its own burnlab command (or a sweep launcher that starts a "
                f"process per job)."
            ) from None
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            raise UserError(
                f"burnlab was launched as {launched} processes (WORLD_SIZE), but accelerate joined "
                f"{self.accelerator.num_processes}: each would train the study alone into the same "
                f"run store. Launch with `accelerate launch --num_processes N -m burnlab.launch.cli ...` "
                f"(on a CPU machine: `accelerate launch --multi_gpu --num_processes N ...`)."
            )
        self.is_main = self.accelerator.is_main_process
        self.stop = StopSignals()
        if Path(config.model.path).expanduser().is_file():  # a single-file checkpoint: trained as a folder
            config.model.path = str(self._converted_single_file(config.model))
        self.base = BaseModel(config.model)
        _check_timesteps(config.validation.timesteps, self.base.num_train_timesteps())
        self.frozen_dtype = self.base.frozen_dtype(self.accelerator.device)
        if self.frozen_dtype == torch.float16 and self.accelerator.device.type == "cpu":
            log.warning(
                "model.dtype=float16 on a CPU: half precision runs many times slower there than "
                "float32 (model.dtype=auto picks float32 on a CPU, float16 on CUDA)"
            )
        self.data = load_study_data(config.data, config.validation)
        self.long_captions = self._check_captions()
        self.planned = plan_stages(
            config,
            self.base.identity,
            self.data.identity,
            dtype_name(self.frozen_dtype),
            self.epochs_swept,
            self.base.components,
        )
        self.stage_dirs = {name: stages_dir(self.cache.parent) / p.identity for name, p in self.planned.items()}
        # everything above only reads; from here on the main process writes and observes
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_temp(self.run_dir, recursive=False)  # a killed run's half-written study.json, say
            atomic_write_text(self.run_dir / CONFIG, self.resolved_yaml)
            self.dashboards = trackers.Dashboards(
                config,
                self.run_dir,
                self.flat_config,
                {leaf: branch_of(self.planned, leaf)["stages"] for leaf in leaves(config.stages)},
                {name: p.epoch_offset for name, p in self.planned.items()},
                steps_per_epoch(len(self.data.train), config.train, self.accelerator.num_processes),
            )
        else:
            self.dashboards = trackers.NoDashboards()
        self.observers = [self.dashboards]
        if self.is_main and config.analyze:
            self.observers.append(
                PostRunAnalysis(self.run_dir, self.uses_toy_model(), config.analysis.clip_model, self.dashboards)
            )

    def _converted_single_file(self, model) -> Path:
        """`model.path`, a single file, converted once into the cache (burnlab.models.loading)."""
        from burnlab.models.loading import converted_single_file

        if not model.single_file_configs:
            raise ConfigError(
                "model.single_file_configs",
                None,
                f"the diffusers folder or cached hub id of the family of the single-file checkpoint "
                f"model.path={model.path} (e.g. stabilityai/stable-diffusion-xl-base-1.0 for an SDXL file), "
                f"whose configs, tokenizers and scheduler complete it",
            )
        return converted_single_file(Path(model.path), model.single_file_configs, models_dir(self.cache.parent))

    def _check_captions(self) -> dict:
        """study.json's `long_captions`, warned about once, by the main process."""
        folder = resolve_path(self.config.data.path)
        val_folder = resolve_path(self.config.validation.path) if self.config.validation.path else folder
        record = captions.long_captions(
            self.base.tokenizer(),
            {"train": (self.data.train, folder), "validation": (self.data.validation, val_folder)},
        )
        message = captions.warning(record)
        if message and self.is_main:
            log.warning(message)
        return record

    # -- study.json ---------------------------------------------------------------------------
    def status(self, name: str) -> str:
        stage_dir = self.stage_dirs[name]
        if (stage_dir / COMPLETE).exists():
            return "complete"
        if (stage_dir / FAILED).exists():
            return "failed"
        return "partial" if (stage_dir / STATE).exists() or (stage_dir / METRICS).exists() else "pending"

    def stage_entry(self, name: str) -> dict:
        """One stage as study.json describes it."""
        planned = self.planned[name]
        stage = planned.config
        return StageRecord(
            name=name,
            parent=stage.parent,
            train=tuple(stage.train),
            lr=stage.lr,
            text_encoder_lr=stage.text_encoder_lr,
            text_encoder_2_lr=stage.text_encoder_2_lr,
            epochs=stage.epochs,
            save_epochs=tuple(stage.checkpoint_epochs()),
            identity=planned.identity,
            trajectory=planned.trajectory,
            keep_states=planned.keep_states,
            continued_from=continued_from(self.stage_dirs[name]),
            dir=os.path.relpath(self.stage_dirs[name], self.run_dir),
            epoch_offset=planned.epoch_offset,
            status=self.status(name),
        ).to_json()

    def study_json(self) -> dict:
        stages = {name: self.stage_entry(name) for name in self.planned}
        rel = {name: entry["dir"] for name, entry in stages.items()}
        leaf_names = leaves(self.config.stages)
        return {
            "study": self.config.name,
            "base": self.base.describe(),
            "stages": stages,
            "branches": {leaf: branch_of(self.planned, leaf) for leaf in leaf_names},
            "testing_plan": {leaf: testing_plan(self.planned, leaf, self.base.identity, rel) for leaf in leaf_names},
            "long_captions": self.long_captions,
            "data_problems": self.data.problems_record(),
        }

    def write_study_json(self) -> dict:
        study = self.study_json()
        if self.is_main:
            atomic_write_json(self.run_dir / STUDY, study)
        return study

    # -- stages -------------------------------------------------------------------------------
    def parent_sources(self, name: str) -> Dict[str, Source]:
        parent = self.planned[name].config.parent
        if parent == BASE:
            return base_sources(self.base.describe())
        return component_sources(checkpoint_dir(self.stage_dirs[parent], self.planned[parent].config.epochs))

    def run_stage(self, name: str, on_epoch_end=None) -> None:
        planned, stage_dir = self.planned[name], self.stage_dirs[name]
        # one lock per trajectory: the stage, and the other lengths of it that continue one another
        lock = FileLock(str(stage_dir.parent / f"trajectory_{planned.trajectory}.lock"))
        if self.is_main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            # before any rank looks for COMPLETE: a damaged stage is no longer complete
            stopping = self._check_stage(name) if self.is_main else []
            if any_rank(self.accelerator, bool(stopping)):
                raise (
                    DamagedStore(stopping[0])
                    if stopping
                    else UserError("the main process found a damaged file in the run store; its message names it.")
                )
            if (stage_dir / COMPLETE).exists():
                log.info("stage %s: complete in the cache (%s), skipped", name, stage_dir)
                self.dashboards.replay_rows(read_jsonl(stage_dir / METRICS))
                return
            if self.is_main:  # under the lock: whatever a killed writer left half-done here
                remove_temp(stage_dir)
                (stage_dir / FAILED).unlink(missing_ok=True)
            log.info(
                "stage %s: training %s for %d epochs -> %s",
                name,
                "+".join(planned.config.train),
                planned.config.epochs,
                stage_dir,
            )
            if self.is_main:
                self._continue_shorter_run(name)
                atomic_write_json(
                    stage_dir / STAGE_RECORD,
                    self.stage_entry(name) | {"name": name, "lineage": planned.lineage, "base": self.base.describe()},
                )
            self.accelerator.wait_for_everyone()  # every rank resumes from what the main process took over
            job = StageJob(
                self.config,
                planned,
                stage_dir,
                self.parent_sources(name),
                self.base,
                self.data,
                self.accelerator,
                self.frozen_dtype,
                log=self.dashboards.log_row,
                on_epoch_end=self._mirrored(name, on_epoch_end(stage_dir)) if on_epoch_end else None,
                stop=self.stop,
            )
            with PeakMemory(self.accelerator.device) as peak:
                try:
                    train_stage(job)
                except NonFiniteLoss as error:
                    self._mark_failed(name, str(error))
                    raise
                del job
                self.accelerator.free_memory()  # prepare() kept the stage's models and optimizer
            self._record_memory(name, peak)
        finally:
            self.accelerator.wait_for_everyone()
            if self.is_main:
                lock.release()

    def _check_stage(self, name: str) -> List[Damage]:
        """Main process, under the trajectory's lock. A complete stage whose metrics or checkpoints
        are damaged is trained again from its parent (the same seeds give the same weights); a
        partial one whose metrics are damaged is returned: it stops the study, naming the file
        and the repair (its rows before the saved state cannot be rebuilt without retraining)."""
        stage_dir = self.stage_dirs[name]
        if not (stage_dir / COMPLETE).exists():
            metrics = stage_dir / METRICS
            return jsonl_damage(metrics) if metrics.exists() else []
        damage = stage_damage(stage_dir, self.planned[name].config.checkpoint_epochs())
        if damage:
            log.warning(
                "stage %s: %s; the stage is trained again from %s",
                name,
                "; ".join(map(str, damage)),
                self.planned[name].config.parent,
            )
            reset_stage(stage_dir)
        return []

    def _continue_shorter_run(self, name: str) -> None:
        """A stage with no state of its own takes over the latest usable state of its trajectory in the cache."""
        planned, stage_dir = self.planned[name], self.stage_dirs[name]
        if saved_states(stage_dir):
            return
        every = self.config.validation.every_n_epochs
        donor = find_donor(stage_dir.parent, planned, every)
        if donor is not None:
            take_over(donor, stage_dir, planned, every)
            # the rows up to there were logged by the other run's dashboards
            self.dashboards.replay_rows(read_jsonl(stage_dir / METRICS))
        elif self.config.train.lr_scheduler in LENGTH_DEPENDENT_SCHEDULES and planned.keep_states:
            log.info(
                "stage %s: train.lr_scheduler=%s depends on the stage's length, so each length of it "
                "trains from epoch 0 (only constant schedules let a longer run continue a shorter one)",
                name,
                self.config.train.lr_scheduler,
            )

    def _mark_failed(self, name: str, reason: str) -> None:
        """The stage's FAILED marker and study.json saying so; its state and checkpoints stay."""
        if self.is_main:
            atomic_write_json(self.stage_dirs[name] / FAILED, {"stage": name, "reason": reason})
        self.write_study_json()

    def _record_memory(self, name: str, peak: PeakMemory) -> None:
        planned = self.planned[name]
        log.info("stage %s: peak memory %.2f GiB (%s)", name, peak.peak_bytes / 2**30, peak.kind)
        if self.is_main:
            row = {
                "type": "memory",
                "stage": name,
                "epoch": planned.config.epochs,
                "study_epoch": planned.epoch_offset + planned.config.epochs,
                "peak_bytes": peak.peak_bytes,
                "measure": peak.kind,
            }
            append_jsonl(self.stage_dirs[name] / METRICS, row)
            self.dashboards.log_row(row)

    def _mirrored(self, name: str, hook):
        """The sampling hook, then its samples (if it made any this epoch) onto the dashboards."""

        def on_epoch_end(epoch, models):
            hook(epoch, models)
            folder = training_samples_dir(self.stage_dirs[name], epoch)
            if self.is_main and (folder / IMAGE_INDEX).exists():
                self.dashboards.log_training_samples(name, epoch, list(read_jsonl(folder / IMAGE_INDEX)), folder)

        return on_epoch_end

    def run(self) -> dict:
        """Train every stage, sample the testing plan and the swap corners; returns study.json."""
        with self.stop:
            study = self.write_study_json()
            sampler = (
                Sampler(
                    self.config.sampling,
                    self.base.describe(),
                    samples_dir(self.cache.parent),
                    self.accelerator,
                    self.stop,
                )
                if self.config.sampling.prompts
                else None
            )
            for name in stage_order(self.config.stages):
                hook = sampler.training_hook if sampler and self.config.sampling.every_n_epochs else None
                self.run_stage(name, hook)
                study = self.write_study_json()
                if any_rank(self.accelerator, self.stop.received is not None):
                    raise self.stop.interrupted(f"after stage {name}, which is complete in the cache")
            if sampler and self.config.sampling.testing_plan:
                rows = sampler.sample_testing_plan(study, self.run_dir)
                self.dashboards.log_samples(rows)
                if self.config.sampling.attribution:
                    attribute_study(
                        sampler,
                        study,
                        self.run_dir,
                        self.base.conditioner(),
                        self.base.noise_scheduler(),
                        stop_check=self._stop_after("while sampling the swap corners"),
                    )
        for observer in self.observers:
            observer.study_finished(study)
        return study

    def cleanup(self, failed: bool = False) -> None:
        """Close the observers (a failed study's W&B runs end as failed, not left open in this
        process) and let go of the accelerator."""
        for observer in getattr(self, "observers", []):
            observer.finish(exit_code=1 if failed else 0)
        if not failed and hasattr(self, "accelerator"):
            self.accelerator.end_training()

    def _stop_after(self, where: str):
        def check() -> None:
            if any_rank(self.accelerator, self.stop.received is not None):
                raise self.stop.interrupted(f"{where}; the corners sampled so far are kept in the sample cache")

        return check

    def uses_toy_model(self) -> bool:
        """The toy probe measures toy-world images only (the toy SD's and the toy SDXL's); real
        models are analysed without it."""
        from burnlab.toy import asset_dir

        return Path(self.base.root) in (Path(asset_dir(name)).resolve() for name in ("base", "base_xl"))


def reset_stage(stage_dir: Path) -> None:
    """Remove a stage folder in one rename (burnlab.store.files.remove_folder) and start it empty, so
    that the stage trains from epoch 0; a kill midway leaves no stage, never half of one."""
    remove_folder(stage_dir)
    stage_dir.mkdir()


def _check_timesteps(timesteps, num_train_timesteps: int) -> None:
    bad = [t for t in timesteps if t >= num_train_timesteps]
    if bad:
        raise ConfigError(
            "validation.timesteps",
            list(timesteps),
            f"timesteps from 0 to {num_train_timesteps - 1} (the model's scheduler has "
            f"{num_train_timesteps} training timesteps; {bad} lie outside)",
        )
