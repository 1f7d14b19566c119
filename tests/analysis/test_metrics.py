"""Metrics with known answers, and the metric table over the tiny synthetic store.

.venv/bin/python -m pytest tests/analysis/test_metrics.py -q
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from burnlab.analysis import metrics
from burnlab.analysis.features import Instruments, load_instruments
from burnlab.analysis.images import SampleImages
from burnlab.analysis.measure import METRICS, measure
from burnlab.analysis.run import AnalysisError, BranchRef
from burnlab.analysis.sources import LocalRun
from burnlab.analysis.training_images import dataset_folder, training_images

RNG = np.random.default_rng(0)


def random_images(count: int, size: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def thumbnail_features(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float32)[:, ::8, ::8].reshape(len(images), -1)


def test_grey_images_have_zero_saturation_and_colourfulness():
    levels = np.linspace(0, 255, 4 * 8 * 8).astype(np.uint8).reshape(4, 8, 8, 1)
    greys = np.repeat(levels, 3, axis=-1)
    assert metrics.mean_saturation(greys) == 0.0
    assert metrics.colourfulness(greys) == 0.0


def test_pure_colours_are_fully_saturated():
    red = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert metrics.mean_saturation(red) == pytest.approx(1.0)


def test_saturated_image_is_more_colourful_than_its_desaturated_copy():
    image = random_images(3).astype(float)
    grey = image.mean(axis=-1, keepdims=True)
    desaturated = (grey + 0.3 * (image - grey)).astype(np.uint8)
    assert metrics.colourfulness(image.astype(np.uint8)) > metrics.colourfulness(desaturated) > 0
    assert metrics.mean_saturation(image.astype(np.uint8)) > metrics.mean_saturation(desaturated)


def test_rms_contrast_range():
    flat = np.full((1, 8, 8, 3), 128, dtype=np.uint8)
    half = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    half[:, :, 4:] = 255
    assert metrics.rms_contrast(flat) == 0.0
    assert metrics.rms_contrast(half) == pytest.approx(0.5)


def grey(luma: np.ndarray) -> np.ndarray:
    """uint8 RGB images [N, H, W, 3] from luma values [N, H, W] on a 0-255 scale."""
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def box_blur(images: np.ndarray) -> np.ndarray:
    """Each pixel the mean of its 3x3 neighbourhood (edges repeated)."""
    padded = np.pad(np.asarray(images, dtype=np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = images.shape[1:3]
    return sum(padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9


def test_high_frequency_share_of_flat_smooth_checkerboard_and_noise_images():
    rows, columns = np.mgrid[:64, :64]
    flat = grey(np.full((2, 64, 64), 77.0))
    gradient = grey((rows + columns)[None] * 255 / 126)
    checkerboard = grey(((rows + columns) % 2 * 255)[None])
    noise = grey(np.random.default_rng(1).uniform(0, 255, (9, 64, 64)))
    assert metrics.high_frequency_shares(flat).tolist() == [0.0, 0.0]
    assert metrics.high_frequency_shares(gradient)[0] < 1e-4
    assert metrics.high_frequency_shares(checkerboard)[0] > 0.999
    # white noise spreads its energy evenly over the DCT frequencies: the share is the fraction
    # of the (64 x 64 - 1, the mean removed) frequencies beyond half the Nyquist frequency
    frequencies = np.hypot(*np.mgrid[:64, :64] / 64)
    expected = (frequencies > 0.5).sum() / (64 * 64 - 1)
    assert expected == pytest.approx(0.796, abs=1e-3)
    assert metrics.high_frequency_shares(noise).mean() == pytest.approx(expected, abs=0.01)


def test_high_frequency_ratio_rises_with_added_noise_and_falls_with_blur():
    rows, columns = np.mgrid[:64, :64]
    blobs = 128 + 60 * np.sin(rows / 5.0 + np.arange(6)[:, None, None]) * np.cos(columns / 7.0)
    edges = np.where((rows // 16 + columns // 16) % 2 == 0, 60.0, 190.0)
    images = grey(blobs + edges - 128)
    noisy = grey(blobs + edges - 128 + np.random.default_rng(1).normal(0, 12, (6, 64, 64)))
    blurred = grey(box_blur(images)[..., 0])
    shares = metrics.high_frequency_shares(images)
    assert (metrics.high_frequency_shares(noisy) > shares).all()
    assert (metrics.high_frequency_shares(blurred) < shares).all()
    assert metrics.high_frequency_ratio(images, images) == pytest.approx(1.0)
    assert metrics.high_frequency_ratio(noisy, images) > 1.2
    assert metrics.high_frequency_ratio(blurred, images) < 0.2
    # per-image values average to the checkpoint's value (bootstrap over images)
    assert metrics.high_frequency_ratios(noisy, images).mean() == pytest.approx(
        metrics.high_frequency_ratio(noisy, images)
    )
    # a share of energy: halving the contrast leaves it (nearly: uint8 rounding) unchanged
    assert metrics.high_frequency_shares(grey((blobs + edges) / 2)) == pytest.approx(shares, rel=0.01)
    flat = grey(np.full((2, 64, 64), 128.0))
    assert metrics.high_frequency_ratio(images, flat) is None


def test_n_identical_images_have_zero_variability():
    same = np.repeat(random_images(1), 9, axis=0)
    assert metrics.pixel_variability(same) == 0.0
    assert metrics.feature_variability(thumbnail_features(same)) == pytest.approx(0.0, abs=1e-9)
    different = random_images(9)
    assert metrics.pixel_variability(different) > 0.2
    assert metrics.feature_variability(thumbnail_features(different)) > 0.05


def test_histogram_distance_is_zero_for_same_colours_and_one_for_disjoint():
    images = random_images(4)
    assert metrics.histogram_distance(images, images[::-1]) == pytest.approx(0.0, abs=1e-7)
    black, white = np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8)
    assert metrics.histogram_distance(black, white) == pytest.approx(1.0)


def test_centroid_distance_falls_as_samples_approach_the_style():
    style = thumbnail_features(random_images(6))
    far = -style[:3]
    assert metrics.centroid_distance(style[:3], style) < metrics.centroid_distance(far, style)


def test_centroid_distance_weighs_each_training_image_the_same():
    """Known answer: the centroid of the unit rows (1, 0) and (0, 1) points along (1, 1), however
    long the training features are; averaging them unnormalised would lean towards (10, 0)."""
    reference = np.array([[10.0, 0.0], [0.0, 1.0]])
    assert metrics.centroid_distance(np.array([[1.0, 1.0]]), reference) == pytest.approx(0.0, abs=1e-12)
    assert metrics.centroid_distance(np.array([[3.0, 0.0], [0.0, 2.0]]), reference) == pytest.approx(1 - 1 / np.sqrt(2))


def test_a_training_image_scores_as_memorised(shared_store):
    folder = shared_store / "data" / "style"
    training = training_images(folder, (16, 16))
    pixels = metrics.comparable_pixels(training)
    copied = training[[1]]
    assert metrics.nearest_training_distances(copied, pixels)[0] == pytest.approx(0.0, abs=1e-6)
    brightened = np.clip(training[[1]].astype(int) + 10, 0, 255).astype(np.uint8)
    mirror = training[[1], :, ::-1]
    copies = metrics.copy_distances(np.concatenate([copied, brightened, mirror]), pixels)
    assert copies[0] == pytest.approx(0.0, abs=1e-6) and copies.max() < 0.1
    assert metrics.near_copy_fraction(copies) == 1.0
    novel = metrics.copy_distances(random_images(3, 16), pixels)
    assert metrics.near_copy_fraction(novel) == 0.0 and novel.min() > 1.0


def test_subject_accuracy_counts_only_labels_the_probe_predicts():
    predictions = {"subject": ["person", "person", "circles"], "identity": ["ada", "bob", None]}
    expects = [{"subject": "person", "identity": "ada"}] * 3
    assert metrics.subject_accuracy(predictions, expects) == pytest.approx(1 / 3)
    assert metrics.subject_accuracy(predictions, [{"subject": "person"}] * 3) == pytest.approx(2 / 3)
    assert metrics.subject_accuracy(predictions, [{"colour": "red"}] * 3) is None


def test_clip_score_of_aligned_and_opposite_features():
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.clip_score(image, image) == pytest.approx(100.0)
    assert metrics.clip_score(image, -image) == 0.0


def test_clip_score_averages_the_cosines_before_clamping_at_zero():
    """Known answers, as torchmetrics' CLIPScore: 100 * max(mean cos, 0). Cosines 1 and -0.5
    give 25 (clamping each first would give 50); -1 and 0.5 give 0, not 25."""
    images = np.array([[2.0, 0.0], [1.0, 0.0]])
    texts = np.array([[1.0, 0.0], [-0.5, np.sqrt(0.75)]])
    assert metrics.clip_score(images, texts) == pytest.approx(25.0)
    assert metrics.clip_score(images, np.array([[-3.0, 0.0], [0.5, np.sqrt(0.75)]])) == 0.0


def test_metric_table_over_both_runs(shared_store, instruments):
    runs = [LocalRun(shared_store / study).load() for study in ("burn_unet", "burn_te")]
    refs = [BranchRef(run, branch) for run in runs for branch in run.branches.values()]
    table = measure(refs, SampleImages(), instruments)
    assert len(table.rows) == 2 * 8 * 2 and table.notes == []
    assert all(row[metric] is not None for row in table.rows for metric in METRICS if metric != "clip_score")
    unet_saturation = table.series("burn_unet", "unet_hi", "person", "saturation")
    te_saturation = table.series("burn_te", "te_hi", "person", "saturation")
    assert unet_saturation[7] > unet_saturation[1] + 0.2
    assert te_saturation[7] == pytest.approx(te_saturation[1], abs=0.01)
    assert table.series("burn_te", "te_hi", "person", "adherence") == [1, 1, 1, 0, 0, 0, 0, 0]
    assert table.series("burn_unet", "unet_hi", "person", "histogram_distance")[0] == 0.0
    assert table.series("burn_unet", "unet_hi", "person", "high_frequency_ratio")[0] == pytest.approx(1.0)
    assert max(row["near_copies"] for row in table.rows) == 0.0


def test_without_instruments_or_data_the_table_says_what_is_missing(store):
    (store / "burn_unet" / "config.yaml").write_text("name: burn_unet\ndata:\n  path: /nowhere\n")
    run = LocalRun(store / "burn_unet").load()
    assert dataset_folder(run)[0] is None
    table = measure([BranchRef(run, run.branches["unet_hi"])], SampleImages(), Instruments())
    assert all(row["style_distance"] is None and row["variability_feature"] is None for row in table.rows)
    assert all(row["saturation"] is not None for row in table.rows)
    assert any("data.path '/nowhere' is not a folder" in note for note in table.notes)


def test_instruments_fall_back_to_notes_and_reject_bad_options(tmp_path):
    unavailable = load_instruments(probe_loader=lambda: (None, "no probe here"))
    assert unavailable.features is None and unavailable.probe is None
    assert any("no probe here" in note for note in unavailable.notes)
    with pytest.raises(AnalysisError, match="is not a folder with a config.json"):
        load_instruments(clip_model=tmp_path)
    with pytest.raises(AnalysisError, match="--features clip needs --clip-model"):
        load_instruments("clip")


def test_a_local_clip_folder_gives_clip_scores_and_features(shared_store, tiny_clip):
    """A tiny random CLIP saved to a folder stands in for a real one: the wiring is tested,
    not the scores' meaning."""
    instruments = load_instruments(clip_model=tiny_clip, use_probe=False)
    assert instruments.feature_space == "CLIP image features"
    run = LocalRun(shared_store / "burn_te").load()
    table = measure([BranchRef(run, run.branches["te_hi"])], SampleImages(), instruments)
    assert all(0 <= row["clip_score"] <= 100 for row in table.rows)
    assert all(row["variability_feature"] is not None for row in table.rows)


def test_a_hub_id_neither_cached_nor_reachable_is_a_note_not_a_failure(offline_hub):
    instruments = load_instruments(clip_model="openai/clip-vit-large-patch14", use_probe=False)
    assert instruments.clip is None and instruments.features is None
    assert (
        "CLIP model openai/clip-vit-large-patch14 not found in the local Hugging Face cache and the "
        "hub is unreachable: CLIP score, CLIP variability and CLIP style distance not measured; "
        "download it with `hf download openai/clip-vit-large-patch14` or set analysis.clip_model=/path"
    ) in instruments.notes[0]


def test_a_hub_id_in_the_local_cache_is_used_offline(offline_hub, tiny_clip):
    """The cache's layout (models--owner--name/snapshots/<commit>, refs/main), as `hf download`
    leaves it, holding the tiny CLIP under a hub id."""
    commit = "0" * 40
    repo = offline_hub / "models--burnlab-tests--tiny-clip"
    shutil.copytree(tiny_clip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    instruments = load_instruments(clip_model="burnlab-tests/tiny-clip", use_probe=False)
    assert instruments.clip is not None and instruments.feature_space == "CLIP image features"
    assert not any("CLIP model" in note for note in instruments.notes)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{tmp}/text_encoder", "config.json describes a 'clip_text_model' model, not CLIP"),
        ("{tmp}/text_encoder/config.json", "is not a folder with a config.json"),
        ("./no/such/clip", "no such folder, and not a hub id"),
    ],
)
def test_a_clip_model_value_that_names_no_clip_model_is_refused(tmp_path, spec, message):
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    with pytest.raises(AnalysisError, match=message):
        load_instruments(clip_model=spec.format(tmp=tmp_path), use_probe=False)
