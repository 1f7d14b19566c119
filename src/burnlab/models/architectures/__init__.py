"""Model architectures shipped as config files, built with seeded random weights.

    .venv/bin/python -m burnlab.models.architectures sd15 runs/cache/models/sd15_random-s0   # ~4.3 GB

`sd15/` holds Stable Diffusion 1.5's component configs (UNet 859.5M, CLIP text encoder 123.1M,
VAE 83.7M parameters; the training noise schedule): facts of the architecture, not weights.
`model=sd15_random` builds that pipeline once into the run store's cache, so SD 1.5-scale runs,
tests and benchmarks need no download. The tokenizer is the toy world's (built offline: CLIP's
BPE vocabulary is not shipped); the text encoder keeps SD 1.5's 49,408-row embedding, so sizes,
memory and speed are SD 1.5's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ARCHITECTURES = tuple(sorted(p.name for p in HERE.iterdir() if (p / "unet.json").is_file()))
COMPLETE = "BUILT"


def architecture_configs(name: str) -> dict:
    """The component configs of an architecture: {unet, text_encoder, vae, scheduler, tokenizer}."""
    folder = HERE / name
    return {
        part: json.loads((folder / f"{part}.json").read_text())
        for part in ("unet", "text_encoder", "vae", "scheduler", "tokenizer")
    }


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
    # the toy tokenizer's 77 tokens are SD 1.5's context length too
    assert tokenizer.model_max_length == configs["tokenizer"]["model_max_length"]
    token_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    scheduler_class = getattr(diffusers, configs["scheduler"]["_class_name"])
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(configs["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"], **token_ids))
    unet = UNet2DConditionModel.from_config(configs["unet"])
    save_pipeline(folder, vae, text_encoder, unet, tokenizer, scheduler_class.from_config(configs["scheduler"]))
    (folder / COMPLETE).write_text(json.dumps({"architecture": name, "seed": seed}) + "\n")
    return folder
