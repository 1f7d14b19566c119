"""The random-weight pipeline folder: real diffusers classes, loadable offline."""

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from burnlab.toy.build import write_random_pipeline


def test_random_pipeline_loads_and_samples(tmp_path):
    folder = write_random_pipeline(tmp_path / "pipe", seed=0)
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    assert pipeline.unet.config.block_out_channels == [32, 64, 128]
    assert pipeline.unet.config.cross_attention_dim == 64
    assert pipeline.unet.config.sample_size == 8
    assert pipeline.vae.config.block_out_channels == [16, 32, 64, 64]
    assert pipeline.text_encoder.config.num_hidden_layers == 2
    assert pipeline.text_encoder.config.hidden_size == 64
    assert pipeline.tokenizer.model_max_length == 77
    images = pipeline(
        "a photo of ada", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all()


def test_model_index_has_no_safety_checker(tmp_path):
    folder = write_random_pipeline(tmp_path / "pipe")
    index = (folder / "model_index.json").read_text()
    assert '"requires_safety_checker": false' in index
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


def test_same_seed_same_weights(tmp_path):
    first = write_random_pipeline(tmp_path / "a", seed=1)
    second = write_random_pipeline(tmp_path / "b", seed=1)
    other = write_random_pipeline(tmp_path / "c", seed=2)
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b, c = (load_file(folder / weights) for folder in (first, second, other))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
