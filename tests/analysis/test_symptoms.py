"""The symptom profile on synthetic metric series with a known answer, and on the tiny store:
signals, the intensive per-symptom number (the same with 3, 6 or 12 checkpoints), the profile per
checkpoint, unmeasured symptoms, symptoms.json.

    .venv/bin/python -m pytest tests/analysis/test_symptoms.py -q
"""

from __future__ import annotations

import json

import pytest

from burnlab.analysis.images import SampleImages
from burnlab.analysis.measure import METRICS, measure
from burnlab.analysis.run import BranchRef
from burnlab.analysis.sources import LocalRun
from burnlab.analysis.symptoms import (
    SYMPTOM_NAMES,
    SYMPTOMS,
    WATCHED,
    Z_CAP,
    Z_MIN,
    BranchSeries,
    branch_series,
    cells,
    profile,
    profile_all,
    profiles_json,
    signals,
)

LABELS = ["0 base", "1 baseline", "2 lo e100", "3 lo e300", "4 lo e500", "5 hi e100", "6 hi e300", "7 hi e500"]
ACTIVATION = {"person": False, "circles": False, "sunglasses": True}


def series(
    component: str = "unet",
    values: dict | None = None,
    errors: dict | None = None,
    n_images: int = 9,
    labels: list[str] = LABELS,
    activation: dict = ACTIVATION,
) -> BranchSeries:
    """values/errors: {(metric, prompt_set): a number per label}; every other metric flat at 0.5
    with standard error 0.01 on every prompt set."""
    values, errors, n = values or {}, errors or {}, len(labels)
    return BranchSeries(
        "study",
        f"{component}_hi",
        component,
        list(labels),
        dict(activation),
        {m: {p: list(values.get((m, p), [0.5] * n)) for p in activation} for m in WATCHED},
        {m: {p: list(errors.get((m, p), [0.01] * n)) for p in activation} for m in WATCHED},
        {p: [n_images] * n for p in activation},
    )


def test_symptoms_watch_known_metrics_in_valid_directions():
    measured = set(METRICS) | {"high_frequency_ratio"}
    assert set(WATCHED) <= measured
    for symptom in SYMPTOMS:
        assert symptom.prompts in ("all", "with_phrase", "without_phrase")
        assert set(symptom.metrics.values()) <= {-1, 0, 1}


def test_noise_comes_from_both_checkpoints_standard_errors():
    moved = {("saturation", "person"): [0.5, 0.5, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5]}
    noisy = {("saturation", "person"): [0.1] * 8}
    found = signals(series(values=moved, errors=noisy))
    assert [(s.metric, s.index) for s in found] == [("saturation", 2)]
    assert found[0].z == pytest.approx(0.3 / (0.1 * 2**0.5))  # 2.12
    noisier = {("saturation", "person"): [0.11] * 8}  # z 1.93: below Z_MIN = 2
    assert Z_MIN == 2 and signals(series(values=moved, errors=noisier)) == []


def test_two_of_nine_seeds_is_noise_but_a_total_collapse_is_not():
    two_lost = {("adherence", "person"): [1, 1] + [7 / 9] * 6}
    two_lost_errors = {("adherence", "person"): [0, 0] + [0.139] * 6}  # the bootstrap's se at 7/9
    assert signals(series(values=two_lost, errors=two_lost_errors)) == []
    all_lost = {("adherence", "person"): [1, 1] + [0] * 6}
    found = signals(series(values=all_lost, errors={("adherence", "person"): [0] * 8}))
    # both standard errors are 0: each is floored at half an image of nine
    assert {s.index for s in found} == set(range(2, 8)) and found[0].z == pytest.approx(1 / (0.5 / 9 * 2**0.5))


def test_a_metric_the_baseline_already_moved_can_still_signal():
    collapse = {("variability_pixel", "sunglasses"): [0.30, 0.18, 0.12, 0.05, 0, 0, 0, 0]}
    found = signals(series(values=collapse, errors={("variability_pixel", "sunglasses"): [0.02] * 8}))
    assert {(s.symptom, s.index) for s in found} >= {
        ("variety collapse with the phrase", 2),
        ("variety collapse with the phrase", 4),
    }


def test_colour_shifts_count_both_ways_and_bleed_only_without_the_phrase():
    down = {("saturation", "circles"): [0.5, 0.5] + [0.3] * 6}
    assert {s.symptom for s in signals(series(values=down))} == {"colour shift"}
    styled = {("probe_style", p): [0.0, 0.1] + [0.9] * 6 for p in ACTIVATION}
    found = signals(series(values=styled, errors={("probe_style", p): [0.05] * 8 for p in ACTIVATION}))
    assert {(s.symptom, s.prompt_set) for s in found} == {("style bleed", "person"), ("style bleed", "circles")}
    faded = {("probe_style", "sunglasses"): [0.0, 0.6] + [0.1] * 6}
    found = signals(series(values=faded, errors={("probe_style", "sunglasses"): [0.05] * 8}))
    assert {(s.symptom, s.prompt_set) for s in found} == {("phrase weakening", "sunglasses")}


def test_a_move_of_exactly_z_min_counts_whatever_the_float_rounding():
    exact = {("saturation", "person"): [0.5, 0.5, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5]}
    errors = {("saturation", "person"): [0.06, 0.06, 0.08, 0.08, 0.08, 0.08, 0.08, 0.08]}
    found = signals(series(values=exact, errors=errors))
    assert [(s.index, s.z) for s in found] == [(2, 2.0)]


def settled(after_baseline: int, without_phrase: tuple[str, ...] = ("person", "circles")) -> BranchSeries:
    """A smooth burn that reached its plateau before the first checkpoint after the baseline, sampled
    at `after_baseline` checkpoints: style 4 standard errors up on the prompt sets without the phrase,
    saturation far beyond the cap on every prompt set, every other metric flat."""
    labels = ["0 base", "1 baseline"] + [f"{i} hi e{100 * (i - 1)}" for i in range(2, after_baseline + 2)]
    activation = {**{p: False for p in without_phrase}, "sunglasses": True}
    n = len(labels)
    se = 0.02
    values = {("probe_style", p): [0.1, 0.1] + [0.1 + 4 * se * 2**0.5] * (n - 2) for p in without_phrase}
    values.update({("saturation", p): [0.4, 0.4] + [0.9] * (n - 2) for p in activation})
    errors = {("probe_style", p): [se] * n for p in without_phrase}
    return series(values=values, errors=errors, n_images=1000, labels=labels, activation=activation)


def test_the_profile_is_the_same_number_with_3_6_or_12_checkpoints_and_1_or_2_prompt_sets():
    sampled = [profile(settled(count)) for count in (3, 6, 12)] + [profile(settled(6, ("person",)))]
    expected = {name: 0.0 for name in SYMPTOM_NAMES} | {"style bleed": 4.0, "colour shift": Z_CAP}
    for found in sampled:
        assert found.symptoms == pytest.approx(expected, abs=1e-9)
        assert all(at == pytest.approx(expected, abs=1e-9) for at in found.by_checkpoint.values())
    assert sampled[0].symptoms == sampled[1].symptoms == sampled[2].symptoms == sampled[3].symptoms
    assert [len(found.by_checkpoint) for found in sampled] == [3, 6, 12, 6]
    # what the mean replaces: the sum over the cells grows with the testing plan
    sums = [sum(cells(settled(count), signals(settled(count)))["style bleed"].values()) for count in (3, 6, 12)]
    assert sums == pytest.approx([2 * 4.0 * 3, 2 * 4.0 * 6, 2 * 4.0 * 12])


def test_the_profile_per_checkpoint_shows_when_a_symptom_moved():
    late = {("saturation", p): [0.4, 0.4, 0.4, 0.4, 0.4, 0.9, 0.9, 0.9] for p in ACTIVATION}
    one_bleeds = {("probe_style", "person"): [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2]}
    found = profile(
        series(values={**late, **one_bleeds}, errors={("probe_style", "person"): [0.02] * 8}, n_images=1000)
    )
    assert list(found.by_checkpoint) == LABELS[2:]
    assert [at["colour shift"] for at in found.by_checkpoint.values()] == [0, 0, 0, Z_CAP, Z_CAP, Z_CAP]
    assert found.symptoms["colour shift"] == Z_CAP / 2  # 3 of 6 checkpoints, every prompt set
    z = 0.1 / (0.02 * 2**0.5)  # 3.54 on one of the two prompt sets without the phrase
    assert [at["style bleed"] for at in found.by_checkpoint.values()] == pytest.approx([0, 0, 0, 0, z / 2, z / 2])
    assert found.symptoms["style bleed"] == pytest.approx(2 * z / 12)
    assert found.summary() == (
        f"study/unet_hi (trains unet): symptoms moved (mean capped z per prompt set and "
        f"checkpoint, 0 to 10): colour shift 5.00, style bleed {2 * z / 12:.2f}; first signal "
        f"at '5 hi e100'."
    )


def test_a_symptom_without_measurements_is_none_and_a_flat_branch_moved_nothing():
    unmeasured = {(metric, p): [None] * 8 for metric in ("probe_style", "style_distance") for p in ACTIVATION}
    found = profile(series("text_encoder", values=unmeasured))
    assert found.symptoms["style bleed"] is None and found.symptoms["phrase weakening"] is None
    assert found.by_checkpoint["7 hi e500"]["style bleed"] is None
    assert found.symptoms["colour shift"] == 0.0 and found.signals == []
    assert found.summary() == (
        "study/text_encoder_hi (trains text_encoder): no symptom moved 2 standard errors from the baseline."
    )


def test_symptoms_json_holds_the_fixed_rule_the_definitions_and_each_profile():
    document = json.loads(json.dumps(profiles_json(profile_all([settled(3)]))))
    assert (document["z_min"], document["z_cap"]) == (2.0, 10.0)
    assert [symptom["name"] for symptom in document["symptoms"]] == list(SYMPTOM_NAMES)
    (entry,) = document["profiles"]
    assert entry["symptoms"]["style bleed"] == 4.0 and list(entry["by_checkpoint"]) == [
        "2 hi e100",
        "3 hi e200",
        "4 hi e300",
    ]
    assert len(entry["signals"]) == 3 * 3 + 3 * 2  # saturation x 3 prompt sets, style x 2, at 3 checkpoints
    assert entry["summary"].startswith("study/unet_hi (trains unet): symptoms moved")


def test_the_profile_of_the_tiny_store_is_the_mean_of_its_cells(shared_store, instruments):
    runs = [LocalRun(shared_store / study).load() for study in ("burn_unet", "burn_te")]
    refs = [BranchRef(run, branch) for run in runs for branch in run.branches.values()]
    all_series = branch_series(measure(refs, SampleImages(), instruments))
    profiles = profile_all(all_series)
    assert [(p.run, p.component) for p in profiles] == [("burn_unet", "unet"), ("burn_te", "text_encoder")]
    for found, one in zip(profiles, all_series):
        assert all(signal.z >= Z_MIN for signal in found.signals)
        for name, cell in cells(one, found.signals).items():
            capped = {
                key: max(
                    [min(s.z, Z_CAP) for s in found.signals if (s.symptom, s.prompt_set, s.index) == (name, *key)],
                    default=0.0,
                )
                for key in cell
            }
            assert found.symptoms[name] == pytest.approx(sum(capped.values()) / len(capped) if capped else None)
    unet, te = profiles
    # the store's UNet branch saturates its colours; its TE branch keeps them
    assert unet.symptoms["colour shift"] > 1 and te.symptoms["colour shift"] == 0
