"""Hydra multirun sweeps: jobs in folders named from their overrides, stages shared across jobs
trained once (the second job waits on the stage's file lock), and an epoch sweep that trains
the swept stage for its longest value only, each job ending with a separate run's weights."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file

from burnlab.launch.sweeps import job_folder_name
from burnlab.store.files import read_jsonl
from study_helpers import run_study, tiny_overrides


def _sweep(overrides, *extra):
    command = [sys.executable, "-m", "burnlab.launch.cli", "-m", *overrides, *extra]
    # one thread in every job (joblib's workers get one anyway, the basic launcher's as many as
    # this process has): sums over other thread counts round differently, so the weights compared
    # with a separate run below would differ in their last bits
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _jobs(sweep_dir) -> list:
    """(job folder, study.json) of each job of a sweep."""
    return [(path.parent, json.loads(path.read_text())) for path in sorted(sweep_dir.glob("*/study.json"))]


def _without_hi(tiny_model, tiny_data, runs):
    return [o for o in tiny_overrides(tiny_model, tiny_data, runs, "burn_unet") if not o.startswith("stages.unet_hi.")]


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_parallel_sweep_trains_shared_stages_once_and_a_rerun_resumes_it(tiny_model, tiny_data, tmp_path):
    sweep = [
        *_without_hi(tiny_model, tiny_data, tmp_path),
        "stages.unet_hi.epochs=2",
        "stages.unet_hi.save_epochs=[2]",
        "stages.unet_hi.lr=1e-4,1e-3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    _sweep(sweep)
    jobs = sorted(_jobs(tmp_path / "burn_unet_multirun"), key=lambda job: job[1]["stages"]["unet_hi"]["lr"])
    studies = [study for _, study in jobs]
    assert [s["stages"]["unet_hi"]["lr"] for s in studies] == [1e-4, 1e-3]
    for folder, study in jobs:  # named from the job's overrides, and mapped back in job.json
        record = json.loads((folder / "job.json").read_text())
        lr = f"stages.unet_hi.lr={study['stages']['unet_hi']['lr']}"
        assert lr in record["overrides"] and record["folder"] == folder.name
        overrides = [o for o in record["overrides"] if not o.startswith("paths.runs=")]
        assert folder.name == job_folder_name(",".join(sorted(overrides)))
    for shared in ("baseline", "unet_lo"):
        assert studies[0]["stages"][shared]["identity"] == studies[1]["stages"][shared]["identity"]
    assert studies[0]["stages"]["unet_hi"]["identity"] != studies[1]["stages"]["unet_hi"]["identity"]
    stage_dirs = list((tmp_path / "cache" / "stages").glob("*/COMPLETE"))
    assert len(stage_dirs) == 4  # baseline, unet_lo, and one unet_hi per learning rate
    baseline = tmp_path / "cache" / "stages" / studies[0]["stages"]["baseline"]["identity"]
    steps = [row["step"] for row in read_jsonl(baseline / "metrics.jsonl") if row["type"] == "train"]
    assert steps == [1, 2, 3, 4]  # trained once: not twice, not interleaved
    logs = "".join((folder / "cli.log").read_text() for folder, _ in jobs)
    assert logs.count("stage baseline: training") == logs.count("stage unet_lo: training") == 1
    finished = {path: path.stat().st_mtime_ns for path in stage_dirs}
    _sweep(sweep)  # the same sweep again: the same job folders, nothing trained again
    assert [folder for folder, _ in _jobs(tmp_path / "burn_unet_multirun")] == sorted(folder for folder, _ in jobs)
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "cache" / "stages").glob("*/COMPLETE")} == finished


def test_job_folder_names_are_the_overrides_or_shortened_with_a_hash():
    assert (
        job_folder_name("experiment=burn_unet,stages.unet_hi.lr=0.0001")
        == "experiment=burn_unet,stages.unet_hi.lr=0.0001"
    )
    assert job_folder_name("") == "defaults"
    long, other = "x" * 200 + "=1", "x" * 200 + "=2"
    assert len(job_folder_name(long)) <= 96 and job_folder_name(long) != job_folder_name(other)
    pathlike = job_folder_name("data.path=/data/style")  # never a nested folder
    assert "/" not in pathlike and pathlike != job_folder_name("data.path=_data_style")


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _unet_hi_records(run_dir, study):
    """unet_hi's checkpoints' UNet weights by epoch, and its train and validation rows."""
    stage = run_dir / study["stages"]["unet_hi"]["dir"]
    weights = {
        int(p.name.removeprefix("epoch_")): load_file(p / "unet" / "diffusion_pytorch_model.safetensors")
        for p in sorted((stage / "checkpoints").glob("epoch_*"))
    }
    rows = [row for row in read_jsonl(stage / "metrics.jsonl") if row["type"] in ("train", "val")]
    return weights, rows


# validating every 3 epochs, a continued job must leave out the validation pass that the shorter
# job ran at its last epoch; in any order, every length must be a validation epoch (or the last)
# (the in-order case runs with the slow tests, make test-slow, to keep make test under 10 minutes)
@pytest.mark.parametrize(
    "values, every, launcher",
    [
        pytest.param("2,4,6", 3, [], marks=pytest.mark.slow, id="in-order"),
        pytest.param("6,2,4", 2, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], id="parallel-any-order"),
    ],
)
def test_an_epoch_sweep_trains_the_longest_value_only_and_equals_separate_runs(
    tiny_model, tiny_data, tmp_path, values, every, launcher
):
    sweep_runs = tmp_path / "sweep"
    # the save epochs beyond a job's length are dropped: the 2- and 4-epoch jobs run as typed
    _sweep(
        _without_hi(tiny_model, tiny_data, sweep_runs),
        "stages.unet_hi.save_epochs=[2,4,6]",
        f"validation.every_n_epochs={every}",
        f"stages.unet_hi.epochs={values}",
        *launcher,
    )
    jobs = {
        study["stages"]["unet_hi"]["epochs"]: (folder, study)
        for folder, study in _jobs(sweep_runs / "burn_unet_multirun")
    }
    assert sorted(jobs) == [2, 4, 6]
    continued = {epochs: study["stages"]["unet_hi"]["continued_from"] for epochs, (_, study) in jobs.items()}
    for epochs, (folder, study) in jobs.items():  # the stage folder's own record says the same
        stage = json.loads((folder / study["stages"]["unet_hi"]["dir"] / "stage.json").read_text())
        assert stage["continued_from"] == continued[epochs]
    trained = sum(epochs - (record["epoch"] if record else 0) for epochs, record in continued.items())
    assert trained == 6, continued  # the longest value, not 2 + 4 + 6
    assert len(list((sweep_runs / "cache" / "stages").glob("*/COMPLETE"))) == 2 + 3  # baseline, unet_lo once
    at_epoch_2 = [
        next(row for row in study["testing_plan"]["unet_hi"] if row["label"].endswith("unet_hi e2"))
        for _, study in jobs.values()
    ]  # the same weights in every job, saved by other stages
    assert (
        len({row["weights_id"] for row in at_epoch_2}) == 1 and len({row["checkpoint_id"] for row in at_epoch_2}) == 3
    )
    for epochs, (folder, study) in jobs.items():
        assert study["stages"]["unet_hi"]["save_epochs"] == [e for e in (2, 4, 6) if e <= epochs]
        with one_thread():
            alone, alone_dir = run_study(
                tiny_model,
                tiny_data,
                tmp_path / f"alone{epochs}",
                "stages.unet_hi.save_epochs=[2,4,6]",
                f"validation.every_n_epochs={every}",
                f"stages.unet_hi.epochs={epochs}",
                experiment="burn_unet",
            )
        assert alone["stages"]["unet_hi"]["continued_from"] is None
        (swept_weights, swept_rows), (alone_weights, alone_rows) = (
            _unet_hi_records(folder, study),
            _unet_hi_records(alone_dir, alone),
        )
        assert sorted(swept_weights) == sorted(alone_weights) == [e for e in (2, 4, 6) if e <= epochs]
        for epoch, tensors in alone_weights.items():
            assert tensors.keys() == swept_weights[epoch].keys()
            assert all(torch.equal(tensors[k], swept_weights[epoch][k]) for k in tensors), (epochs, epoch)
        assert swept_rows == alone_rows, epochs
