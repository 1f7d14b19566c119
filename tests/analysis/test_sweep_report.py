"""The sweep report end to end on a tiny 3-job lr sweep (conftest.build_sweep_store): a row per job
in swept-value order with its swap verdict (final checkpoint against the baseline) and symptom
profile, a loss line per job, grids across the swept values, metrics
against the value, every image loaded in headless Chromium; how jobs and swept keys are found;
bad input.

    .venv/bin/python -m pytest tests/analysis/test_sweep_report.py -q
"""

from __future__ import annotations

import json
import os
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from headless import image_links, images_in_chromium
from PIL import Image

from burnlab.analysis.attribution import AttributionRule
from burnlab.analysis.cli import main
from burnlab.analysis.run import Run
from burnlab.analysis.sweep.jobs import describe, job_specs
from burnlab.analysis.sweep.plots import value_axis
from burnlab.analysis.symptoms import SYMPTOM_NAMES
from conftest import HI_LR, SEEDS, SIZE, sample_pixels, write_run

LABELS = ["lr=1e-4", "lr=3e-4", "lr=1e-3"]  # SWEEP_LRS sorted by value
FOLDERS = ["job1", "job2", "job0"]  # where those jobs are: folder order is not value order


@pytest.fixture(scope="module")
def report(shared_sweep, tmp_path_factory) -> Path:
    """`burnlab-analyze MULTIRUN` on a copy of the sweep: the report in MULTIRUN/analysis."""
    store = tmp_path_factory.mktemp("sweep_report") / "store"
    shutil.copytree(shared_sweep.parent, store)
    for job in (store / shared_sweep.name).glob("job*"):
        write_swap_corners(job)
    assert main([str(store / shared_sweep.name)]) == 0
    return store / shared_sweep.name / "analysis"


def write_swap_corners(job: Path) -> None:
    """An attribution.json of one pair, the final checkpoint against the baseline, whose corners are
    the job's own samples: the tuned UNet's corner is the final samples and the tuned text encoder's
    the baseline's, as a UNet burn whose text encoder did nothing would sample them."""
    rows = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    folders = {}
    for index in (1, max(row["index"] for row in rows)):
        of_checkpoint = [row for row in rows if row["index"] == index]
        folder = (job / of_checkpoint[0]["path"]).parent.parent
        (folder / "index.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "prompt_set": row["prompt_set"],
                        "seed": row["seed"],
                        "path": (job / row["path"]).relative_to(folder).as_posix(),
                    }
                )
                + "\n"
                for row in of_checkpoint
            )
        )
        folders[index] = (of_checkpoint[0]["label"], Path(os.path.relpath(folder, job)).as_posix())
    (baseline, before), (final, after) = folders.values()
    (job / "attribution.json").write_text(
        json.dumps(
            {
                "prompts": {"person": {"activation": False}, "sunglasses": {"activation": True}},
                "pairs": [
                    {
                        "branch": "unet_hi",
                        "reference": {"label": baseline},
                        "tuned": {"label": final},
                        "corners": {"R": before, "M_unet+R_te": after, "R_unet+M_te": before, "M": after},
                    }
                ],
            }
        )
    )


def verdict_rows(report: Path) -> list[list[str]]:
    """The cells of each job row of the report's verdict table."""
    html = (report / "report.html").read_text(encoding="utf-8")
    table = html.split("<table id='verdicts'>")[1].split("</table>")[0]
    return [
        [unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr class='job'>(.*?)</tr>", table)
    ]


def test_the_verdict_table_has_a_row_per_job_in_swept_value_order(report):
    rows = verdict_rows(report)
    assert [row[0] for row in rows] == LABELS
    assert [row[1] for row in rows] == ["1e-4", "3e-4", "1e-3"]  # the stages.unet_hi.lr column
    assert [Path(row[-1]).name for row in rows] == FOLDERS
    # the swap verdict of the final checkpoint against the baseline: the text encoder's corner is the
    # baseline's own samples, so its share is exactly 0 and the UNet's is the whole move
    threshold = AttributionRule.load().threshold  # the shipped rule (make verdicts chooses it)
    for row in rows:
        low, high = (float(x) for x in row[6].split("[")[1].rstrip("]").split(", "))
        expected = "unet" if low > threshold else "undetermined" if high >= threshold else "none"
        assert row[3:6] == ["unet", expected, "7 unet_hi e10 vs 1 baseline"]
        assert row[7] == "0.00 [0.00, 0.00]" and float(row[6].split()[0]) > 0.5
    profiles = json.loads((report / "symptoms.json").read_text())["profiles"]
    assert [(p["run"], p["branch"]) for p in profiles] == [(label, "unet_hi") for label in LABELS]
    assert [row[8:-1] for row in rows] == [
        ["-" if p["symptoms"][name] is None else f"{p['symptoms'][name]:.2f}" for name in SYMPTOM_NAMES]
        for p in profiles
    ]
    pairs = json.loads((report / "attribution.json").read_text())["pairs"]
    assert [(pair["run"], pair["verdict"]) for pair in pairs] == [(label, row[4]) for label, row in zip(LABELS, rows)]
    assert not (report / "detector.json").exists()
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "Swept: <code>stages.unet_hi.lr</code>" in html
    assert "<li><code>experiment=burn_unet</code></li>" in html  # common settings, shown once


def test_sweep_json_says_what_was_swept_and_what_is_common(report):
    sweep = json.loads((report / "sweep.json").read_text())
    assert sweep["keys"] == ["stages.unet_hi.lr"] and sweep["source"] == "overrides"
    assert sweep["common"] == {"experiment": "burn_unet", "stages.baseline.epochs": "5"}
    assert [job["label"] for job in sweep["jobs"]] == LABELS
    assert [job["values"]["stages.unet_hi.lr"] for job in sweep["jobs"]] == ["1e-4", "3e-4", "1e-3"]
    assert {job["study"] for job in sweep["jobs"]} == {"burn_unet"}


def test_the_loss_overlay_has_a_line_per_job(report):
    series = json.loads((report / "losses.json").read_text())["series"]
    for kind in ("train (EMA)", "validation", "stabilized"):
        assert [line["job"] for line in series if line["kind"] == kind] == LABELS
    lines = {line["job"]: line for line in series if line["kind"] == "validation"}
    assert lines[LABELS[0]]["x"][-1] == 25  # the whole branch: baseline 5 + lo 10 + hi 10 epochs
    with Image.open(report / "losses.png") as png:
        assert png.size[0] > 300


def test_the_grids_have_a_row_per_swept_value_at_the_checkpoints_shown(report):
    sweep = json.loads((report / "sweep.json").read_text())
    shown = {(grid["prompt_set"], grid["checkpoints"]): grid for grid in sweep["grids"]}
    # by default: where the jobs start to differ (the hi stage's first save), and the final one
    assert sorted(shown) == [
        (prompt_set, choice) for prompt_set in ("person", "sunglasses") for choice in ("5 unet_hi e2", "final")
    ]
    final = shown["person", "final"]
    assert final["rows"] == [{"job": label, "checkpoint": "7 unet_hi e10"} for label in LABELS]
    with Image.open(report / final["path"]) as png:
        grid = np.asarray(png.convert("RGB"))
    label_width = grid.shape[1] - len(SEEDS) * SIZE
    assert grid.shape[0] == 20 + 3 * SIZE
    for row, lr in enumerate((1e-4, 3e-4, 1e-3)):  # each row shows its own job's sample
        top = 20 + row * SIZE
        cell = grid[top : top + SIZE, label_width : label_width + SIZE]
        assert np.array_equal(cell, sample_pixels("person", SEEDS[0], 7, "unet", lr / HI_LR))


def test_each_metric_is_plotted_against_the_swept_value(report):
    plots = sorted(path.name for path in (report / "metrics").glob("*.png"))
    assert {"saturation.png", "variability_pixel.png", "adherence.png"} <= set(plots)
    links = image_links(report / "report.html")
    assert sorted(Path(link).name for link in links if link.startswith("metrics/")) == plots
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "<h2>Metrics against the swept value</h2>" in html


def test_the_value_axis_is_the_learning_rate_on_a_log_scale(shared_sweep):
    from burnlab.analysis.sources import open_run

    axis = value_axis(describe([open_run(spec) for spec in job_specs([str(shared_sweep)])]))
    assert axis.title == "stages.unet_hi.lr" and axis.log
    assert list(axis.x.values()) == [1e-4, 3e-4, 1e-3]


def test_report_links_resolve_and_every_image_loads_in_headless_chromium(report, tmp_path):
    for link in re.findall(r"(?:src|href)='([^']+)'", (report / "report.html").read_text(encoding="utf-8")):
        assert not re.match(r"^(/|[a-z]+:)", link) and (report / link).is_file(), link
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (scripts/ensure_chromium.sh installs it)")
    check = images_in_chromium(report / "report.html", tmp_path / "profile")
    assert check["broken"] == []
    assert (
        check["total"]
        == len(image_links(report / "report.html"))
        == 1 + 2 * 2 + len(list((report / "metrics").glob("*.png")))
    )


# ------------------------------------------------------------------ jobs and swept keys
def bare_run(folder: Path, config: dict | None = None) -> Run:
    """A Run with only what describe() reads: its folder and config."""
    folder.mkdir(parents=True, exist_ok=True)
    return Run(
        name="study",
        location=str(folder),
        stages={},
        branches={},
        losses={},
        samples=[],
        config=config or {},
        local_dir=folder,
    )


def test_job_json_comes_before_hydras_overrides(tmp_path):
    runs = [bare_run(tmp_path / name) for name in ("a", "b")]
    for run, lr in zip(runs, ("1e-3", "2e-4")):
        (run.local_dir / ".hydra").mkdir()
        (run.local_dir / ".hydra" / "overrides.yaml").write_text(f"- stages.unet_hi.lr={lr}\n")
    (runs[0].local_dir / "job.json").write_text(json.dumps({"overrides": ["stages.unet_hi.lr=5e-5"]}))
    assert [job.label for job in describe(runs).jobs] == ["lr=5e-5", "lr=2e-4"]


def test_two_swept_keys_label_rows_by_both_sorted_numerically(tmp_path):
    settings = [("1e-3", "2"), ("0.0003", "10"), ("2e-4", "2"), ("1e-3", "10")]
    runs = []
    for number, (lr, seed) in enumerate(settings):
        runs.append(bare_run(tmp_path / f"job{number}"))
        (runs[-1].local_dir / "job.json").write_text(
            json.dumps({"overrides": ["experiment=burn_unet", f"stages.unet_hi.lr={lr}", f"train.seed={seed}"]})
        )
    sweep = describe(runs)
    assert sweep.keys == ("stages.unet_hi.lr", "train.seed")
    assert [job.label for job in sweep.jobs] == [
        "lr=2e-4, seed=2",
        "lr=0.0003, seed=10",
        "lr=1e-3, seed=2",
        "lr=1e-3, seed=10",
    ]
    assert value_axis(sweep).groups["lr=2e-4, seed=2"] == "seed=2"  # a line per seed in the metric plots


def test_a_key_one_job_did_not_override_is_read_from_its_config(tmp_path):
    runs = [
        bare_run(tmp_path / "a", {"stages": {"unet_hi": {"lr": 0.0003}}}),
        bare_run(tmp_path / "b", {"stages": {"unet_hi": {"lr": 0.001}}}),
    ]
    for run, overrides in zip(runs, (["experiment=burn_unet"], ["experiment=burn_unet", "stages.unet_hi.lr=1e-3"])):
        (run.local_dir / "job.json").write_text(json.dumps({"overrides": overrides}))
    sweep = describe(runs)
    assert sweep.keys == ("stages.unet_hi.lr",) and sweep.common == {"experiment": "burn_unet"}
    assert [job.label for job in sweep.jobs] == ["lr=0.0003", "lr=1e-3"]


def test_a_list_of_runs_without_overrides_is_compared_by_config(sweep, capsys):
    jobs = sorted(sweep.glob("job*"))
    for job in jobs:
        shutil.rmtree(job / ".hydra")
    out = sweep.parent / "out"
    assert (
        main([*map(str, jobs), "--out", str(out), "--features", "none", "--no-probe", "--checkpoints", "21,unet_hi e2"])
        == 0
    )
    made = json.loads((out / "sweep.json").read_text())
    assert made["source"] == "config.yaml" and made["keys"] == ["stages.unet_hi.lr"]
    assert [job["label"] for job in made["jobs"]] == ["lr=0.0001", "lr=0.0003", "lr=0.001"]  # as config.yaml has them
    assert [grid["checkpoints"] for grid in made["grids"]] == ["21", "21", "unet_hi e2", "unet_hi e2"]
    assert {row["checkpoint"] for grid in made["grids"] for row in grid["rows"]} == {"6 unet_hi e6", "5 unet_hi e2"}
    assert (out / "grids" / "unet_hi" / "person" / "21.png").is_file()
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["{store}/empty"],
            "empty is not a burnlab run: it has no study.json, and none of its subfolders is a sweep job",
        ),
        (["{sweep}", "--checkpoints", "999"], "--checkpoints '999' names no checkpoint of the jobs' testing plans"),
        (["{sweep}/job0", "{sweep}/job1", "{store}/empty"], "empty is not a burnlab run: it has no study.json"),
        (["{sweep}/job0", "{store}/burn_te"], "a sweep report compares runs of one study"),
        (["{sweep}/job0", "{sweep}/job1", "--compare", "{sweep}/job2"], "expected one run beside it"),
        (["{sweep}/job0", "--checkpoints", "final"], "applies to a sweep report"),
    ],
)
def test_bad_sweep_input_is_one_paragraph_and_exit_2(sweep, arguments, message, capsys):
    store = sweep.parent
    (store / "empty").mkdir()
    write_run(store, "burn_te")
    assert main([argument.format(store=store, sweep=sweep) for argument in arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert error.startswith("burnlab-analyze: ") and error.count("\n") == 1


def test_a_job_folder_without_study_json_is_named(sweep, capsys):
    (sweep / "job1" / "study.json").unlink()
    assert main([str(sweep)]) == 2
    error = capsys.readouterr().err
    assert f"Sweep job folder(s) {sweep / 'job1'} of {sweep} have no study.json" in error
    assert error.count("\n") == 1


def _plan(job: int, *weights: str) -> tuple:
    """A testing plan whose checkpoints have these weights; ids of stages no other job shares."""
    from burnlab.analysis.run import Checkpoint

    return tuple(
        Checkpoint(index, f"{index} c", "s", index, float(index), w if w in ("b", "base", "lo") else f"job{job}-{w}", w)
        for index, w in enumerate(weights)
    )


def test_by_default_the_grids_show_where_the_weights_start_to_differ_and_the_final_ones():
    from burnlab.analysis.sweep.checkpoints import default_choices

    # an lr sweep: base, baseline and unet_lo shared, unet_hi's checkpoints differ from the first
    lr_sweep = [_plan(lr, "b", "base", "lo", f"hi{lr}", f"hi{lr}-2") for lr in (1, 2, 3)]
    assert [choice.text for choice in default_choices(lr_sweep)] == ["3 c", "final"]
    # an epoch sweep: every job passes through the same weights up to its own length (other
    # stage identities, so other checkpoint ids): only the final checkpoints differ
    epoch_sweep = [_plan(length, "b", "base", "lo", "e100", "e300", "e500")[:length] for length in (4, 5, 6)]
    assert [choice.text for choice in default_choices(epoch_sweep)] == ["final"]
