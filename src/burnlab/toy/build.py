"""The toy pipeline's components: Stable Diffusion's classes at a size a CPU trains in minutes.

    .venv/bin/python -m burnlab.toy.build /tmp/toy_random    # a random-weight pipeline folder

`write_random_pipeline` writes the same components with random weights from a fixed seed (what
the harness's tests use, as diffusers' own tests do); `save_pipeline` writes trained ones. Both
produce a folder that `StableDiffusionPipeline.from_pretrained(path)` loads with no network.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from burnlab.toy.tokenizer import MODEL_MAX_LENGTH, write_tokenizer
from burnlab.toy.world import SIZE

LATENT_SIZE = SIZE // 8
# The std of the latents of the untrained VAE is arbitrary; pretraining measures the real one.
DEFAULT_SCALING_FACTOR = 1.0


def vae_config(scaling_factor: float = DEFAULT_SCALING_FACTOR) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),  # 3 downsamplings: 64x64 -> 8x8
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SIZE,
        scaling_factor=scaling_factor,
    )


def unet_config() -> dict:
    # Cross-attention at every level (8x8, 4x4, 2x2): the 2x2 level is where a 64x64 image's
    # subject is decided, so the prompt must reach it.
    return dict(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def text_encoder_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def scheduler_config() -> dict:
    """Stable Diffusion 1.5's noise schedule (shared by DDPM for training and DDIM for sampling)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k != "set_alpha_to_one"})


def build_tokenizer(folder: str | os.PathLike) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_tokenizer(folder))


def build_components(
    tokenizer: CLIPTokenizer, seed: int = 0
) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    """Randomly initialised VAE, text encoder and UNet; the same weights for the same seed."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    text_encoder = CLIPTextModel(text_encoder_config(tokenizer))
    unet = UNet2DConditionModel(**unet_config())
    return vae, text_encoder, unet


def save_pipeline(
    folder: str | os.PathLike,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
    tokenizer: CLIPTokenizer,
    scheduler=None,
) -> Path:
    """Writes a StableDiffusionPipeline folder (safetensors, fp32, no safety checker); the
    scheduler defaults to DDIM with Stable Diffusion 1.5's noise schedule.

    Written into a temporary sibling and renamed, so a reader never sees half a pipeline.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or DDIMScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    pipeline.save_pretrained(staging, safe_serialization=True)
    # The project's own tokenizer files (vocab.json + merges.txt) rather than a re-export.
    shutil.rmtree(staging / "tokenizer")
    write_tokenizer(staging / "tokenizer")
    staging.chmod(0o755)  # mkdtemp's 0700 would make a shared asset folder private
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def write_random_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A loadable pipeline folder with the toy's architecture and random weights."""
    with tempfile.TemporaryDirectory(prefix="toy_tokenizer_") as scratch:
        tokenizer = build_tokenizer(scratch)
    vae, text_encoder, unet = build_components(tokenizer, seed)
    return save_pipeline(folder, vae, text_encoder, unet, tokenizer)


if __name__ == "__main__":
    print("wrote", write_random_pipeline(sys.argv[1] if len(sys.argv) > 1 else "/tmp/toy_random"))
