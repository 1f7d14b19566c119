"""The committed toy assets: base pipeline, probe, study prompts."""

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline

from burnlab.toy import ACTIVATION_PHRASE, ASSETS, asset_dir
from burnlab.toy.check_base import sample_prompt, toy_sampling
from burnlab.toy.probe import LABELS, accuracy, labelled_images, load_probe


@pytest.fixture(scope="module")
def probe():
    return load_probe()


def test_asset_dirs():
    for name in ("base", "style", "probe"):
        assert asset_dir(name).is_dir() and asset_dir(name).is_absolute()
    with pytest.raises(ValueError, match="unknown toy asset"):
        asset_dir("sd15")


def test_assets_fit_the_size_budget_and_hold_no_pickles():
    files = [path for path in ASSETS.rglob("*") if path.is_file()]
    # the SD toy's budget; the toy SDXL (base_xl) has its own, in tests/toy/test_toy_xl.py
    sd_toy = [path for path in files if "base_xl" not in path.relative_to(ASSETS).parts]
    assert sum(path.stat().st_size for path in sd_toy) <= 30 * 1024 * 1024
    assert not [path for path in files if path.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_study_prompts():
    prompts = toy_sampling().prompts  # conf/sampling/toy.yaml, their one source
    assert set(prompts) == {"person", "circles", "sunglasses"}
    assert ACTIVATION_PHRASE not in prompts["person"].prompt and not prompts["person"].activation
    assert prompts["circles"].prompt == "black and white circles"
    assert prompts["sunglasses"].prompt.startswith("a man wearing sunglasses")
    assert ACTIVATION_PHRASE in prompts["sunglasses"].prompt and prompts["sunglasses"].activation
    for spec in prompts.values():
        for head, value in spec.expect.items():
            assert value in LABELS[head]


def test_probe_interface(probe):
    images = np.zeros((3, 48, 80, 3), dtype=np.uint8)  # any size is resized to 64x64
    predicted = probe.predict(images)
    assert len(predicted["subject"]) == len(predicted["identity"]) == 3
    assert predicted["style"].dtype == np.float32 and predicted["style"].shape == (3,)
    assert probe.features(images).shape == (3, 256)
    assert probe.features(images).dtype == np.float32
    assert probe.labels["identity"][0] is None


def test_probe_scores_95_percent_on_held_out_ground_truth(probe):
    images, targets = labelled_images(450, seed=4242)  # a seed no training stream uses
    scores = accuracy(probe, images, targets)
    assert min(scores.values()) >= 0.95, scores


def test_shipped_base_follows_the_study_prompts(probe):
    pipeline = StableDiffusionPipeline.from_pretrained(asset_dir("base"), safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.vae.config.scaling_factor != 1.0  # measured by pretraining
    sampling = toy_sampling()
    for spec in sampling.prompts.values():
        images = sample_prompt(pipeline, spec.prompt, list(range(9)), sampling)
        subjects = probe.predict(images)["subject"]
        assert subjects.count(spec.expect["subject"]) >= 7, (spec.prompt, subjects)
