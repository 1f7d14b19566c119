"""Sweeps through hydra-submitit-launcher: a real sweep with `hydra/launcher=submitit_local` (a job
per process, shared stages trained once), and a job of two tasks training as one 2-process run;
`hydra/launcher=slurm_gpu` refused before anything is submitted when a setting cannot run, and
otherwise handed to sbatch as configured (a stand-in sbatch records it: no SLURM here); a SLURM
task's place in its job turned into accelerate's environment."""

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
from submitit.core.utils import FailedJobError

from burnlab.launch.cluster import join_submitit_job
from burnlab.store.files import read_jsonl
from study_helpers import burnlab_in_process, tiny_overrides
from test_bad_overrides import assert_one_paragraph


def run_submitit_local_sweep(overrides: list) -> None:
    command = [sys.executable, "-m", "burnlab.launch.cli", "-m", *overrides, "hydra/launcher=submitit_local"]
    # the job processes inherit this environment: PYTHONPATH (these sources) and one thread each
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_submitit_local_runs_a_two_job_sweep_training_shared_stages_once(tiny_model, tiny_data, tmp_path):
    overrides = [
        o for o in tiny_overrides(tiny_model, tiny_data, tmp_path, "burn_unet") if not o.startswith("stages.unet_hi.")
    ]
    run_submitit_local_sweep(
        [*overrides, "stages.unet_hi.epochs=2", "stages.unet_hi.save_epochs=[2]", "stages.unet_hi.lr=1e-4,1e-3"]
    )
    sweep_dir = tmp_path / "burn_unet_multirun"
    studies = [json.loads(path.read_text()) for path in sweep_dir.glob("*/study.json")]
    studies.sort(key=lambda study: study["stages"]["unet_hi"]["lr"])
    assert [s["stages"]["unet_hi"]["lr"] for s in studies] == [1e-4, 1e-3]
    for shared in ("baseline", "unet_lo"):
        assert studies[0]["stages"][shared]["identity"] == studies[1]["stages"][shared]["identity"]
    assert len(list((tmp_path / "cache" / "stages").glob("*/COMPLETE"))) == 4  # baseline, unet_lo, 2 x unet_hi
    # submitit's job files and logs stay in the sweep dir: a stdout log per job, which tells that
    # one job trained the shared stages and the other found them in the cache
    logs = "".join(path.read_text() for path in (sweep_dir / ".submitit").glob("*/*_0_log.out"))
    for shared in ("baseline", "unet_lo"):
        assert logs.count(f"stage {shared}: training") == logs.count(f"stage {shared}: complete in the cache") == 1


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_a_job_of_two_tasks_trains_as_one_two_process_run(tiny_model, tiny_data, tmp_path):
    """Each task becomes one accelerate process: 8 training images, 4 a batch on each of 2
    processes, so an epoch is one step (tasks that each trained alone would log 2 an epoch)."""
    overrides = tiny_overrides(tiny_model, tiny_data, tmp_path, "burn_unet") + [
        "validation.split_proportion=0.2",
        "train.batch_size=4",  # 8 of tiny_data's 10 images train
        "stages.unet_lo.epochs=1",
        "stages.unet_lo.save_epochs=[1]",
        "stages.unet_hi.epochs=1",
        "stages.unet_hi.save_epochs=[1]",
        "hydra.launcher.tasks_per_node=2",
    ]
    run_submitit_local_sweep(overrides)
    (study_json,) = (tmp_path / "burn_unet_multirun").glob("*/study.json")
    baseline = json.loads(study_json.read_text())["stages"]["baseline"]
    rows = read_jsonl(tmp_path / "cache" / "stages" / baseline["identity"] / "metrics.jsonl")
    assert [row["step"] for row in rows if row["type"] == "train"] == [1, 2]  # 2 epochs
    (job_log,) = study_json.parent.glob("*.log")  # Hydra's job log: rank 0's alone
    assert job_log.read_text().count("stage baseline: training") == 1


# (the override after the study's, the key, the bad value as shown)
BAD_SETTINGS = [
    ("hydra.launcher.gpus_per_node=2", "hydra.launcher.partition", "None"),  # no partition given
    ("hydra.launcher.partition=", "hydra.launcher.partition", "''"),
    ("hydra.launcher.gpus_per_node=0", "hydra.launcher.gpus_per_node", "0"),
    ("hydra.launcher.gpus_per_node=null", "hydra.launcher.gpus_per_node", "None"),
    ("hydra.launcher.tasks_per_node=1", "hydra.launcher.tasks_per_node", "1"),
    ("hydra.launcher.nodes=2", "hydra.launcher.nodes", "2"),
    ("hydra.launcher.timeout_min=0", "hydra.launcher.timeout_min", "0"),
    ("hydra.launcher.cpus_per_task=0", "hydra.launcher.cpus_per_task", "0"),
    ("hydra.launcher.mem_gb=-8", "hydra.launcher.mem_gb", "-8"),
]
GOOD_SETTINGS = ["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"]


@pytest.mark.parametrize("override, key, value", BAD_SETTINGS, ids=[case[0] for case in BAD_SETTINGS])
def test_a_bad_slurm_setting_is_one_paragraph_and_nothing_is_submitted(
    override, key, value, tmp_path, monkeypatch, capsys
):
    settings = GOOD_SETTINGS[:1] if key == "hydra.launcher.partition" else GOOD_SETTINGS
    argv = [
        "-m",
        "experiment=burn_unet",
        f"paths.runs={tmp_path}/runs",
        "stages.unet_hi.lr=1e-4,1e-3",
        *settings,
        override,
    ]
    assert_one_paragraph(*burnlab_in_process(argv, monkeypatch, capsys), key, value)
    assert not (tmp_path / "runs").exists()  # no sweep dir, no submitit folder


def test_submitit_slurm_itself_is_checked_too(tmp_path, monkeypatch, capsys):
    argv = [
        "-m",
        "experiment=burn_unet",
        f"paths.runs={tmp_path}",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
    ]
    assert_one_paragraph(*burnlab_in_process(argv, monkeypatch, capsys), "hydra.launcher.gpus_per_node", "None")


def test_a_good_slurm_gpu_sweep_reaches_sbatch_as_configured(tmp_path, monkeypatch, capsys):
    """A stand-in `sbatch` keeps the job script it is given and refuses it, as a cluster without
    that partition would; submitit only needs `srun` to exist."""
    bin_dir, recorded = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", f'cp "$1" {recorded}; echo "sbatch: refused" >&2; exit 1')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "burnlab",
            "-m",
            "experiment=burn_unet",
            f"paths.runs={tmp_path}/runs",
            "stages.unet_hi.lr=1e-4,1e-3",
            *GOOD_SETTINGS,
        ],
    )
    from burnlab.launch import cli

    with pytest.raises(FailedJobError, match="sbatch: refused"):
        cli.main()
    script = recorded.read_text()
    for line in (
        "--array=0-1",
        "--partition=gpu",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--nodes=1",
        "--cpus-per-task=8",
        "--time=1440",
        "--job-name=burn_unet",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {line}" in script, script
    assert f"{tmp_path}/runs/burn_unet_multirun/.submitit/" in script  # the tasks' logs: in the sweep dir


SLURM_TASK = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "4",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_JOB_NODELIST": "gpu-node07",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
}
DISTRIBUTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def slurm_task(monkeypatch, tmp_path, rank: int, **changes) -> dict:
    """The environment of task `rank` of SLURM_TASK's job after join_submitit_job, and whether the
    task still writes the job's log file (Hydra's, here a stand-in on the root logger)."""
    # join_submitit_job exports variables monkeypatch never set: a copy of the environment keeps
    # them from leaking into the tests after this one (a WORLD_SIZE of 4 in a one-process study)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in DISTRIBUTED:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**SLURM_TASK, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), **changes}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    job_log = logging.FileHandler(tmp_path / "cli.log", delay=True)
    monkeypatch.setattr(logging.getLogger(), "handlers", [job_log])
    join_submitit_job()
    return {
        **{name: os.environ.get(name) for name in (*DISTRIBUTED, "CUDA_VISIBLE_DEVICES")},
        "writes the job log": job_log in logging.getLogger().handlers,
    }


def test_each_task_of_a_slurm_job_becomes_one_accelerate_process(monkeypatch, tmp_path):
    first, third = slurm_task(monkeypatch, tmp_path, 0), slurm_task(monkeypatch, tmp_path, 2)
    assert third["RANK"] == third["LOCAL_RANK"] == "2" and first["RANK"] == first["LOCAL_RANK"] == "0"
    assert third["WORLD_SIZE"] == third["LOCAL_WORLD_SIZE"] == "4"
    assert third["MASTER_ADDR"] == first["MASTER_ADDR"] == "gpu-node07"  # the job's node
    assert third["MASTER_PORT"] == first["MASTER_PORT"]  # drawn from the job id: every task agrees
    assert 20000 <= int(third["MASTER_PORT"]) <= 60000
    assert third["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # accelerate picks GPU LOCAL_RANK among them
    assert first["writes the job log"] and not third["writes the job log"]


@pytest.mark.parametrize(
    "changes",
    [{"SUBMITIT_EXECUTOR": None}, {"SLURM_NTASKS": "1"}, {"RANK": "5"}],
    ids=["not under submitit", "a job of one task", "RANK set already"],
)
def test_the_environment_is_left_alone_outside_a_job_of_several_tasks(monkeypatch, tmp_path, changes):
    task = slurm_task(monkeypatch, tmp_path, 1, **changes)
    assert task["WORLD_SIZE"] is None and task["writes the job log"]
