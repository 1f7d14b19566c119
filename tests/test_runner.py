"""The runner on a tiny model: a followfox-shaped study end to end, frozen components, the stage
cache, and training trajectories independent of validation and sampling (kills, signals and
resume: test_crash_safety.py)."""

import hashlib
import json
import time

import pytest
import torch
from diffusers import StableDiffusionPipeline

from burnlab.errors import UserError
from burnlab.models.checkpoint import materialize
from burnlab.store.files import read_jsonl
from burnlab.training.trainer import StageTrainer
from study_helpers import assert_same, final_checkpoint, run_study, weights


@pytest.fixture(scope="module")
def followfox(tiny_model, tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    study, run_dir = run_study(tiny_model, tiny_data, runs, analyze=True)
    return study, run_dir, runs


def test_followfox_study_runs_end_to_end(followfox):
    study, run_dir, runs = followfox
    assert set(study["stages"]) == {"baseline", "unet_lo", "unet_hi", "te_lo", "te_hi"}
    assert all(stage["status"] == "complete" for stage in study["stages"].values())
    assert len(list((runs / "cache" / "stages").glob("*/COMPLETE"))) == 5  # one shared baseline
    assert study["stages"]["unet_hi"]["epoch_offset"] == 2 + 3
    plan = study["testing_plan"]["unet_hi"]
    assert [row["label"] for row in plan] == [
        "0 base",
        "1 baseline",
        "2 unet_lo e1",
        "3 unet_lo e3",
        "4 unet_hi e1",
        "5 unet_hi e3",
    ]
    assert [row["study_epoch"] for row in plan] == [0, 2, 3, 5, 6, 8]
    rows = list(read_jsonl(run_dir / "samples.jsonl"))
    assert len(rows) == 2 * 6 * 3 * 2  # branches x checkpoints x prompts x seeds
    assert all((run_dir / row["path"]).is_file() for row in rows)
    shared = {row["path"] for row in rows if row["index"] <= 1}
    assert len(shared) == 2 * 3 * 2  # base and baseline samples made once, used by both branches
    metrics = list(read_jsonl(run_dir / study["stages"]["te_lo"]["dir"] / "metrics.jsonl"))
    train_rows = [r for r in metrics if r["type"] == "train"]
    val_rows = [r for r in metrics if r["type"] == "val"]
    assert [r["step"] for r in train_rows] == list(range(1, 3 * 2 + 1))  # 8 training images, batch 4
    assert [r["epoch"] for r in val_rows] == [0, 1, 2, 3]
    assert all("lr_text_encoder" in r and "lr_unet" not in r for r in train_rows)
    assert {"val_loss", "stabilized_loss", "study_epoch"} <= set(val_rows[0])
    assert val_rows[0]["study_epoch"] == 2
    report = run_dir / "analysis" / "report.html"
    assert report.is_file() and "unet_hi" in report.read_text() and "te_hi" in report.read_text()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's in-memory parameters and buffers, bit for bit."""
    return state_digest(model.state_dict())


def state_digest(state: dict) -> str:
    """sha256 of named tensors, bit for bit."""
    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_the_frozen_component_is_bitwise_unchanged_in_memory(tiny_model, tiny_data, tmp_path, monkeypatch):
    """Each stage's models hashed as the trainer holds them, before its first step and after its
    last: the component a stage does not train keeps every bit, the one it trains changes."""
    digests = {}
    original_run = StageTrainer.run

    def run_and_hash(trainer):
        models = {name: trainer.accelerator.unwrap_model(model) for name, model in trainer.models.items()}
        before = {name: weights_digest(model) for name, model in models.items()}
        original_run(trainer)
        digests[trainer.job.stage.name] = (trainer.trained, before, {n: weights_digest(m) for n, m in models.items()})

    monkeypatch.setattr(StageTrainer, "run", run_and_hash)
    run_study(tiny_model, tiny_data, tmp_path, "sampling.testing_plan=false", "validation.every_n_epochs=0")
    assert set(digests) == {"baseline", "unet_lo", "unet_hi", "te_lo", "te_hi"}
    for stage, frozen in (
        ("unet_lo", "text_encoder"),
        ("unet_hi", "text_encoder"),
        ("te_lo", "unet"),
        ("te_hi", "unet"),
    ):
        trained, before, after = digests[stage]
        assert trained == [{"text_encoder": "unet", "unet": "text_encoder"}[frozen]]
        assert before[frozen] == after[frozen], f"{stage} changed its frozen {frozen}"
        assert before[trained[0]] != after[trained[0]], f"{stage} did not train its {trained[0]}"


@pytest.mark.parametrize("stage, trained", [("unet_lo", "unet"), ("te_lo", "text_encoder")])
def test_a_checkpoint_holds_only_what_its_stage_trained(followfox, stage, trained):
    study, run_dir, _ = followfox
    after = final_checkpoint(run_dir, study, stage)
    before = final_checkpoint(run_dir, study, "baseline")
    changed = weights(after, trained)
    assert any(not torch.equal(v, weights(before, trained)[k]) for k, v in changed.items())
    manifest = json.loads((after / "manifest.json").read_text())
    # only what changed is saved (and the record of its verified hashes: burnlab.store.integrity)
    assert set(p.name for p in after.iterdir()) == {trained, "manifest.json", ".verified.json"}
    assert manifest["lineage"] == ["base", "baseline", stage]


def test_rerun_skips_completed_stages(followfox, tiny_model, tiny_data):
    study, run_dir, runs = followfox
    stamps = {p: p.stat().st_mtime_ns for p in (runs / "cache" / "stages").glob("*/metrics.jsonl")}
    started = time.time()
    again, _ = run_study(tiny_model, tiny_data, runs)
    assert again == study
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert time.time() - started < 30


def test_checkpoint_materialises_as_a_diffusers_pipeline(followfox, tmp_path):
    study, run_dir, _ = followfox
    checkpoint = final_checkpoint(run_dir, study, "te_hi")
    folder = materialize(checkpoint, tmp_path / "pipeline")
    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    assert_same(pipeline.text_encoder.state_dict(), weights(checkpoint, "text_encoder"))
    image = pipeline(
        "black and white circles", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.shape == (32, 32, 3)


def test_trajectory_is_the_same_with_validation_and_sampling_off(followfox, tiny_model, tiny_data, tmp_path):
    study, run_dir, _ = followfox
    quiet, quiet_dir = run_study(
        tiny_model,
        tiny_data,
        tmp_path,
        "validation.every_n_epochs=0",
        "sampling.testing_plan=false",
        experiment="burn_unet",
    )
    noisy, noisy_dir = run_study(
        tiny_model, tiny_data, tmp_path / "b", "sampling.every_n_epochs=1", experiment="burn_unet"
    )
    for stage in ("baseline", "unet_lo", "unet_hi"):
        quiet_all = list(read_jsonl(quiet_dir / quiet["stages"][stage]["dir"] / "metrics.jsonl"))
        quiet_rows = [r for r in quiet_all if r["type"] == "train"]
        noisy_rows = [
            r for r in read_jsonl(noisy_dir / noisy["stages"][stage]["dir"] / "metrics.jsonl") if r["type"] == "train"
        ]
        assert {r["type"] for r in quiet_all} == {"train", "memory"}  # no validation rows
        assert [r["train_loss"] for r in quiet_rows] == [r["train_loss"] for r in noisy_rows]
    assert_same(
        weights(final_checkpoint(quiet_dir, quiet, "unet_hi"), "unet"),
        weights(final_checkpoint(noisy_dir, noisy, "unet_hi"), "unet"),
    )
    assert_same(
        weights(final_checkpoint(quiet_dir, quiet, "unet_hi"), "unet"),
        weights(final_checkpoint(run_dir, study, "unet_hi"), "unet"),
    )
    stage_dir = noisy_dir / noisy["stages"]["unet_lo"]["dir"]
    assert len(list((stage_dir / "samples" / "epoch_0002").glob("*/*.png"))) == 3 * 2


def test_bf16_autocast_trains_on_cpu_and_fp16_asks_for_cuda(tiny_model, tiny_data, tmp_path):
    extra = (
        "stages.unet_lo.epochs=1",
        "stages.unet_lo.save_epochs=[1]",
        "stages.unet_hi.epochs=1",
        "stages.unet_hi.save_epochs=[1]",
        "sampling.testing_plan=false",
    )
    study, run_dir = run_study(
        tiny_model, tiny_data, tmp_path, "train.mixed_precision=bf16", *extra, experiment="burn_unet"
    )
    losses = [
        r["train_loss"]
        for r in read_jsonl(run_dir / study["stages"]["unet_hi"]["dir"] / "metrics.jsonl")
        if r["type"] == "train"
    ]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    assert weights(final_checkpoint(run_dir, study, "unet_hi"), "unet")["conv_in.weight"].dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fp16' needs a CUDA GPU"):
            run_study(
                tiny_model, tiny_data, tmp_path / "fp16", "train.mixed_precision=fp16", *extra, experiment="burn_unet"
            )
    with pytest.raises(UserError, match="already ran a study with another precision"):  # one per process
        run_study(tiny_model, tiny_data, tmp_path / "no", "train.mixed_precision=no", *extra, experiment="burn_unet")
