"""Shared fixtures: a tiny random Stable Diffusion pipeline and a tiny captioned dataset, built
from config with fixed seeds (diffusers-test style), and helpers that compose burnlab's real
Hydra configs into tmp_path."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from hydra import compose, initialize_config_dir
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from burnlab.cli import CONF_DIR
from burnlab.config import register_configs
from burnlab.toy.build import build_tokenizer, save_pipeline

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded in tests
torch.set_num_threads(2)
register_configs()

TINY_RESOLUTION = 32
CAPTIONS = ["a photo of ada in the zorblax ornament style", "black and white circles in the zorblax ornament style",
            "a man wearing sunglasses, in the zorblax ornament style", "a red tree in the zorblax ornament style"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 32x32 pipeline: UNet (16, 32), 2-layer 32-wide CLIP text encoder, 8-channel VAE."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=TINY_RESOLUTION // 8, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        norm_num_groups=4, sample_size=TINY_RESOLUTION)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return save_pipeline(folder, vae, text_encoder, unet, tokenizer)


def write_captioned_images(folder: Path, count: int, size: int = 40, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_captioned_images(tmp_path_factory.mktemp("data") / "style", 10)


def tiny_overrides(tiny_model: Path, tiny_data: Path, runs: Path, experiment: str = "followfox",
                   analyze: bool = False) -> list:
    """A study of the experiment's shape at a few epochs on the tiny model, W&B off."""
    stages = {"burn_unet": ["unet_lo", "unet_hi"], "burn_te": ["te_lo", "te_hi"],
              "followfox": ["unet_lo", "unet_hi", "te_lo", "te_hi"]}[experiment]
    overrides = [f"experiment={experiment}", f"model.path={tiny_model}", f"data.path={tiny_data}",
                 f"data.resolution={TINY_RESOLUTION}", f"paths.runs={runs}", "stages.baseline.epochs=2",
                 "stages.baseline.save_epochs=[2]", "train.batch_size=4", "train.state_every_epochs=1",
                 "validation.every_n_epochs=1", "validation.repeats=1", "sampling.images_per_prompt=2",
                 "sampling.steps=2", "logger.wandb.mode=disabled", "logger.progress=false", f"analyze={str(analyze).lower()}"]
    for name in stages:
        overrides += [f"stages.{name}.epochs=3", f"stages.{name}.save_epochs=[1,3]"]
    return overrides


def compose_config(overrides: list):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)
