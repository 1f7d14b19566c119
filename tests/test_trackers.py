"""W&B (offline mode: no server is reachable here) and TensorBoard mirror the run store."""
import json

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from burnlab.cli import run
from burnlab.errors import ConfigError
from burnlab.store import read_jsonl
from burnlab.trackers import wandb_mode
from study_helpers import compose_config, run_study, tiny_overrides


def test_wandb_offline_and_tensorboard_write_their_files(tiny_model, tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_model, tiny_data, tmp_path, "burn_unet") + [
        "logger.wandb.mode=offline", "logger.tensorboard=true", "stages.unet_lo.epochs=1",
        "stages.unet_lo.save_epochs=[1]", "stages.unet_hi.epochs=1", "stages.unet_hi.save_epochs=[1]"]
    cfg = compose_config(overrides)
    study = run(cfg, tmp_path / "burn_unet")
    run_dir = tmp_path / "burn_unet"

    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    (log_file,) = offline_run.glob("run-*.wandb")
    logged = log_file.read_bytes()
    for key in (b"baseline/train_loss", b"baseline/val_loss", b"unet_hi/stabilized_loss", b"study_epoch", b"burn_unet",
                b"study_json"):
        assert key in logged, key
    (table_file,) = (offline_run / "files" / "media" / "table").glob("samples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["branch", "index", "checkpoint", "prompt_set", "prompt", "seed", "image"]
    assert len(table["data"]) == len(list(read_jsonl(run_dir / "samples.jsonl"))) == 4 * 3 * 2

    (events,) = [p for p in run_dir.rglob("events.out.tfevents.*") if p.parent.name == "burnlab"]
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    baseline_loss = [e.value for e in accumulator.Scalars("baseline/train_loss")]
    expected = [row["train_loss"] for row in read_jsonl(run_dir / study["stages"]["baseline"]["dir"] / "metrics.jsonl")
                if row["type"] == "train"]
    assert len(baseline_loss) == len(expected) == 2 * 2
    assert all(abs(a - b) < 1e-6 for a, b in zip(baseline_loss, expected))
    assert len(accumulator.Tags()["images"]) == 3 * 2  # one image series per prompt set and seed


def test_wandb_auto_mode_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled"


def test_online_without_a_key_is_refused_at_start(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    with pytest.raises(ConfigError, match="`logger.wandb.mode` has value 'online'.*WANDB_API_KEY"):
        run_study(tiny_model, tiny_data, tmp_path, "logger.wandb.mode=online")
    assert not (tmp_path / "cache").exists()
