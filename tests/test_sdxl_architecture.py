"""SDXL base 1.0's architecture shipped as config files (model=sdxl_random): SDXL's parameter
counts, and an SDXL pipeline folder built from them with seeded random weights (at a tiny size
here: the real one is ~14 GB)."""

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import burnlab.models.architectures as architectures
from burnlab.config.schema import ModelConfig
from burnlab.models.components import BaseModel
from burnlab.store.layout import XL_COMPONENTS
from study_helpers import shrunk_architecture


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_sdxl_configs_have_sdxls_parameter_counts():
    configs = architectures.architecture_configs("sdxl")
    assert set(configs) == {"unet", "text_encoder", "text_encoder_2", "vae", "scheduler", "tokenizer"}
    with init_empty_weights():  # sizes only, no memory
        unet = UNet2DConditionModel.from_config(configs["unet"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
        vae = AutoencoderKL.from_config(configs["vae"])
    counts = tuple(parameters(m) for m in (unet, text_encoder, text_encoder_2, vae))
    assert counts == (2_567_463_684, 123_060_480, 694_659_840, 83_653_863)
    # the UNet reads both encoders' states (768 + 1280) and TE2's pooled vector with six 256-wide size numbers
    assert configs["unet"]["cross_attention_dim"] == 768 + 1280
    assert configs["unet"]["projection_class_embeddings_input_dim"] == 1280 + 6 * 256
    assert configs["text_encoder"]["vocab_size"] == configs["text_encoder_2"]["vocab_size"] == 49408
    assert (
        configs["scheduler"]["_class_name"] == "EulerDiscreteScheduler" and configs["vae"]["scaling_factor"] == 0.13025
    )
    assert configs["tokenizer"]["model_max_length"] == 77


@pytest.fixture
def tiny_xl(monkeypatch, tmp_path):
    """SDXL's config files at a tiny size, so the builder runs in seconds."""
    text = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=1000)
    edits = {
        "unet": dict(
            block_out_channels=[16, 32],
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=[2, 4],
            transformer_layers_per_block=[1, 1],
            cross_attention_dim=16 + 24,
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24 + 6 * 8,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            sample_size=4,
        ),
        "text_encoder": dict(text, projection_dim=16),
        "text_encoder_2": dict(text, hidden_size=24, projection_dim=24),
        "vae": dict(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1, sample_size=32),
    }
    return shrunk_architecture(monkeypatch, tmp_path / "architectures", "sdxl", "tiny_xl", edits)


def test_a_built_sdxl_pipeline_loads_and_its_weights_follow_the_seed(tiny_xl, tmp_path):
    first = architectures.build_random_pipeline(tiny_xl, tmp_path / "a", seed=3)
    again = architectures.build_random_pipeline(tiny_xl, tmp_path / "b", seed=3)
    other = architectures.build_random_pipeline(tiny_xl, tmp_path / "c", seed=4)
    for part in ("unet", "text_encoder_2"):
        name = "diffusion_pytorch_model" if part == "unet" else "model"
        weights = {p: load_file(p / part / f"{name}.safetensors") for p in (first, again, other)}
        assert all(torch.equal(weights[first][k], weights[again][k]) for k in weights[first])
        assert not all(torch.equal(weights[first][k], weights[other][k]) for k in weights[first])
    assert not list(tmp_path.glob(".a.*"))  # no staging folder left
    pipeline = StableDiffusionXLPipeline.from_pretrained(first)
    assert type(pipeline.scheduler).__name__ == "EulerDiscreteScheduler"  # as SDXL base 1.0 ships it
    assert pipeline.text_encoder_2.config.vocab_size == 1000 and pipeline.tokenizer_2.model_max_length == 77
    assert pipeline.text_encoder.config.eos_token_id == pipeline.tokenizer.eos_token_id  # the toy tokenizer's ids
    with torch.no_grad():
        image = pipeline("a photo of ada", num_inference_steps=1, height=32, width=32, output_type="pt").images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_model_build_builds_an_sdxl_model_once(tiny_xl, tmp_path):
    folder = tmp_path / "models" / "tiny_xl-seed0"
    base = BaseModel(ModelConfig(path=str(folder), build=tiny_xl, build_seed=0, family="sdxl"))
    assert (folder / architectures.COMPLETE).exists() and base.is_local
    assert base.components == XL_COMPONENTS  # family and the folder's model_index.json agree
