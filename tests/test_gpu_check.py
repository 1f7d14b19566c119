"""make gpu-check's CPU dry run (bench/gpu_check.py --dry-run): every check runs at toy size and
the results file has its shape, so that the script a GPU session runs in one call cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["model", "train_bf16", "train_fp16", "resume_fp16", "sampling_half", "attribution", "sdxl", "clip"]


@pytest.mark.slow  # 8 checks in processes of their own, ~3 min on 2 cores: make test-slow (CI runs it)
def test_the_dry_run_passes_every_check_and_writes_one_results_file(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["name"]: c for c in results["checks"]}
    assert [c["name"] for c in results["checks"]] == CHECKS
    assert {name: (c["status"], c["reason"]) for name, c in checks.items()} == {
        name: ("pass", "") for name in CHECKS
    }, done.stdout + done.stderr[-3000:]
    assert done.returncode == 0
    assert results["mode"].startswith("dry-run") and results["device"] == "cpu" and results["budget_s"] == 480
    for precision in ("train_bf16", "train_fp16"):
        numbers = checks[precision]["numbers"]
        assert numbers["images_per_s"] > 0 and numbers["peak_memory_gib"] > 0.1 and numbers["steps"] == 2 * 2
        assert numbers["unet_tflop_per_image"] > 0 and numbers["mfu"] is None  # no card peak on a CPU
    assert checks["train_bf16"]["numbers"]["precision"] == "bf16"
    assert checks["resume_fp16"]["numbers"]["tensors_differing"] == 0
    resume = checks["resume_fp16"]["numbers"]
    assert resume["tensors"] > 100 and resume["resumed_from_step"] == 2  # the state after epoch 1 of 2 steps
    sampling = checks["sampling_half"]["numbers"]
    assert (
        sampling["images"] == 2 * 3 * 2 and sampling["smallest_pixel_std"] > 1
    )  # 2 checkpoints x 3 prompt sets x 2 seeds
    assert checks["attribution"]["numbers"]["verdict"] in {"unet", "text_encoder", "both", "none", "undetermined"}
    sdxl = checks["sdxl"]["numbers"]
    # base + baseline + te2_lo e1 + te2_hi e1, 3 prompt sets x 2 seeds; 3 pairs (2 against the baseline, 1 the base)
    assert sdxl["images"] == 4 * 3 * 2 and sdxl["pairs"] == 3 and sdxl["corners_per_pair"] == [8]
    assert checks["clip"]["numbers"]["lowest_cosine_device_vs_cpu"] > 0.999
    table = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert [
        line.split(" | ")[0].lstrip("| ") for line in table if line.startswith("| ") and " | pass | " in line
    ] == CHECKS


def test_without_cuda_or_with_an_unknown_check_it_is_one_paragraph(tmp_path):
    import torch

    cases = [["--only", "train_bf16,warp"]] + ([] if torch.cuda.is_available() else [[]])
    for extra in cases:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("gpu-check: ")
        assert ("warp is no check" in done.stderr) if extra else ("--dry-run" in done.stderr)
    assert not (tmp_path / "gpu_check.json").exists()
