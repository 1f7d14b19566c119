"""Sampling: each image's noise depends on its seed only, so batching does not change pixels and
every checkpoint starts a seed from the same noise."""

import dataclasses

import numpy as np
import torch

from burnlab.config.schema import PromptConfig, SamplingConfig
from burnlab.sampling.sampler import (
    generate,
    load_pipeline,
    sample_jobs,
    sampling_identity,
)


def _config(**changes) -> SamplingConfig:
    prompts = {
        "circles": PromptConfig(prompt="black and white circles"),
        "person": PromptConfig(prompt="a photo of ada", expect={"subject": "person"}),
    }
    return dataclasses.replace(SamplingConfig(prompts=prompts, images_per_prompt=3, steps=3), **changes)


def test_batching_does_not_change_the_images(tiny_model):
    config = _config()
    pipeline = load_pipeline({"path": str(tiny_model)}, config, "cpu")
    jobs = sample_jobs(config)
    assert [(j["prompt_set"], j["seed"]) for j in jobs] == [
        ("circles", 1000),
        ("circles", 1001),
        ("circles", 1002),
        ("person", 1000),
        ("person", 1001),
        ("person", 1002),
    ]
    batched = generate(pipeline, dataclasses.replace(config, batch_size=6), jobs)
    single = generate(pipeline, dataclasses.replace(config, batch_size=1), jobs)
    assert batched[0].shape == (32, 32, 3) and batched[0].dtype == np.uint8
    for a, b in zip(batched, single):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert np.abs(batched[0].astype(int) - batched[1].astype(int)).max() > 10  # seeds differ


def test_a_seed_starts_from_the_same_noise_whatever_the_prompt(tiny_model):
    config = _config()
    pipeline = load_pipeline({"path": str(tiny_model)}, config, "cpu")
    captured = []
    original = pipeline.prepare_latents

    def spy(*args, **kwargs):
        latents = original(*args, **kwargs)
        captured.append(latents.clone())
        return latents

    pipeline.prepare_latents = spy
    generate(pipeline, config, sample_jobs(config))
    (latents,) = captured
    assert torch.equal(latents[0], latents[3]) and not torch.equal(latents[0], latents[1])


def test_sampling_identity_covers_what_decides_pixels():
    def identity(config, dtype=torch.float32):
        return sampling_identity(config, dtype)

    assert identity(_config()) == identity(_config(batch_size=1, every_n_epochs=5))
    assert identity(_config()) == identity(_config(dtype="float16"))  # the resolved dtype counts, not its name
    assert identity(_config()) != identity(_config(steps=4))
    assert identity(_config()) != identity(_config(guidance_scale=3.0))
    assert identity(_config()) != identity(_config(), torch.float16)
