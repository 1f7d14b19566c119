"""Shared fixtures: a tiny random Stable Diffusion pipeline, a tiny random CLIP model and a tiny
captioned dataset, built from config with fixed seeds (diffusers-test style), and helpers that
compose burnlab's real Hydra configs into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

# before the imports below: huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded in tests

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
)

from burnlab.config.compose import register_configs
from burnlab.toy.build import build_tokenizer, save_pipeline
from study_helpers import TINY_RESOLUTION, write_captioned_images

register_configs()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one mixed precision per process (burnlab's runner says so to a user who
    changes it); the suite runs many studies in one process, so each test starts afresh."""
    AcceleratorState._reset_state()


@pytest.fixture(autouse=True, scope="module")
def fresh_accelerator_state_per_module():
    """The same for a module's shared fixtures (a study trained once per module), which are set up
    before the first test's own reset: autouse fixtures come first within their scope."""
    AcceleratorState._reset_state()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 32x32 pipeline: UNet (16, 32), 2-layer 32-wide CLIP text encoder, 8-channel VAE."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer)))
    return save_pipeline(folder, vae, text_encoder, unet, tokenizer)


def tiny_vae() -> AutoencoderKL:
    """An 8-channel VAE for 32x32 images (drawn from torch's global generator)."""
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
    )


def tiny_text_config(tokenizer) -> dict:
    """A 2-layer 32-wide CLIP text encoder's settings for the toy tokenizer."""
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def tiny_xl_model(tmp_path_factory) -> Path:
    """A 32x32 SDXL pipeline: two 2-layer 32-wide CLIP text encoders (the second with its
    projection), a UNet (16, 32) with `text_time` added conditioning, the tiny VAE's layout."""
    from transformers import CLIPTextModelWithProjection

    from burnlab.toy.build_xl import TIME_IDS, save_xl_pipeline

    folder = tmp_path_factory.mktemp("tiny_xl") / "model"
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok_xl"))
    text_config = dict(tiny_text_config(tokenizer), projection_dim=32)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=TINY_RESOLUTION // 8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,  # both encoders' states, concatenated
        attention_head_dim=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + TIME_IDS * 8,  # the pooled vector and six size numbers
        norm_num_groups=8,
    )
    vae = tiny_vae()
    return save_xl_pipeline(folder, text_encoder, text_encoder_2, unet, tokenizer, vae=vae)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_captioned_images(tmp_path_factory.mktemp("data") / "style", 10)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A CLIP model folder as save_pretrained writes it (config.json, weights, CLIPProcessor =
    CLIPImageProcessor + the toy world's offline CLIPTokenizer), with random 32-wide 2-layer
    towers over 32x32 images: stands in for openai/clip-vit-large-patch14 without a download.
    It tests the wiring, not what the scores mean."""
    folder = tmp_path_factory.mktemp("clip") / "clip"
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("clip_tok"))
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2}
    torch.manual_seed(0)
    CLIPModel(
        CLIPConfig(
            text_config={
                **tower,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": tokenizer.model_max_length,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={**tower, "image_size": 32, "patch_size": 8},
            projection_dim=16,
        )
    ).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
