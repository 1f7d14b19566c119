"""Crash safety: a kill at any file operation of a state save leaves a state that resume finds;
SIGINT/SIGTERM stop after the current step with the resume command; NaN losses stop (or are
skipped); concurrent samplers of one checkpoint take turns; and the torture test, which kills a
tiny 3-stage study again and again and still ends bit-for-bit where an uninterrupted run ends."""

import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from burnlab.config.schema import SamplingConfig
from burnlab.errors import NonFiniteLoss, UserError
from burnlab.store.files import TMP_SUFFIX, read_jsonl, remove_temp
from burnlab.training.state import Position, load_state, save_state, saved_states
from study_helpers import compose_config, run_study, tiny_overrides

TESTS = Path(__file__).resolve().parent
FILE_OPERATIONS = ("fsync", "replace", "rename", "unlink", "rmdir")


# -- the state swap, killed at every file operation ----------------------------------------------
def _setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return SimpleNamespace(models={"unet": model}, trained=["unet"], optimizer=optimizer, lr_scheduler=scheduler)


ACCELERATOR = SimpleNamespace(is_main_process=True, unwrap_model=lambda model: model, scaler=None)


def _save_killed_at(stage_dir: Path, nth: int, when: str) -> None:
    """In a forked child: save state B, SIGKILLed before/after its `nth` file operation."""
    calls = [0]
    for name in FILE_OPERATIONS:
        real = getattr(os, name)

        def wrapped(*args, _real=real, **kwargs):
            calls[0] += 1
            if calls[0] == nth and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = _real(*args, **kwargs)
            if calls[0] == nth and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(os, name, wrapped)
    save_state(stage_dir, _setup(2), ACCELERATOR, "stage-id", Position(3, 0, 20))
    os._exit(0)


def test_a_kill_at_any_file_operation_of_a_state_save_leaves_a_state_resume_finds(tmp_path):
    template = tmp_path / "template"
    save_state(template, _setup(1), ACCELERATOR, "stage-id", Position(2, 1, 10))
    (template / "metrics.jsonl").write_text(
        "".join(json.dumps({"type": "train", "step": s}) + "\n" for s in range(1, 21))
    )
    expected = {10: _setup(1).models["unet"].state_dict(), 20: _setup(2).models["unet"].state_dict()}
    seen, fork = set(), multiprocessing.get_context("fork")
    for when in ("before", "after"):
        for nth in range(1, 100):
            stage_dir = tmp_path / f"{when}{nth}"
            shutil.copytree(template, stage_dir)
            child = fork.Process(target=_save_killed_at, args=(stage_dir, nth, when))
            child.start()
            child.join()
            fresh = _setup(3)
            position = load_state(stage_dir, fresh, ACCELERATOR, "stage-id")
            assert position in (Position(2, 1, 10), Position(3, 0, 20)), (when, nth, position)
            seen.add(position.step)
            for key, value in expected[position.step].items():
                assert torch.equal(fresh.models["unet"].state_dict()[key], value), (when, nth, key)
            assert [r["step"] for r in read_jsonl(stage_dir / "metrics.jsonl")] == list(range(1, position.step + 1))
            remove_temp(stage_dir)
            assert not [p for p in stage_dir.rglob("*") if p.name.endswith(TMP_SUFFIX)]
            if child.exitcode == 0:  # the save ran to its end: every operation has had its kill
                assert position.step == 20 and len(saved_states(stage_dir)) == 1
                break
            assert child.exitcode == -signal.SIGKILL
        else:
            pytest.fail("the save never finished")
    assert seen == {10, 20}  # some kills left the old state, later ones the new


def test_resume_refuses_a_state_of_another_stage_and_deletes_nothing(tmp_path):
    save_state(tmp_path, _setup(1), ACCELERATOR, "stage-a", Position(1, 0, 5))
    (tmp_path / "metrics.jsonl").write_text('{"type": "train", "step": 9}\n')
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=r"belongs to stage identity 'stage-a'.*stage 'stage-b'.*Nothing was"):
        load_state(tmp_path, _setup(2), ACCELERATOR, "stage-b")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "metrics.jsonl").read_text() == '{"type": "train", "step": 9}\n'


# -- signals ---------------------------------------------------------------------------------------
def _stage_dirs(runs: Path) -> dict:
    return {json.loads(p.read_text())["name"]: p.parent for p in (runs / "cache" / "stages").glob("*/stage.json")}


def _checkpoint_weights(runs: Path) -> dict:
    return {
        (name, path.relative_to(stage_dir).as_posix()): load_file(path)
        for name, stage_dir in _stage_dirs(runs).items()
        for path in sorted(stage_dir.glob("checkpoints/*/*/*.safetensors"))
    }


def _assert_same_training(runs: Path, reference: Path) -> None:
    """Every checkpoint bit-for-bit and every metrics row (but the memory row) equal."""
    got, want = _checkpoint_weights(runs), _checkpoint_weights(reference)
    assert got.keys() == want.keys() and got
    for key in want:
        assert want[key].keys() == got[key].keys()
        assert all(torch.equal(got[key][k], want[key][k]) for k in want[key]), key
    for name, stage_dir in _stage_dirs(reference).items():
        rows = [r for r in read_jsonl(_stage_dirs(runs)[name] / "metrics.jsonl") if r["type"] != "memory"]
        assert rows == [r for r in read_jsonl(stage_dir / "metrics.jsonl") if r["type"] != "memory"], name


def _wait_for_training(process, stage_dirs, stage: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        folder = stage_dirs().get(stage)
        if folder and any(r["type"] == "train" for r in read_jsonl(folder / "metrics.jsonl")):
            return
        time.sleep(0.02)
    pytest.fail(f"stage {stage} never started training")


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_saves_and_prints_the_resume_command(tiny_model, tiny_data, tmp_path, signal_number):
    runs = tmp_path / "runs"
    overrides = tiny_overrides(tiny_model, tiny_data, runs, "burn_unet") + [
        "stages.unet_lo.epochs=12",
        "stages.unet_lo.save_epochs=[12]",
        "train.state_every_epochs=100",
        "sampling.testing_plan=false",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "burnlab.launch.cli", *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_training(process, lambda: _stage_dirs(runs), "unet_lo")
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number, stderr[-2000:]
    message = stderr[stderr.index("burnlab: stopped by") :].strip()
    assert "\n" not in message and "Traceback" not in stderr
    name = signal.Signals(signal_number).name
    assert message.startswith(f"burnlab: stopped by {name} in stage unet_lo at epoch ")
    stage_dir = _stage_dirs(runs)["unet_lo"]
    [state] = saved_states(stage_dir)  # saved by the signal: state_every_epochs=100 saves none
    position = json.loads((state / "state.json").read_text())
    rows = [r for r in read_jsonl(stage_dir / "metrics.jsonl") if r["type"] == "train"]
    assert rows[-1]["step"] == position["step"] and position["step"] < 12 * 2
    if signal_number == signal.SIGINT:
        return  # the same path as SIGTERM from here on: resumed once below
    with open(stage_dir / "metrics.jsonl", "a") as metrics:  # a row cut short, as a kill mid-append leaves
        metrics.write('{"type": "train", "step": 99')

    command = shlex.split(message.split("Resume with: ", 1)[1])
    assert command == [sys.executable, "-m", "burnlab.launch.cli", *overrides]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = tmp_path / "reference"
    run_study(
        tiny_model,
        tiny_data,
        reference,
        *overrides[len(tiny_overrides(tiny_model, tiny_data, runs, "burn_unet")) :],
        experiment="burn_unet",
    )
    _assert_same_training(runs, reference)


# -- NaN -------------------------------------------------------------------------------------------
def test_a_nan_loss_stops_the_stage_keeps_its_state_and_skip_nonfinite_goes_on(tiny_model, tiny_data, tmp_path):
    # lr 1 blows the tiny UNet up in its 5th epoch, after the state of epoch 4 was saved
    extra = (
        "stages.unet_hi.lr=1",
        "stages.unet_hi.epochs=12",
        "stages.unet_hi.save_epochs=[2,12]",
        "sampling.testing_plan=false",
    )
    with pytest.raises(NonFiniteLoss) as stopped:
        run_study(tiny_model, tiny_data, tmp_path, *extra, experiment="burn_unet")
    assert str(stopped.value).startswith("stage unet_hi: the training loss became nan at epoch 5, step 9 ")
    assert "its last saved state (step_0000000008) and checkpoints are kept" in str(stopped.value)
    study = json.loads((tmp_path / "burn_unet" / "study.json").read_text())
    assert [study["stages"][s]["status"] for s in ("baseline", "unet_lo", "unet_hi")] == [
        "complete",
        "complete",
        "failed",
    ]
    stage_dir = _stage_dirs(tmp_path)["unet_hi"]
    assert json.loads((stage_dir / "FAILED").read_text())["stage"] == "unet_hi"
    assert [p.name for p in saved_states(stage_dir)] == ["step_0000000008"]
    good = load_file(stage_dir / "checkpoints" / "epoch_0002" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(v).all() for v in good.values())

    study, _ = run_study(tiny_model, tiny_data, tmp_path, *extra, "train.skip_nonfinite=true", experiment="burn_unet")
    assert study["stages"]["unet_hi"]["status"] == "complete" and not (stage_dir / "FAILED").exists()
    rows = [r for r in read_jsonl(stage_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, 12 * 2 + 1))  # resumed at step 8, no duplicates
    skipped = [r.get("skipped_nonfinite", 0) for r in rows]
    assert skipped[:8] == [0] * 8 and all(skipped[8:])  # every batch after the blow-up skipped
    assert all(r["train_loss"] is None for r in rows[8:])
    final = load_file(stage_dir / "checkpoints" / "epoch_0012" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(v).all() for v in final.values())


# -- the sample cache, shared by concurrent sweep jobs ----------------------------------------------
def _sample_one_checkpoint(model: str, cache: str, config, start, results) -> None:
    from accelerate import Accelerator

    from burnlab.models.checkpoint import base_sources
    from burnlab.sampling.sampler import Sampler

    torch.set_num_threads(1)
    sampler = Sampler(config, {"path": model}, Path(cache), Accelerator(cpu=True))
    sampler.pipeline  # loaded before the race starts
    start.wait()
    folder = sampler.checkpoint_samples("base", base_sources({"path": model}))
    results.put(sorted(p.stat().st_mtime_ns for p in folder.rglob("*.png")))


def test_concurrent_jobs_sampling_one_checkpoint_never_race(tiny_model, tmp_path):
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    prompts = OmegaConf.to_object(compose_config(["sampling=toy"]).sampling.prompts)
    config = SamplingConfig(prompts=prompts, images_per_prompt=2, steps=2)
    jobs = [
        context.Process(target=_sample_one_checkpoint, args=(str(tiny_model), str(tmp_path), config, start, results))
        for _ in range(2)
    ]
    for job in jobs:
        job.start()
    found = [results.get(timeout=240) for _ in jobs]
    for job in jobs:
        job.join()
    assert [job.exitcode for job in jobs] == [0, 0]
    assert found[0] == found[1] and len(found[0]) == 3 * 2  # one made them, the other found them made
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]


# -- torture ---------------------------------------------------------------------------------------
def _progress(runs: Path) -> int:
    """Grows as a study works: bytes of metrics rows, plus 1000 per sampled checkpoint."""
    metrics = sum(p.stat().st_size for p in runs.glob("cache/stages/*/metrics.jsonl"))
    return metrics + 1000 * len(list(runs.glob("cache/samples/*/COMPLETE")))


def _kill_at_a_random_moment(command, runs: Path, rng: random.Random) -> int:
    """Start the study and SIGKILL it once it has written 1-4 more rows (or a sample folder),
    plus 0-100 ms: mid-step, mid-validation, mid-checkpoint or mid-state-write alike."""
    target = _progress(runs) + rng.uniform(100, 900)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None:
        if _progress(runs) > target:
            time.sleep(rng.uniform(0, 0.1))
            process.kill()
            break
        time.sleep(0.01)
    return process.wait()


@pytest.mark.slow
def test_a_study_killed_again_and_again_ends_where_an_uninterrupted_one_does(tiny_model, tiny_data, tmp_path):
    """SIGKILL at >= 10 random moments and at file operations of state writes; every restart
    resumes; the end is bit-for-bit the uninterrupted run's, samples included, with no temp files."""

    def overrides(runs):
        return tiny_overrides(tiny_model, tiny_data, runs, "burn_unet") + [
            "stages.baseline.epochs=4",
            "stages.baseline.save_epochs=[4]",
            "stages.unet_lo.epochs=8",
            "stages.unet_lo.save_epochs=[2,8]",
            "stages.unet_hi.epochs=8",
            "stages.unet_hi.save_epochs=[3,8]",
            "sampling.images_per_prompt=1",
        ]

    cli = [sys.executable, "-m", "burnlab.launch.cli"]
    reference = tmp_path / "reference"
    subprocess.run(cli + overrides(reference), check=True, capture_output=True, timeout=600)

    runs, rng, kills = tmp_path / "runs", random.Random(20261125), []
    injected = [
        ("fsync", "before", 2),
        ("replace", "before", 1),
        ("replace", "after", 1),
        ("unlink", "before", 1),
        ("rmdir", "after", 1),
        ("fsync", "after", 3),
    ]
    for attempt in range(80):
        if attempt % 2 == 1 and injected:
            operation = injected.pop(0)
            code = subprocess.run(
                [sys.executable, str(TESTS / "kill_during.py"), *map(str, operation), *overrides(runs)],
                capture_output=True,
                timeout=600,
            ).returncode
            what = "{} {} #{} of a state write".format(*operation)
        else:
            code = _kill_at_a_random_moment(cli + overrides(runs), runs, rng)
            what = "random"
        assert code in (0, -signal.SIGKILL), (what, code)
        if code == -signal.SIGKILL:
            kills.append(what)
        elif not injected:
            break
    assert code == 0 and kills.count("random") >= 10 and len(kills) >= 10 + 5, kills

    _assert_same_training(runs, reference)
    samples = {r["path"]: r for r in read_jsonl(runs / "burn_unet" / "samples.jsonl")}
    want = {r["path"]: r for r in read_jsonl(reference / "burn_unet" / "samples.jsonl")}
    assert samples.keys() == want.keys() and len(samples) == 6 * 3
    for path in want:
        assert (runs / "burn_unet" / path).read_bytes() == (reference / "burn_unet" / path).read_bytes(), path
    leftovers = [p for p in runs.rglob("*") if p.name.endswith(TMP_SUFFIX) or p.name in ("state", "FAILED")]
    assert leftovers == []
