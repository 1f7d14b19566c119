"""The study's swap corners (burnlab.attribution.swap): which pairs a study attributes, that a corner
equal to a sampled checkpoint comes from the sample cache, that LoRA adapters are swapped per
component, and the drift instruments' numbers."""

import json

import numpy as np
import pytest
from PIL import Image

from burnlab.attribution.drift import block_of, timestep_ranges
from study_helpers import run_study
from test_lora import FAST, LORA


@pytest.fixture(scope="module")
def followfox(tiny_model, tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("attribution_runs")
    study, run_dir = run_study(tiny_model, tiny_data, runs)
    return study, run_dir, json.loads((run_dir / "attribution.json").read_text())


def pairs_of(document, branch):
    return [pair for pair in document["pairs"] if pair["branch"] == branch]


def pixels(run_dir, folder):
    rows = [json.loads(line) for line in (run_dir / folder / "index.jsonl").read_text().splitlines()]
    return {
        (row["prompt_set"], row["seed"]): np.asarray(Image.open(run_dir / folder / row["path"]), dtype=int)
        for row in rows
    }


def test_each_checkpoint_after_the_baseline_against_the_baseline_and_the_final_one_against_the_base(followfox):
    study, run_dir, document = followfox
    for branch, plan in study["testing_plan"].items():
        pairs = pairs_of(document, branch)
        assert [(p["reference"]["label"], p["tuned"]["label"]) for p in pairs] == [
            (plan[1]["label"], entry["label"]) for entry in plan[2:]
        ] + [(plan[0]["label"], plan[-1]["label"])]
    assert set(document["prompts"]) == {"person", "circles", "sunglasses"}
    assert document["prompts"]["sunglasses"]["activation"] is True


def test_a_frozen_component_swapped_in_is_the_cached_checkpoint_itself(followfox):
    """Against the baseline, a UNet burn's hybrids are the baseline (its text encoder is the
    baseline's) and the checkpoint: no new samples. Against the base all four differ."""
    _, run_dir, document = followfox
    for pair in pairs_of(document, "unet_hi")[:-1]:
        corners = pair["corners"]
        assert corners["M_unet+R_te"] == corners["M"] and corners["R_unet+M_te"] == corners["R"]
        assert pair["drift"]["text_encoder"] == {"study prompts": 0.0, "unrelated prompts": 0.0, "empty prompt": 0.0}
        assert pair["drift"]["weights"]["unet"]["total"] > 0
    for pair in pairs_of(document, "te_hi")[:-1]:
        assert pair["corners"]["M_unet+R_te"] == pair["corners"]["R"]
        assert pair["drift"]["weights"]["unet"]["total"] == 0 and pair["drift"]["text_encoder"]["study prompts"] > 0
    against_base = pairs_of(document, "unet_hi")[-1]
    assert len(set(against_base["corners"].values())) == 4
    for folder in against_base["corners"].values():
        assert (run_dir / folder / "COMPLETE").exists()
    # the hybrid's text encoder is the base's: it differs from the tuned model's images
    corners = against_base["corners"]
    hybrid, tuned = pixels(run_dir, corners["M_unet+R_te"]), pixels(run_dir, corners["M"])
    assert any(np.abs(hybrid[key] - tuned[key]).max() > 2 for key in hybrid)


def test_drift_instruments_name_their_blocks_and_ranges():
    assert block_of("down_blocks.1.resnets.0.conv1.weight") == "down_blocks.1"
    assert block_of("conv_in.weight") == "conv_in"
    assert block_of("text_model.encoder.layers.11.mlp.fc1.weight") == "text_model.encoder.layers.11"
    assert timestep_ranges(1000) == {
        "t 0-332": [55, 166, 277],
        "t 333-666": [388, 500, 611],
        "t 667-999": [722, 833, 944],
    }


def test_lora_adapters_are_swapped_per_component(tiny_model, tiny_data, tmp_path_factory):
    """A LoRA UNet burn against its LoRA baseline: the hybrid with the burn's UNet adapter and the
    baseline's text-encoder adapter comes from two LoRA files, and it samples exactly as the burn
    (the burn inherited that text-encoder adapter bit for bit); the other hybrid as the baseline."""
    runs = tmp_path_factory.mktemp("lora_attribution")
    _, run_dir = run_study(tiny_model, tiny_data, runs, *LORA, *FAST, experiment="burn_unet")
    pair = json.loads((run_dir / "attribution.json").read_text())["pairs"][-2]  # the final checkpoint vs baseline
    corners = pair["corners"]
    assert corners["M_unet+R_te"] != corners["M"]  # its own folder: the adapters came from two files
    hybrid, tuned = pixels(run_dir, corners["M_unet+R_te"]), pixels(run_dir, corners["M"])
    assert max(np.abs(hybrid[key] - tuned[key]).max() for key in tuned) <= 1
    other, reference = pixels(run_dir, corners["R_unet+M_te"]), pixels(run_dir, corners["R"])
    assert max(np.abs(other[key] - reference[key]).max() for key in reference) <= 1
    assert max(np.abs(tuned[key] - reference[key]).max() for key in reference) > 2  # the burn moved something
    assert pair["drift"]["weights"]["text_encoder"]["total"] == 0
    assert pair["drift"]["weights"]["unet"]["total"] > 0
    # against the base (no adapter): each hybrid carries one adapter only, so it is neither end
    against_base = json.loads((run_dir / "attribution.json").read_text())["pairs"][-1]["corners"]
    ends = [pixels(run_dir, against_base[name]) for name in ("R", "M")]
    for name in ("M_unet+R_te", "R_unet+M_te"):
        hybrid = pixels(run_dir, against_base[name])
        for end in ends:
            assert max(np.abs(hybrid[key] - end[key]).max() for key in end) > 2, name
