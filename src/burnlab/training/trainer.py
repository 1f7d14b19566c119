"""Training one stage: the chosen components learn, the others stay bitwise frozen.

A stage starts from its parent's final weights (or the base model), trains `stage.train` with
AdamW for `stage.epochs` epochs and writes metrics, checkpoints and — every
`train.state_every_epochs` epochs — a resumable state. All randomness comes from generators
seeded by (train.seed, stage, epoch, batch), so a stage resumed from its last state ends with
exactly the weights of an uninterrupted run. The runner (burnlab.launch.runner) decides which stages
to train; this module trains one: burnlab.training.setup builds what it trains with,
burnlab.training.state saves and resumes it, and the loop below is the epochs, the optimizer step
(stopping at a NaN/inf loss, or at a signal after saving the state) and the validation rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from burnlab.config.schema import BurnlabConfig
from burnlab.data.dataset import StudyData
from burnlab.errors import NonFiniteLoss
from burnlab.models.checkpoint import save_checkpoint, save_lora_checkpoint
from burnlab.models.components import BaseModel, Source
from burnlab.models.encoding import diffusion_target, encode_captions_once
from burnlab.models.precision import DTYPES, predict_noise
from burnlab.plan.study import PlannedStage, epoch_seed
from burnlab.runtime.distributed import any_rank, shard
from burnlab.runtime.stopping import StopSignals
from burnlab.store.files import append_jsonl, atomic_write_text
from burnlab.store.layout import COMPLETE, METRICS, STATE, checkpoint_dir
from burnlab.training.setup import set_up_stage
from burnlab.training.state import (
    Position,
    load_state,
    prune_states,
    save_state,
    saved_states,
)
from burnlab.training.validation import diffusion_loss

log = logging.getLogger("burnlab")


@dataclass
class StageJob:
    config: BurnlabConfig
    stage: PlannedStage
    stage_dir: Path
    parent_sources: Dict[str, Source]  # where each component (unet, text_encoder, ...) starts from
    base: BaseModel
    data: StudyData
    accelerator: object  # accelerate.Accelerator
    frozen_dtype: torch.dtype  # the VAE's and the frozen component's dtype (`model.dtype` on this device)
    log: Callable[[dict], None] = lambda row: None  # mirror of metrics rows (W&B, TensorBoard)
    on_epoch_end: Optional[Callable[[int, Dict[str, torch.nn.Module]], None]] = None  # sampling hook
    stop: StopSignals = field(default_factory=StopSignals)  # a SIGINT/SIGTERM noted by the runner


class StageTrainer:
    def __init__(self, job: StageJob):
        self.job = job
        self.cfg = job.config
        self.accelerator = job.accelerator
        self.device = self.accelerator.device
        self.setup = set_up_stage(job)
        self.models, self.trained = self.setup.models, self.setup.trained
        self.conditioner, self.scheduler = self.setup.conditioner, self.setup.noise_scheduler
        self.optimizer, self.lr_scheduler = self.setup.optimizer, self.setup.lr_scheduler
        self.clipped = [p for name in self.trained for p in self.models[name].parameters() if p.requires_grad]
        self.skipped_nonfinite = 0
        self.checkpoint_epochs = job.stage.config.checkpoint_epochs()
        self.kept_states = self.checkpoint_epochs if job.stage.keep_states else []
        self.text_states = None  # frozen text encoders' conditioning, encoded once (UNet-only stages)
        if not set(self.conditioner.encoders) & set(self.trained):
            with self.autocast():
                self.text_states = encode_captions_once(
                    self.conditioner, self.models, [*job.data.train.captions, ""], self.device
                )

    def autocast(self):
        return self.accelerator.autocast() if self.cfg.train.mixed_precision != "no" else contextlib.nullcontext()

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        stage, job = self.job.stage, self.job
        epochs = stage.config.epochs
        resumed = load_state(job.stage_dir, self.setup, self.accelerator, stage.identity)
        position = resumed or Position()
        if resumed is None:
            self._validate(0, 0)
        elif (
            resumed.batch == 0
            and resumed.epoch in self.checkpoint_epochs
            and not checkpoint_dir(job.stage_dir, resumed.epoch).exists()
        ):
            # a state taken over from another length of the stage (burnlab.training.continuation)
            self._save_checkpoint(resumed.epoch)
        progress = tqdm(
            total=epochs,
            initial=position.epoch,
            desc=f"stage {stage.name}",
            unit="epoch",
            disable=not (self.cfg.logger.progress and self.accelerator.is_main_process),
        )
        step = position.step
        for epoch in range(position.epoch, epochs):
            step = self._train_epoch(epoch, position.batch if epoch == position.epoch else 0, step, progress)
            done = epoch + 1
            every = self.cfg.validation.every_n_epochs
            if (every and done % every == 0) or done == epochs:
                self._validate(done, step)
            if done in self.checkpoint_epochs:
                self._save_checkpoint(done)
            if job.on_epoch_end is not None:
                job.on_epoch_end(done, self._unwrapped())
            if (
                done < epochs and (done % self.cfg.train.state_every_epochs == 0 or done in self.checkpoint_epochs)
            ) or done in self.kept_states:
                self._save_state(Position(done, 0, step))
            progress.update(1)
        progress.close()
        if self.skipped_nonfinite:
            log.warning(
                "stage %s: skipped %d optimizer steps with a non-finite loss or gradient norm "
                "(train.skip_nonfinite=true); metrics.jsonl counts them per step (`skipped_nonfinite`)",
                stage.name,
                self.skipped_nonfinite,
            )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            atomic_write_text(job.stage_dir / COMPLETE, "complete\n")
            if self.kept_states:
                prune_states(job.stage_dir, self.kept_states)
            else:
                shutil.rmtree(job.stage_dir / STATE, ignore_errors=True)

    def _save_state(self, position: Position) -> None:
        save_state(
            self.job.stage_dir, self.setup, self.accelerator, self.job.stage.identity, position, self.kept_states
        )

    def _train_epoch(self, epoch: int, first_batch: int, step: int, progress) -> int:
        """Trains the epoch's batches from `first_batch` on (a resumed state may stand mid-epoch)."""
        cfg, data = self.cfg, self.job.data
        generator = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, self.job.stage.name, epoch))
        count = len(data.train)
        order = torch.randperm(count, generator=generator)
        flips = torch.rand(count, generator=generator) < cfg.data.flip_p
        dropped = torch.rand(count, generator=generator) < cfg.data.caption_dropout
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        global_batch = cfg.train.batch_size * world
        batches = [order[i : i + global_batch] for i in range(0, count, global_batch)]
        accumulation = cfg.train.gradient_accumulation_steps
        for group_start in range(first_batch, len(batches), accumulation):
            group = batches[group_start : group_start + accumulation]
            # (loss x images, images) of the group, this rank
            sums = torch.zeros(2, dtype=torch.float64, device=self.device)
            for offset, batch in enumerate(group):
                batch_generator = torch.Generator().manual_seed(
                    epoch_seed(cfg.train.seed, self.job.stage.name, epoch, group_start + offset)
                )
                loss, images = self._loss(batch, flips, dropped, batch_generator, rank, world)
                # DDP averages gradients over ranks: weighting each rank's mean by its share of the
                # global batch (x world) makes that average the global batch's mean, however
                # unevenly it was split; with one process the weight is exactly 1
                share = images * world / len(batch)
                self.accelerator.backward(loss * share / len(group))
                sums += torch.stack([loss.detach().double() * images, sums.new_tensor(float(images))])
            step += 1
            row = {
                "type": "train",
                "step": step,
                "epoch": epoch + min(1.0, (group_start + len(group)) / len(batches)),
                **self._optimizer_step(sums, epoch, step),
            }
            row.update({f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups})
            self._record(row)
            if row["train_loss"] is not None:
                progress.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
            if any_rank(self.accelerator, self.job.stop.received is not None):
                self._save_state(Position(epoch, group_start + len(group), step))
                raise self.job.stop.interrupted(
                    f"in stage {self.job.stage.name} at epoch {epoch + 1}, step {step}; its training state is "
                    f"saved in {self.job.stage_dir / STATE} and the stages before it are complete"
                )
        return step

    def _optimizer_step(self, sums: torch.Tensor, epoch: int, step: int) -> dict:
        """Clip, then step the optimizer and the LR schedule unless the loss or the gradient norm
        is NaN/inf. Reading the step's loss and norm is its one host sync (the row logs them);
        returns the row's values."""
        scaler, max_norm = self.accelerator.scaler, self.cfg.train.max_grad_norm
        measured = self.accelerator.reduce(sums, "sum")
        if max_norm > 0:
            self.accelerator.unscale_gradients()  # fp16: the norm and the clipping are of the true gradients
            norm_tensor = torch.nn.utils.get_total_norm([p.grad for p in self.clipped if p.grad is not None])
            measured = torch.cat([measured, norm_tensor.reshape(1).to(measured)])
        total, images, *norm = measured.tolist()
        loss, norm = total / images, (norm[0] if norm else 0.0)
        # with fp16 an infinite gradient norm is the GradScaler's business: it skips the step itself
        bad = [
            (what, value)
            for what, value in (("loss", loss), ("gradient norm", norm))
            if not math.isfinite(value) and (what == "loss" or scaler is None)
        ]
        # NaN and inf are no JSON: such values are logged as null
        row = {"train_loss": loss if math.isfinite(loss) else None}
        if max_norm > 0:
            row["grad_norm"] = norm if math.isfinite(norm) else None
        if bad:
            self._non_finite(*bad[0], epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            return {**row, "train_loss": None, "skipped_nonfinite": 1}
        if max_norm > 0 and not norm + 1e-6 < max_norm:
            # clip_grad_norm_ multiplies every gradient by min(1, max_norm / (norm + 1e-6)) so as
            # not to sync; the norm is read anyway, and where that factor is 1 (most of the toy's
            # steps) the pass over the gradients would change nothing
            torch.nn.utils.clip_grads_with_norm_(self.clipped, max_norm, norm_tensor)
        scale = scaler.get_scale() if scaler is not None else None
        self.optimizer.step()
        if scaler is not None:
            row["grad_scale"] = scaler.get_scale()
            # fp16: the scaler found inf/NaN gradients and backed off. Read from the scale, because
            # a fused AdamW takes every step itself and skips inside (accelerate cannot tell)
            row["step_skipped"] = row["grad_scale"] < scale
        if not row.get("step_skipped"):
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return row

    def _non_finite(self, what: str, value: float, epoch: int, step: int) -> None:
        """With `train.skip_nonfinite` the caller skips the step (counted); without, the stage stops."""
        if self.cfg.train.skip_nonfinite:
            self.skipped_nonfinite += 1
            return
        states = saved_states(self.job.stage_dir)
        kept = (
            f"its last saved state ({states[0].name}) and checkpoints are kept"
            if states
            else "it had saved no training state yet; its checkpoints, if any, are kept"
        )
        raise NonFiniteLoss(
            f"stage {self.job.stage.name}: the training {what} became {value} at epoch {epoch + 1}, step {step} "
            f"(lr {self.job.stage.config.lr}); the stage stopped and is marked failed in study.json, and {kept}. "
            f"Lower the stage's learning rate, or set train.skip_nonfinite=true to skip such steps "
            f"(they are counted in metrics.jsonl)."
        )

    def _loss(self, global_batch, flips, dropped, generator, rank, world):
        """The mean loss over this rank's share of the global batch, and the share's size. A rank
        whose share is empty runs one image and counts 0 images, so it takes part in the
        gradient all-reduce and contributes nothing."""
        size = len(global_batch)
        latents = self.setup.latents["train"]
        clean = latents.sample(global_batch, flips[global_batch], generator)
        sizes = latents.sizes(global_batch, flips[global_batch])  # SDXL's add_time_ids, else None
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (size,), generator=generator)
        mine = shard(size, world, rank)
        images = mine.stop - mine.start
        if not images:
            mine = slice(0, 1)
        indices, clean, noise, timesteps = global_batch[mine], clean[mine], noise[mine], timesteps[mine]
        sizes = None if sizes is None else sizes[mine]
        captions = ["" if dropped[i] else self.job.data.train.captions[i] for i in indices.tolist()]
        noisy = self.scheduler.add_noise(clean, noise, timesteps).to(self.device)
        target = diffusion_target(self.scheduler, clean, noise, timesteps).to(self.device)
        with self.autocast():
            if self.text_states is not None:
                conditioning = self.text_states.lookup(captions)
            else:
                conditioning = self.conditioner.encode(self.models, captions, self.device)
            prediction = predict_noise(self.models["unet"], noisy, timesteps.to(self.device), conditioning, sizes)
        return F.mse_loss(prediction, target.float()), images

    def _validate(self, epoch: int, step: int) -> None:
        cfg, data = self.cfg, self.job.data
        if not cfg.validation.every_n_epochs:
            return
        models = self._unwrapped()
        args = (models, self.conditioner, self.scheduler)
        # every rank scores its share of the images; the sum puts the shares together
        ranks = (
            self.accelerator.process_index,
            self.accelerator.num_processes,
            lambda t: self.accelerator.reduce(t.to(self.device), "sum").cpu(),
        )
        val, val_by_t = diffusion_loss(
            *args,
            self.setup.latents["validation"],
            data.validation.captions,
            cfg.validation,
            self.device,
            self.autocast,
            *ranks,
        )
        stab, stab_by_t = diffusion_loss(
            *args,
            self.setup.latents["stabilize"],
            data.stabilize.captions,
            cfg.validation,
            self.device,
            self.autocast,
            *ranks,
        )
        row = {"type": "val", "step": step, "epoch": epoch}
        for key, value in (("val_loss", val), ("stabilized_loss", stab)):
            if value is not None:
                row[key] = value
        if cfg.validation.timesteps:
            row.update({"val_loss_by_t": val_by_t, "stabilized_loss_by_t": stab_by_t})
        self._record(row)

    def _record(self, row: dict) -> None:
        row = {**row, "stage": self.job.stage.name, "study_epoch": self.job.stage.epoch_offset + row["epoch"]}
        if self.accelerator.is_main_process:
            append_jsonl(self.job.stage_dir / METRICS, row)
            self.job.log(row)

    def _unwrapped(self) -> Dict[str, torch.nn.Module]:
        return {name: self.accelerator.unwrap_model(model) for name, model in self.models.items()}

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, epoch: int) -> None:
        if not self.accelerator.is_main_process:
            return
        stage, models = self.job.stage, self._unwrapped()
        manifest = dict(
            stage=stage.name,
            stage_identity=stage.identity,
            epoch=epoch,
            lineage=stage.lineage,
            base=self.job.base.describe(),
        )
        if self.cfg.train.adapter == "lora":  # one LoRA file with every adapter (burnlab.models.adapters)
            save_lora_checkpoint(checkpoint_dir(self.job.stage_dir, epoch), models, self.trained, **manifest)
            return
        inherited = {name: source for name, source in self.job.parent_sources.items() if name not in self.trained}
        # a child starts from the final checkpoint: that one stays exact, whatever train.save_dtype
        exact = epoch == stage.config.epochs and stage.has_children
        save_checkpoint(
            checkpoint_dir(self.job.stage_dir, epoch),
            {n: models[n] for n in self.trained},
            inherited,
            stage=stage.name,
            stage_identity=stage.identity,
            epoch=epoch,
            lineage=stage.lineage,
            base=self.job.base.describe(),
            dtype=torch.float32 if exact else DTYPES[self.cfg.train.save_dtype],
        )


def train_stage(job: StageJob) -> None:
    StageTrainer(job).run()
