"""The burn detector and its calibration on synthetic metric series with a known answer, and on
the tiny store.

    .venv/bin/python -m pytest tests/analysis/test_detector.py -q
"""
from __future__ import annotations

import json

import pytest

from analysis.calibration import Labelled, calibrate, confusion, separate
from analysis.detector import (SYMPTOMS, WATCHED, BranchSeries, Calibration, branch_series, detect,
                               detect_branch, signals)
from analysis.images import SampleImages
from analysis.measure import METRICS, measure
from analysis.model import AnalysisError, BranchRef
from analysis.sources import LocalRun

LABELS = ["0 base", "1 baseline", "2 lo e100", "3 lo e300", "4 lo e500", "5 hi e100", "6 hi e300",
          "7 hi e500"]
ACTIVATION = {"person": False, "circles": False, "sunglasses": True}
RULE = Calibration(z_min=2.0, symptoms={"style bleed": "unet", "phrase weakening": "text_encoder"},
                   burn_evidence=5.0, unet_evidence=5.0, text_encoder_evidence=5.0)


def series(component: str = "unet", values: dict | None = None, errors: dict | None = None,
           n_images: int = 9) -> BranchSeries:
    """values/errors: {(metric, prompt_set): 8 numbers}; every other metric flat at 0.5 with
    standard error 0.01 on every prompt set."""
    values, errors = values or {}, errors or {}
    return BranchSeries(
        "study", f"{component}_hi", component, LABELS, dict(ACTIVATION),
        {m: {p: list(values.get((m, p), [0.5] * 8)) for p in ACTIVATION} for m in WATCHED},
        {m: {p: list(errors.get((m, p), [0.01] * 8)) for p in ACTIVATION} for m in WATCHED},
        {p: [n_images] * 8 for p in ACTIVATION})


def rising(start: float, step: float, count: int = 6) -> list[float]:
    return [start, start] + [start + step * (i + 1) for i in range(count)]


def test_symptoms_watch_known_metrics_in_valid_directions():
    measured = set(METRICS) | {"high_frequency_ratio"}
    assert set(WATCHED) <= measured
    for symptom in SYMPTOMS:
        assert symptom.prompts in ("all", "with_phrase", "without_phrase")
        assert set(symptom.metrics.values()) <= {-1, 0, 1}


def test_noise_comes_from_both_checkpoints_standard_errors():
    moved = {("saturation", "person"): [0.5, 0.5, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5]}
    noisy = {("saturation", "person"): [0.1] * 8}
    found = signals(series(values=moved, errors=noisy), z_min=2.0)
    assert [(s.metric, s.index) for s in found] == [("saturation", 2)]
    assert found[0].z == pytest.approx(0.3 / (0.1 * 2 ** 0.5))  # 2.12
    assert signals(series(values=moved, errors=noisy), z_min=2.5) == []


def test_two_of_nine_seeds_is_noise_but_a_total_collapse_is_not():
    two_lost = {("adherence", "person"): [1, 1] + [7 / 9] * 6}
    two_lost_errors = {("adherence", "person"): [0, 0] + [0.139] * 6}  # the bootstrap's se at 7/9
    assert signals(series(values=two_lost, errors=two_lost_errors), z_min=2.0) == []
    all_lost = {("adherence", "person"): [1, 1] + [0] * 6}
    found = signals(series(values=all_lost, errors={("adherence", "person"): [0] * 8}), z_min=2.0)
    # both standard errors are 0: each is floored at half an image of nine
    assert {s.index for s in found} == set(range(2, 8)) and found[0].z == pytest.approx(1 / (0.5 / 9 * 2 ** 0.5))


def test_a_metric_the_baseline_already_moved_can_still_signal():
    collapse = {("variability_pixel", "sunglasses"): [0.30, 0.18, 0.12, 0.05, 0, 0, 0, 0]}
    found = signals(series(values=collapse, errors={("variability_pixel", "sunglasses"): [0.02] * 8}), 2.0)
    assert {(s.symptom, s.index) for s in found} >= {("variety collapse with the phrase", 2),
                                                     ("variety collapse with the phrase", 4)}


def test_colour_shifts_count_both_ways_and_bleed_only_without_the_phrase():
    down = {("saturation", "circles"): [0.5, 0.5] + [0.3] * 6}
    assert {s.symptom for s in signals(series(values=down), 2.0)} == {"colour shift"}
    styled = {("probe_style", p): [0.0, 0.1] + [0.9] * 6 for p in ACTIVATION}
    found = signals(series(values=styled, errors={("probe_style", p): [0.05] * 8 for p in ACTIVATION}), 2.0)
    assert {(s.symptom, s.prompt_set) for s in found} == {("style bleed", "person"), ("style bleed", "circles")}
    faded = {("probe_style", "sunglasses"): [0.0, 0.6] + [0.1] * 6}
    found = signals(series(values=faded, errors={("probe_style", "sunglasses"): [0.05] * 8}), 2.0)
    assert {(s.symptom, s.prompt_set) for s in found} == {("phrase weakening", "sunglasses")}


def test_a_move_of_exactly_z_min_counts_whatever_the_float_rounding():
    exact = {("saturation", "person"): [0.5, 0.5, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5]}
    errors = {("saturation", "person"): [0.06, 0.06, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08]}
    found = signals(series(values=exact, errors=errors), z_min=2.0)
    assert [(s.index, s.z) for s in found] == [(2, 2.0)]


def bleed(component="unet", step=0.1):
    """Style rising on both prompts without the phrase (1,000 images: resolution far below 0.02)."""
    return series(component, values={("probe_style", p): rising(0.1, step) for p in ("person", "circles")},
                  errors={("probe_style", p): [0.02] * 8 for p in ("person", "circles")}, n_images=1000)


def weakening(component="text_encoder", step=0.1):
    return series(component, values={("probe_style", "sunglasses"): rising(0.8, -step)},
                  errors={("probe_style", "sunglasses"): [0.02] * 8}, n_images=1000)


def test_verdicts_name_unet_text_encoder_both_neither_or_no_burn():
    unet = detect_branch(bleed(), RULE)
    assert (unet.implicates, unet.matches_trained_component) == ("unet", True)
    assert unet.burn_index == 2 and unet.burn_label == "2 lo e100"  # two bleeding prompt sets at z 3.5
    assert unet.evidence["style bleed"] == pytest.approx(2 * sum(min(0.1 * i / 0.02 / 2 ** 0.5, 10) for i in range(1, 7)))
    te = detect_branch(weakening(), RULE)
    assert (te.implicates, te.matches_trained_component) == ("text_encoder", True)
    both_values = {**bleed().values}
    both_values["probe_style"]["sunglasses"] = rising(0.8, -0.1)
    both = series("unet+text_encoder", n_images=1000)
    both.values, both.errors = both_values, bleed().errors
    both.errors["probe_style"]["sunglasses"] = [0.02] * 8
    assert (detect_branch(both, RULE).implicates, detect_branch(both, RULE).matches_trained_component) == ("both", True)
    colour_only = series(values={("saturation", p): rising(0.4, 0.05) for p in ACTIVATION})
    verdict = detect_branch(colour_only, RULE)
    assert verdict.implicates == "neither" and verdict.burn_index is not None
    assert "implicates neither component" in verdict.summary()
    flat = detect_branch(series("text_encoder"), RULE)
    assert (flat.implicates, flat.burn_index, flat.matches_trained_component) == ("none", None, None)
    assert "no burn detected" in flat.summary()


def test_separate_puts_thresholds_in_the_gap_or_where_errors_are_fewest():
    assert separate([1, 2], [6, 8]) == pytest.approx(separate([1, 2], [6, 8]))
    gap = separate([1, 2], [6, 8])
    assert (gap.value, gap.errors, gap.margin) == (4.0, 0, pytest.approx(4 / 6))
    overlap = separate([1, 5], [3, 8])
    assert overlap.errors == 1 and overlap.margin < 0 and overlap.value in (3, 8, 1 + 1e-6, 5 + 1e-6)


def test_calibration_learns_which_symptom_implicates_which_component_and_generalises():
    labelled = ([Labelled(bleed(step=s), "unet") for s in (0.05, 0.08)]
                + [Labelled(weakening(step=s), "text_encoder") for s in (0.05, 0.08)]
                + [Labelled(series("unet"), "none"), Labelled(series("text_encoder"), "none")])
    rule, tried = calibrate(labelled, source="synthetic")
    assert rule.symptoms["style bleed"] == "unet" and rule.symptoms["phrase weakening"] == "text_encoder"
    assert rule.symptoms["colour shift"] == "neutral" and rule.source == "synthetic"
    assert tried[str(rule.z_min)]["errors"] == 0
    held_out = [bleed(step=0.15), weakening(step=0.15), series("unet")]
    verdicts = detect(held_out, rule)
    assert [v.implicates for v in verdicts] == ["unet", "text_encoder", "none"]
    table = confusion(verdicts, ["unet", "text_encoder", "none"])
    assert table["unet"]["unet"] == table["text_encoder"]["text_encoder"] == table["none"]["none"] == 1


def test_calibration_needs_controls_and_both_components():
    with pytest.raises(ValueError, match="control"):
        calibrate([Labelled(bleed(), "unet"), Labelled(weakening(), "text_encoder")])


def test_a_bad_calibration_file_is_one_paragraph(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"z_min": 2}))
    with pytest.raises(AnalysisError, match="calibration.json: not a detector calibration"):
        Calibration.load(path)
    path.write_text(json.dumps({"z_min": 2, "symptoms": {"sparkle": "unet"}, "burn_evidence": 1,
                                "unet_evidence": 1, "text_encoder_evidence": 1}))
    with pytest.raises(AnalysisError, match="sparkle"):
        Calibration.load(path)


def test_the_shipped_calibration_loads_and_was_chosen_by_make_verdicts():
    rule = Calibration.load()
    assert rule.source.startswith("make verdicts: calibration studies")
    assert set(rule.symptoms.values()) <= {"unet", "text_encoder", "neutral"}


def test_detector_on_the_tiny_store_explains_each_verdict(shared_store, instruments):
    runs = [LocalRun(shared_store / study).load() for study in ("burn_unet", "burn_te")]
    refs = [BranchRef(run, branch) for run in runs for branch in run.branches.values()]
    verdicts = detect(branch_series(measure(refs, SampleImages(), instruments)), RULE)
    assert [(v.run, v.component) for v in verdicts] == [("burn_unet", "unet"), ("burn_te", "text_encoder")]
    for verdict in verdicts:
        assert verdict.evidence and all(signal.z >= RULE.z_min for signal in verdict.signals)
        assert sum(verdict.evidence.values()) == pytest.approx(
            sum(max(min(s.z, 10) for s in verdict.signals if (s.symptom, s.prompt_set, s.index) == cell)
                for cell in {(s.symptom, s.prompt_set, s.index) for s in verdict.signals}), abs=1e-5)
