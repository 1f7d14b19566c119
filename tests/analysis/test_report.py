"""burnlab-analyze end to end on the tiny store: the report, its links and images (opened in
headless Chromium), the results in the run store, W&B logging (offline) and bad input.

    .venv/bin/python -m pytest tests/analysis/test_report.py -q
"""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import pytest
from headless import image_links, images_in_chromium, links_of, needs_chromium
from PIL import Image

import wandb_records
from burnlab.analysis.cli import main
from burnlab.analysis.measure import MetricTable
from burnlab.analysis.symptoms import SYMPTOM_NAMES, branch_series, profile_all
from burnlab.analysis.tracking import log_results


@pytest.fixture(scope="module")
def report(shared_store, tmp_path_factory) -> Path:
    """`burnlab-analyze burn_unet --compare burn_te --out report` on a copy of the store, loss
    axes logarithmic, validation and stabilized loss relative to their stage's first pass."""
    store = tmp_path_factory.mktemp("report") / "store"
    shutil.copytree(shared_store, store)
    out = store / "report"
    assert (
        main(
            [
                str(store / "burn_unet"),
                "--compare",
                str(store / "burn_te"),
                "--out",
                str(out),
                "--log-scale",
                "--relative-losses",
            ]
        )
        == 0
    )
    return out


def test_report_links_are_relative_and_resolve(report):
    links = links_of(report / "report.html")
    images = [link for link in links if link.endswith((".png", ".gif"))]
    # loss overlay + per branch and prompt set (grid, GIF, 8 checkpoint grids) + 2 side by side
    assert len([link for link in images if not link.startswith("metrics/")]) == 1 + 2 * 2 * 10 + 2
    for link in links:
        assert not re.match(r"^(/|[a-z]+:)", link), f"absolute link {link}"
        assert (report / link).is_file(), f"broken link {link}"


def test_report_gifs_and_grids_have_the_plan_shape(report):
    with Image.open(report / "side_by_side" / "person.gif") as gif:
        assert gif.n_frames == 8
    with Image.open(report / "burn_te" / "te_hi" / "sunglasses" / "grid.png") as grid:
        assert grid.size == (120 + 9 * 16, 20 + 8 * 16)


def test_results_are_written_to_the_report_and_each_run(report):
    profiles = json.loads((report / "symptoms.json").read_text())
    assert [p["branch"] for p in profiles["profiles"]] == ["unet_hi", "te_hi"]
    assert profiles["z_min"] == 2.0 and not (report / "detector.json").exists()
    for entry in profiles["profiles"]:  # 8 checkpoints: 6 after the baseline, each with every symptom
        assert list(entry["by_checkpoint"]) == [
            f"{i} {stage}"
            for i, stage in enumerate(
                ["unet_lo e2", "unet_lo e6", "unet_lo e10", "unet_hi e2", "unet_hi e6", "unet_hi e10"]
                if entry["branch"] == "unet_hi"
                else ["te_lo e2", "te_lo e6", "te_lo e10", "te_hi e2", "te_hi e6", "te_hi e10"],
                start=2,
            )
        ]
        assert set(entry["symptoms"]) == set(SYMPTOM_NAMES)
    assert json.loads((report / "attribution.json").read_text()) == {"pairs": []}  # no swap corners in the store
    metrics = json.loads((report / "metrics.json").read_text())
    assert len(metrics["rows"]) == 2 * 8 * 2
    for study in ("burn_unet", "burn_te"):
        own = json.loads((report.parent / study / "analysis" / "metrics.json").read_text())
        assert {row["run"] for row in own["rows"]} == {study}
        own = json.loads((report.parent / study / "analysis" / "symptoms.json").read_text())
        assert {entry["run"] for entry in own["profiles"]} == {study}
    html = unescape((report / "report.html").read_text(encoding="utf-8"))
    assert "Burn detector" not in html and "<table>" in html and "saturation" in html
    section = html.split("<h2>Symptom profile</h2>")[1].split("<h2>")[0]
    assert "blames no component: the component swap names the one that burned, but no swap corners" in section
    assert section.count("<table class='profile'>") == 2 and section.count("<tr><td class='text'>") == 2 * 7
    summary = (report / "summary.md").read_text(encoding="utf-8")
    lines = summary.splitlines()
    assert lines[:3] == [
        "## Which component burned (component swap)",
        "",
        "- No swap corners were sampled (no attribution.json in the run), so no component is named.",
    ]
    assert lines[4] == "## Symptom profile" and lines[8].startswith("- burn_unet/unet_hi (trains unet): ")
    assert summary.index("## Symptom profile") < summary.index("## Loss statistics") < summary.index("## Metrics")
    assert summary.index("## Loss statistics") < summary.index("## Metrics")
    metric_rows = summary.split("## Metrics")[1].splitlines()
    assert len([line for line in metric_rows if line.startswith("| burn_")]) == 2 * 8 * 2


def test_loss_statistics_are_in_the_report_summary_and_json(report):
    """The tiny store's validation loss rises 0.002 per epoch in every stage (conftest.stage_rows)."""
    statistics = json.loads((report / "loss_stats.json").read_text())
    assert statistics["slope_epochs"] == 100
    assert [(row["branch"], row["stage"]) for row in statistics["rows"]] == [
        (f"{study}/{leaf}", stage)
        for study, leaf, lo, hi in (
            ("burn_unet", "unet_hi", "unet_lo", "unet_hi"),
            ("burn_te", "te_hi", "te_lo", "te_hi"),
        )
        for stage in ("baseline", lo, hi)
    ]
    assert all(row["val_slope"] == pytest.approx(0.2) for row in statistics["rows"])
    summary = (report / "summary.md").read_text(encoding="utf-8")
    assert "| burn_te/te_hi | te_hi | text_encoder | 6 | 0.2 | 0.02 | -0.1 | -0.01 |" in summary
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "<td class='text'>burn_unet/unet_hi</td><td class='text'>unet_lo</td>" in html
    assert "minus their stage&#x27;s first pass" in html  # --relative-losses reached the plot


@needs_chromium
def test_report_loads_every_image_in_headless_chromium(report, tmp_path):
    check = images_in_chromium(report / "report.html", tmp_path / "profile")
    assert check["broken"] == []
    assert check["total"] == len(image_links(report / "report.html"))


def test_default_out_is_the_run_analysis_folder(store, capsys):
    assert main([str(store / "burn_te"), "--no-probe", "--features", "none"]) == 0
    assert (store / "burn_te" / "analysis" / "report.html").is_file()
    assert "burn_te/te_hi (trains text_encoder)" in capsys.readouterr().out


def test_half_written_samples_still_build_a_report_that_says_so(store, capsys):
    samples = store / "burn_unet" / "samples.jsonl"
    samples.write_text(samples.read_text()[:-25])
    broken = store / "cache" / "samples" / "unet_hi0-e6-s1" / "person" / "1001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    assert main([str(store / "burn_unet"), "--no-probe", "--out", str(store / "out")]) == 0
    html = (store / "out" / "report.html").read_text(encoding="utf-8")
    assert "Missing or not measured" in html
    assert "samples.jsonl: the last line (144) is cut short" in html
    assert f"{broken} (checkpoint &#x27;6 unet_hi e6&#x27;, person, seed 1001) cannot be decoded" in html
    assert "see the report" in capsys.readouterr().out


def set_long_captions(run_dir: Path, record) -> None:
    study = json.loads((run_dir / "study.json").read_text())
    (run_dir / "study.json").write_text(json.dumps(study | {"long_captions": record}))


def test_long_captions_are_noted_in_the_report_and_summary(store):
    set_long_captions(
        store / "burn_unet",
        {
            "limit": 77,
            "count": 3,
            "by_set": {"train": 2, "validation": 1},
            "examples": [
                {"set": "train", "file": "painting0.txt", "cut": "in the zorblax style"},
                {"set": "validation", "file": "painting3.txt", "cut": "style"},
            ],
        },
    )
    set_long_captions(
        store / "burn_te", {"limit": 77, "count": 0, "by_set": {"train": 0, "validation": 0}, "examples": []}
    )
    out = store / "out"
    assert (
        main(
            [
                str(store / "burn_unet"),
                "--compare",
                str(store / "burn_te"),
                "--no-probe",
                "--features",
                "none",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    note = (
        "burn_unet: 3 captions are longer than the tokenizer's 77 tokens; words past the limit are "
        "not trained, e.g. 'painting0.txt': '... in the zorblax style'."
    )
    section = unescape((out / "report.html").read_text(encoding="utf-8")).split("<h2>Long captions</h2>")[1]
    section = section.split("</div>")[0]
    assert section.startswith(f"<ul><li>{note}<details><summary>2 of 3 with the words cut</summary>")
    assert "<li>painting3.txt: style</li>" in section and "burn_te" not in section  # every caption fits
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith(f"## Captions\n\n- {note}\n\n## Which component burned (component swap)\n")


def test_a_bad_long_captions_record_is_one_paragraph_and_exit_2(store, capsys):
    set_long_captions(store / "burn_unet", {"limit": 77, "count": -1, "examples": []})
    assert main([str(store / "burn_unet"), "--no-probe", "--out", str(store / "out")]) == 2
    error = capsys.readouterr().err
    assert "long_captions: 'count' is -1; expected the number of captions" in error
    assert "Traceback" not in error and error.count("\n") == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{store}/cache"], "is not a burnlab run: it has no study.json"),
        (["{store}/missing"], "does not exist"),
        (["{store}/burn_unet", "--compare", "{store}/data"], "data is not a burnlab run"),
        (["wandb:team/burnlab/abc123"], "needs an API key"),
        (["{store}/burn_unet", "--smoothing", "1.5"], "--smoothing 1.5: expected a number in [0, 1)"),
        (["{store}/burn_unet", "--out", "{store}/data/style/painting0.png"], "a writable output folder"),
        (["{store}/burn_unet", "--clip-model", "{store}/data"], "data is not a folder with a config.json"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(store, arguments, message, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(store / "no-netrc"))
    assert main([argument.format(store=store) for argument in arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert error.startswith("burnlab-analyze: ") and error.count("\n") == 1


def test_a_clip_hub_id_that_cannot_be_had_is_noted_and_the_rest_is_built(store, offline_hub, capsys):
    assert (
        main(
            [
                str(store / "burn_te"),
                "--no-probe",
                "--clip-model",
                "openai/clip-vit-large-patch14",
                "--out",
                str(store / "out"),
            ]
        )
        == 0
    )
    notes = json.loads((store / "out" / "metrics.json").read_text())["notes"]
    assert any(
        note.startswith(
            "CLIP model openai/clip-vit-large-patch14 not found in the local Hugging "
            "Face cache and the hub is unreachable"
        )
        for note in notes
    )
    assert "the hub is unreachable: CLIP score, CLIP variability and CLIP style distance not measured" in (
        store / "out" / "report.html"
    ).read_text(encoding="utf-8")
    assert "see the report" in capsys.readouterr().out


def test_results_are_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = [
        {
            "run": "study",
            "branch": "unet_hi",
            "component": "unet",
            "index": index,
            "label": f"{index}",
            "prompt_set": "person",
            "activation": False,
            "n_images": 9,
            "saturation": 0.4 + 0.1 * index,
            "se": {"saturation": 0.01},
            **{
                m: None
                for m in (
                    "colourfulness",
                    "rms_contrast",
                    "histogram_distance",
                    "variability_pixel",
                    "variability_feature",
                    "style_distance",
                    "probe_style",
                    "adherence",
                    "clip_score",
                )
            },
        }
        for index in range(4)
    ]
    table = MetricTable(rows, "none")
    products = SimpleNamespace(table=table, profiles=profile_all(branch_series(table)), attributions=[])
    assert log_results(products) is None  # no active run, no project: nothing logged
    where = log_results(products, project="burnlab-test", directory=tmp_path)
    assert where is not None and "offline" in where
    run_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    (run_file,) = wandb_records.offline_runs(tmp_path).values()  # once W&B's service wrote the summary
    summary = wandb_records.summary(run_file)
    # saturation up 7.1 and 14.1 standard errors at the two checkpoints after the baseline: capped at 10
    assert summary["symptoms/study/unet_hi/colour shift"] == pytest.approx((0.1 / 0.01 / 2**0.5 + 10) / 2)
    assert summary["attribution/study/unet_hi/verdict"] is None  # no swap corners
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/analysis/*.table.json"))
    assert sorted(path.name.split("_")[0] for path in tables) == ["attribution", "metrics", "symptoms"]
