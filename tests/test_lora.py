"""LoRA studies (train.adapter=lora) on the tiny model: checkpoints are diffusers LoRA files that
load_lora_weights loads and that sample like the trainer's own models; frozen adapters and base
weights keep every bit; a resumed LoRA stage ends bit-for-bit where an uninterrupted one ends;
the adapter settings are part of LoRA stage identities only; bad LoRA settings are one paragraph."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

from burnlab.config.compose import load_config
from burnlab.errors import ConfigError
from burnlab.models.adapters import is_adapter_parameter
from burnlab.models.checkpoint import materialize
from burnlab.plan.study import plan_stages
from burnlab.store.files import read_jsonl
from burnlab.store.layout import LORA_FILE
from burnlab.training.trainer import StageTrainer
from study_helpers import (
    assert_same,
    compose_config,
    final_checkpoint,
    run_study,
    tiny_overrides,
    weights,
)
from test_precision import Interrupted, train_rows
from test_runner import state_digest

LORA = ("train.adapter=lora", "lora.rank=2", "lora.alpha=4")
# the tiny model's training rates move a zero-initialised B too little to see in a few steps
FAST = ("model.study_lrs.baseline=1e-2", "model.study_lrs.lo=1e-2", "model.study_lrs.hi=3e-2")
PIXEL_TOLERANCE = 1  # of 255: the same float32 computation on both sides, rounded to uint8


@pytest.fixture(scope="module")
def lora_study(tiny_model, tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("lora_runs")
    study, run_dir = run_study(tiny_model, tiny_data, runs, *LORA, *FAST, "sampling.every_n_epochs=3", analyze=True)
    return study, run_dir


def tensors(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def test_a_lora_study_writes_lora_checkpoints_and_is_analysed(lora_study):
    study, run_dir = lora_study
    assert all(stage["status"] == "complete" for stage in study["stages"].values())
    for stage, trained in (("baseline", {"unet", "text_encoder"}), ("unet_hi", {"unet"}), ("te_hi", {"text_encoder"})):
        checkpoint = final_checkpoint(run_dir, study, stage)
        assert sorted(p.name for p in checkpoint.iterdir()) == [".verified.json", "manifest.json", LORA_FILE]
        keys = tensors(checkpoint / LORA_FILE)
        assert {key.split(".")[0] for key in keys} == {"unet", "text_encoder"}  # diffusers' prefixes
        assert all(".lora" in key for key in keys)  # as convert_state_dict_to_diffusers names them
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        assert {name for name, entry in manifest["components"].items() if entry["trained"]} == trained
        assert all(entry["base"] and entry["lora"] == LORA_FILE for entry in manifest["components"].values())
    rows = list(read_jsonl(run_dir / "samples.jsonl"))
    assert len(rows) == 2 * 6 * 3 * 2 and all((run_dir / row["path"]).is_file() for row in rows)
    profiles = json.loads((run_dir / "analysis" / "symptoms.json").read_text())["profiles"]
    assert sorted(p["branch"] for p in profiles) == ["te_hi", "unet_hi"]
    assert all(len(p["by_checkpoint"]) == len(study["testing_plan"][p["branch"]]) - 2 for p in profiles)
    summary = (run_dir / "analysis" / "summary.md").read_text()
    assert summary.index("## Which component burned (component swap)") < summary.index("## Symptom profile")
    assert "- followfox/te_hi (trains text_encoder): " in summary


def test_the_frozen_adapter_in_a_checkpoint_is_its_parents_bit_for_bit(lora_study):
    study, run_dir = lora_study
    baseline = tensors(final_checkpoint(run_dir, study, "baseline") / LORA_FILE)
    for stage, trained, frozen in (("unet_hi", "unet", "text_encoder"), ("te_hi", "text_encoder", "unet")):
        after = tensors(final_checkpoint(run_dir, study, stage) / LORA_FILE)
        assert_same(
            {k: v for k, v in after.items() if k.startswith(frozen + ".")},
            {k: v for k, v in baseline.items() if k.startswith(frozen + ".")},
        )
        assert any(not torch.equal(v, baseline[k]) for k, v in after.items() if k.startswith(trained + "."))


def _pipeline_with_lora(tiny_model, checkpoint):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_lora_weights(str(checkpoint))
    return pipeline


def _images(pipeline, sampling, rows) -> list:
    out = pipeline(
        prompt=[r["prompt"] for r in rows],
        negative_prompt=[sampling.negative_prompt] * len(rows),
        generator=[torch.Generator().manual_seed(r["seed"]) for r in rows],
        num_inference_steps=sampling.steps,
        guidance_scale=sampling.guidance_scale,
        output_type="np",
    )
    return list((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))


@pytest.mark.parametrize("stage", ["unet_hi", "te_hi"])
def test_a_lora_checkpoint_loaded_by_diffusers_samples_like_the_harness(lora_study, tiny_model, stage):
    """diffusers' own load_lora_weights on the base pipeline vs the images the harness made of the
    same checkpoint: with the trainer's in-memory adapters (samples at the stage's last epoch) and
    with its testing plan. Same seeds; pixels may differ by PIXEL_TOLERANCE / 255."""
    study, run_dir = lora_study
    checkpoint = final_checkpoint(run_dir, study, stage)
    sampling = OmegaConf.load(run_dir / "config.yaml").sampling
    pipeline = _pipeline_with_lora(tiny_model, checkpoint)
    in_training = run_dir / study["stages"][stage]["dir"] / "samples" / "epoch_0003"
    rows = list(read_jsonl(in_training / "index.jsonl"))
    plan = {
        (r["prompt"], r["seed"]): r
        for r in read_jsonl(run_dir / "samples.jsonl")
        if r["checkpoint_id"] == json.loads((checkpoint / "manifest.json").read_text())["checkpoint_id"]
    }
    base = _images(
        StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False),
        sampling,
        rows[:1],
    )[0]
    for row, image in zip(rows, _images(pipeline, sampling, rows)):
        for harness in (in_training / row["path"], run_dir / plan[(row["prompt"], row["seed"])]["path"]):
            made = np.asarray(Image.open(harness).convert("RGB")).astype(int)
            assert np.abs(made - image.astype(int)).max() <= PIXEL_TOLERANCE, (harness, row["seed"])
    assert np.abs(base.astype(int) - np.asarray(Image.open(in_training / rows[0]["path"])).astype(int)).max() > 10


def test_a_lora_checkpoint_bakes_into_a_diffusers_folder(lora_study, tiny_model, tmp_path):
    """The baked folder has plain weights that compute what base + adapters compute (to 1e-5:
    W + BA summed once instead of in every forward)."""
    study, run_dir = lora_study
    checkpoint = final_checkpoint(run_dir, study, "te_hi")
    baked = StableDiffusionPipeline.from_pretrained(materialize(checkpoint, tmp_path / "baked"))
    lora = _pipeline_with_lora(tiny_model, checkpoint)
    base = StableDiffusionPipeline.from_pretrained(tiny_model)
    assert not any(is_adapter_parameter(k) for k in [*baked.unet.state_dict(), *baked.text_encoder.state_dict()])
    ids = lora.tokenizer(["black and white circles"], padding="max_length", return_tensors="pt").input_ids
    latents, timestep = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        for pipeline_of in (lora, base):
            states = pipeline_of.text_encoder(ids)[0]
            outputs = (states, pipeline_of.unet(latents, timestep, states).sample)
            baked_states = baked.text_encoder(ids)[0]
            baked_outputs = (baked_states, baked.unet(latents, timestep, baked_states).sample)
            for got, want in zip(baked_outputs, outputs):
                if pipeline_of is lora:
                    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
                else:  # the adapters did change the model
                    assert (got - want).abs().max() > 1e-4


def test_frozen_adapters_and_base_weights_are_bitwise_unchanged_in_memory(tiny_model, tiny_data, tmp_path, monkeypatch):
    """Each stage's base weights and adapters hashed as the trainer holds them, before its first
    step and after its last: only the adapter of the trained component changes."""
    digests = {}
    original_run = StageTrainer.run

    def parts(models):
        return {
            (name, part): state_digest(
                {k: v for k, v in model.state_dict().items() if is_adapter_parameter(k) == (part == "adapter")}
            )
            for name, model in models.items()
            for part in ("base", "adapter")
        }

    def run_and_hash(trainer):
        models = {name: trainer.accelerator.unwrap_model(model) for name, model in trainer.models.items()}
        before = parts(models)
        original_run(trainer)
        digests[trainer.job.stage.name] = (before, parts(models))

    monkeypatch.setattr(StageTrainer, "run", run_and_hash)
    run_study(
        tiny_model, tiny_data, tmp_path, *LORA, *FAST, "sampling.testing_plan=false", "validation.every_n_epochs=0"
    )
    for stage, trained in (
        ("baseline", {"unet", "text_encoder"}),
        ("unet_lo", {"unet"}),
        ("unet_hi", {"unet"}),
        ("te_lo", {"text_encoder"}),
        ("te_hi", {"text_encoder"}),
    ):
        before, after = digests[stage]
        changed = {key for key in before if before[key] != after[key]}
        assert changed == {(name, "adapter") for name in trained}, stage


def test_a_resumed_lora_stage_ends_bit_for_bit_as_an_uninterrupted_one(tiny_model, tiny_data, tmp_path, monkeypatch):
    """With LoRA dropout on, so the resumed stage must also continue torch's generator."""
    extra = (*LORA, *FAST, "lora.dropout=0.3", "sampling.testing_plan=false", "validation.every_n_epochs=0")
    straight, straight_dir = run_study(tiny_model, tiny_data, tmp_path / "straight", *extra, experiment="burn_unet")
    original = StageTrainer._train_epoch
    states = []

    def dies_in_unet_lo_epoch_3(self, epoch, first_batch, step, progress):
        if self.job.stage.name == "unet_lo" and epoch == 2:  # the state of epoch 2 is saved
            states.extend(sorted((self.job.stage_dir / "state").glob("*/*.safetensors")))
            raise Interrupted
        return original(self, epoch, first_batch, step, progress)

    monkeypatch.setattr(StageTrainer, "_train_epoch", dies_in_unet_lo_epoch_3)
    with pytest.raises(Interrupted):
        run_study(tiny_model, tiny_data, tmp_path / "resumed", *extra, experiment="burn_unet")
    assert [p.name for p in states] == ["unet.safetensors"]
    assert all(is_adapter_parameter(key) for key in tensors(states[0]))  # the adapter only, not the UNet
    monkeypatch.setattr(StageTrainer, "_train_epoch", original)
    resumed, resumed_dir = run_study(tiny_model, tiny_data, tmp_path / "resumed", *extra, experiment="burn_unet")
    for stage in ("unet_lo", "unet_hi"):
        assert [r["train_loss"] for r in train_rows(resumed_dir, resumed, stage)] == [
            r["train_loss"] for r in train_rows(straight_dir, straight, stage)
        ]
    assert_same(
        tensors(final_checkpoint(resumed_dir, resumed, "unet_hi") / LORA_FILE),
        tensors(final_checkpoint(straight_dir, straight, "unet_hi") / LORA_FILE),
    )
    assert_same(
        weights(final_checkpoint(resumed_dir, resumed, "unet_hi"), "unet"),
        weights(final_checkpoint(straight_dir, straight, "unet_hi"), "unet"),
    )


def test_adapter_settings_are_part_of_lora_stage_identities_only(tiny_model, tiny_data, tmp_path):
    def identities(*extra):
        config = load_config(compose_config(tiny_overrides(tiny_model, tiny_data, tmp_path) + list(extra)))
        return {name: stage.identity for name, stage in plan_stages(config, "base", "data", "float32").items()}

    full = identities()
    assert identities("lora.rank=8", "lora.target_modules.unet=[to_q]") == full  # unused by full weights
    lora = identities("train.adapter=lora")
    assert all(lora[name] != full[name] for name in full)
    assert all(identities("train.adapter=lora", "lora.rank=8")[name] != lora[name] for name in full)


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("train.adapter=foo", "train.adapter", "one of full, lora"),
        ("lora.rank=0", "lora.rank", "an integer >= 1"),
        ("lora.init=pissa", "lora.init", "true, false or gaussian"),
        ("lora.dropout=1.5", "lora.dropout", "a probability in"),
    ],
)
def test_bad_lora_settings_name_the_key_the_value_and_what_is_allowed(
    tiny_model, tiny_data, tmp_path, override, key, allowed
):
    with pytest.raises(ConfigError) as error:
        load_config(compose_config(tiny_overrides(tiny_model, tiny_data, tmp_path) + [override]))
    assert error.value.key == key and allowed in str(error.value)


def test_a_target_module_that_matches_nothing_is_a_config_error(tiny_model, tiny_data, tmp_path):
    with pytest.raises(ConfigError) as error:
        run_study(
            tiny_model,
            tiny_data,
            tmp_path,
            "train.adapter=lora",
            "lora.target_modules.unet=[to_q,to_qkv]",
            experiment="burn_unet",
        )
    assert error.value.key == "lora.target_modules.unet"
    assert "`to_qkv` matches none" in str(error.value) and "to_k" in str(error.value)
