"""Several processes: batches split so every rank has work, and a 2-process CPU (gloo) study
that ends with the 1-process run's weights, validation losses and samples."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from burnlab.runtime.distributed import shard
from burnlab.store.files import read_jsonl
from study_helpers import final_checkpoint, run_study, tiny_overrides, weights


@pytest.mark.parametrize("size, world", [(10, 2), (7, 2), (1, 2), (5, 3), (2, 4), (0, 2)])
def test_shards_cover_the_batch_in_order_and_differ_by_at_most_one(size, world):
    parts = [shard(size, world, rank) for rank in range(world)]
    assert [i for part in parts for i in range(size)[part]] == list(range(size))
    lengths = [part.stop - part.start for part in parts]
    assert max(lengths) - min(lengths) <= 1


# 10 images, 3 held out: 7 to train. 2 processes x batch 3 = global batches of 6 and 1, so in
# the last one rank 1 has no image; the 1-process run trains the same global batches.
SHAPE = [
    "validation.split_proportion=0.3",
    "stages.baseline.epochs=1",
    "stages.baseline.save_epochs=[1]",
    "stages.unet_lo.epochs=2",
    "stages.unet_lo.save_epochs=[2]",
    "stages.unet_hi.epochs=1",
    "stages.unet_hi.save_epochs=[1]",
    "sampling.images_per_prompt=3",
    "train.max_grad_norm=0",
]  # no clipping: a wrongly scaled loss would hide behind it


def free_port() -> int:
    with socket.socket() as probe:  # a port of its own: another run's rendezvous may hold 29500
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tiny_model, tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("two")
    overrides = (
        tiny_overrides(tiny_model, tiny_data, runs, "burn_unet")
        + SHAPE
        + ["train.batch_size=3", "logger.wandb.mode=auto"]
    )  # W&B as a new user has it (offline without a key)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    # `--cpu` would start one process (accelerate's simple launcher); without CUDA burnlab asks
    # accelerate for CPU mode, so this forms a 2-process gloo group
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "burnlab.launch.cli",
        *overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=runs)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs, result


@pytest.fixture(scope="module")
def one_process_run(tiny_model, tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("one")
    return run_study(tiny_model, tiny_data, runs, *SHAPE, "train.batch_size=6", experiment="burn_unet")


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_two_processes_train_the_one_process_weights(two_process_run, one_process_run):
    runs, result = two_process_run
    assert "Traceback" not in result.stderr
    study, run_dir = one_process_run
    two_dir = runs / "burn_unet"
    # identities hash the config, so the 2-process stages (batch 3 per rank) have their own dirs
    two_study = json.loads((two_dir / "study.json").read_text())
    for stage in ("baseline", "unet_lo", "unet_hi"):
        rows = [
            r for r in read_jsonl(two_dir / two_study["stages"][stage]["dir"] / "metrics.jsonl") if r["type"] == "train"
        ]
        assert len(rows) == 2 * two_study["stages"][stage]["epochs"]  # global batches of 6 and 1
    # Tolerance: the same global batches, so only float reduction order differs (the all-reduce
    # averages two gradients where one process sums one batch). AdamW divides each gradient by
    # its running RMS, so an element whose gradient is rounding noise can move by a share of the
    # learning rate differently in the two runs: almost every element agrees to 1e-6, a few
    # dozen (of 200,000) by more, and none by a quarter of what training moved the weights.
    for stage, component in (("baseline", "text_encoder"), ("baseline", "unet"), ("unet_hi", "unet")):
        one = weights(final_checkpoint(run_dir, study, stage), component)
        two = weights(final_checkpoint(two_dir, two_study, stage), component)
        diff = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
        assert (diff > 1e-6).float().mean() < 1e-3, (stage, component, (diff > 1e-6).sum().item())
    before = weights(final_checkpoint(run_dir, study, "baseline"), "unet")
    moved = max((one[k] - before[k]).abs().max().item() for k in one)
    assert diff.max() < moved / 4, (diff.max().item(), moved)


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_two_processes_share_validation_and_log_the_same_losses(two_process_run, one_process_run):
    runs, _ = two_process_run
    study, run_dir = one_process_run
    two_study = json.loads((runs / "burn_unet" / "study.json").read_text())
    for stage in ("baseline", "unet_hi"):
        one = [
            r for r in read_jsonl(run_dir / study["stages"][stage]["dir"] / "metrics.jsonl") if r["type"] != "memory"
        ]
        two = [
            r
            for r in read_jsonl(runs / "burn_unet" / two_study["stages"][stage]["dir"] / "metrics.jsonl")
            if r["type"] != "memory"
        ]
        assert [(r["type"], r["step"]) for r in one] == [(r["type"], r["step"]) for r in two]
        for a, b in zip(one, two):
            for key in ("train_loss", "val_loss", "stabilized_loss"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (stage, a["step"], key)


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_two_processes_write_one_run_store(two_process_run, one_process_run):
    runs, result = two_process_run
    run_dir = runs / "burn_unet"
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("wandb")) == [
        ".hydra",
        "attribution.json",
        "cli.log",
        "config.yaml",
        "samples.jsonl",
        "study.json",
    ]  # rank 0 only
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run, from rank 0
    rows = list(read_jsonl(run_dir / "samples.jsonl"))
    # checkpoints (base, baseline, unet_lo e2, unet_hi e1) x prompts x seeds, made by both ranks, written once
    assert len(rows) == 4 * 3 * 3
    study, one_dir = one_process_run
    one_rows = {(r["index"], r["prompt_set"], r["seed"]): r for r in read_jsonl(one_dir / "samples.jsonl")}
    for row in rows:
        if row["index"] == 0:  # the base model: the same weights in both runs, sampled in shares
            two = np.asarray(Image.open(run_dir / row["path"]), dtype=int)
            one = np.asarray(Image.open(one_dir / one_rows[(0, row["prompt_set"], row["seed"])]["path"]), dtype=int)
            assert np.abs(two - one).max() <= 2
