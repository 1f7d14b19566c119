"""Verified reads: a damaged checkpoint, metrics row, sample index row or sample PNG is found
before it is used; the study trains or samples it again (the same bits as before the damage) or
stops with one paragraph naming the file and the repair. One tiny burn_te study is trained once
per module; each test damages a copy of its run store."""

import json
import logging
import shutil

import pytest

from burnlab.models.checkpoint import checkpoint_damage, materialize
from burnlab.store import integrity
from burnlab.store.files import read_json, sha256_file
from burnlab.store.integrity import DamagedStore, check_hashed
from study_helpers import final_checkpoint, run_study


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_data, tmp_path_factory):
    """(runs, study.json, run dir) of a finished burn_te study; not to be changed (tests copy it)."""
    runs = tmp_path_factory.mktemp("integrity") / "runs"
    study, run_dir = run_study(tiny_model, tiny_data, runs, experiment="burn_te")
    return runs, study, run_dir


@pytest.fixture
def store(trained, tmp_path):
    """A copy of the trained run store (mtimes kept, so its verified records still hold)."""
    runs, study, run_dir = trained
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, symlinks=True)
    return copy, study, copy / run_dir.name


def rerun(tiny_model, tiny_data, runs):
    return run_study(tiny_model, tiny_data, runs, experiment="burn_te")


def zero_middle(path, count=64):
    """`count` bytes in the middle of the file set to zero; the size stays."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\0" * count)
    assert path.stat().st_size == size


def sample_folders(runs):
    return sorted(p for p in (runs / "cache" / "samples").iterdir() if p.is_dir())


def test_a_zeroed_parent_checkpoint_is_found_by_hash_and_trained_again(store, tiny_model, tiny_data, caplog):
    runs, study, run_dir = store
    weights = (final_checkpoint(run_dir, study, "baseline") / "text_encoder" / "model.safetensors").resolve()
    before = sha256_file(weights)
    zero_middle(weights)
    assert [d.path for d in checkpoint_damage(weights.parent.parent)] == [weights]
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        rerun(tiny_model, tiny_data, runs)
    assert f"stage baseline: {weights}: its sha256 is" in caplog.text
    assert sha256_file(weights) == before  # trained again from the base: the same seeds, the same bits
    assert checkpoint_damage(final_checkpoint(run_dir, study, "te_hi")) == []


def test_a_garbage_row_in_the_middle_of_metrics_retrains_the_stage(store, tiny_model, tiny_data, caplog):
    runs, study, run_dir = store
    metrics = (run_dir / study["stages"]["te_lo"]["dir"] / "metrics.jsonl").resolve()
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:3] + ["{garbage\n"] + lines[3:]))
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        rerun(tiny_model, tiny_data, runs)
    assert f"stage te_lo: {metrics}: line 4 is not JSON" in caplog.text

    def measured(text):  # the peak-memory row differs from run to run
        return [row for row in map(json.loads, text) if row["type"] != "memory"]

    assert measured(metrics.read_text().splitlines()) == measured(lines)


def test_a_partial_stage_with_a_damaged_metrics_row_stops_naming_file_and_repair(store, tiny_model, tiny_data):
    runs, study, run_dir = store
    stage_dir = (run_dir / study["stages"]["te_hi"]["dir"]).resolve()
    (stage_dir / "COMPLETE").unlink()
    metrics = stage_dir / "metrics.jsonl"
    metrics.write_text("{garbage\n" + metrics.read_text())
    with pytest.raises(DamagedStore) as raised:
        rerun(tiny_model, tiny_data, runs)
    assert str(metrics) in str(raised.value) and "line 1 is not JSON" in str(raised.value)
    assert f"burnlab-verify {runs} --repair" in str(raised.value)
    assert metrics.read_text().startswith("{garbage")  # nothing changed


def test_a_garbage_index_row_is_sampled_again(store, tiny_model, tiny_data, caplog):
    runs, _, _ = store
    folder = sample_folders(runs)[0]
    index = folder / "index.jsonl"
    before = index.read_text()
    index.write_text("not json\n" + before.split("\n", 1)[1])
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        rerun(tiny_model, tiny_data, runs)
    assert f"{index}: line 1 is not JSON" in caplog.text
    assert index.read_text() == before


def test_a_png_cut_short_in_a_complete_sample_folder_is_sampled_again(store, tiny_model, tiny_data, caplog):
    runs, _, _ = store
    folder = sample_folders(runs)[-1]
    png = sorted(folder.rglob("*.png"))[0]
    before = png.read_bytes()
    png.write_bytes(before[: len(before) // 2])
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        rerun(tiny_model, tiny_data, runs)
    assert f"{png}: cannot be decoded" in caplog.text
    assert png.read_bytes() == before


def test_exporting_a_damaged_checkpoint_is_refused_naming_the_file(store, tmp_path):
    runs, study, run_dir = store
    checkpoint = final_checkpoint(run_dir, study, "te_lo").resolve()
    weights = checkpoint / "text_encoder" / "model.safetensors"
    zero_middle(weights)
    with pytest.raises(DamagedStore) as raised:
        materialize(checkpoint, tmp_path / "out")
    assert str(weights) in str(raised.value) and "sha256" in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_verified_file_is_not_hashed_again_until_it_changes(store, monkeypatch):
    runs, study, run_dir = store
    checkpoint = final_checkpoint(run_dir, study, "te_lo").resolve()
    expected = read_json(checkpoint / "manifest.json")["components"]["text_encoder"]["sha256"]
    expected = {f"text_encoder/{name}": sha for name, sha in expected.items()}
    (checkpoint / integrity.VERIFIED).unlink()
    hashed = []
    monkeypatch.setattr(integrity, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    assert check_hashed(checkpoint, expected) == []
    assert len(hashed) == len(expected)
    assert check_hashed(checkpoint, expected) == []
    assert len(hashed) == len(expected)  # remembered by (path, size, mtime_ns)
    weights = checkpoint / "text_encoder" / "model.safetensors"
    zero_middle(weights)  # same size, new mtime
    assert [d.path for d in check_hashed(checkpoint, expected)] == [weights]
