"""Hydra multirun jobs: folders named from their overrides, the record of each, and the stages
whose length a job sets.

    burnlab -m experiment=burn_unet stages.unet_hi.lr=1e-4,3e-4
    # -> runs/burn_unet_multirun/experiment=burn_unet,stages.unet_hi.lr=0.0001/ (and =0.0003/)

A job's folder is its overrides as Hydra's `override_dirname` writes them, so a re-run of the
same sweep finds its jobs' folders (and their stages, complete in the cache) again and another
sweep's values never land in them; a name too long or with characters a folder name should not
hold is shortened, with a hash of the whole. Each folder's job.json maps it back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Set

from burnlab.store.files import atomic_write_json, hash_json
from burnlab.store.layout import JOB

MAX_FOLDER_NAME = 96  # of 255 a file system allows: room for the hash and for readable paths
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")  # '/' (a path), brackets, quotes, spaces, ...
_EPOCHS = re.compile(r"^\+{0,2}stages\.([^.=]+)\.epochs=")


def job_folder_name(override_dirname: str) -> str:
    """The `hydra.sweep.subdir` of a job (the `burnlab_job_folder` resolver)."""
    if not override_dirname:
        return "defaults"  # a multirun without overrides: its one job
    safe = _UNSAFE.sub("_", override_dirname).strip(".")
    if safe == override_dirname and len(safe) <= MAX_FOLDER_NAME:
        return safe
    return f"{safe[: MAX_FOLDER_NAME - 17]}-{hash_json(['job', override_dirname])}"


def write_job_record(run_dir: Path, overrides: List[str], number: int) -> None:
    """job.json: the job's overrides (the values that make this job what it is) and its number."""
    atomic_write_json(Path(run_dir) / JOB, {"overrides": overrides, "folder": Path(run_dir).name, "job_number": number})


def epochs_set_by(overrides: List[str]) -> Set[str]:
    """The stages whose `epochs` the job's overrides set: in a sweep, the ones an epoch sweep lengthens."""
    return {match.group(1) for match in map(_EPOCHS.match, overrides) if match}
