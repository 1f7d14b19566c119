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
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from hydra import compose, initialize_config_dir

from analysis.detector import CALIBRATION_FILE
from analysis.model import AnalysisError
from burnlab.cli import CONF_DIR
from burnlab.config import register_configs
from burnlab.store import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"
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


def measured(grid_studies: list[Study], runs: Path) -> tuple[list, dict]:
    """Every branch of every study measured with the default instruments (the toy probe), and
    the loss statistics of its stages: ([(study, series)], {(study name, branch): {stage: stats}})."""
    from analysis.detector import branch_series
    from analysis.features import load_instruments
    from analysis.images import SampleImages
    from analysis.loss_stats import loss_statistics
    from analysis.measure import measure
    from analysis.model import BranchRef
    from analysis.sources import open_run

    instruments, images, found, losses = load_instruments(), SampleImages(), [], {}
    for study in grid_studies:
        run = open_run(str(runs / study.name))
        refs = [BranchRef(run, branch) for branch in run.branches.values()]
        found += [(study, series) for series in branch_series(measure(refs, images, instruments))]
        for stats in loss_statistics(refs):
            losses.setdefault((study.name, stats.branch.split("/")[-1]), {})[stats.stage] = stats
    return found, losses


def truth(study: Study, series) -> str:
    return "none" if study.control else series.component


def evaluate(branches: list, out: Path) -> tuple[dict, list[dict], "Calibration"]:
    """Calibrate on the calibration branches only; judge every branch with that rule."""
    from analysis.calibration import Labelled, calibrate, confusion
    from analysis.detector import detect

    calibration = [(study, series) for study, series in branches if not study.held_out]
    names = sorted({study.name for study, _ in calibration})
    rule, tried = calibrate([Labelled(series, truth(study, series)) for study, series in calibration],
                            source=f"make verdicts: calibration studies {', '.join(names)}")
    verdicts = detect([series for _, series in branches], rule)
    rows = [{"study": study.name, "seed": study.seed, "lr_scale": study.lr_scale, "branch": series.branch,
             "split": "held-out" if study.held_out else "calibration", "truth": truth(study, series),
             "named": verdict.implicates, "burn_label": verdict.burn_label,
             "component_evidence": verdict.component_evidence, "evidence": verdict.evidence,
             "summary": verdict.summary()}
            for (study, series), verdict in zip(branches, verdicts)]
    held_out = [(verdict, truth(study, series)) for (study, series), verdict in zip(branches, verdicts)
                if study.held_out]
    table = confusion([verdict for verdict, _ in held_out], [answer for _, answer in held_out])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "calibration.json", {**asdict(rule), "candidates": tried})
    atomic_write_json(out / "verdicts.json", {"held_out_confusion": table, "branches": rows})
    return table, rows, rule


def markdown(table: dict, rows: list[dict], rule, observed: list[str]) -> str:
    from analysis.calibration import OUTCOMES

    right = sum(row["truth"] == row["named"] for row in rows if row["split"] == "held-out")
    total = sum(row["split"] == "held-out" for row in rows)
    lines = [f"Held-out branches named right: **{right} of {total}**. Rule chosen on the calibration "
             f"runs only: z_min {rule.z_min:g}; burn at evidence >= {rule.burn_evidence:.3g}; UNet at "
             f">= {rule.unet_evidence:.3g} from {symptoms_of(rule, 'unet')}; text encoder at >= "
             f"{rule.text_encoder_evidence:.3g} from {symptoms_of(rule, 'text_encoder')}.", "",
             "| trained (held-out) | " + " | ".join(f"named {o}" for o in OUTCOMES) + " |",
             "|---|" + "---:|" * len(OUTCOMES)]
    lines += [f"| {'control (no burn)' if answer == 'none' else answer} | "
              + " | ".join(str(table[answer][o]) for o in OUTCOMES) + " |" for answer in table]
    lines += ["", "(named none = no burn called.)", "",
              "| split | study | branch | trained | named | burn called at | evidence UNet / TE |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['split']} | {row['study']} | {row['branch']} | {row['truth']} | {row['named']} | "
              f"{row['burn_label'] or '-'} | {row['component_evidence']['unet']:.1f} / "
              f"{row['component_evidence']['text_encoder']:.1f} |" for row in rows]
    return "\n".join(lines + ["", *observed]) + "\n"


@dataclass(frozen=True)
class Observation:
    """What the study saw on one component's burn, as a metric's move between two checkpoints of
    the testing plan on some prompt sets, in a direction: up, down, either (a shift either way) or
    kept (no move)."""
    component: str
    seen: str
    metric: str
    prompt_sets: tuple[str, ...]
    direction: str
    start: int = 1  # the baseline
    end: int = 7  # the last checkpoint of the hi stage


ALL_PROMPTS = ("person", "circles", "sunglasses")  # the toy's analogs of the study's prompt sets
OBSERVATIONS = (
    Observation("unet", "saturation up", "saturation", ALL_PROMPTS, "up"),
    Observation("unet", "contrast up", "rms_contrast", ALL_PROMPTS, "up"),
    Observation("unet", "texture artifacts (high-frequency energy up)", "high_frequency_ratio", ALL_PROMPTS, "up"),
    Observation("unet", "style bleed into prompts without the phrase", "probe_style", ("person", "circles"), "up"),
    Observation("unet", "the person no longer recognisable late", "adherence", ("person",), "down"),
    Observation("unet", "variety collapse on the activation prompt", "variability_pixel", ("sunglasses",), "down"),
    Observation("text_encoder", "late colour shift (hi stage)", "saturation", ALL_PROMPTS, "either", 4, 7),
    Observation("text_encoder", "variety kept", "variability_pixel", ALL_PROMPTS, "kept"),
    Observation("text_encoder", "the activation phrase weakening", "probe_style", ("sunglasses",), "down"),
    Observation("text_encoder", "prompt-following failures", "adherence", ALL_PROMPTS, "down"),
)


def observations(branches: list, rule) -> list[str]:
    """The study's observations on the grid's burns at lr scale 1 (the study's rates): each
    metric's move per prompt set, mean and range across training seeds, and in how many seeds it
    is a signal (|z| >= z_min; for "kept", no signal either way)."""
    from analysis.detector import move

    lines = ["| trained | the study saw | metric, prompt set | checkpoints | change: mean across seeds "
             "[min, max] | seeds with a signal in that direction | toy |", "|---|---|---|---|---|---|---|"]
    for seen in OBSERVATIONS:
        picked = [series for study, series in branches
                  if not study.control and study.lr_scale == 1 and series.component == seen.component]
        for prompt_set in seen.prompt_sets:
            moves = [found for series in picked if (found := move(series, seen.metric, prompt_set, seen.end, seen.start))]
            if not moves:
                lines.append(f"| {seen.component} | {seen.seen} | {seen.metric}, {prompt_set} | | not measured | | — |")
                continue
            changes = [change for change, _ in moves]
            signed = {"up": 1, "down": -1}
            agree = sum(signed[seen.direction] * z >= rule.z_min if seen.direction in signed
                        else (abs(z) >= rule.z_min) == (seen.direction == "either") for _, z in moves)
            outcome = ("reproduced" if agree == len(moves) else "not reproduced" if agree == 0
                       else f"partly ({agree} of {len(moves)})")
            lines.append(f"| {seen.component} | {seen.seen} | {seen.metric}, {prompt_set} | {seen.start} → {seen.end} | "
                         f"{np.mean(changes):+.3g} [{min(changes):+.3g}, {max(changes):+.3g}] | "
                         f"{agree} of {len(moves)} | {outcome} |")
    return ["Observations of the study on the grid's burns at the study's rates (lr scale 1, "
            f"{len({study.seed for study, _ in branches})} training seeds):", "", *lines]


def spread(values: list[float]) -> str:
    return f"{np.mean(values):+.3g} [{min(values):+.3g}, {max(values):+.3g}]"


def loss_observations(branches: list, losses: dict, rows: list[dict]) -> list[str]:
    """The study's loss and overall observations at lr scale 1: each number's mean and range
    across training seeds, and whether every seed shows it."""
    picked = {component: [(study, series) for study, series in branches if not study.control
                          and study.lr_scale == 1 and series.component == component]
              for component in ("unet", "text_encoder")}

    def stage_values(component: str, position: int, field: str) -> list[float]:
        found = []
        for study, series in picked[component]:
            stages = list(losses[(study.name, series.branch)].values())
            value = getattr(stages[position], field)
            if value is not None:
                found.append(value)
        return found

    def outcome(holds: list[bool]) -> str:
        return ("reproduced" if all(holds) else "not reproduced" if not any(holds)
                else f"partly ({sum(holds)} of {len(holds)})")

    lines = ["", "Losses and overall size (lr scale 1, per seed; stage -2 = lo, -1 = hi; changes from the "
             "stage's first validation pass to its last):", "",
             "| trained | the study saw | number | mean across seeds [min, max] | toy |", "|---|---|---|---|---|"]
    unet_lo_val = stage_values("unet", -2, "val_change")
    for component, seen, position, field, holds in (
            ("unet", "validation loss rising (lo stage)", -2, "val_change", lambda v: v > 0),
            ("unet", "validation loss rising (hi stage)", -1, "val_change", lambda v: v > 0),
            ("unet", "stabilized loss falling (lo stage)", -2, "stabilized_change", lambda v: v < 0),
            ("unet", "stabilized loss falling (hi stage)", -1, "stabilized_change", lambda v: v < 0),
            ("unet", "rougher training loss in the hi stage", -1, "roughness_vs_previous", lambda v: v > 1),
            ("text_encoder", "validation loss flat (lo stage; absolute change under a fifth of the UNet's mean)",
             -2, "val_change", lambda v: abs(v) < abs(np.mean(unet_lo_val)) / 5),
            ("text_encoder", "stabilized loss flat (lo stage; absolute change under a fifth of the UNet's mean)",
             -2, "stabilized_change",
             lambda v: abs(v) < abs(np.mean(stage_values("unet", -2, "stabilized_change"))) / 5),
            ("text_encoder", "rougher training loss in the hi stage", -1, "roughness_vs_previous", lambda v: v > 1)):
        values = stage_values(component, position, field)
        if values:
            lines.append(f"| {component} | {seen} | {field} | {spread(values)} | {outcome([holds(v) for v in values])} |")
    totals = {component: [sum(row["evidence"].values()) for row in rows if row["truth"] == component
                          and row["study"] in {study.name for study, _ in picked[component]}]
              for component in ("unet", "text_encoder")}
    milder = [te < min(totals["unet"]) for te in totals["text_encoder"]]
    lines.append(f"| text_encoder | milder changes than the UNet burn | detector evidence, all symptoms "
                 f"(UNet burns: {spread(totals['unet'])}) | {spread(totals['text_encoder'])} | {outcome(milder)} |")
    return lines


def symptoms_of(rule, component: str) -> str:
    picked = [name for name, role in rule.symptoms.items() if role == component]
    return ", ".join(picked) if picked else "no symptom"


def write_readme(readme: Path, text: str) -> None:
    """Replace what lies between the verdict markers of the README."""
    content = readme.read_text()
    if MARK_START not in content or MARK_END not in content:
        raise GridError(f"--readme {readme}: no '{MARK_START}' ... '{MARK_END}' markers to write between.")
    head, rest = content.split(MARK_START, 1)
    readme.write_text(head + MARK_START + "\n" + text + rest[rest.index(MARK_END):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=ROOT / "experiments" / "verdicts.yaml")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--readme", type=Path, help="write the tables into this README's verdict markers")
    parser.add_argument("--no-train", action="store_true",
                        help="analyse the grid's run folders as they are (no `burnlab` runs)")
    parser.add_argument("--install", action="store_true",
                        help="install the calibration as the detector's default (analysis/calibration.json)")
    args = parser.parse_args(argv)
    runs = args.runs.resolve()
    try:
        grid = load_grid(args.grid)
        grid_studies = studies(grid, runs)
        if not args.no_train:
            seconds = train_all(grid_studies, runs, grid["jobs"])
            print(f"trained in {seconds / 60:.1f} min", flush=True)
        start = time.perf_counter()
        branches, losses = measured(grid_studies, runs)
        table, rows, rule = evaluate(branches, runs / "verdicts")
        text = markdown(table, rows, rule, observations(branches, rule) + loss_observations(branches, losses, rows))
        print(text)
        print(f"measured and judged in {(time.perf_counter() - start) / 60:.1f} min; "
              f"{runs / 'verdicts'}: calibration.json, verdicts.json, table.md")
        (runs / "verdicts" / "table.md").write_text(text)
        if args.readme:
            write_readme(args.readme, text)
        if args.install:
            shutil.copyfile(runs / "verdicts" / "calibration.json", CALIBRATION_FILE)
    except (GridError, AnalysisError) as error:
        print(f"verdicts: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
