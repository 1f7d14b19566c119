"""The verdict benchmark (bench/verdicts.py, make verdicts) on a small grid of tiny studies: the
split, the calibration that sees only calibration runs, the held-out table and the README section.

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


def tiny_grid(tiny_model: Path, tiny_data: Path) -> dict:
    overrides = [f"model.path={tiny_model}", f"data.path={tiny_data}", f"data.resolution={TINY_RESOLUTION}",
                 "stages.baseline.epochs=2", "stages.baseline.save_epochs=[2]", "train.batch_size=4",
                 "validation.every_n_epochs=1", "validation.repeats=1", "sampling.images_per_prompt=3",
                 "sampling.steps=2"]
    for stage in ("unet_lo", "unet_hi", "te_lo", "te_hi"):
        overrides += [f"stages.{stage}.epochs=2", f"stages.{stage}.save_epochs=[1,2]"]
    return {"experiment": "followfox", "seeds": [1, 2], "lr_scales": [1, 2], "control_scale": 0.001,
            "held_out": {"seeds": [2], "lr_scales": [2]}, "jobs": 1, "overrides": overrides}


def test_the_grid_splits_calibration_from_held_out_runs(tiny_model, tiny_data, tmp_path):
    grid = tiny_grid(tiny_model, tiny_data)
    found = {study.name: study for study in bench.studies(grid, tmp_path)}
    assert sorted(found) == sorted(["verdicts_s1_x1", "verdicts_s2_x1", "verdicts_s1_x2", "verdicts_s2_x2",
                                    "verdicts_s1_control", "verdicts_s2_control"])
    assert [name for name, study in found.items() if not study.held_out] == ["verdicts_s1_x1", "verdicts_s1_control"]
    assert "model.study_lrs.lo=5e-05" in found["verdicts_s1_x1"].overrides
    assert "model.study_lrs.hi=0.0006" in found["verdicts_s1_x2"].overrides
    assert "model.study_lrs.lo=5e-08" in found["verdicts_s2_control"].overrides


@pytest.mark.parametrize("change, named", [
    ({"held_out": {"seeds": [1, 2], "lr_scales": [2]}}, "held_out"),
    ({"held_out": {"seeds": [3], "lr_scales": [2]}}, "held_out"),
    ({"held_out": {"seeds": [2]}}, "held_out"),
    ({"seeds": []}, "seeds"),
    ({"lr_scales": [1, -2]}, "lr_scales"),
    ({"jobs": 0}, "jobs"),
    ({"extra": 1}, "expected exactly the keys"),
])
def test_a_bad_grid_is_one_paragraph_naming_the_key(tmp_path, change, named):
    grid = {**tiny_grid(Path("m"), Path("d")), **change}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(bench.GridError, match=named) as error:
        bench.load_grid(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_small_benchmark_calibrates_on_calibration_runs_and_reports_held_out(tiny_model, tiny_data, tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid(tiny_model, tiny_data)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\nbefore\n{bench.MARK_START}\nold table\n{bench.MARK_END}\nafter\n")
    assert bench.main(["--grid", str(grid_file), "--runs", str(tmp_path / "runs"), "--readme", str(readme)]) == 0

    out = tmp_path / "runs" / "verdicts"
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["source"] == "make verdicts: calibration studies verdicts_s1_control, verdicts_s1_x1"
    assert set(calibration["candidates"]) == {"2.0", "2.5", "3.0", "4.0", "5.0"}
    results = json.loads((out / "verdicts.json").read_text())
    rows = results["branches"]
    assert len(rows) == 12  # six studies, two branches each
    held_out = [row for row in rows if row["split"] == "held-out"]
    assert {row["study"] for row in held_out} == {"verdicts_s2_x1", "verdicts_s1_x2", "verdicts_s2_x2",
                                                  "verdicts_s2_control"}
    confusion = results["held_out_confusion"]
    assert sum(confusion["none"].values()) == 2 and sum(confusion["unet"].values()) == 3
    assert sum(confusion["text_encoder"].values()) == 3
    assert [row["truth"] for row in rows if row["study"] == "verdicts_s2_control"] == ["none", "none"]
    for row in held_out:
        assert confusion[row["truth"]][row["named"]] >= 1
    text = readme.read_text()
    assert text.startswith("# Results\nbefore\n") and text.endswith(f"{bench.MARK_END}\nafter\n")
    assert "old table" not in text and "| trained (held-out) |" in text and "verdicts_s2_x2" in text
    assert "Held-out branches named right" in capsys.readouterr().out


def test_no_train_without_a_trained_grid_is_one_paragraph(tiny_model, tiny_data, tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid(tiny_model, tiny_data)))
    assert bench.main(["--grid", str(grid_file), "--runs", str(tmp_path / "runs"), "--no-train"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("verdicts: ") and "verdicts_s1_x1" in error and "Traceback" not in error
