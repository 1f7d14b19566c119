"""SDXL in the harness, on a tiny SDXL pipeline (conftest.tiny_xl_model): stages that train each
text encoder apart with its own learning rate, SDXL's size and crop conditioning, checkpoints,
resume, LoRA on the second encoder, and the swap cube of three components with the drift of each
encoder (its pooled vector included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from burnlab.data.dataset import load_image
from burnlab.store.files import read_jsonl
from burnlab.store.layout import XL_COMPONENTS, swap_corners
from study_helpers import TINY_RESOLUTION, assert_same, compose_config, final_checkpoint, weights

TE2_LR = 2e-3
# the tiny SDXL study (~60 s) and the LoRA one (~15 s): make test-slow (CI runs it), to keep make test under 10 minutes
SLOW = pytest.mark.slow


def xl_overrides(tiny_xl_model: Path, tiny_data: Path, runs: Path, *extra: str, te1: bool = True) -> list:
    """followfox_xl cut to its baseline and the two single-encoder branches (`te1`: the first
    encoder's too), a few epochs each."""
    overrides = [
        "experiment=followfox_xl",
        "stages=[baseline,te_burn,te2_burn]" if te1 else "stages=[baseline,te2_burn]",
        f"model.path={tiny_xl_model}",
        f"data.path={tiny_data}",
        f"data.resolution={TINY_RESOLUTION}",
        f"paths.runs={runs}",
        "stages.baseline.epochs=1",
        "stages.baseline.save_epochs=[1]",
        *(["stages.te_lo.epochs=1", "stages.te_hi.epochs=1"] if te1 else []),
        "stages.te2_lo.epochs=2",
        "stages.te2_lo.save_epochs=[1,2]",
        f"stages.te2_lo.text_encoder_2_lr={TE2_LR}",
        "stages.te2_hi.epochs=1",
        "train.batch_size=4",
        "train.state_every_epochs=1",
        "train.keep_states=always",  # te2_lo's state at epoch 1 stays: the resume test starts there
        "validation.every_n_epochs=1",
        "validation.repeats=1",
        "sampling.images_per_prompt=2",
        "sampling.steps=2",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        "analyze=false",
        *extra,
    ]
    for name in ("te_lo", "te_hi", "te2_hi") if te1 else ("te2_hi",):
        overrides.append(f"stages.{name}.save_epochs=[1]")
    return overrides


def run_xl(overrides: list) -> tuple:
    from burnlab.launch.cli import run

    cfg = compose_config(overrides)
    runs = Path(cfg.paths.runs)
    return run(cfg, runs / cfg.name), runs / cfg.name


@pytest.fixture(scope="module")
def xl_study(tiny_xl_model, tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("xl") / "runs"
    study, run_dir = run_xl(xl_overrides(tiny_xl_model, tiny_data, runs))
    return study, run_dir, runs


def test_crop_sizes_are_the_original_size_and_the_crop_corner_flip_mirrored(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((40, 81, 3), dtype=np.uint8)).save(path)
    pixels, sizes = load_image(path, 32, (255, 255, 255), 10**7)
    # 81x40 -> short side 32: 65x32, centre crop from x = (65 - 32) // 2 = 16; flipped, the crop's
    # left edge is 65 - (16 + 32) = 17
    assert tuple(pixels.shape) == (3, 32, 32)
    assert sizes.tolist() == [[40, 81, 0, 16], [40, 81, 0, 17]]


@SLOW
def test_a_stage_without_a_train_list_trains_every_component_and_each_encoder_trains_apart(xl_study):
    study, run_dir, _ = xl_study
    stages = study["stages"]
    assert stages["baseline"]["train"] == list(XL_COMPONENTS)
    assert stages["te2_lo"]["train"] == ["text_encoder_2"] and stages["te_lo"]["train"] == ["text_encoder"]
    assert stages["te2_lo"]["text_encoder_2_lr"] == TE2_LR and study["base"]["components"] == list(XL_COMPONENTS)
    baseline = final_checkpoint(run_dir, study, "baseline")
    for stage, trained in (("te2_lo", "text_encoder_2"), ("te_lo", "text_encoder")):
        checkpoint = final_checkpoint(run_dir, study, stage)
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        assert sorted(manifest["components"]) == sorted(XL_COMPONENTS)
        for component in XL_COMPONENTS:
            before, after = weights(baseline, component), weights(checkpoint, component)
            if component == trained:
                assert manifest["components"][component]["dir"] == component
                assert any(not torch.equal(before[k], after[k]) for k in before), component
            else:  # bitwise frozen, and inherited rather than copied
                assert (
                    "dir" not in manifest["components"][component] or "../" in manifest["components"][component]["dir"]
                )
                assert_same(before, after)


@SLOW
def test_the_second_encoder_has_its_own_rate_and_the_losses_are_sdxl_s(xl_study):
    study, run_dir, _ = xl_study
    rows = list(read_jsonl(run_dir / study["stages"]["te2_lo"]["dir"] / "metrics.jsonl"))
    train = [row for row in rows if row["type"] == "train"]
    assert train and all(row["lr_text_encoder_2"] == TE2_LR for row in train)
    assert "lr_unet" not in train[0] and "lr_text_encoder" not in train[0]
    validation = [row for row in rows if row["type"] == "val"]
    assert len(validation) == 3 and all(np.isfinite(row["val_loss"]) for row in validation)  # epochs 0, 1, 2


@SLOW
def test_the_swap_cube_has_eight_corners_and_drift_is_measured_per_encoder(xl_study):
    study, run_dir, _ = xl_study
    document = json.loads((run_dir / "attribution.json").read_text())
    assert document["pairs"] and all(pair["components"] == list(XL_COMPONENTS) for pair in document["pairs"])
    assert all(set(pair["corners"]) == set(swap_corners(XL_COMPONENTS)) for pair in document["pairs"])
    [te2] = [p for p in document["pairs"] if p["branch"] == "te2_hi" and p["tuned"]["label"].startswith("2 te2_lo e1")]
    drift = te2["drift"]
    assert set(drift) == {"text_encoder", "text_encoder_2", "pooled", "unet", "weights"}
    assert all(value == 0 for value in drift["text_encoder"].values())  # the first encoder never trained
    assert all(value == 0 for value in drift["unet"].values())
    assert all(value > 0 for value in drift["text_encoder_2"].values())
    assert all(value > 0 for value in drift["pooled"].values())
    assert drift["weights"]["text_encoder"]["total"] == 0 and drift["weights"]["text_encoder_2"]["total"] > 0
    # a single-encoder burn's hybrids are R or M themselves: its corners come from the testing plan
    corners = te2["corners"]
    assert corners["R_unet+R_te+M_te2"] == corners["M"] and corners["M_unet+M_te+R_te2"] == corners["R"]
    rows = list(read_jsonl(run_dir / "samples.jsonl"))
    assert len(rows) == sum(len(plan) for plan in study["testing_plan"].values()) * 3 * 2  # 3 prompts, 2 seeds


@SLOW
def test_an_sdxl_stage_resumed_from_its_state_ends_with_the_uninterrupted_weights(
    xl_study, tiny_xl_model, tiny_data, tmp_path
):
    study, run_dir, runs = xl_study
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, symlinks=True)
    stage_dir = copy / "cache" / "stages" / Path(study["stages"]["te2_lo"]["dir"]).name
    # as a kill after epoch 1 leaves it: no final checkpoint, no COMPLETE, the metrics up to the state
    states = sorted((stage_dir / "state").iterdir())
    step = json.loads((states[0] / "state.json").read_text())["step"]
    for later in states[1:]:
        shutil.rmtree(later)
    shutil.rmtree(stage_dir / "checkpoints" / "epoch_0002")
    (stage_dir / "COMPLETE").unlink()
    rows = [row for row in read_jsonl(stage_dir / "metrics.jsonl") if row.get("step", 0) <= step and row["epoch"] <= 1]
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    resumed, resumed_dir = run_xl(xl_overrides(tiny_xl_model, tiny_data, copy))
    assert resumed["stages"]["te2_lo"]["identity"] == study["stages"]["te2_lo"]["identity"]
    original = final_checkpoint(run_dir, study, "te2_lo")
    again = final_checkpoint(resumed_dir, resumed, "te2_lo")
    assert_same(weights(original, "text_encoder_2"), weights(again, "text_encoder_2"))


@SLOW
def test_lora_adapters_of_the_second_encoder_are_saved_and_sampled(tiny_xl_model, tiny_data, tmp_path):
    from safetensors import safe_open

    # no held-out images (an empty set once stopped the stage's set-up): the stabilized loss only
    no_split = "validation.split_proportion=0"
    overrides = xl_overrides(tiny_xl_model, tiny_data, tmp_path / "runs", "train.adapter=lora", no_split, te1=False)
    study, run_dir = run_xl(overrides)
    checkpoint = final_checkpoint(run_dir, study, "te2_lo")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert {name: entry.get("trained") for name, entry in manifest["components"].items()} == {
        "unet": False,
        "text_encoder": False,
        "text_encoder_2": True,
    }
    with safe_open(str(checkpoint / "pytorch_lora_weights.safetensors"), "pt") as file:
        prefixes = {key.split(".", 1)[0] for key in file.keys()}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}  # the baseline's adapters ride along
    rows = list(read_jsonl(run_dir / "samples.jsonl"))
    assert {row["label"] for row in rows} >= {"2 te2_lo e1", "3 te2_lo e2"}
    validation = [row for row in read_jsonl(checkpoint.parent.parent / "metrics.jsonl") if row["type"] == "val"]
    assert validation and all("stabilized_loss" in row and "val_loss" not in row for row in validation)


def test_the_conditioning_is_the_sdxl_pipeline_s_own(tiny_xl_model):
    from diffusers import StableDiffusionXLPipeline

    from burnlab.models.components import BaseModel, base_pipeline
    from burnlab.models.encoding import TextConditioner

    base = BaseModel(compose_config([f"model.path={tiny_xl_model}"]).model)
    pipeline = base_pipeline(base.describe())
    assert isinstance(pipeline, StableDiffusionXLPipeline) and base.components == XL_COMPONENTS
    conditioner = base.conditioner()
    assert isinstance(conditioner, TextConditioner) and conditioner.encoders == ("text_encoder", "text_encoder_2")
    prompts = ["a photo of ada", "black and white circles"]
    encoders = {name: getattr(pipeline, name) for name in conditioner.encoders}
    with torch.no_grad():
        ours = conditioner.encode(encoders, prompts, "cpu")
        states, _, pooled, _ = pipeline.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(ours.states, states) and torch.equal(ours.pooled, pooled)


def test_a_single_file_sdxl_checkpoint_is_converted_once_and_trained(tiny_data, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from burnlab.errors import ConfigError
    from burnlab.models.components import MODEL_CLASSES
    from burnlab.toy import asset_dir
    from test_sdxl_models import sgm_single_file

    toy_xl = asset_dir("base_xl")  # the SGM writer's round trip is checked on the toy SDXL (test_sdxl_models)
    single = sgm_single_file(StableDiffusionXLPipeline.from_pretrained(toy_xl), tmp_path / "mine.safetensors")
    quick = ["sampling.testing_plan=false", "validation.every_n_epochs=0", f"model.single_file_configs={toy_xl}"]
    study, _ = run_xl(xl_overrides(single, tiny_data, tmp_path / "runs", *quick, te1=False))
    converted = Path(study["base"]["path"])
    assert converted.parent == tmp_path / "runs" / "cache" / "models" and converted.name.startswith("mine-")
    assert study["base"]["components"] == list(XL_COMPONENTS)
    for component in ("unet", "text_encoder_2"):  # the file's weights, in the folder the study trained from
        ours = MODEL_CLASSES[component].from_pretrained(converted, subfolder=component).state_dict()
        theirs = MODEL_CLASSES[component].from_pretrained(toy_xl, subfolder=component).state_dict()
        assert_same({k: v.float() for k, v in ours.items()}, {k: v.float() for k, v in theirs.items()})
    marker = (converted / "COMPLETE").stat().st_mtime_ns
    again, _ = run_xl(xl_overrides(single, tiny_data, tmp_path / "runs", *quick, te1=False))
    assert again["stages"] == study["stages"] and (converted / "COMPLETE").stat().st_mtime_ns == marker
    # without the configs a single file cannot be completed: a ConfigError (one paragraph) naming the key
    argv = xl_overrides(single, tiny_data, tmp_path / "runs2", *quick[:2], "model.single_file_configs=null", te1=False)
    with pytest.raises(ConfigError, match="`model.single_file_configs` has value None"):
        run_xl(argv)


def test_a_stage_naming_the_second_text_encoder_on_an_sd_model_is_one_paragraph():
    from burnlab.config.compose import load_config
    from burnlab.errors import ConfigError
    from burnlab.plan.study import plan_stages
    from burnlab.store.layout import COMPONENTS

    config = load_config(compose_config(["experiment=followfox_xl", "model=toy"]))
    with pytest.raises(ConfigError) as error:
        plan_stages(config, "base", "data", "float32", components=COMPONENTS)
    message = str(error.value)
    assert "stages.te2_lo.train" in message and "unet, text_encoder" in message and "model=toy_xl" in message
    assert "\n" not in message
    # the baseline names no components: it trains every one of the model's
    planned = plan_stages(load_config(compose_config(["experiment=burn_unet"])), "base", "data", "float32")
    assert planned["baseline"].config.train == list(COMPONENTS)


def test_a_file_that_is_no_single_file_checkpoint_as_model_path_is_one_paragraph(tiny_data, tmp_path):
    from burnlab.errors import ConfigError

    notes = tmp_path / "notes.safetensors"
    notes.write_text("a photo of ada")
    with pytest.raises(ConfigError) as error:
        run_xl(["experiment=burn_unet", f"model.path={notes}", f"paths.runs={tmp_path / 'runs'}"])
    message = str(error.value)
    assert "\n" not in message and "`model.path`" in message and "single-file checkpoint" in message
    assert "--base" not in message  # burnlab-diagnose's option is no help here
