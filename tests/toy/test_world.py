"""The toy world: deterministic, labelled, and never styled."""

import numpy as np

from burnlab.toy.world import IDENTITY_NAMES, SUBJECTS, make_world


def test_same_seed_same_pixels_and_captions():
    first, second = make_world(16, seed=3), make_world(16, seed=3)
    for (image_a, caption_a, labels_a), (image_b, caption_b, labels_b) in zip(first, second):
        assert np.array_equal(image_a, image_b)
        assert caption_a == caption_b and labels_a == labels_b


def test_a_sample_does_not_depend_on_how_many_are_drawn():
    whole = make_world(8, seed=3)
    tail = make_world(3, seed=3, start=5)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(whole[5:], tail))


def test_other_seed_other_world():
    assert not np.array_equal(make_world(1, seed=0)[0][0], make_world(1, seed=1)[0][0])


def test_images_captions_and_labels():
    samples = make_world(300, seed=11)
    assert {labels["subject"] for _, _, labels in samples} == set(SUBJECTS)
    for image, caption, labels in samples:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert labels["style"] is False
        if labels["subject"] == "person":
            assert labels["identity"] in IDENTITY_NAMES
            assert caption.startswith(f"a photo of {labels['identity']}")
        else:
            assert labels["identity"] is None
        if labels["subject"] == "sunglasses":
            assert "wearing sunglasses" in caption
        if labels["subject"] == "circles":
            assert caption.split(" on ")[0].split()[-1] in ("circles", "rings", "dots")


def test_the_study_prompts_are_in_the_world():
    captions = {caption for _, caption, _ in make_world(400, seed=12)}
    assert "black and white circles" in captions
    assert "a man wearing sunglasses" in captions
    assert "a photo of ada" in captions


def test_circles_captions_name_the_layout():
    # "black and white circles" must mean one picture (a bullseye) for a tiny model to learn it.
    circles = [(caption, labels) for _, caption, labels in make_world(600, seed=13) if labels["subject"] == "circles"]
    nouns = {"circles": "bullseye", "rings": "ring", "dots": "disc"}
    for caption, labels in circles:
        assert labels["shape"] == nouns[caption.split(" on ")[0].split()[-1]]
    assert {labels["shape"] for _, labels in circles} == set(nouns.values())
