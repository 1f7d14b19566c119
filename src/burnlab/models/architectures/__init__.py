"""Model architectures shipped as config files, built with seeded random weights.

    .venv/bin/python -m burnlab.models.architectures sd15 runs/cache/models/sd15_random-s0   # ~4.3 GB
    .venv/bin/python -m burnlab.models.architectures sdxl runs/cache/models/sdxl_random-s0   # ~14 GB

`sd15/` holds Stable Diffusion 1.5's component configs (UNet 859.5M, CLIP text encoder 123.1M,
VAE 83.7M parameters; the training noise schedule): facts of the architecture, not weights.
`model=sd15_random` builds that pipeline once into the run store's cache, so SD 1.5-scale runs,
tests and benchmarks need no download. The tokenizer is the toy world's (built offline: CLIP's
BPE vocabulary is not shipped); the text encoder keeps SD 1.5's 49,408-row embedding, so sizes,
memory and speed are SD 1.5's.

`sdxl/` holds SDXL base 1.0's (stabilityai/stable-diffusion-xl-base-1.0; `model=sdxl_random`):
UNet 2,567.5M (text_time added conditioning, transformer depths 1/2/10, cross-attention 2048
wide), CLIP ViT-L text encoder 123.1M (`text_encoder`), OpenCLIP bigG text encoder with its
projection 694.7M (`text_encoder_2`), VAE 83.7M (scaling factor 0.13025), Euler's noise
schedule. The files are the hub repository's unet/, text_encoder/, text_encoder_2/, vae/ and
scheduler/ configs less the keys that are not architecture (_diffusers_version,
transformers_version, torch_dtype, and the token ids, which come from the tokenizer used). Taken
from public copies (the hub is not reachable here): the unet config as diffusers 0.19 wrote it
for SDXL base 1.0 (quoted in several public repositories' code); the scheduler and
text_encoder_2 configs from Danielfegapeter/Hotshot-XL's pipeline folder, the text_encoder and
vae configs from Guang000/Generative-Dataset-Distillation-Based-on-Diffusion-Model's (SDXL
derivatives that keep base 1.0's encoders, VAE and, for Hotshot-XL, scheduler); checked against
Stability AI's own model definition (Stability-AI/generative-models,
configs/inference/sd_xl_base.yaml: model_channels 320, channel_mult [1, 2, 4],
transformer_depth [1, 2, 10], context_dim 2048, adm_in_channels 2816, num_head_channels 64,
scale_factor 0.13025) and by SDXL's parameter counts (tests/test_sdxl_architecture.py).
Both text encoders read the prompt through the toy tokenizer (SDXL's two CLIP tokenizers differ
only in their pad token) and keep the 49,408-row embeddings. The pipeline folder (13.9 GB in
float32) is written one component at a time, so building it holds the UNet (10.3 GB) and no
other model in memory: 1 min 37 s and 10.0 GiB peak RSS on a 2-core machine (README, SDXL).
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ARCHITECTURES = tuple(sorted(p.name for p in HERE.iterdir() if (p / "unet.json").is_file()))
COMPLETE = "BUILT"
PARTS = ("unet", "text_encoder", "vae", "scheduler", "tokenizer")
XL_PART = "text_encoder_2"  # an architecture with this file is an SDXL (StableDiffusionXLPipeline) one


def architecture_configs(name: str) -> dict:
    """The component configs of an architecture: {unet, text_encoder, vae, scheduler, tokenizer},
    and text_encoder_2 for an SDXL architecture."""
    folder = HERE / name
    parts = PARTS + ((XL_PART,) if (folder / f"{XL_PART}.json").is_file() else ())
    return {part: json.loads((folder / f"{part}.json").read_text()) for part in parts}


def build_random_pipeline(name: str, folder: Path, seed: int = 0) -> Path:
    """Write a diffusers pipeline folder of architecture `name` with weights drawn from `seed`;
    the same seed gives the same weights. A finished folder is left as it is."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from burnlab.toy.build import build_tokenizer, save_pipeline

    folder = Path(folder)
    if (folder / COMPLETE).exists():
        return folder
    configs = architecture_configs(name)
    with tempfile.TemporaryDirectory(prefix="tokenizer_") as scratch:
        tokenizer = build_tokenizer(scratch)
    # the toy tokenizer's 77 tokens are SD 1.5's (and SDXL's) context length too
    assert tokenizer.model_max_length == configs["tokenizer"]["model_max_length"]
    token_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    scheduler_class = getattr(diffusers, configs["scheduler"]["_class_name"])
    if XL_PART in configs:
        _build_xl(configs, folder, seed, tokenizer, token_ids, scheduler_class.from_config(configs["scheduler"]))
    else:
        torch.manual_seed(seed)
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"], **token_ids))
        unet = UNet2DConditionModel.from_config(configs["unet"])
        save_pipeline(folder, vae, text_encoder, unet, tokenizer, scheduler_class.from_config(configs["scheduler"]))
    (folder / COMPLETE).write_text(json.dumps({"architecture": name, "seed": seed}) + "\n")
    return folder


def _xl_models(configs: dict, token_ids: dict) -> dict:
    """Constructors of an SDXL pipeline's four models, in the order their weights are drawn."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return {
        "vae": lambda: AutoencoderKL.from_config(configs["vae"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"], **token_ids)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**configs[XL_PART], **token_ids)),
        "unet": lambda: UNet2DConditionModel.from_config(configs["unet"]),
    }


def _build_xl(configs: dict, folder: Path, seed: int, tokenizer, token_ids: dict, scheduler) -> None:
    """A StableDiffusionXLPipeline folder (safetensors, float32), one model in memory at a time:
    each is drawn from the one seeded stream, saved and freed before the next. Written into a
    temporary sibling and renamed, so a reader never sees half a pipeline."""
    from accelerate import init_empty_weights
    from diffusers import StableDiffusionXLPipeline

    from burnlab.toy.tokenizer import write_tokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        models = _xl_models(configs, token_ids)
        torch.manual_seed(seed)
        for part, make in models.items():
            model = make()
            model.save_pretrained(staging / part, safe_serialization=True)
            del model
            gc.collect()
        scheduler.save_pretrained(staging / "scheduler")
        for name in ("tokenizer", "tokenizer_2"):  # the project's own tokenizer files (vocab.json + merges.txt)
            write_tokenizer(staging / name)
        # model_index.json as the pipeline writes it, from weightless stand-ins of the same classes
        with init_empty_weights():
            shells = {part: make() for part, make in models.items()}
        StableDiffusionXLPipeline(
            **shells,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,  # SDXL base 1.0's setting
            add_watermarker=False,  # no invisible-watermark dependency
        ).save_config(staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would make a shared folder private
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
