"""The burn detector on synthetic metric series with a known answer, and on the tiny store.

    .venv/bin/python -m pytest tests/analysis/test_detector.py -q
"""
from __future__ import annotations

import pytest

from analysis.detector import DEFAULT_FLOORS, PATTERNS, BranchSeries, branch_series, detect, detect_branch
from analysis.images import SampleImages
from analysis.measure import METRICS, measure
from analysis.model import BranchRef
from analysis.sources import LocalRun

LABELS = ["0 base", "1 baseline", "2 lo e100", "3 lo e300", "4 lo e500", "5 hi e100", "6 hi e300",
          "7 hi e500"]
FLAT = {
    "saturation": [0.40, 0.42] + [0.42] * 6,
    "rms_contrast": [0.20, 0.21] + [0.21] * 6,
    "variability_pixel": [0.30, 0.29] + [0.29] * 6,
    "probe_style": [0.10, 0.15] + [0.15] * 6,
    "adherence": [1.0, 1.0] + [1.0] * 6,
}


def series(component: str, activation: dict[str, bool] | None = None, **changes) -> BranchSeries:
    """Every prompt set flat after the baseline except the metrics in `changes`."""
    activation = activation or {"person": False, "sunglasses": True}
    values = {metric: {prompt_set: list(changes.get(metric, FLAT.get(metric, [None] * 8)))
                       for prompt_set in activation}
              for metric in PATTERNS}
    return BranchSeries("study", f"{component}_hi", component, LABELS, activation, values)


def test_patterns_cover_known_metrics_with_floors():
    assert set(PATTERNS) <= set(METRICS) and set(PATTERNS) == set(DEFAULT_FLOORS)


def test_unet_pattern_saturation_up_variability_down():
    verdict = detect_branch(series(
        "unet", saturation=[0.40, 0.42, 0.43, 0.50, 0.60, 0.70, 0.80, 0.90],
        variability_pixel=[0.30, 0.29, 0.29, 0.28, 0.25, 0.20, 0.15, 0.10],
        adherence=[1.0, 1.0, 1.0, 1.0, 0.9, 0.6, 0.4, 0.2]))
    assert verdict.implicates == "unet" and verdict.matches_trained_component
    assert (verdict.burn_index, verdict.burn_label) == (3, "3 lo e300")
    first = verdict.signals[0]
    assert (first.metric, first.index) == ("saturation", 3)
    assert first.threshold == pytest.approx(2 * 0.02)  # k x the base->baseline change (> floor)


def test_te_pattern_adherence_down_with_little_colour_shift():
    verdict = detect_branch(series(
        "text_encoder", adherence=[1.0, 0.9, 0.9, 0.8, 0.5, 0.3, 0.1, 0.0],
        saturation=[0.40, 0.42, 0.42, 0.43, 0.43, 0.44, 0.44, 0.45]))
    assert verdict.implicates == "text_encoder" and verdict.matches_trained_component
    assert verdict.burn_index == 4  # 0.9 -> 0.5 passes 2 x 0.1 (and the floor); 0.8 does not
    assert {signal.family for signal in verdict.signals} == {"adherence"}


def test_a_colour_rise_outweighs_an_adherence_drop():
    verdict = detect_branch(series(
        "text_encoder", adherence=[1.0, 1.0, 1.0, 0.5, 0.2, 0.0, 0.0, 0.0],
        rms_contrast=[0.20, 0.21, 0.25, 0.30, 0.35, 0.40, 0.40, 0.40]))
    assert verdict.implicates == "unet" and verdict.matches_trained_component is False


def test_threshold_is_k_times_the_base_to_baseline_change():
    big_fine_tune = [0.40, 0.50, 0.55, 0.62, 0.68, 0.72, 0.75, 0.75]  # baseline moved it by 0.1
    assert detect_branch(series("unet", saturation=big_fine_tune), k=2.0).burn_index == 5  # +0.22
    assert detect_branch(series("unet", saturation=big_fine_tune), k=1.0).burn_index == 3  # +0.12
    assert detect_branch(series("unet", saturation=big_fine_tune), k=3.0).burn_index is None  # < 0.3


def test_style_bleed_counts_only_without_the_activation_phrase():
    rising = [0.10, 0.15, 0.20, 0.40, 0.60, 0.80, 0.90, 0.95]
    with_activation = series("unet", {"sunglasses": True}, probe_style=rising)
    without = series("unet", {"person": False}, probe_style=rising)
    assert detect_branch(with_activation).implicates == "none"
    bleed = detect_branch(without)
    assert bleed.implicates == "unet" and bleed.signals[0].family == "style bleed"


def test_flat_series_and_missing_values_detect_nothing():
    verdict = detect_branch(series("unet", saturation=[None, None] + [0.9] * 6))
    assert verdict.burn_index is None and verdict.implicates == "none"
    assert verdict.matches_trained_component is None
    assert "no burn detected" in verdict.summary()


def test_detector_on_the_tiny_store_names_each_trained_component(shared_store, instruments):
    runs = [LocalRun(shared_store / study).load() for study in ("burn_unet", "burn_te")]
    refs = [BranchRef(run, branch) for run in runs for branch in run.branches.values()]
    verdicts = detect(branch_series(measure(refs, SampleImages(), instruments)))
    assert [(v.run, v.implicates, v.matches_trained_component) for v in verdicts] == [
        ("burn_unet", "unet", True), ("burn_te", "text_encoder", True)]
    assert verdicts[0].burn_label == "2 unet_lo e2" and verdicts[1].burn_label == "3 te_lo e6"
