"""`pip install .` (not editable) into a fresh venv gives a working `burnlab` and `burnlab-analyze`:
the Hydra configs ship inside the package, and nothing reads the repository's top-level folders.

Nothing is downloaded. The wheel is built from a copy of the package sources (pyproject.toml,
src/, analysis/: no top-level conf/ or experiments/) with this venv's setuptools; a new venv
without system site packages installs that wheel alone (--no-index, --no-deps), and sees this
venv's dependencies through a plain path in a .pth file. A plain path is not a site dir, so the
.pth files in it (this venv's editable burnlab) are not processed: the new venv's burnlab is the
installed one. Runs start in a folder outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from burnlab.store.files import read_jsonl
from study_helpers import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def clean_env() -> dict:
    """The test's environment without PYTHONPATH (which points at the repository's sources)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def check(command: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with burnlab installed from a wheel; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    check(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            root / "wheel",
            source,
        ],
        cwd=root,
    )
    (wheel,) = (root / "wheel").glob("burnlab-*.whl")

    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    # this venv's pip, run on the new interpreter: it sees only the new venv, installs there
    check([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=root)
    site = check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    ours = sysconfig.get_paths()
    # the dependencies (torch, diffusers, hydra, ...) of the running venv, as plain sys.path entries
    (Path(site.stdout.strip()) / "deps.pth").write_text(
        "".join(f"{path}\n" for path in dict.fromkeys([ours["purelib"], ours["platlib"]]))
    )
    return env_dir / "bin"


def test_the_installed_package_is_the_wheel_with_its_configs(installed, tmp_path):
    code = (
        "import json, burnlab, burnlab.analysis.attribution as rule, burnlab.config.compose as compose; "
        "print(json.dumps([burnlab.__file__, str(rule.RULE_FILE), rule.RULE_FILE.is_file(), str(compose.CONF_DIR), "
        "sorted(p.stem for p in (compose.CONF_DIR / 'experiment').glob('*.yaml'))]))"
    )
    result = check([installed / "python", "-c", code], cwd=tmp_path)
    burnlab_file, rule_file, rule_shipped, conf_dir, experiments = json.loads(result.stdout)
    assert rule_shipped, rule_file  # the swap verdict's threshold ships in the wheel
    venv_dir = installed.parent
    for path in (burnlab_file, rule_file, conf_dir):
        assert Path(path).is_relative_to(venv_dir) and "site-packages" in path, path
    assert experiments == [
        "attribution_bench",
        "attribution_bench_lora",
        "attribution_bench_xl",
        "burn_te",
        "burn_unet",
        "burn_unet_lr",
        "followfox",
        "followfox_sd15",
        "followfox_xl",
        "lora_followfox",
    ]
    assert "usage: burnlab-analyze" in check([installed / "burnlab-analyze", "--help"], cwd=tmp_path).stdout


@pytest.mark.slow  # minutes of training: make test-slow (CI runs it), to keep make test under 10 minutes
def test_installed_burnlab_runs_a_tiny_study_from_another_folder(installed, tiny_model, tiny_data, tmp_path):
    work, runs = tmp_path / "elsewhere", tmp_path / "runs"
    work.mkdir()
    check(
        [installed / "burnlab", *tiny_overrides(tiny_model, tiny_data, runs, "burn_unet", analyze=True)],
        cwd=work,
        timeout=600,
    )
    run_dir = runs / "burn_unet"
    study = json.loads((run_dir / "study.json").read_text())
    assert set(study["stages"]) == {"baseline", "unet_lo", "unet_hi"}
    assert all(stage["status"] == "complete" for stage in study["stages"].values())
    rows = list(read_jsonl(run_dir / "samples.jsonl"))
    assert len(rows) == 6 * 3 * 2  # checkpoints x prompts x seeds
    assert all((run_dir / row["path"]).is_file() for row in rows)
    assert "unet_hi" in (run_dir / "analysis" / "report.html").read_text()

    check([installed / "burnlab-analyze", run_dir, "--out", tmp_path / "again"], cwd=work)
    assert "unet_hi" in (tmp_path / "again" / "report.html").read_text()
    assert not any(work.iterdir())  # everything went to paths.runs
