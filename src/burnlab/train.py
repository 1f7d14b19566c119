"""Training one stage: the chosen components learn, the others stay bitwise frozen.

A stage starts from its parent's final weights (or the base model), trains `stage.train` with
AdamW for `stage.epochs` epochs and writes metrics, checkpoints and — every
`train.state_every_epochs` epochs — a resumable state. All randomness comes from generators
seeded by (train.seed, stage, epoch, batch), so a stage resumed from its last state ends with
exactly the weights of an uninterrupted run. The runner (burnlab.runner) decides which stages
to train; this module trains one.
"""
from __future__ import annotations

import contextlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from burnlab.checkpoint import CHECKPOINT_COMPONENTS, checkpoint_dir, save_checkpoint
from burnlab.components import BaseModel, Source
from burnlab.config import BurnlabConfig
from burnlab.data import StudyData
from burnlab.distributed import shard
from burnlab.encoding import diffusion_target, encode_latents, encode_text
from burnlab.precision import predict_noise
from burnlab.store import append_jsonl, atomic_write_json, hash_json, read_json, read_jsonl, replace_dir, write_jsonl
from burnlab.study import PlannedStage
from burnlab.validation import diffusion_loss

STATE = "state"
COMPLETE = "COMPLETE"


@dataclass
class StageJob:
    config: BurnlabConfig
    stage: PlannedStage
    stage_dir: Path
    parent_sources: Dict[str, Source]  # where unet / text_encoder start from
    base: BaseModel
    data: StudyData
    accelerator: object  # accelerate.Accelerator
    frozen_dtype: torch.dtype  # the VAE's and the frozen component's dtype (`model.dtype` on this device)
    log: Callable[[dict], None] = lambda row: None  # mirror of metrics rows (W&B, TensorBoard)
    on_epoch_end: Optional[Callable[[int, Dict[str, torch.nn.Module]], None]] = None  # sampling hook


def epoch_seed(seed: int, *parts) -> int:
    return int(hash_json([seed, *parts]), 16) % (2 ** 63)


class StageTrainer:
    def __init__(self, job: StageJob):
        self.job = job
        self.cfg = job.config
        self.accelerator = job.accelerator
        self.device = self.accelerator.device
        self.trained: List[str] = list(job.stage.config.train)
        self.models = {name: job.parent_sources[name].load(
            name, torch.float32 if name in self.trained else job.frozen_dtype) for name in CHECKPOINT_COMPONENTS}
        self.tokenizer = job.base.tokenizer()
        self.scheduler = job.base.noise_scheduler()
        vae = job.base.source("vae").load("vae", job.frozen_dtype).to(self.device)
        vae.requires_grad_(False)
        self.train_latents = encode_latents(vae, job.data.train.images, self.device)
        self.val_latents = encode_latents(vae, job.data.validation.images, self.device)
        self.stabilize_latents = encode_latents(vae, job.data.stabilize.images, self.device)
        del vae
        for name, model in self.models.items():
            if name in self.trained:
                model.requires_grad_(True)
                model.train()
                if self.cfg.train.gradient_checkpointing:
                    _enable_gradient_checkpointing(model)
            else:
                model.requires_grad_(False)
                model.eval()
            model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), betas=tuple(self.cfg.train.betas), eps=self.cfg.train.eps,
            weight_decay=self.cfg.train.weight_decay)
        world = self.accelerator.num_processes
        micro_batches = math.ceil(len(job.data.train) / (self.cfg.train.batch_size * world))
        self.steps_per_epoch = math.ceil(micro_batches / self.cfg.train.gradient_accumulation_steps)
        self.lr_scheduler = get_scheduler(
            self.cfg.train.lr_scheduler, self.optimizer, num_warmup_steps=self.cfg.train.lr_warmup_steps,
            num_training_steps=self.steps_per_epoch * job.stage.config.epochs)
        prepared = self.accelerator.prepare(*[self.models[n] for n in self.trained], self.optimizer)
        for name, model in zip(self.trained, prepared[:-1]):
            self.models[name] = model
        self.optimizer = prepared[-1]

    def _param_groups(self):
        stage = self.job.stage.config
        groups = []
        for name in self.trained:
            lr = stage.text_encoder_lr if name == "text_encoder" and stage.text_encoder_lr else stage.lr
            groups.append({"params": list(self.models[name].parameters()), "lr": lr, "name": name})
        return groups

    def autocast(self):
        return self.accelerator.autocast() if self.cfg.train.mixed_precision != "no" else contextlib.nullcontext()

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        stage, job = self.job.stage, self.job
        epochs = stage.config.epochs
        start_epoch = self._resume()
        step = start_epoch * self.steps_per_epoch
        if start_epoch == 0:
            self._validate(0, 0)
        progress = tqdm(total=epochs, initial=start_epoch, desc=f"stage {stage.name}", unit="epoch",
                        disable=not (self.cfg.logger.progress and self.accelerator.is_main_process))
        for epoch in range(start_epoch, epochs):
            step = self._train_epoch(epoch, step, progress)
            done = epoch + 1
            every = self.cfg.validation.every_n_epochs
            if (every and done % every == 0) or done == epochs:
                self._validate(done, step)
            if done in stage.config.checkpoint_epochs():
                self._save_checkpoint(done)
            if job.on_epoch_end is not None:
                job.on_epoch_end(done, self._unwrapped())
            if done < epochs and (done % self.cfg.train.state_every_epochs == 0
                                  or done in stage.config.checkpoint_epochs()):
                self._save_state(done, step)
            progress.update(1)
        progress.close()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (job.stage_dir / COMPLETE).write_text("complete\n")
            shutil.rmtree(job.stage_dir / STATE, ignore_errors=True)

    def _train_epoch(self, epoch: int, step: int, progress) -> int:
        cfg, data = self.cfg, self.job.data
        generator = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, self.job.stage.name, epoch))
        count = len(data.train)
        order = torch.randperm(count, generator=generator)
        flips = torch.rand(count, generator=generator) < cfg.data.flip_p
        dropped = torch.rand(count, generator=generator) < cfg.data.caption_dropout
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        global_batch = cfg.train.batch_size * world
        batches = [order[i:i + global_batch] for i in range(0, count, global_batch)]
        accumulation = cfg.train.gradient_accumulation_steps
        for group_start in range(0, len(batches), accumulation):
            group = batches[group_start:group_start + accumulation]
            loss_sums = torch.zeros(2)  # (sum of per-image losses, images) over the group, this rank
            for offset, batch in enumerate(group):
                batch_generator = torch.Generator().manual_seed(
                    epoch_seed(cfg.train.seed, self.job.stage.name, epoch, group_start + offset))
                per_image, weight = self._losses(batch, flips, dropped, batch_generator, rank, world)
                # DDP averages gradients over ranks: scaling each rank's sum by world / global batch
                # makes that average the global batch's mean, however unevenly it was split
                self.accelerator.backward(per_image.sum() * weight * world / (len(batch) * len(group)))
                loss_sums += torch.stack([per_image.detach().sum().cpu() * weight, torch.tensor(len(per_image) * weight)])
            if cfg.train.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(
                    [p for name in self.trained for p in self.models[name].parameters()], cfg.train.max_grad_norm)
            self.optimizer.step()
            skipped = self.accelerator.optimizer_step_was_skipped  # fp16: the scaler found inf/NaN gradients
            if not skipped:
                self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            total, images = self.accelerator.reduce(loss_sums.to(self.device), "sum").tolist()
            fraction = min(1.0, (group_start + len(group)) / len(batches))
            row = {"type": "train", "step": step, "epoch": epoch + fraction, "train_loss": total / images}
            row.update({f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups})
            if self.accelerator.scaler is not None:
                row.update(grad_scale=self.accelerator.scaler.get_scale(), step_skipped=skipped)
            self._record(row)
            progress.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
        return step

    def _losses(self, global_batch, flips, dropped, generator, rank, world):
        """Per-image losses of this rank's share of the global batch, and the share's weight: 1,
        or 0 for a rank whose share is empty (it runs one image with weight 0, so every rank
        takes part in the gradient all-reduce and contributes nothing)."""
        size = len(global_batch)
        clean = self.train_latents.sample(global_batch, flips[global_batch], generator)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (size,), generator=generator)
        mine = shard(size, world, rank)
        weight = 1.0 if mine.stop > mine.start else 0.0
        if not weight:
            mine = slice(0, 1)
        indices, clean, noise, timesteps = global_batch[mine], clean[mine], noise[mine], timesteps[mine]
        captions = ["" if dropped[i] else self.job.data.train.captions[i] for i in indices.tolist()]
        noisy = self.scheduler.add_noise(clean, noise, timesteps).to(self.device)
        target = diffusion_target(self.scheduler, clean, noise, timesteps).to(self.device)
        text_grad = torch.enable_grad() if "text_encoder" in self.trained else torch.no_grad()
        with self.autocast():
            with text_grad:
                states = encode_text(self.tokenizer, self.models["text_encoder"], captions, self.device)
            prediction = predict_noise(self.models["unet"], noisy, timesteps.to(self.device), states)
        return F.mse_loss(prediction, target.float(), reduction="none").mean(dim=(1, 2, 3)), weight

    def _validate(self, epoch: int, step: int) -> None:
        cfg, data = self.cfg, self.job.data
        if not cfg.validation.every_n_epochs:
            return
        models = self._unwrapped()
        args = (models["unet"], models["text_encoder"], self.tokenizer, self.scheduler)
        # every rank scores its share of the images; the sum puts the shares together
        ranks = (self.accelerator.process_index, self.accelerator.num_processes,
                 lambda t: self.accelerator.reduce(t.to(self.device), "sum").cpu())
        val, val_by_t = diffusion_loss(*args, self.val_latents, data.validation.captions, cfg.validation,
                                       self.device, self.autocast, *ranks)
        stab, stab_by_t = diffusion_loss(*args, self.stabilize_latents, data.stabilize.captions,
                                         cfg.validation, self.device, self.autocast, *ranks)
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
            append_jsonl(self.job.stage_dir / "metrics.jsonl", row)
            self.job.log(row)

    def _unwrapped(self) -> Dict[str, torch.nn.Module]:
        return {name: self.accelerator.unwrap_model(model) for name, model in self.models.items()}

    # -- checkpoints and resumable state ------------------------------------------------------
    def _save_checkpoint(self, epoch: int) -> None:
        if not self.accelerator.is_main_process:
            return
        stage, models = self.job.stage, self._unwrapped()
        inherited = {name: source for name, source in self.job.parent_sources.items() if name not in self.trained}
        save_checkpoint(checkpoint_dir(self.job.stage_dir, epoch), {n: models[n] for n in self.trained}, inherited,
                        stage=stage.name, stage_identity=stage.identity, epoch=epoch, lineage=stage.lineage,
                        base=self.job.base.describe())

    def _save_state(self, epoch: int, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        target = self.job.stage_dir / STATE
        tmp = target.with_name(STATE + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        models = self._unwrapped()
        for name in self.trained:
            save_file({k: v.contiguous() for k, v in models[name].state_dict().items()}, tmp / f"{name}.safetensors")
        scaler = self.accelerator.scaler
        torch.save({"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                    "grad_scaler": scaler.state_dict() if scaler is not None else None}, tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {"epoch": epoch, "step": step, "stage_identity": self.job.stage.identity})
        replace_dir(tmp, target)

    def _resume(self) -> int:
        """Load the latest saved state, if any; returns the epoch to start from."""
        target = self.job.stage_dir / STATE
        metrics = self.job.stage_dir / "metrics.jsonl"
        if not (target / "state.json").exists():
            if self.accelerator.is_main_process and metrics.exists():
                metrics.unlink()  # rows of a run that died before its first saved state
            return 0
        state = read_json(target / "state.json")
        models = self._unwrapped()
        for name in self.trained:
            models[name].load_state_dict(load_file(target / f"{name}.safetensors"))
        saved = torch.load(target / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        if self.accelerator.scaler is not None and saved.get("grad_scaler"):
            self.accelerator.scaler.load_state_dict(saved["grad_scaler"])
        if self.accelerator.is_main_process:
            write_jsonl(metrics, [row for row in read_jsonl(metrics) if row["epoch"] <= state["epoch"]])
        return int(state["epoch"])


def _enable_gradient_checkpointing(model) -> None:
    if hasattr(model, "enable_gradient_checkpointing"):  # diffusers
        model.enable_gradient_checkpointing()
    else:  # transformers
        model.activation_checkpointing_enable()


def train_stage(job: StageJob) -> None:
    StageTrainer(job).run()
