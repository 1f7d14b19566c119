"""Precision: fp16 loss scaling (skipped steps hold the LR schedule back; the scaler's state
resumes), half-precision frozen parts with mixed_precision=no, the sampling dtype, and the
frozen dtype in the stage identity."""

import dataclasses

import pytest
import torch
from accelerate import Accelerator

import burnlab.launch.runner
from burnlab.config.compose import load_config
from burnlab.config.schema import PromptConfig, SamplingConfig
from burnlab.models.components import Source
from burnlab.plan.study import plan_stages
from burnlab.sampling.sampler import Sampler, sampling_identity
from burnlab.store.files import read_jsonl
from burnlab.training.trainer import StageTrainer
from study_helpers import (
    assert_same,
    compose_config,
    final_checkpoint,
    run_study,
    tiny_overrides,
    weights,
)

# Large enough that the first scaled backward passes overflow; each skipped step halves it.
INIT_SCALE = 2.0**126


class CpuLossScalingAccelerator(Accelerator):
    """accelerate's fp16 loss-scaling path on a CPU: torch's CPU GradScaler in place of the CUDA
    one (the forward stays float32), so skipped steps and the scaler's state are testable here."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=3)
        self.native_amp = True

    @property
    def mixed_precision(self):
        return "fp16"


SCALED = ("train.lr_scheduler=linear", "sampling.testing_plan=false", "validation.every_n_epochs=0")


class Interrupted(Exception):
    pass


def train_rows(run_dir, study, stage):
    return [r for r in read_jsonl(run_dir / study["stages"][stage]["dir"] / "metrics.jsonl") if r["type"] == "train"]


def test_skipped_fp16_steps_hold_the_lr_schedule_back(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(burnlab.launch.runner, "Accelerator", CpuLossScalingAccelerator)
    study, run_dir = run_study(tiny_model, tiny_data, tmp_path, *SCALED, experiment="burn_unet")
    rows = train_rows(run_dir, study, "baseline")
    skipped = [r["step_skipped"] for r in rows]
    assert any(skipped) and not all(skipped), skipped  # overflows, then a scale that fits
    base_lr, steps = study["stages"]["baseline"]["lr"], len(rows)
    scale, taken = INIT_SCALE, 0
    for row in rows:
        if row["step_skipped"]:
            assert row["grad_scale"] == scale / 2  # the scaler backs off
        scale = row["grad_scale"]
        taken += not row["step_skipped"]
        # linear decay over the stage: the lr after a step counts only the steps taken
        assert row["lr_unet"] == pytest.approx(base_lr * (1 - taken / steps)), (row["step"], taken)


def test_the_grad_scaler_state_resumes_exactly(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(burnlab.launch.runner, "Accelerator", CpuLossScalingAccelerator)
    straight, straight_dir = run_study(tiny_model, tiny_data, tmp_path / "straight", *SCALED, experiment="burn_unet")

    original = StageTrainer._train_epoch

    def dies_in_unet_lo_epoch_3(self, epoch, first_batch, step, progress):
        if self.job.stage.name == "unet_lo" and epoch == 2:  # the state of epoch 2 is saved
            raise Interrupted
        return original(self, epoch, first_batch, step, progress)

    monkeypatch.setattr(StageTrainer, "_train_epoch", dies_in_unet_lo_epoch_3)
    with pytest.raises(Interrupted):
        run_study(tiny_model, tiny_data, tmp_path / "resumed", *SCALED, experiment="burn_unet")
    monkeypatch.setattr(StageTrainer, "_train_epoch", original)
    resumed, resumed_dir = run_study(tiny_model, tiny_data, tmp_path / "resumed", *SCALED, experiment="burn_unet")

    for stage in ("unet_lo", "unet_hi"):
        assert [
            (r["grad_scale"], r["step_skipped"], r["lr_unet"]) for r in train_rows(resumed_dir, resumed, stage)
        ] == [(r["grad_scale"], r["step_skipped"], r["lr_unet"]) for r in train_rows(straight_dir, straight, stage)]
    assert_same(
        weights(final_checkpoint(resumed_dir, resumed, "unet_hi"), "unet"),
        weights(final_checkpoint(straight_dir, straight, "unet_hi"), "unet"),
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_frozen_parts_train_without_autocast(tiny_model, tiny_data, tmp_path, dtype):
    extra = [
        f"model.dtype={dtype}",
        "train.mixed_precision=no",
        "sampling.every_n_epochs=1",
        "sampling.images_per_prompt=1",
    ]
    for name in ("unet_lo", "unet_hi", "te_lo", "te_hi"):
        extra += [f"stages.{name}.epochs=1", f"stages.{name}.save_epochs=[1]"]
    study, run_dir = run_study(tiny_model, tiny_data, tmp_path, *extra)
    for stage, trained, frozen in (("unet_lo", "unet", "text_encoder"), ("te_lo", "text_encoder", "unet")):
        rows = train_rows(run_dir, study, stage)
        assert rows and all(0 < r["train_loss"] < 10 for r in rows)
        checkpoint = final_checkpoint(run_dir, study, stage)
        assert all(v.dtype == torch.float32 for v in weights(checkpoint, trained).values())
        stage_dir = run_dir / study["stages"][stage]["dir"]
        assert len(list((stage_dir / "samples" / "epoch_0001").glob("*/*.png"))) == 3  # in-training samples
    assert len(list(read_jsonl(run_dir / "samples.jsonl"))) == 2 * 4 * 3  # branches x checkpoints x prompts


def test_the_frozen_dtype_is_part_of_the_stage_identity(tiny_model, tiny_data, tmp_path):
    config = load_config(compose_config(tiny_overrides(tiny_model, tiny_data, tmp_path)))
    fp32 = plan_stages(config, "base", "data", "float32")
    half = plan_stages(config, "base", "data", "float16")
    assert all(fp32[name].identity != half[name].identity for name in fp32)


def test_sampling_runs_in_the_sampling_dtype(tiny_model, tmp_path):
    prompts = {"circles": PromptConfig(prompt="black and white circles")}
    config = SamplingConfig(prompts=prompts, images_per_prompt=2, steps=2)
    sampler = Sampler(
        dataclasses.replace(config, dtype="bfloat16"), {"path": str(tiny_model)}, tmp_path, Accelerator(cpu=True)
    )
    assert sampler.pipeline.unet.dtype == torch.bfloat16 and sampler.pipeline.vae.dtype == torch.bfloat16
    auto = Sampler(config, {"path": str(tiny_model)}, tmp_path, Accelerator(cpu=True))
    assert auto.dtype == torch.float32  # auto on a CPU
    assert sampler.identity == sampling_identity(config, torch.bfloat16) != auto.identity
    folder = sampler.checkpoint_samples("base", {n: Source(str(tiny_model), n) for n in ("unet", "text_encoder")})
    assert len(list(folder.glob("circles/*.png"))) == 2
