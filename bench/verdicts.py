"""The verdict benchmark: does the burn detector name the component that was trained?

    .venv/bin/python bench/verdicts.py                       # make verdicts
    .venv/bin/python bench/verdicts.py --grid experiments/verdicts.yaml --runs runs

Trains a grid of toy studies (experiments/verdicts.yaml: training seeds x learning-rate scales of
the burn stages, plus control studies whose burn stages cannot move anything) through the stage
cache, two at a time, then hands every branch to analysis.verdicts: the detector is calibrated on
the calibration runs only and its confusion table is reported on the held-out runs. Prints the
table, writes runs/verdicts/ (calibration.json, verdicts.json, table.md) and, with
--readme, the table into experiments/README.md between its verdict markers.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

from burnlab.cli import CONF_DIR
from burnlab.config import register_configs

ROOT = Path(__file__).resolve().parent.parent
GRID_KEYS = {"experiment", "seeds", "lr_scales", "control_scale", "held_out", "jobs", "overrides"}


class GridError(Exception):
    """A bad grid file: printed as one paragraph, exit status 2."""


@dataclass(frozen=True)
class Study:
    """One study of the grid: its name, what its burn stages were trained at, and its split."""
    name: str
    seed: int
    lr_scale: float
    control: bool
    held_out: bool
    overrides: tuple[str, ...]


def load_grid(path: Path) -> dict:
    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise GridError(f"--grid {path}: cannot be read as YAML ({error}).") from None
    if not isinstance(grid, dict) or set(grid) != GRID_KEYS:
        found = sorted(grid) if isinstance(grid, dict) else type(grid).__name__
        raise GridError(f"--grid {path}: expected exactly the keys {sorted(GRID_KEYS)}, found {found}.")
    for key in ("seeds", "lr_scales"):
        if not grid[key] or not all(isinstance(value, (int, float)) and value > 0 for value in grid[key]):
            raise GridError(f"--grid {path}: `{key}` is {grid[key]!r}; expected a non-empty list of "
                            f"positive numbers.")
    if not isinstance(grid["held_out"], dict) or set(grid["held_out"]) != {"seeds", "lr_scales"}:
        raise GridError(f"--grid {path}: `held_out` is {grid['held_out']!r}; expected the keys seeds "
                        f"and lr_scales.")
    calibration_seeds = set(grid["seeds"]) - set(grid["held_out"]["seeds"])
    calibration_scales = set(grid["lr_scales"]) - set(grid["held_out"]["lr_scales"])
    if not calibration_seeds or not calibration_scales or not set(grid["held_out"]["seeds"]) & set(grid["seeds"]) \
            or not set(grid["held_out"]["lr_scales"]) & set(grid["lr_scales"]):
        raise GridError(f"--grid {path}: held_out {grid['held_out']!r} must hold out at least one of "
                        f"the seeds {grid['seeds']} and one of the lr_scales {grid['lr_scales']}, and "
                        f"leave at least one of each for calibration.")
    if not isinstance(grid["jobs"], int) or grid["jobs"] < 1:
        raise GridError(f"--grid {path}: `jobs` is {grid['jobs']!r}; expected an integer >= 1.")
    return grid


def study_lrs(grid: dict) -> dict:
    """model.study_lrs of the grid's experiment, as the studies will compose it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={grid['experiment']}", *grid["overrides"]])
    return dict(cfg.model.study_lrs)


def studies(grid: dict, runs: Path) -> list[Study]:
    """Every study of the grid, ordered so that studies running side by side have different
    seeds (a shared baseline would make the second one wait for the first)."""
    lrs = study_lrs(grid)
    scales = [(scale, False) for scale in grid["lr_scales"]] + [(grid["control_scale"], True)]
    found = []
    for scale, control in scales:
        for seed in grid["seeds"]:
            name = f"verdicts_s{seed}_" + ("control" if control else f"x{scale:g}")
            held_out = seed in grid["held_out"]["seeds"] or (not control and scale in grid["held_out"]["lr_scales"])
            overrides = (f"experiment={grid['experiment']}", f"name={name}", f"paths.runs={runs}",
                         f"train.seed={seed}", f"model.study_lrs.lo={lrs['lo'] * scale:.6g}",
                         f"model.study_lrs.hi={lrs['hi'] * scale:.6g}", "analyze=false",
                         "logger.wandb.mode=disabled", "logger.progress=false", *grid["overrides"])
            found.append(Study(name, seed, scale, control, held_out, overrides))
    return found


def train(study: Study, logs: Path, threads: int) -> float:
    """Run one study with the `burnlab` command (the stage cache skips what is done); seconds."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    burnlab = Path(sys.executable).parent / "burnlab"
    start = time.perf_counter()
    with open(logs / f"{study.name}.log", "w") as log:
        done = subprocess.run([str(burnlab), *study.overrides], stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise GridError(f"study {study.name} failed (exit {done.returncode}); its log: "
                        f"{logs / (study.name + '.log')}")
    print(f"  {study.name}: {seconds:.0f} s", flush=True)
    return seconds


def train_all(grid_studies: list[Study], runs: Path, jobs: int) -> float:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start = time.perf_counter()
    print(f"training {len(grid_studies)} studies, {jobs} at a time ({threads} thread(s) each)", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda study: train(study, runs / "verdicts" / "logs", threads), grid_studies))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=ROOT / "experiments" / "verdicts.yaml")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        grid_studies = studies(grid, args.runs.resolve())
        seconds = train_all(grid_studies, args.runs.resolve(), grid["jobs"])
        print(f"trained in {seconds / 60:.1f} min", flush=True)
    except GridError as error:
        print(f"verdicts: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
