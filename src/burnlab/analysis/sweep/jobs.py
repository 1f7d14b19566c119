"""Which runs a sweep report covers, and what was swept across them.

    specs = job_specs(["runs/burn_unet_multirun"])   # its job folders (subfolders with study.json)
    sweep = describe(runs)                           # runs opened from those specs
    sweep.keys                                       # ["stages.unet_hi.lr"]
    [job.label for job in sweep.jobs]                # ["lr=1e-4", "lr=3e-4", "lr=1e-3"]

A job's settings are its overrides, from its job.json (`{"overrides": ["key=value", ...]}`) or
else Hydra's `.hydra/overrides.yaml` (a YAML list of `key=value`), with a key another job set
looked up in its config.yaml (the resolved config); a run with neither file (e.g. a W&B run) is
compared by its whole config. The swept keys are those whose values differ across jobs; the
others are common. Jobs are sorted by their swept values (numerically where numeric) and
labelled by them, each key by the shortest dotted suffix that tells it from the other swept
keys. Folder names are never read for this: they are for people, and their scheme may change.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from burnlab.analysis.run import AnalysisError, Run
from burnlab.analysis.sources import WANDB_PREFIX, read_json
from burnlab.store.layout import CONFIG, JOB, STUDY

HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
JOB_MARKERS = (STUDY, JOB, str(HYDRA_OVERRIDES))
# keys that decide where a run is written and what it logs, not what it trains
PLACEMENT_KEYS = ("name", "paths", "analyze", "logger", "hydra")
NOT_SET = "(not set)"


@dataclass(frozen=True)
class Job:
    """One run of the sweep: `values` are its swept keys' values as text, in Sweep.keys order;
    `study` the study's name (the run's own name before its label replaced it)."""

    run: Run
    values: tuple[str, ...]
    label: str
    study: str


@dataclass(frozen=True)
class Sweep:
    """The jobs sorted by their swept values; `common` the settings every job shares; `source`
    where the settings were read ("overrides" or "config.yaml")."""

    jobs: tuple[Job, ...]
    keys: tuple[str, ...]
    common: dict[str, str]
    source: str


def is_multirun(spec: str) -> bool:
    """A local folder that is not a run itself: its subfolders are a sweep's jobs (or nothing)."""
    path = Path(spec)
    return not spec.startswith(WANDB_PREFIX) and path.is_dir() and not (path / STUDY).exists()


def job_specs(specs: list[str]) -> list[str]:
    """The runs to compare, each once: each spec itself, or for a multirun folder its job folders."""
    jobs = [job for spec in specs for job in (multirun_jobs(Path(spec)) if is_multirun(spec) else [spec])]
    return list(dict.fromkeys(job if job.startswith(WANDB_PREFIX) else os.path.normpath(job) for job in jobs))


def multirun_jobs(folder: Path) -> list[str]:
    """A multirun folder's job folders (subfolders holding study.json, job.json or Hydra's
    overrides), each of which must hold study.json."""
    jobs = sorted(
        sub for sub in folder.iterdir() if sub.is_dir() and any((sub / marker).is_file() for marker in JOB_MARKERS)
    )
    if not jobs:
        raise AnalysisError(
            f"{folder} is not a burnlab run: it has no study.json, and none of its subfolders is a "
            f"sweep job (a folder holding study.json, {JOB} or {HYDRA_OVERRIDES}). Expected a "
            f"run folder (e.g. runs/burn_unet) or a sweep's multirun folder whose job folders each "
            f"hold a run (e.g. runs/burn_unet_multirun)."
        )
    unfinished = [str(job) for job in jobs if not (job / STUDY).is_file()]
    if unfinished:
        raise AnalysisError(
            f"Sweep job folder(s) {', '.join(unfinished)} of {folder} have no study.json (the job "
            f"stopped before its study started, or is still starting); expected every job folder "
            f"to hold a run. Re-run the sweep, or pass the finished jobs' folders instead."
        )
    return [str(job) for job in jobs]


def describe(runs: list[Run]) -> Sweep:
    """The swept keys and common settings of `runs`, and the jobs in swept-value order. Each
    run's `name` becomes its job's label, so that every product tells the jobs apart."""
    settings, source = job_settings(runs)
    all_keys = list(dict.fromkeys(key for each in settings for key in each))
    keys = tuple(key for key in all_keys if len({comparable(each.get(key, NOT_SET)) for each in settings}) > 1)
    common = {key: settings[0][key] for key in all_keys if key not in keys and key in settings[0]}
    order = sorted(range(len(runs)), key=lambda number: [sort_key(settings[number].get(key, NOT_SET)) for key in keys])
    names = short_names(keys)
    jobs = []
    for number in order:
        values = tuple(settings[number].get(key, NOT_SET) for key in keys)
        label = ", ".join(f"{name}={value}" for name, value in zip(names, values)) or runs[number].location
        jobs.append(Job(runs[number], values, label, runs[number].name))
    jobs = unique_labels(jobs)
    for job in jobs:
        job.run.name = job.label
    return Sweep(tuple(jobs), keys, common, source)


def job_settings(runs: list[Run]) -> tuple[list[dict[str, str]], str]:
    """Each run's settings (key -> value text) and where they were read. From overrides when
    every run has them: the keys any job overrode, a job that did not override one taking its
    config's value; else every key of the configs. Keys that only place a run are left out."""
    found = [job_overrides(run.local_dir) if run.local_dir else None for run in runs]
    configs = [flatten(run.config) for run in runs]
    if all(overrides is not None for overrides in found):
        keys = dict.fromkeys(key for overrides in found for key in overrides)
        settings = [
            {key: overrides.get(key, config.get(key, NOT_SET)) for key in keys}
            for overrides, config in zip(found, configs)
        ]
        source = "overrides"
    else:
        settings, source = configs, CONFIG
    return [{key: value for key, value in each.items() if not places(key)} for each in settings], source


def places(key: str) -> bool:
    """Whether a key only decides where a run is written or what it logs (name, paths.runs)."""
    return key.split(".")[0].split("/")[0] in PLACEMENT_KEYS


def job_overrides(folder: Path) -> dict[str, str] | None:
    """key -> value text from job.json, else .hydra/overrides.yaml; None when neither exists."""
    job_file, hydra_file = folder / JOB, folder / HYDRA_OVERRIDES
    if job_file.is_file():
        content = read_json(job_file)
        lines = content.get("overrides") if isinstance(content, dict) else None
        where = f"{job_file}: 'overrides'"
    elif hydra_file.is_file():
        try:
            lines = yaml.safe_load(hydra_file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise AnalysisError(
                f"{hydra_file} is not valid YAML ({error}); expected the list of overrides that Hydra writes."
            ) from None
        where = str(hydra_file)
    else:
        return None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise AnalysisError(
            f"{where} is {str(lines)[:80]!r}; expected a list of 'key=value' "
            f"strings, as in [\"stages.unet_hi.lr=0.0001\"]."
        )
    return dict(parse_override(line) for line in lines)


def parse_override(line: str) -> tuple[str, str]:
    """A Hydra override as (key, value text): `+key=v` and `++key=v` set key; `~key` removes it."""
    key, _, value = line.partition("=")
    if key.startswith("~"):
        return key[1:], "(removed)"
    return key.lstrip("+"), value


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as `a.b.c` keys with their values as text (lists stay whole)."""
    flat: dict[str, str] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, dict) and value else {name: as_text(value)})
    return flat


def as_text(value: Any) -> str:
    """A config value as an override would write it: 0.0003, true, null, [100,300,500]."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def comparable(text: str) -> Any:
    """A value for comparing jobs: numbers as floats (1e-4 == 0.0001), text parsed as YAML as
    Hydra parses override values ("[1, 2]" == "[1,2]"), else the text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as text
        except ValueError:
            return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return json.dumps(value, sort_keys=True)


def sort_key(text: str) -> tuple[int, float, str]:
    """Numbers first, in numeric order, then other values in text order, unset keys last."""
    if text == NOT_SET:
        return 2, 0.0, ""
    value = comparable(text)
    return (0, value, "") if isinstance(value, float) else (1, 0.0, str(value))


def short_names(keys: tuple[str, ...]) -> list[str]:
    """Each key's shortest dotted suffix that no other key ends with (stages.unet_hi.lr -> lr)."""
    names = []
    for key in keys:
        parts = key.split(".")
        for length in range(1, len(parts) + 1):
            suffix = ".".join(parts[-length:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        names.append(suffix)
    return names


def unique_labels(jobs: list[Job]) -> list[Job]:
    """Jobs with the same swept values (the same run twice) get their folder in their label."""
    labels = [job.label for job in jobs]
    return [
        job if labels.count(job.label) == 1 else replace(job, label=f"{job.label} ({job.run.location})") for job in jobs
    ]
