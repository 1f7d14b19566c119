"""`burnlab-verify RUNS [--repair]` on copies of one tiny trained store (test_integrity's
fixtures), damaged one way per case: it names the damaged file and what depends on it, exits 1,
`--repair` removes exactly the damaged entry (everything else keeps every byte), the store then
verifies clean, and the next run of the study rebuilds what was removed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from burnlab.launch.verify import main
from burnlab.store.files import sha256_file
from study_helpers import final_checkpoint
from test_integrity import rerun, sample_folders, store, trained, zero_middle  # noqa: F401 (fixtures)


def snapshot(runs: Path) -> dict:
    """Every file's sha256 but the verified records (a cache a study rewrites)."""
    return {
        p.relative_to(runs): sha256_file(p)
        for p in runs.rglob("*")
        if p.is_file() and p.name != ".verified.json" and not p.name.endswith(".lock")
    }


def stage_folder(run_dir, study, name) -> Path:
    return (run_dir / study["stages"][name]["dir"]).resolve()


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:100])


def garbage_middle_row(path: Path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ["}{\n"] + lines[2:]))


# case -> (how to damage (runs, study, run_dir) -> the damaged entry that --repair removes, words in the report)
def zeroed_parent(runs, study, run_dir):
    zero_middle(final_checkpoint(run_dir, study, "baseline").resolve() / "text_encoder" / "model.safetensors")
    return stage_folder(run_dir, study, "baseline"), ["its sha256 is", "stage te_lo", "run burn_te"]


def truncated_checkpoint(runs, study, run_dir):
    truncate(final_checkpoint(run_dir, study, "te_lo").resolve() / "text_encoder" / "model.safetensors")
    return stage_folder(run_dir, study, "te_lo"), ["its sha256 is", "stage te_hi"]


def deleted_parent_checkpoint(runs, study, run_dir):
    shutil.rmtree(final_checkpoint(run_dir, study, "baseline").resolve())
    return stage_folder(run_dir, study, "baseline"), ["epoch_0002: is missing in a complete stage", "stage te_lo"]


def garbage_metrics(runs, study, run_dir):
    garbage_middle_row(stage_folder(run_dir, study, "te_hi") / "metrics.jsonl")
    return stage_folder(run_dir, study, "te_hi"), ["metrics.jsonl: line 3 is not JSON"]


def garbage_index(runs, study, run_dir):
    folder = sample_folders(runs)[0]
    index = folder / "index.jsonl"
    index.write_text("garbage\n" + index.read_text())
    return folder, ["index.jsonl: line 1 is not JSON", "run burn_te"]


def cut_png(runs, study, run_dir):
    folder = sample_folders(runs)[1]
    png = sorted(folder.rglob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:200])
    return folder, ["cannot be decoded"]


def leftover_tmp(runs, study, run_dir):
    leftover = stage_folder(run_dir, study, "te_lo") / "checkpoints" / ".epoch_0003.abc123.tmp"
    leftover.mkdir()
    (leftover / "manifest.json").write_text("{")
    return leftover, ["a temp file or folder of a killed writer"]


def state_without_record(runs, study, run_dir):
    state = stage_folder(run_dir, study, "te_lo") / "state" / "step_0000000099"
    state.mkdir(parents=True)
    return stage_folder(run_dir, study, "te_lo"), ["has no state.json"]


CASES = {
    f.__name__: f
    for f in (
        zeroed_parent,
        truncated_checkpoint,
        deleted_parent_checkpoint,
        garbage_metrics,
        garbage_index,
        cut_png,
        leftover_tmp,
        state_without_record,
    )
}


def test_a_sound_store_verifies_clean(store, capsys):
    runs, _, _ = store
    assert main([str(runs)]) == 0
    assert capsys.readouterr().out.strip() == f"{runs}: clean"


@pytest.mark.parametrize("case", sorted(CASES))
def test_damage_is_reported_and_repair_removes_exactly_it(case, store, capsys):
    runs, study, run_dir = store
    intact = snapshot(runs)
    damaged, words = CASES[case](runs, study, run_dir)
    before = snapshot(runs)
    assert main([str(runs)]) == 1
    out = capsys.readouterr().out
    assert out.count("damaged: ") == 1 and "note: " not in out, out
    for word in words:
        assert word in out, out
    assert snapshot(runs) == before  # checking changes nothing
    assert main([str(runs), "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"repair: removed {damaged}\n" in out, out
    assert not damaged.exists()
    removed = damaged.relative_to(runs)
    kept = {p: h for p, h in intact.items() if removed not in p.parents and p != removed}
    assert {p: h for p, h in snapshot(runs).items() if p in kept} == kept  # nothing undamaged went
    assert main([str(runs)]) == 0


def test_a_stage_whose_parent_stage_is_gone_is_reported_and_kept(store, capsys):
    runs, study, run_dir = store
    shutil.rmtree(stage_folder(run_dir, study, "baseline"))
    assert main([str(runs), "--repair"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("note: stage") and "(te_lo) is sound" in out and "is missing, with its stage folder" in out
    assert "damaged: " not in out and "repair:" not in out, out
    assert stage_folder(run_dir, study, "te_lo").exists()


def test_the_next_run_rebuilds_what_repair_removed(store, tiny_model, tiny_data, capsys):
    runs, study, run_dir = store
    intact = snapshot(runs)
    zeroed_parent(runs, study, run_dir)
    garbage_index(runs, study, run_dir)
    assert main([str(runs), "--repair"]) == 0
    rerun(tiny_model, tiny_data, runs)
    assert main([str(runs)]) == 0
    rebuilt = snapshot(runs)
    varying = ("metrics.jsonl", "config.yaml")  # a measured peak-memory row; paths.runs of the copy
    assert {p: h for p, h in rebuilt.items() if p.name not in varying} == {
        p: h for p, h in intact.items() if p.name not in varying
    }


def test_the_console_script_exits_1_on_damage_and_2_without_a_store(store, tmp_path):
    runs, study, run_dir = store
    command = Path(sys.executable).parent / "burnlab-verify"
    garbage_metrics(runs, study, run_dir)
    result = subprocess.run([command, runs], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "metrics.jsonl: line 3 is not JSON" in result.stdout, result.stdout
    result = subprocess.run([command, tmp_path / "nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no run store" in result.stderr and "Traceback" not in result.stderr
