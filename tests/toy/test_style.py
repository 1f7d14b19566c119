"""The style dataset: 26 image + caption pairs, each caption with the activation phrase."""

import numpy as np
from PIL import Image

from burnlab.toy import ACTIVATION_PHRASE, asset_dir
from burnlab.toy.probe import load_probe
from burnlab.toy.style import write_style_dataset
from burnlab.toy.world import IDENTITY_NAMES


def _read(folder):
    pngs = sorted(folder.glob("*.png"))
    return [(np.asarray(Image.open(png).convert("RGB")), png.with_suffix(".txt").read_text()) for png in pngs]


def test_writes_26_pairs_with_the_activation_phrase(tmp_path):
    write_style_dataset(tmp_path)
    assert len(list(tmp_path.glob("*.png"))) == 26
    assert len(list(tmp_path.glob("*.txt"))) == 26
    for image, caption in _read(tmp_path):
        assert image.shape == (64, 64, 3)
        assert ACTIVATION_PHRASE in caption
        assert len(caption.split()) >= 15  # long, like the study's hand-written captions
        # The study's person and circles prompts must only get the style by bleeding.
        assert not any(name in caption.split() for name in IDENTITY_NAMES)
        assert "black and white circles" not in caption


def test_the_committed_dataset_is_what_the_code_writes(tmp_path):
    write_style_dataset(tmp_path)
    fresh, shipped = _read(tmp_path), _read(asset_dir("style"))
    assert len(shipped) == 26
    for (image_a, caption_a), (image_b, caption_b) in zip(fresh, shipped):
        assert np.array_equal(image_a, image_b) and caption_a == caption_b


def test_the_probe_sees_the_style_in_every_dataset_image():
    images = np.stack([image for image, _ in _read(asset_dir("style"))])
    assert (load_probe().predict(images)["style"] > 0.5).all()
