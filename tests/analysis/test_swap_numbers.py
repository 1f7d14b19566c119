"""The swap verdict's numbers (burnlab/analysis/attribution.py) on synthetic corner features: distances in
seed spreads, the Shapley split, intervals, the verdict and its sentence; and that none of them
grows with the number of prompt sets or seeds."""

import re

import numpy as np
import pytest

from burnlab.analysis.attribution import (
    CORNERS,
    AttributionRule,
    Interval,
    attribute,
    judge,
    seed_spread,
    sentence,
)
from burnlab.analysis.run import AnalysisError


def corners(
    unet_move: float, te_move: float, seeds: int = 9, prompt_sets: int = 3, dim: int = 16, rng_seed: int = 0
) -> dict:
    """Features of the four corners: R's seeds spread around 0; the tuned UNet shifts every image
    by `unet_move` along one axis, the tuned text encoder by `te_move` along another; M has both."""
    rng = np.random.default_rng(rng_seed)
    found = {name: {} for name in CORNERS}
    for p in range(prompt_sets):
        reference = rng.normal(size=(seeds, dim))
        unit = seed_spread(reference)
        shift_u, shift_t = np.eye(dim)[0] * unet_move * unit, np.eye(dim)[1] * te_move * unit
        found["R"][f"set{p}"] = reference
        found["M_unet+R_te"][f"set{p}"] = reference + shift_u
        found["R_unet+M_te"][f"set{p}"] = reference + shift_t
        found["M"][f"set{p}"] = reference + shift_u + shift_t
    return found


ACTIVATION = {"set0": False, "set1": False, "set2": True}


def test_a_unet_move_is_named_unet_with_shares_adding_up_to_the_tuned_distance():
    by_group, by_set, shares, statuses, verdict = attribute(corners(2.0, 0.0), ACTIVATION, threshold=0.5)
    assert verdict == "unet" and statuses == {"unet": "burned", "text_encoder": "clear"}
    assert by_group["all prompts"]["R"].value == 0
    assert by_group["all prompts"]["M_unet+R_te"].value == pytest.approx(2.0, rel=1e-5)  # in seed spreads
    assert shares["unet"].value + shares["text_encoder"].value == pytest.approx(by_group["all prompts"]["M"].value)
    assert shares["text_encoder"].value == pytest.approx(0.0, abs=1e-12)
    assert set(by_group) == {"all prompts", "without the phrase", "with the phrase"}


def test_the_shapley_split_of_two_orthogonal_moves():
    _, _, shares, _, verdict = attribute(corners(1.0, 1.0), ACTIVATION, threshold=0.5)
    # d(M) = sqrt(2), each hybrid 1: each share sqrt(2) / 2, interaction sqrt(2) - 2
    assert shares["unet"].value == pytest.approx(np.sqrt(2) / 2, rel=1e-5)
    assert shares["text_encoder"].value == pytest.approx(np.sqrt(2) / 2, rel=1e-5)
    assert shares["interaction"].value == pytest.approx(np.sqrt(2) - 2, rel=1e-5)
    assert verdict == "both"


@pytest.mark.parametrize("unet, te, expected", [(0.0, 2.0, "text_encoder"), (0.05, 0.02, "none")])
def test_verdicts(unet, te, expected):
    assert attribute(corners(unet, te), ACTIVATION, threshold=0.5)[4] == expected


def test_an_interval_that_straddles_the_threshold_is_undetermined():
    statuses, verdict = judge(
        {"unet": Interval(0.6, 0.4, 0.8), "text_encoder": Interval(0.0, 0.0, 0.1), "interaction": Interval(0, 0, 0)},
        threshold=0.5,
    )
    assert verdict == "undetermined" and statuses["unet"] == "unsure"


def test_numbers_do_not_grow_with_more_prompt_sets_or_seeds():
    """The same burn measured on 3 or 12 prompt sets, 9 or 36 seeds: the same distances and
    shares (exact for copies of the same prompt sets, within sampling noise for more seeds)."""
    small = attribute(corners(1.5, 0.3), ACTIVATION, 0.5)
    copies = corners(1.5, 0.3)
    for name in CORNERS:  # the same three prompt sets four times over
        copies[name] = {f"{key}_{k}": value for k in range(4) for key, value in copies[name].items()}
    many_sets = attribute(copies, {f"{key}_{k}": a for k in range(4) for key, a in ACTIVATION.items()}, 0.5)
    assert many_sets[2]["unet"].value == pytest.approx(small[2]["unet"].value, rel=1e-5)
    assert many_sets[2]["text_encoder"].value == pytest.approx(small[2]["text_encoder"].value, rel=1e-5)
    many_seeds = attribute(corners(1.5, 0.3, seeds=36), ACTIVATION, 0.5)
    assert many_seeds[2]["unet"].value == pytest.approx(small[2]["unet"].value, rel=0.15)
    assert many_seeds[4] == small[4] == "unet"


def test_the_sentence_says_what_the_numbers_say():
    _, _, shares, statuses, verdict = attribute(corners(2.0, 0.1), ACTIVATION, threshold=0.5)
    text = sentence("7 unet_hi e500", "1 baseline", shares, statuses, verdict, 0.5)
    numbers = [float(n) for n in re.findall(r"-?\d+\.\d+", text)]
    assert numbers[:6] == [
        round(shares[c].__getattribute__(f), 2) for c in ("unet", "text_encoder") for f in ("value", "low", "high")
    ]
    assert numbers[6] == 0.5
    assert numbers[0] > numbers[6] > numbers[5]  # the UNet's share above the threshold, the TE's interval below
    assert "the UNet's interval lies above it" in text and "text encoder's interval lies below it" in text
    assert text.endswith("so the UNet burned.")


def test_a_reference_whose_seeds_all_look_alike_is_one_paragraph():
    features = corners(1.0, 0.0)
    for name in CORNERS:
        features[name]["set0"] = np.zeros_like(features[name]["set0"])
    with pytest.raises(AnalysisError, match="no seed spread"):
        attribute(features, ACTIVATION, 0.5)


def test_a_bad_rule_file_is_one_paragraph(tmp_path):
    (tmp_path / "rule.json").write_text('{"threshold": -1}')
    with pytest.raises(AnalysisError, match="threshold -1.0; expected a number > 0"):
        AttributionRule.load(tmp_path / "rule.json")
    (tmp_path / "rule.json").write_text("not json")
    with pytest.raises(AnalysisError, match="not readable"):
        AttributionRule.load(tmp_path / "rule.json")


# -- SDXL: three components, the 2x2x2 cube ----------------------------------------------------------
XL = ("unet", "text_encoder", "text_encoder_2")


def xl_corners(moves: dict, seeds: int = 9, prompt_sets: int = 3, dim: int = 16, rng_seed: int = 0) -> dict:
    """The eight corners: each tuned component shifts every image along an axis of its own by its
    move (in seed spreads); a corner holds the shifts of the components it takes from M."""
    from burnlab.store.layout import swap_corners

    rng = np.random.default_rng(rng_seed)
    cube = swap_corners(XL)
    found = {name: {} for name in cube}
    for p in range(prompt_sets):
        reference = rng.normal(size=(seeds, dim))
        unit = seed_spread(reference)
        shifts = {c: np.eye(dim)[axis] * moves.get(c, 0.0) * unit for axis, c in enumerate(XL)}
        for name, from_tuned in cube.items():
            found[name][f"set{p}"] = reference + sum((shifts[c] for c in from_tuned), np.zeros(dim))
    return found


def test_the_cube_has_eight_corners_named_by_what_they_take_from_m():
    from burnlab.store.layout import COMPONENTS, swap_corners

    assert tuple(swap_corners(COMPONENTS)) == CORNERS == ("R", "M_unet+R_te", "R_unet+M_te", "M")
    cube = swap_corners(XL)
    assert len(cube) == 8 and list(cube)[0] == "R" and list(cube)[-1] == "M"
    assert cube["R_unet+R_te+M_te2"] == ("text_encoder_2",) and cube["M_unet+M_te+R_te2"] == ("unet", "text_encoder")


def test_a_second_encoder_move_is_named_text_encoder_2_and_the_shares_add_up():
    _, _, shares, statuses, verdict = attribute(
        xl_corners({"text_encoder_2": 2.0}), ACTIVATION, threshold=0.5, components=XL
    )
    assert verdict == "text_encoder_2"
    assert statuses == {"unet": "clear", "text_encoder": "clear", "text_encoder_2": "burned"}
    assert shares["text_encoder_2"].value == pytest.approx(2.0, rel=1e-5)
    assert shares["unet"].value == pytest.approx(0.0, abs=1e-9) and shares["text_encoder"].value == pytest.approx(
        0.0, abs=1e-9
    )


def test_the_three_way_shapley_split_of_orthogonal_moves():
    # moves 1, 2, 2 along orthogonal axes: d(S) = sqrt(sum of the squares in S), so d(M) = 3; the
    # Shapley value weighs each component's marginal distance over the 6 orders of swapping
    by_group, _, shares, _, verdict = attribute(
        xl_corners({"unet": 1.0, "text_encoder": 2.0, "text_encoder_2": 2.0}), ACTIVATION, threshold=0.25, components=XL
    )
    d = lambda *moves: float(np.sqrt(sum(m * m for m in moves)))  # noqa: E731
    unet = (2 * d(1) + 2 * (d(1, 2) - d(2)) + 2 * (d(1, 2, 2) - d(2, 2))) / 6  # first, second, last
    assert shares["unet"].value == pytest.approx(unet, rel=1e-5)
    assert sum(shares[c].value for c in XL) == pytest.approx(by_group["all prompts"]["M"].value, rel=1e-6)
    assert shares["interaction"].value == pytest.approx(3.0 - 5.0, rel=1e-5)
    assert verdict == "unet+text_encoder+text_encoder_2"


def test_the_sdxl_sentence_names_each_encoder():
    shares = {
        "unet": Interval(0.1, 0.0, 0.2),
        "text_encoder": Interval(2.0, 1.5, 2.5),
        "text_encoder_2": Interval(0.1, 0.0, 0.2),
        "interaction": Interval(0.0, 0.0, 0.0),
    }
    statuses, verdict = judge(shares, 0.5, XL)
    assert verdict == "text_encoder"
    text = sentence("t1 e120", "baseline", shares, statuses, verdict, 0.5, XL)
    assert text.startswith("Of the move from 'baseline' to 't1 e120', the UNet accounts for 0.10 [0.00, 0.20] seed")
    assert "the first text encoder for 2.00 [1.50, 2.50] and the second text encoder for 0.10" in text
    assert text.endswith("so the first text encoder burned.")
