"""The attribution benchmark (bench/verdicts.py, make verdicts) on a small grid of tiny studies: the
split, the one threshold chosen on calibration seeds only, the held-out table and the README section.

    .venv/bin/python -m pytest tests/test_verdicts.py -q
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from study_helpers import TINY_RESOLUTION

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("verdicts_bench", ROOT / "bench" / "verdicts.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up while the file executes
spec.loader.exec_module(bench)


KEPT = ("u_hi", "t_g", "j_hg", "control")  # of attribution_bench's branches: a cheap grid (j_hg's truth: u_hi, t_g)
DROPPED = ("u_hi2", "u_g", "t_hi", "t_hi2", "j_gh", "j_hh", "j_gg")


def tiny_grid(tiny_model: Path, tiny_data: Path) -> dict:
    overrides = [
        f"model.path={tiny_model}",
        f"data.path={tiny_data}",
        f"data.resolution={TINY_RESOLUTION}",
        "stages.baseline.epochs=2",
        "stages.baseline.save_epochs=[2]",
        "train.batch_size=4",
        "sampling.images_per_prompt=3",
        "sampling.steps=2",
        *[f"~stages.{name}" for name in DROPPED],
    ]
    for stage in KEPT:
        overrides += [f"stages.{stage}.epochs=2", f"stages.{stage}.save_epochs=[1,2]"]
    return {
        "experiment": "attribution_bench",
        "lora_experiment": "attribution_bench_lora",
        "xl_experiment": "attribution_bench_xl",
        "seeds": [1, 2, 3],
        "held_out_seeds": [3],
        "lora_seeds": [],
        "xl_seeds": [],
        "overrides": overrides,
    }


def test_the_grid_splits_calibration_from_held_out_seeds(tmp_path):
    grid = {**tiny_grid(Path("m"), Path("d")), "lora_seeds": [3], "xl_seeds": [3]}
    found = {study.name: study for study in bench.studies(grid, tmp_path)}
    assert sorted(found) == [
        "attribution_lora_s3",
        "attribution_s1",
        "attribution_s2",
        "attribution_s3",
        "attribution_xl_s3",
    ]
    assert [name for name, study in found.items() if study.held_out] == [
        "attribution_s3",
        "attribution_lora_s3",
        "attribution_xl_s3",
    ]
    assert "experiment=attribution_bench_lora" in found["attribution_lora_s3"].overrides
    assert "experiment=attribution_bench_xl" in found["attribution_xl_s3"].overrides and found["attribution_xl_s3"].xl
    assert "train.seed=2" in found["attribution_s2"].overrides


@pytest.mark.parametrize(
    "change, named",
    [
        ({"held_out_seeds": [1, 2, 3]}, "at least two left for calibration"),
        ({"held_out_seeds": [4]}, "held_out_seeds"),
        ({"seeds": []}, "seeds"),
        ({"lora_seeds": [1]}, "lora_seeds"),
        ({"xl_seeds": [2]}, "xl_seeds"),
        ({"extra": 1}, "expected exactly the keys"),
    ],
)
def test_a_bad_grid_is_one_paragraph_naming_the_key(tmp_path, change, named):
    grid = {**tiny_grid(Path("m"), Path("d")), **change}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(bench.GridError, match=named) as error:
        bench.load_grid(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def case(seed, unet, te, truth, held_out=False):
    interval = lambda value: {"value": value, "low": value - 0.05, "high": value + 0.05}  # noqa: E731
    return {
        "seed": seed,
        "held_out": held_out,
        "truth": truth,
        "kind": "single",
        "shares": {"unet": interval(unet), "text_encoder": interval(te), "interaction": interval(0.0)},
    }


def test_the_threshold_is_the_middle_of_the_widest_range_of_best_ones():
    cases = [
        case(1, 1.0, 0.0, "unet"),
        case(1, 0.0, 0.2, "none"),
        case(2, 0.0, 2.0, "text_encoder"),
        case(2, 0.1, 0.1, "none"),
    ]
    threshold, best = bench.choose_threshold(cases)
    assert best == 1.0
    right = [t for t in bench.THRESHOLDS if bench.accuracy(cases, t) == 1.0]  # 0.25 < t < 0.95
    assert threshold == pytest.approx((min(right) * max(right)) ** 0.5)
    assert 0.25 < threshold < 0.95
    loso = bench.leave_one_seed_out(cases)
    assert set(loso) == {1, 2} and all(0 <= r["accuracy"] <= 1 for r in loso.values())


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_small_benchmark_calibrates_on_calibration_seeds_and_reports_held_out(tiny_model, tiny_data, tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid(tiny_model, tiny_data)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\nbefore\n{bench.MARK_START}\nold table\n{bench.MARK_END}\nafter\n")
    runs = tmp_path / "runs"
    assert bench.main(["--grid", str(grid_file), "--runs", str(runs), "--readme", str(readme)]) == 0
    out = runs / "verdicts"
    rule = json.loads((out / "rule.json").read_text())
    assert rule["source"].startswith("make verdicts: calibration seeds [1, 2]")
    assert bench.THRESHOLDS[0] <= rule["threshold"] <= bench.THRESHOLDS[-1] and set(rule["leave_one_seed_out"]) == {
        "1",
        "2",
    }
    cases = json.loads((out / "cases.json").read_text())["cases"]
    # per seed: 4 branches x 2 checkpoints against the baseline, the 2 single ones' final against the base
    assert len(cases) == 3 * (4 * 2 + 2)
    assert {c["seed"] for c in cases if c["held_out"]} == {3}
    assert {c["kind"] for c in cases} == {"single", "single vs base", "joint", "control", "short run"}
    assert all(c["truth"] == "none" for c in cases if c["branch"] == "control")
    text = readme.read_text()
    assert text.startswith("# Results\nbefore\n") and text.endswith(f"{bench.MARK_END}\nafter\n")
    assert "old table" not in text and "| **all held-out** |" in text and "attribution_s3" in text
    assert "Rule chosen on the calibration seeds only" in capsys.readouterr().out

    # the held-out runs never move the rule: damage their corners, judge again, the threshold stays
    record = runs / "attribution_s3" / "attribution.json"
    document = json.loads(record.read_text())
    for pair in document["pairs"]:
        pair["corners"]["M"] = pair["corners"]["R"]
    record.write_text(json.dumps(document))
    assert bench.main(["--grid", str(grid_file), "--runs", str(runs), "--no-train"]) == 0
    assert json.loads((out / "rule.json").read_text())["threshold"] == rule["threshold"]


def test_no_train_without_a_trained_grid_is_one_paragraph(tiny_model, tiny_data, tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid(tiny_model, tiny_data)))
    assert bench.main(["--grid", str(grid_file), "--runs", str(tmp_path / "runs"), "--no-train"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("verdicts: ") and "attribution_s1" in error and "Traceback" not in error
