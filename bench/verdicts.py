"""The attribution benchmark: does the component swap name the component that burned, on runs it never saw?

    .venv/bin/python bench/verdicts.py --runs runs --readme experiments/README.md --install   # make verdicts
    .venv/bin/python bench/verdicts.py --no-train ...     # judge the grid as it is in the run store

The grid (experiments/verdicts.yaml): per training seed one study of `attribution_bench` (one
baseline, then short burns straight from it: each component alone at a high rate, twice that and
a gentle one; joint burns of both components at independent rates; a control), and on the
held-out seeds also the LoRA study `attribution_bench_lora`. Each study samples its testing plan
and its swap corners (burnlab.attribution.swap); here every (reference, tuned) pair is read with the
analysis' attribution (burnlab/analysis/attribution.py) and compared with the truth. On held-out
seeds too, the SDXL study `attribution_bench_xl` on the toy SDXL: burns of the UNet, of each text
encoder alone and of both encoders, judged over the three components' swap cube with the same rule
(never calibrated on SDXL).

**Truth**, fixed before any rule was tried and independent of it: a component trained alone burned
by a checkpoint when the toy probe sees a change from the baseline on some prompt set: its style
score or its adherence moved by at least TRUTH_MOVE with a paired bootstrap interval (over seeds)
that excludes 0 (falling adherence only). A joint burn's component burned when the same component
trained alone at the same rate burned by the same epoch (its single-component branch). Controls
are `none`. A single-component branch is also judged against the base model, where the swap has
to separate the burn from the baseline's gentle training of both components.

**Rule**: one number, the threshold on a component's Shapley share in seed spreads. It is chosen
on the calibration seeds only: the threshold of best accuracy on their pairs (the geometric middle
of the widest range of best thresholds on a log grid), with leave-one-seed-out accuracy reported
(chosen on the other calibration seeds, scored on the one left out). The held-out seeds, and the
LoRA study, are judged once with that rule. Writes runs/verdicts/ (rule.json, cases.json,
table.md), and with --install burnlab/analysis/attribution_rule.json, the rule every analysis uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from burnlab.analysis.attribution import (
    OUTCOMES,
    RULE_FILE,
    XL_OUTCOMES,
    AttributionRule,
    attribute_run,
    judge,
)
from burnlab.analysis.features import load_instruments
from burnlab.analysis.images import load_rgb
from burnlab.analysis.run import AnalysisError
from burnlab.store.files import atomic_write_json
from burnlab.store.layout import ATTRIBUTION, TRAINABLE

ROOT = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"
GRID_KEYS = {
    "experiment",
    "lora_experiment",
    "xl_experiment",
    "seeds",
    "held_out_seeds",
    "lora_seeds",
    "xl_seeds",
    "overrides",
}
TRUTH_MOVE = 0.25  # the probe's style score or adherence moving this much (a quarter of its range) is a burn
THRESHOLDS = np.geomspace(0.05, 5.0, 121)  # the rule's candidates, seed spreads
BOOTSTRAP = 1000
# the benchmark studies' branches: what each trains, and for a joint burn which single-component
# branch of each component gives its truth (the same rate, trained alone)
SINGLE = {
    "u_hi": "unet",
    "u_hi2": "unet",
    "u_g": "unet",
    "t_hi": "text_encoder",
    "t_hi2": "text_encoder",
    "t_g": "text_encoder",
    "lu_hi": "unet",
    "lu_g": "unet",
    "lt_hi": "text_encoder",
    "lt_g": "text_encoder",
    "x_u_hi": "unet",
    "x_t1_hi": "text_encoder",
    "x_t2_hi": "text_encoder_2",
}
# a joint burn: component -> the branch that trains it alone at the same rate
JOINT = {
    "j_hg": {"unet": "u_hi", "text_encoder": "t_g"},
    "j_gh": {"unet": "u_g", "text_encoder": "t_hi"},
    "j_hh": {"unet": "u_hi", "text_encoder": "t_hi"},
    "j_gg": {"unet": "u_g", "text_encoder": "t_g"},
    "lj_hh": {"unet": "lu_hi", "text_encoder": "lt_hi"},
    "x_t12_hh": {"text_encoder": "x_t1_hi", "text_encoder_2": "x_t2_hi"},
}
CONTROLS = {"control", "lcontrol", "x_control"}


class GridError(Exception):
    """A bad grid file or a failed study: printed as one paragraph, exit status 2."""


@dataclass(frozen=True)
class Study:
    name: str
    seed: int
    lora: bool
    held_out: bool
    overrides: tuple[str, ...]
    xl: bool = False  # the SDXL study (three components)


def load_grid(path: Path) -> dict:
    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise GridError(f"--grid {path}: cannot be read as YAML ({error}).") from None
    if not isinstance(grid, dict) or set(grid) != GRID_KEYS:
        found = sorted(grid) if isinstance(grid, dict) else type(grid).__name__
        raise GridError(f"--grid {path}: expected exactly the keys {sorted(GRID_KEYS)}, found {found}.")
    seeds, held = grid["seeds"], grid["held_out_seeds"]
    if (
        not seeds
        or not all(isinstance(seed, int) for seed in seeds)
        or not set(held) <= set(seeds)
        or not held
        or len(set(seeds) - set(held)) < 2
    ):
        raise GridError(
            f"--grid {path}: seeds {seeds!r}, held_out_seeds {held!r}: expected integer seeds, at "
            f"least one held out and at least two left for calibration (leave-one-seed-out)."
        )
    for key, what in (("lora_seeds", "LoRA"), ("xl_seeds", "SDXL")):
        if not set(grid[key]) <= set(held):
            raise GridError(
                f"--grid {path}: {key} {grid[key]!r} must be held-out seeds: "
                f"the rule is never calibrated on {what} runs."
            )
    return grid


def studies(grid: dict, runs: Path) -> list[Study]:
    found = []
    for prefix, experiment, seeds in (
        ("", grid["experiment"], grid["seeds"]),
        ("lora_", grid["lora_experiment"], grid["lora_seeds"]),
        ("xl_", grid["xl_experiment"], grid["xl_seeds"]),
    ):
        for seed in seeds:
            name = f"attribution_{prefix}s{seed}"
            overrides = (
                f"experiment={experiment}",
                f"name={name}",
                f"paths.runs={runs}",
                f"train.seed={seed}",
                "logger.wandb.mode=disabled",
                "logger.progress=false",
                *grid["overrides"],
            )
            found.append(
                Study(name, seed, prefix == "lora_", seed in grid["held_out_seeds"], overrides, prefix == "xl_")
            )
    return found


def train(study: Study, logs: Path) -> float:
    """Run one study with the `burnlab` command (the caches skip what is done); seconds."""
    logs.mkdir(parents=True, exist_ok=True)
    burnlab = Path(sys.executable).parent / "burnlab"
    start = time.perf_counter()
    with open(logs / f"{study.name}.log", "w") as log:
        done = subprocess.run(
            [str(burnlab), *study.overrides],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "WANDB_MODE": "disabled"},
        )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise GridError(f"study {study.name} failed (exit {done.returncode}); its log: {logs / (study.name + '.log')}")
    print(f"  {study.name}: {seconds:.0f} s", flush=True)
    return seconds


# -- truth ----------------------------------------------------------------------------------------
def probe_readings(folder: Path, probe) -> dict[str, dict[str, np.ndarray]]:
    """prompt set -> {"style": [N], "hit": [N]} of one sample folder, in seed order."""
    rows = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines() if line.strip()]
    found = {}
    for prompt_set in dict.fromkeys(row["prompt_set"] for row in rows):
        mine = sorted((row for row in rows if row["prompt_set"] == prompt_set), key=lambda row: row["seed"])
        predicted = probe.predict(np.stack([load_rgb(folder / row["path"]) for row in mine]))
        hits = [
            all(predicted[key][i] == value for key, value in row["expect"].items() if key in predicted)
            for i, row in enumerate(mine)
        ]
        found[prompt_set] = {"style": np.asarray(predicted["style"], dtype=float), "hit": np.asarray(hits, float)}
    return found


def moved(before: np.ndarray, after: np.ndarray, falling_only: bool) -> bool:
    """The mean moved by TRUTH_MOVE or more, with a paired bootstrap interval excluding 0."""
    change = after - before
    draws = np.random.default_rng(0).integers(0, len(change), size=(BOOTSTRAP, len(change)))
    low, high = np.percentile(change[draws].mean(axis=1), [2.5, 97.5])
    if falling_only:
        return change.mean() <= -TRUTH_MOVE and high < 0
    return abs(change.mean()) >= TRUTH_MOVE and (low > 0 or high < 0)


def probe_burned(reference: Path, tuned: Path, probe) -> bool:
    before, after = probe_readings(reference, probe), probe_readings(tuned, probe)
    return any(
        moved(before[p]["style"], after[p]["style"], False) or moved(before[p]["hit"], after[p]["hit"], True)
        for p in before
    )


def outcome(burned: set, components: tuple) -> str:
    """The verdict that names exactly the `burned` components of a model with `components`, in
    the analysis' words (burnlab.analysis.attribution.judge)."""
    named = [c for c in components if c in burned]
    if not named:
        return "none"
    return "both" if len(components) == 2 and len(named) == 2 else "+".join(named)


# -- cases ----------------------------------------------------------------------------------------
def study_cases(study: Study, runs: Path, instruments, probe) -> list[dict]:
    """Every judged pair of one study, with its shares' intervals and its truth."""
    run_dir = runs / study.name
    if not (run_dir / ATTRIBUTION).exists():
        raise GridError(f"{run_dir / ATTRIBUTION} is missing: run the grid without --no-train first.")
    pairs = attribute_run(run_dir, instruments, AttributionRule(1.0), study.name)
    records = json.loads((run_dir / ATTRIBUTION).read_text())["pairs"]
    burned: dict[tuple[str, str], bool] = {}  # (single branch, epoch label suffix) -> the probe saw a burn
    for pair, record in zip(pairs, records):
        if pair.branch in SINGLE and pair.reference.endswith("baseline"):
            burned[(pair.branch, epoch_of(pair.tuned))] = probe_burned(
                run_dir / record["corners"]["R"], run_dir / record["corners"]["M"], probe
            )
    cases = []
    for pair in pairs:
        epoch = epoch_of(pair.tuned)
        against_base = pair.reference.endswith("base") and not pair.reference.endswith("baseline")
        components = tuple(pair.components)
        if pair.branch in SINGLE:
            truth = outcome({SINGLE[pair.branch]} if burned[(pair.branch, epoch)] else set(), components)
            kind = "single vs base" if against_base else "single"
        elif pair.branch in JOINT:
            if against_base:
                continue  # a joint burn's truth is about its own training, judged against the baseline
            alone = JOINT[pair.branch]
            truth = outcome({c for c, branch in alone.items() if burned[(branch, epoch)]}, components)
            kind = "joint"
        elif pair.branch in CONTROLS:
            if against_base:
                continue  # against the base a control is the baseline's fine-tune, not a burn
            truth, kind = "none", "control"
        else:
            continue
        if epoch != max(epoch_of(p.tuned) for p in pairs if p.branch == pair.branch):
            kind = "short run"
        if study.lora:
            kind = "LoRA " + kind
        if study.xl:
            kind = "SDXL " + kind
        cases.append(
            {
                "study": study.name,
                "seed": study.seed,
                "held_out": study.held_out,
                "lora": study.lora,
                "xl": study.xl,
                "branch": pair.branch,
                "tuned": pair.tuned,
                "reference": pair.reference,
                "kind": kind,
                "truth": truth,
                "shares": {k: vars(v) for k, v in pair.shares.items()},
                "distance": vars(pair.distances["all prompts"]["M"]),
            }
        )
    return cases


def epoch_of(label: str) -> int:
    return int(label.rsplit(" e", 1)[1]) if " e" in label else 0


# -- the rule -------------------------------------------------------------------------------------
def named(case: dict, threshold: float) -> str:
    from burnlab.analysis.attribution import Interval

    components = tuple(c for c in TRAINABLE if c in case["shares"])  # SD's two, SDXL's three
    return judge({key: Interval(**value) for key, value in case["shares"].items()}, threshold, components)[1]


def accuracy(cases: list[dict], threshold: float) -> float:
    return float(np.mean([named(case, threshold) == case["truth"] for case in cases])) if cases else float("nan")


def choose_threshold(cases: list[dict]) -> tuple[float, float]:
    """(threshold, its accuracy on `cases`): the geometric middle of the widest run of best ones."""
    scores = np.array([accuracy(cases, t) for t in THRESHOLDS])
    best = scores.max()
    runs_of_best, start = [], None
    for i, is_best in enumerate(np.append(scores == best, False)):
        if is_best and start is None:
            start = i
        elif not is_best and start is not None:
            runs_of_best.append((start, i - 1))
            start = None
    first, last = max(runs_of_best, key=lambda run: run[1] - run[0])
    return float(np.sqrt(THRESHOLDS[first] * THRESHOLDS[last])), float(best)


def leave_one_seed_out(cases: list[dict]) -> dict[int, dict]:
    found = {}
    for seed in sorted({case["seed"] for case in cases}):
        threshold, _ = choose_threshold([case for case in cases if case["seed"] != seed])
        left_out = [case for case in cases if case["seed"] == seed]
        found[seed] = {"threshold": threshold, "accuracy": accuracy(left_out, threshold), "cases": len(left_out)}
    return found


def confusion(cases: list[dict], threshold: float, outcomes: tuple = OUTCOMES) -> dict[str, dict[str, int]]:
    truths = [t for t in outcomes if any(c["truth"] == t for c in cases)]
    table = {truth: {o: 0 for o in outcomes} for truth in truths}
    for case in cases:
        table[case["truth"]][named(case, threshold)] += 1
    return table


def component_confusions(cases: list[dict], threshold: float) -> int:
    """Pairs where one component was named for another (unet <-> text_encoder, and on SDXL
    text_encoder <-> text_encoder_2 and so on): a single burned component, another one named."""
    return sum(
        case["truth"] in TRAINABLE and named(case, threshold) in TRAINABLE and named(case, threshold) != case["truth"]
        for case in cases
    )


# -- report ---------------------------------------------------------------------------------------
KINDS = (
    "single",
    "single vs base",
    "joint",
    "control",
    "short run",
    "LoRA single",
    "LoRA single vs base",
    "LoRA joint",
    "LoRA control",
    "LoRA short run",
    "SDXL single",
    "SDXL single vs base",
    "SDXL joint",
    "SDXL control",
    "SDXL short run",
)


def markdown(cases: list[dict], threshold: float, calibration_accuracy: float, loso: dict, seconds: dict) -> str:
    held = [case for case in cases if case["held_out"]]
    lines = [
        f"Rule chosen on the calibration seeds only: **threshold {threshold:.3g} seed spreads** (accuracy on "
        f"their {sum(not c['held_out'] for c in cases)} pairs {calibration_accuracy:.1%}); leave-one-seed-out "
        "accuracy: "
        + ", ".join(
            f"seed {seed} {r['accuracy']:.1%} (threshold {r['threshold']:.3g}, {r['cases']} pairs)"
            for seed, r in loso.items()
        )
        + ".",
        "",
        "Held out (seeds and the LoRA study never looked at while choosing):",
        "",
        "| pairs | named right | one component named for another | undetermined |",
        "|---|---:|---:|---:|",
    ]
    for kind in KINDS:
        mine = [case for case in held if case["kind"] == kind]
        if mine:
            right = sum(named(c, threshold) == c["truth"] for c in mine)
            lines.append(
                f"| {kind} | {right} of {len(mine)} ({right / len(mine):.0%}) | "
                f"{component_confusions(mine, threshold)} | "
                f"{sum(named(c, threshold) == 'undetermined' for c in mine)} |"
            )
    right = sum(named(c, threshold) == c["truth"] for c in held)
    lines += [
        f"| **all held-out** | **{right} of {len(held)} ({right / max(len(held), 1):.0%})** | "
        f"**{component_confusions(held, threshold)}** | "
        f"{sum(named(c, threshold) == 'undetermined' for c in held)} |",
        "",
        "| truth (held-out) | " + " | ".join(f"named {o}" for o in OUTCOMES) + " |",
        "|---|" + "---:|" * len(OUTCOMES),
    ]
    lines += [
        f"| {truth} | " + " | ".join(str(row[o]) for o in OUTCOMES) + " |"
        for truth, row in confusion([c for c in held if not c.get("xl")], threshold).items()
    ]
    xl = [c for c in held if c.get("xl")]
    if xl:  # SDXL's verdicts name three components: a table of their own
        lines += [
            "",
            "| truth (held-out, SDXL) | " + " | ".join(f"named {o}" for o in XL_OUTCOMES) + " |",
            "|---|" + "---:|" * len(XL_OUTCOMES),
        ]
        lines += [
            f"| {truth} | " + " | ".join(str(row[o]) for o in XL_OUTCOMES) + " |"
            for truth, row in confusion(xl, threshold, XL_OUTCOMES).items()
        ]
    lines += [
        "",
        "| split | study | branch | tuned | reference | kind | truth | named | UNet share | TE share | TE2 share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        shares = {k: f"{v['value']:.2f} [{v['low']:.2f}, {v['high']:.2f}]" for k, v in case["shares"].items()}
        lines.append(
            f"| {'held-out' if case['held_out'] else 'calibration'} | {case['study']} | {case['branch']} | "
            f"{case['tuned']} | {case['reference']} | {case['kind']} | {case['truth']} | "
            f"{named(case, threshold)} | {shares['unet']} | {shares['text_encoder']} | "
            f"{shares.get('text_encoder_2', '-')} |"
        )
    if seconds:
        lines += [
            "",
            "Training, sampling and swap corners per study (s): "
            + ", ".join(f"{name} {value:.0f}" for name, value in seconds.items())
            + ".",
        ]
    return "\n".join(lines)


def write_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    if MARK_START not in content or MARK_END not in content:
        raise GridError(f"--readme {readme}: no {MARK_START} ... {MARK_END} markers to put the table between.")
    head, rest = content.split(MARK_START, 1)
    readme.write_text(head + MARK_START + "\n" + text + "\n" + MARK_END + rest.split(MARK_END, 1)[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=ROOT / "experiments" / "verdicts.yaml")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--no-train", action="store_true", help="judge the runs as they are in the run store")
    parser.add_argument("--readme", type=Path, help="put the tables into this README between the verdict markers")
    parser.add_argument("--install", action="store_true", help=f"write the chosen rule to {RULE_FILE}")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        runs = args.runs.resolve()
        grid_studies = studies(grid, runs)
        seconds = {}
        if not args.no_train:
            print(f"training {len(grid_studies)} studies, one at a time", flush=True)
            seconds = {study.name: train(study, runs / "verdicts" / "logs") for study in grid_studies}
        instruments = load_instruments(use_probe=True)
        if instruments.probe is None:
            raise GridError("the toy probe is not installed: the benchmark's truth needs it (pip install -e .).")
        calibration_studies = [s for s in grid_studies if not s.held_out]
        calibration = [c for s in calibration_studies for c in study_cases(s, runs, instruments, instruments.probe)]
        threshold, calibration_accuracy = choose_threshold(calibration)
        loso = leave_one_seed_out(calibration)
        # the rule is fixed: only now are the held-out studies read
        held = [c for s in grid_studies if s.held_out for c in study_cases(s, runs, instruments, instruments.probe)]
        cases = calibration + held
        out = runs / "verdicts"
        out.mkdir(parents=True, exist_ok=True)
        rule = {
            "threshold": round(threshold, 4),
            "source": f"make verdicts: calibration seeds "
            f"{sorted({s.seed for s in calibration_studies})}, {len(calibration)} pairs, accuracy "
            f"{calibration_accuracy:.3f}",
            "leave_one_seed_out": loso,
        }
        atomic_write_json(out / "rule.json", rule)
        atomic_write_json(out / "cases.json", {"threshold": threshold, "cases": cases})
        text = markdown(cases, threshold, calibration_accuracy, loso, seconds)
        (out / "table.md").write_text(text + "\n")
        print(text)
        if args.install:
            atomic_write_json(RULE_FILE, {"threshold": rule["threshold"], "source": rule["source"]})
            print(f"\nwrote {RULE_FILE}")
        if args.readme:
            write_readme(args.readme, text)
    except (GridError, AnalysisError) as error:
        print(f"verdicts: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
