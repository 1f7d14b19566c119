"""A study's post-run analysis measures with the CLIP model its config names (`analysis.clip_model`):
CLIP score, and variability and style distance in CLIP space against the training images. A tiny
random CLIP folder stands in for openai/clip-vit-large-patch14, which cannot be downloaded here."""

import json

from burnlab.analysis.measure import MetricTable
from burnlab.analysis.symptoms import SYMPTOMS, branch_series
from study_helpers import run_study


def test_a_study_measures_with_the_clip_model_its_config_names(tiny_model, tiny_data, tiny_clip, tmp_path):
    _, run_dir = run_study(
        tiny_model, tiny_data, tmp_path, f"analysis.clip_model={tiny_clip}", experiment="burn_unet", analyze=True
    )
    results = json.loads((run_dir / "analysis" / "metrics.json").read_text())
    assert results["feature_space"] == "CLIP image features"  # the tiny model has no probe: only CLIP
    rows = results["rows"]
    assert len(rows) == 6 * 3  # checkpoints x prompt sets
    for metric in ("clip_score", "variability_feature", "style_distance"):
        assert all(row[metric] is not None for row in rows), metric
    assert not any("not measured" in note and "CLIP" in note for note in results["notes"])
    # the symptom profile reads the CLIP score as a symptom (prompt following), with its standard errors
    assert any("clip_score" in symptom.metrics for symptom in SYMPTOMS if symptom.name == "prompt following")
    (series,) = branch_series(MetricTable(rows, results["feature_space"], results["notes"]))
    assert {prompt_set: len(values) for prompt_set, values in series.values["clip_score"].items()} == {
        "person": 6,
        "circles": 6,
        "sunglasses": 6,
    }
    assert all(value is not None for values in series.values["clip_score"].values() for value in values)
    assert all(error is not None for errors in series.errors["clip_score"].values() for error in errors)
    (profile,) = json.loads((run_dir / "analysis" / "symptoms.json").read_text())["profiles"]
    assert profile["symptoms"]["prompt following"] is not None  # measured: CLIP score on every cell
    assert len(profile["by_checkpoint"]) == 6 - 2  # the checkpoints after the baseline
