"""Architectures shipped as config files: SD 1.5's sizes, and pipelines built from them with
seeded random weights (model=sd15_random)."""

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

import burnlab.models.architectures as architectures
from burnlab.config.schema import ModelConfig
from burnlab.models.components import BaseModel
from burnlab.store.files import read_jsonl
from study_helpers import final_checkpoint, shrunk_architecture


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_sd15_configs_have_sd15s_parameter_counts():
    configs = architectures.architecture_configs("sd15")
    with init_empty_weights():  # sizes only, no memory
        unet = UNet2DConditionModel.from_config(configs["unet"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        vae = AutoencoderKL.from_config(configs["vae"])
    assert (parameters(unet), parameters(text_encoder), parameters(vae)) == (859_520_964, 123_060_480, 83_653_863)
    assert configs["scheduler"]["num_train_timesteps"] == 1000 and configs["tokenizer"]["model_max_length"] == 77


@pytest.fixture
def tiny_architecture(monkeypatch, tmp_path):
    """A shipped-architecture folder for a tiny model, so the builder runs in seconds."""
    edits = {
        "unet": dict(
            block_out_channels=[16, 32],
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=4,
            cross_attention_dim=32,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            sample_size=4,
        ),
        "text_encoder": dict(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=1000,
        ),
        "vae": dict(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1, sample_size=32),
    }
    return shrunk_architecture(monkeypatch, tmp_path / "architectures", "sd15", "tiny", edits)


def test_a_built_pipeline_loads_and_its_weights_follow_the_seed(tiny_architecture, tmp_path):
    first = architectures.build_random_pipeline(tiny_architecture, tmp_path / "a", seed=3)
    again = architectures.build_random_pipeline(tiny_architecture, tmp_path / "b", seed=3)
    other = architectures.build_random_pipeline(tiny_architecture, tmp_path / "c", seed=4)
    weights = {p: load_file(p / "unet" / "diffusion_pytorch_model.safetensors") for p in (first, again, other)}
    assert all(torch.equal(weights[first][k], weights[again][k]) for k in weights[first])
    assert not all(torch.equal(weights[first][k], weights[other][k]) for k in weights[first])
    pipeline = StableDiffusionPipeline.from_pretrained(first)
    assert type(pipeline.scheduler).__name__ == "PNDMScheduler"  # as SD 1.5 ships it
    assert pipeline.text_encoder.config.vocab_size == 1000 and pipeline.tokenizer.model_max_length == 77


def test_model_build_builds_once_where_the_config_says(tiny_architecture, tmp_path):
    folder = tmp_path / "models" / "tiny-seed0"
    config = ModelConfig(path=str(folder), build=tiny_architecture, build_seed=0)
    base = BaseModel(config)
    assert (folder / architectures.COMPLETE).exists() and base.is_local
    stamp = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert BaseModel(config).identity == base.identity
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt


@pytest.mark.slow
def test_sd15_random_trains_a_short_stage_on_cpu(tiny_data, tmp_path):
    """SD 1.5's full size (1.07 B parameters, ~4.3 GB built), one baseline epoch at 64 px."""
    from burnlab.launch.cli import run
    from study_helpers import compose_config

    cfg = compose_config(
        [
            "experiment=burn_unet",
            "model=sd15_random",
            f"paths.runs={tmp_path}",
            f"data.path={tiny_data}",
            "data.resolution=64",
            "~stages.unet_lo",
            "~stages.unet_hi",
            "stages.baseline.epochs=1",
            "stages.baseline.save_epochs=[1]",
            "train=sd15",
            "train.mixed_precision=no",
            "train.batch_size=8",
            "validation.repeats=1",
            "sampling.images_per_prompt=1",
            "sampling.steps=1",
            "logger.wandb.mode=disabled",
            "analyze=false",
        ]
    )
    study = run(cfg, tmp_path / "sd15")
    rows = list(read_jsonl(tmp_path / "sd15" / study["stages"]["baseline"]["dir"] / "metrics.jsonl"))
    train = [r for r in rows if r["type"] == "train"]
    assert len(train) == 1 and 0 < train[0]["train_loss"] < 10
    memory = [r for r in rows if r["type"] == "memory"][0]["peak_bytes"]
    assert 14 * 2**30 < memory < 23 * 2**30  # both components with AdamW: ~16 bytes a parameter
    checkpoint = final_checkpoint(tmp_path / "sd15", study, "baseline")
    unet = load_file(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    assert sum(v.numel() for v in unet.values()) == 859_520_964
    assert len(list(read_jsonl(tmp_path / "sd15" / "samples.jsonl"))) == 2 * 3  # base + baseline x 3 prompts
