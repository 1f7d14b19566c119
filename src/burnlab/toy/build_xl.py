"""The toy SDXL pipeline's components: SDXL's classes and wiring at the toy world's size.

    .venv/bin/python -m burnlab.toy.build_xl /tmp/toy_xl_random    # a random-weight pipeline folder

What makes it SDXL rather than SD (as in stabilityai/stable-diffusion-xl-base-1.0's configs,
scaled down):
- two text encoders reading the same prompt through the same toy tokenizer (SDXL's two
  tokenizers differ only in their pad token): `text_encoder` a CLIPTextModel (SDXL: CLIP ViT-L,
  768 wide), `text_encoder_2` a CLIPTextModelWithProjection (OpenCLIP bigG, 1280 wide), here
  48 and 80 wide (SDXL's 3:5). The UNet reads both encoders' penultimate hidden states
  concatenated on the feature axis (cross_attention_dim = 48 + 80) and the second encoder's
  pooled, projected vector (`text_embeds`) only;
- the UNet's `text_time` added conditioning: the pooled vector and six size numbers
  (`add_time_ids` = original size, crop top-left, target size), each number sinusoidally
  embedded (`addition_time_embed_dim` wide), go through `add_embedding` into the timestep
  embedding;
- SDXL's UNet layout: no attention at the highest resolution, transformer depth growing with
  depth (SDXL 1/2/10, here -/1/2), linear projections into the transformers, heads of one
  width (SDXL 64 channels, here 16).
The VAE, tokenizer and noise schedule are the SD toy's (`burnlab.toy.build`); the pipeline
folder's vae/ is the SD toy's (a link, see `save_xl_pipeline`).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from burnlab.toy.build import LATENT_SIZE, build_tokenizer, scheduler_config, text_encoder_config, vae_config
from burnlab.toy.tokenizer import write_tokenizer

TE1_WIDTH = 48  # SDXL's CLIP ViT-L: 768
TE2_WIDTH = 80  # SDXL's OpenCLIP bigG: 1280 (768:1280 = 48:80)
TEXT_LAYERS = 3  # the UNet reads the penultimate layer's states (SDXL: hidden_states[-2])
TIME_EMBED_DIM = 16  # per size number (SDXL: 256)
# add_time_ids: original (h, w), crop top-left (y, x), target (h, w)
TIME_IDS = 6


def te1_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """The first encoder: the SD toy's text encoder's settings, narrower and one layer deeper."""
    config = text_encoder_config(tokenizer)
    config.hidden_size = TE1_WIDTH
    config.intermediate_size = 4 * TE1_WIDTH
    config.num_attention_heads = 4
    config.num_hidden_layers = TEXT_LAYERS
    config.projection_dim = TE1_WIDTH  # unused: a CLIPTextModel has no projection (as SDXL's)
    return config


def te2_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """The second encoder, with a projection of its pooled (end-of-text) state."""
    config = text_encoder_config(tokenizer)
    config.hidden_size = TE2_WIDTH
    config.intermediate_size = 4 * TE2_WIDTH
    config.num_attention_heads = 5
    config.num_hidden_layers = TEXT_LAYERS
    config.projection_dim = TE2_WIDTH  # SDXL: 1280 = bigG's width
    return config


def unet_xl_config() -> dict:
    return dict(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,  # SDXL: 2
        block_out_channels=(32, 64, 128),  # SDXL: 320, 640, 1280
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),  # SDXL: 1, 2, 10 (the first level has none)
        attention_head_dim=(2, 4, 8),  # diffusers' name for the number of heads: 16 channels each
        use_linear_projection=True,
        cross_attention_dim=TE1_WIDTH + TE2_WIDTH,  # SDXL: 768 + 1280 = 2048
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TE2_WIDTH + TIME_IDS * TIME_EMBED_DIM,  # SDXL: 2816
        norm_num_groups=8,
    )


def build_xl_components(
    tokenizer: CLIPTokenizer, seed: int = 0
) -> tuple[CLIPTextModel, CLIPTextModelWithProjection, UNet2DConditionModel]:
    """Randomly initialised text encoders and UNet; the same weights for the same seed."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(te1_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(te2_config(tokenizer))
    unet = UNet2DConditionModel(**unet_xl_config())
    return text_encoder, text_encoder_2, unet


def time_ids(
    original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int], batch: int = 1
) -> torch.Tensor:
    """SDXL's size and crop conditioning, float [batch, 6]: the order in which
    StableDiffusionXLPipeline._get_add_time_ids and diffusers' SDXL training example build it."""
    row = [*original_size, *crop_top_left, *target_size]
    if len(row) != TIME_IDS:
        raise ValueError(f"time ids need (h, w) sizes and a (y, x) crop, got {row}")
    return torch.tensor([row], dtype=torch.float32).repeat(batch, 1)


def encode_prompt_ids(
    text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection, input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [B, 77, 128], pooled [B, 80]) as StableDiffusionXLPipeline.encode_prompt
    makes them: both encoders' penultimate hidden states concatenated on the feature axis, the
    pooled vector from the second encoder only. Both encoders read the same token ids (the toy
    has one tokenizer; the pipeline folder ships it twice)."""
    first = text_encoder(input_ids, output_hidden_states=True)
    second = text_encoder_2(input_ids, output_hidden_states=True)
    hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    return hidden, second.text_embeds


def save_xl_pipeline(
    folder: str | os.PathLike,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    unet: UNet2DConditionModel,
    tokenizer: CLIPTokenizer,
    vae: AutoencoderKL | None = None,
    share_vae: str | os.PathLike | None = None,
) -> Path:
    """Writes a StableDiffusionXLPipeline folder (safetensors; the UNet in float16, half its 22 MB
    of float32, so that both toys' weights stay small; the text encoders in float32; DDIM with the SD toy's
    noise schedule; an empty negative prompt encoded rather than zeroed, as the toy was trained
    with empty captions).

    With `share_vae` (a folder holding an AutoencoderKL, e.g. the SD toy's base/vae), vae/ is a
    relative symbolic link to it instead of a copy of its weights: from_pretrained follows it,
    and the shipped assets hold the VAE once. Written into a temporary sibling and renamed.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if vae is None:
        if share_vae is None:
            raise ValueError("save_xl_pipeline needs a vae or a vae folder to share")
        vae = AutoencoderKL.from_pretrained(share_vae)
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**scheduler_config()),
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    pipeline.save_pretrained(staging, safe_serialization=True)
    unet_half = copy.deepcopy(unet).to(torch.float16)  # loaded back in model.dtype (float32 for the toy)
    unet_half.save_pretrained(staging / "unet", safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):  # the project's own tokenizer files, not a re-export
        shutil.rmtree(staging / name)
        write_tokenizer(staging / name)
    if share_vae is not None:
        shutil.rmtree(staging / "vae")
        target = Path(os.path.relpath(Path(share_vae).resolve(), folder.parent.resolve() / folder.name))
        (staging / "vae").symlink_to(target, target_is_directory=True)
    staging.chmod(0o755)  # mkdtemp's 0700 would make a shared asset folder private
    if folder.exists() or folder.is_symlink():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def write_random_xl_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A loadable toy SDXL pipeline folder with random weights (VAE included, as a copy)."""
    with tempfile.TemporaryDirectory(prefix="toy_tokenizer_") as scratch:
        tokenizer = build_tokenizer(scratch)
    text_encoder, text_encoder_2, unet = build_xl_components(tokenizer, seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    return save_xl_pipeline(folder, text_encoder, text_encoder_2, unet, tokenizer, vae=vae)


def parameter_counts(*modules: torch.nn.Module) -> list[int]:
    return [sum(p.numel() for p in module.parameters()) for module in modules]


if __name__ == "__main__":
    print("wrote", write_random_xl_pipeline(sys.argv[1] if len(sys.argv) > 1 else "/tmp/toy_xl_random"))
