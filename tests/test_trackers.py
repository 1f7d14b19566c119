"""W&B (offline mode: no server is reachable here) and TensorBoard mirror the run store: one
dashboard run per branch, the same keys in every run, steps along the branch. Both are read back
with their own readers (TensorBoard's EventAccumulator, W&B's Record protobufs)."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wandb_records
from burnlab.dashboards.trackers import dashboard_values, wandb_mode
from burnlab.errors import ConfigError
from burnlab.store.files import read_jsonl
from study_helpers import run_study

STEPS_PER_EPOCH = 2  # 8 training images (the tiny data less its validation split), batch 4


@pytest.fixture(scope="module")
def followfox_run(tiny_model, tiny_data, tmp_path_factory):
    """followfox (two branches sharing the baseline) with both mirrors on, per-timestep
    validation, samples every epoch and the analysis."""
    runs = tmp_path_factory.mktemp("dash")
    extra = (
        "logger.wandb.mode=offline",
        "logger.tensorboard=true",
        "sampling.every_n_epochs=1",
        "validation.timesteps=[100,500]",
    )
    study, run_dir = run_study(tiny_model, tiny_data, runs, *extra, analyze=True)
    return study, run_dir


def stage_rows(run_dir, study, stage, kind):
    return [row for row in read_jsonl(run_dir / study["stages"][stage]["dir"] / "metrics.jsonl") if row["type"] == kind]


def events(run_dir, branch):
    (path,) = (run_dir / "tensorboard" / branch).glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_steps_along_each_branch(followfox_run):
    study, run_dir = followfox_run
    for branch in ("unet_hi", "te_hi"):
        stages = study["branches"][branch]["stages"]
        accumulator = events(run_dir, branch)
        train = accumulator.Scalars("loss/train")
        expected = [row for stage in stages for row in stage_rows(run_dir, study, stage, "train")]
        epochs = sum(study["stages"][stage]["epochs"] for stage in stages)
        # every optimizer step of the branch, at its own step: a curve, not a vertical line
        assert [e.step for e in train] == list(range(1, epochs * STEPS_PER_EPOCH + 1))
        assert [e.value for e in train] == pytest.approx([row["train_loss"] for row in expected], abs=1e-6)
        by_step = {e.step: e.value for e in accumulator.Scalars("study_epoch")}
        assert all(by_step[step] == pytest.approx(step / STEPS_PER_EPOCH) for step in by_step)
        val = {e.step: e.value for e in accumulator.Scalars("loss/val")}
        last = stage_rows(run_dir, study, stages[-1], "val")[-1]
        assert val[epochs * STEPS_PER_EPOCH] == pytest.approx(last["val_loss"], abs=1e-6)
        for t in (100, 500):  # per-timestep losses: one group, a curve per timestep, at the val steps
            by_t = accumulator.Scalars(f"loss_by_t/val/t{t}")
            assert [e.step for e in by_t] == [e.step for e in accumulator.Scalars("loss/val")]
            assert by_t[-1].value == pytest.approx(last["val_loss_by_t"][str(t)], abs=1e-6)
        index = {e.step: e.value for e in accumulator.Scalars("stage/index")}
        assert index[1] == 0 and index[epochs * STEPS_PER_EPOCH] == len(stages) - 1  # the stage boundaries
        # testing-plan samples at their checkpoint's step; in-training samples at every epoch's
        plan = study["testing_plan"][branch]
        images = accumulator.Images("samples/person/seed1000")
        assert [e.step for e in images] == [entry["study_epoch"] * STEPS_PER_EPOCH for entry in plan]
        training = accumulator.Images("training_samples/person/seed1000")
        assert [e.step for e in training] == [e * STEPS_PER_EPOCH for e in range(1, epochs + 1)]
        assert len(accumulator.Tags()["images"]) == 2 * 3 * 2  # (plan, training) x prompt sets x seeds


def test_wandb_one_run_per_branch_with_the_same_keys(followfox_run):
    study, run_dir = followfox_run
    runs = wandb_records.offline_runs(run_dir)
    assert sorted(runs) == ["followfox-te_hi", "followfox-unet_hi"]
    histories = {}
    for name, path in runs.items():
        branch = name.removeprefix("followfox-")
        config = wandb_records.config(path)
        assert (config["branch"], config["stages"]) == (branch, study["branches"][branch]["stages"])
        assert config["component"] == study["branches"][branch]["component"][0]
        assert '"testing_plan"' in config["study_json"]
        history = wandb_records.history(path)
        histories[branch] = history
        keys = {key.split("/")[0] for row in history for key in row}
        # no `<stage>/...` keys and no bookkeeping as metrics
        assert keys == {
            "_runtime",
            "_step",
            "_timestamp",
            "loss",
            "loss_by_t",
            "lr",
            "memory",
            "stage",
            "study_epoch",
            "train",
            "samples",
            "training_samples",
            "analysis",
            "progression",
        }, keys
        stages = study["branches"][branch]["stages"]
        epochs = sum(study["stages"][stage]["epochs"] for stage in stages)
        losses = [row for row in history if "loss/train" in row]
        assert [row["study_epoch"] for row in losses] == [
            s / STEPS_PER_EPOCH for s in range(1, epochs * STEPS_PER_EPOCH + 1)
        ]
        expected = [row["train_loss"] for stage in stages for row in stage_rows(run_dir, study, stage, "train")]
        assert [row["loss/train"] for row in losses] == pytest.approx(expected, abs=1e-6)
        assert [row["_step"] for row in history] == sorted(row["_step"] for row in history)
        (final,) = [row for row in history if "samples/table/nrows" in row]  # the testing plan, after training
        plan = study["testing_plan"][branch]
        # images per prompt set captioned with their checkpoint, and the table
        assert final["samples/person/captions"] == [f"{e['label']} seed {s}" for e in plan for s in (1000, 1001)]
        assert final["samples/table/nrows"] == len(plan) * 3 * 2
        training = [row for row in history if "training_samples/person/captions" in row]
        assert [row["study_epoch"] for row in training] == list(range(1, epochs + 1))
        summary = wandb_records.summary(path)
        # the component swap's verdict of the branch's final checkpoint against the baseline, and its symptom profile
        pairs = [
            pair
            for pair in json.loads((run_dir / "analysis" / "attribution.json").read_text())["pairs"]
            if pair["branch"] == branch
        ]
        final = [pair for pair in pairs if pair["reference"] == pairs[0]["reference"]][-1]
        assert final["tuned"] == study["testing_plan"][branch][-1]["label"]
        assert summary["attribution/verdict"] == final["verdict"]
        assert summary["attribution/sentence"] == final["sentence"]
        assert summary["attribution/unet_share"] == pytest.approx(final["shares"]["unet"]["value"])
        assert summary["attribution/text_encoder_share"] == pytest.approx(final["shares"]["text_encoder"]["value"])
        (profile,) = [
            p
            for p in json.loads((run_dir / "analysis" / "symptoms.json").read_text())["profiles"]
            if p["branch"] == branch
        ]
        assert {key: value for key, value in summary.items() if key.startswith("symptoms/")} == {
            f"symptoms/{name}": value for name, value in profile["symptoms"].items()
        }
        assert not any(key.startswith("detector/") for key in summary)
        (analysis,) = [row for row in history if "progression/person/_type" in row]
        assert analysis["progression/person/_type"] == "video-file" and analysis["progression/person/path"].endswith(
            ".gif"
        )
        assert analysis["analysis/metrics/nrows"] == 3 * len(plan)  # this branch's rows: prompt sets x checkpoints
    # the baseline is logged into both runs, under the same keys and steps
    baseline = {
        b: [(r["_step"], r["loss/train"]) for r in h if "loss/train" in r and r["study_epoch"] <= 2]
        for b, h in histories.items()
    }
    assert baseline["unet_hi"] == baseline["te_hi"] and len(baseline["unet_hi"]) == 2 * STEPS_PER_EPOCH


def test_dashboard_keys_leave_bookkeeping_out():
    row = {
        "type": "val",
        "stage": "te_lo",
        "step": 4,
        "epoch": 2,
        "study_epoch": 4,
        "val_loss": 0.5,
        "stabilized_loss": 0.25,
        "val_loss_by_t": {"100": 0.75},
        "lr_text_encoder": 1e-6,
    }
    assert dashboard_values(row) == {
        "loss/val": 0.5,
        "loss/stabilized": 0.25,
        "loss_by_t/val/t100": 0.75,
        "lr/text_encoder": 1e-6,
    }


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


class RecordedRun:
    """A W&B public-API run made of what W&B wrote offline (decoded records), for the analysis."""

    def __init__(self, path):
        self.config, self.rows = wandb_records.config(path), wandb_records.history(path)
        self.name = self.id = wandb_records.run_name(path)
        self.group = self.config["study_run"]

    def scan_history(self):
        return iter(self.rows)

    def logged_artifacts(self):
        return []


class RecordedApi:
    def __init__(self, runs):
        self.by_path = {f"team/burnlab/{run.name}": run for run in runs}

    def run(self, path):
        return self.by_path[path]

    def runs(self, project, filters):
        return [run for run in self.by_path.values() if run.group == filters["group"]]


def test_analysis_reads_both_branch_runs_back_as_the_local_losses(followfox_run, tmp_path):
    from burnlab.analysis.sources import LocalRun, WandbRun

    study, run_dir = followfox_run
    api = RecordedApi([RecordedRun(path) for path in wandb_records.offline_runs(run_dir).values()])
    remote = WandbRun("team/burnlab/followfox-te_hi", api=api, download_root=tmp_path).load()
    local = LocalRun(run_dir).load()
    assert remote.branches == local.branches
    assert set(remote.losses) == set(study["stages"])  # the unet branch's stages from its sibling run
    assert remote.losses == local.losses


def test_a_failed_study_ends_its_wandb_runs_as_failed(tiny_model, tiny_data, tmp_path, monkeypatch):
    def broken(job):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr("burnlab.launch.runner.train_stage", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_study(tiny_model, tiny_data, tmp_path, "logger.wandb.mode=offline", experiment="burn_unet")
    (path,) = wandb_records.offline_runs(tmp_path / "burn_unet").values()
    (exit_record,) = [r for r in wandb_records.records(path) if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit.exit_code == 1
