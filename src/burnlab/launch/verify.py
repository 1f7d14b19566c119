"""`burnlab-verify RUNS [--repair]`: a full check of a run store, like `git fsck` (docs/run_store.md).

    burnlab-verify runs            # what is damaged, and which stages and runs depend on it; exit 1 if any
    burnlab-verify runs --repair   # remove exactly the damaged entries; the next run rebuilds them

Checked, hashing every file afresh (the `.verified.json` records that spare a study the hashing
are neither trusted nor written): every checkpoint file against its manifest's sha256; stage
markers (COMPLETE with a checkpoint epoch missing; a state folder without its state.json, with
another stage's identity or with a weight file missing); metrics.jsonl rows; sample folders
(COMPLETE, index rows, every PNG decoded in full); stage lineage (a checkpoint whose inherited
component's checkpoint is gone); `.tmp` leftovers of killed writers; each run's study.json and
samples.jsonl. `--repair` removes a damaged stage folder (the next run of a study naming it
trains it again, from its parent), a damaged sample folder (sampled again), a damaged run file
(written again) and leftovers; it takes each stage's and sample folder's lock without waiting and
leaves what a running study holds. A checkpoint whose parent stage is gone altogether is
reported as a note, not as damage (it is sound, nothing is removed, the exit status stays 0): the
next run of its study trains the parent into the same folder, as after a repair.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from filelock import FileLock, Timeout

from burnlab.models.checkpoint import checkpoint_damage, manifest_damage
from burnlab.store.files import read_json, remove_folder
from burnlab.store.integrity import (
    Damage,
    is_temp_leftover,
    jsonl_damage,
    sample_folder_damage,
    walk_temp,
)
from burnlab.store.layout import (
    ATTRIBUTION,
    CHECKPOINTS,
    COMPLETE,
    MANIFEST,
    METRICS,
    SAMPLES_INDEX,
    STAGE_RECORD,
    STATE,
    STUDY,
)
from burnlab.training.state import STATE_FILE


@dataclass
class Finding:
    """One damaged entry: what is wrong, what --repair removes (None: nothing to remove) and the
    lock a writer of it holds."""

    what: str  # "stage 44c0… (baseline)", "samples 1a2b…-5e5e", "leftover", "run burn_te"
    damage: List[Damage]
    remove: Optional[Path] = None
    lock: Optional[Path] = None
    depends: List[str] = field(default_factory=list)  # the stages and runs that need it
    note: bool = False  # sound itself, waiting for what it inherits to be trained again: not counted as damage


def _state_damage(stage_dir: Path, identity: str, trained: List[str]) -> List[Damage]:
    damage = []
    for folder in sorted((stage_dir / STATE).glob("step_*")):
        state = folder / STATE_FILE
        if not state.exists():
            damage.append(Damage(folder, f"has no {STATE_FILE}: a state folder is published whole"))
            continue
        try:
            owner = read_json(state).get("stage_identity")
        except (OSError, ValueError, AttributeError) as error:
            damage.append(Damage(state, f"cannot be read as JSON ({error})"))
            continue
        if owner != identity:
            damage.append(Damage(state, f"belongs to stage {owner!r}, not to this folder's {identity!r}"))
        damage += [
            Damage(folder / name, "is missing")
            for name in [*(f"{c}.safetensors" for c in trained), "optimizer.pt"]
            if not (folder / name).exists()
        ]
    return damage


def check_stage(stage_dir: Path) -> tuple:
    """(damage, lineage problems, stage.json or {}) of one stage folder."""
    record_path = stage_dir / STAGE_RECORD
    damage, lineage, record = [], [], {}
    if record_path.exists():
        try:
            record = read_json(record_path)
        except (OSError, ValueError) as error:
            damage.append(Damage(record_path, f"cannot be read as JSON ({error})"))
    metrics = stage_dir / METRICS
    if metrics.exists():
        damage += jsonl_damage(metrics)
    for checkpoint in sorted((stage_dir / CHECKPOINTS).glob("epoch_*")):
        damage += checkpoint_damage(checkpoint, inherited=False, fresh=True)
        if (checkpoint / MANIFEST).exists() and not manifest_damage(checkpoint / MANIFEST):
            for name, entry in read_json(checkpoint / MANIFEST)["components"].items():
                owner = (checkpoint / entry["dir"]).resolve().parent if entry.get("dir") not in (None, name) else None
                # a parent stage folder that is there but lacks the checkpoint is reported as that stage
                if owner is not None and not owner.parent.parent.exists() and owner not in [d.path for d in lineage]:
                    lineage.append(
                        Damage(owner, f"is missing, with its stage folder: {checkpoint.name}'s `{name}` comes from it")
                    )
    if (stage_dir / COMPLETE).exists():
        if not record:
            damage.append(Damage(record_path, "is missing in a complete stage"))
        else:
            epochs = sorted(set(record.get("save_epochs", [])) | {record.get("epochs")})
            folders = [stage_dir / CHECKPOINTS / f"epoch_{e:04d}" for e in epochs if isinstance(e, int)]
            damage += [Damage(f, "is missing in a complete stage") for f in folders if not f.is_dir()]
    damage += _state_damage(stage_dir, stage_dir.name, list(record.get("train", [])))
    return damage, lineage, record


def _runs(root: Path) -> Dict[Path, dict]:
    """Every run dir of the store (study.json), with its study (or {} when it cannot be read)."""
    runs = {}
    for path in sorted(root.rglob(STUDY)):
        if "cache" in path.relative_to(root).parts:
            continue
        try:
            runs[path.parent] = read_json(path)
        except (OSError, ValueError):
            runs[path.parent] = {}
    return runs


def find_damage(root: Path) -> List[Finding]:
    root = Path(root)
    findings: List[Finding] = []
    runs = _runs(root)
    stages_root = root / "cache" / "stages"
    locks = {}
    for stage_dir in sorted(p for p in stages_root.glob("*") if p.is_dir() and not is_temp_leftover(p.name)):
        damage, lineage, record = check_stage(stage_dir)
        label = f"stage {stage_dir.name} ({record.get('name', '?')})"
        lock = stages_root / f"trajectory_{record['trajectory']}.lock" if record.get("trajectory") else None
        locks[stage_dir] = lock
        if damage:
            findings.append(Finding(label, damage, stage_dir, lock, _stage_dependents(stage_dir.name, runs, root)))
        elif lineage:
            findings.append(
                Finding(
                    label + " is sound, but what it inherits is gone",
                    lineage,
                    None,
                    None,
                    _stage_dependents(stage_dir.name, runs, root),
                    note=True,
                )
            )
    for folder in sorted(
        p for p in (root / "cache" / "samples").glob("*") if p.is_dir() and not is_temp_leftover(p.name)
    ):
        damage = sample_folder_damage(folder, fresh=True)
        if damage:
            checkpoint_id = folder.name.rsplit("-", 1)[0]
            users = [
                str(run.relative_to(root))
                for run, study in runs.items()
                if any(
                    e.get("checkpoint_id") == checkpoint_id
                    for plan in study.get("testing_plan", {}).values()
                    for e in plan
                )
                or folder.resolve() in _swap_corners(run)
            ]
            findings.append(
                Finding(
                    f"samples {folder.name}", damage, folder, Path(str(folder) + ".lock"), [f"run {u}" for u in users]
                )
            )
    for run, study in runs.items():
        damage = [] if study else [Damage(run / STUDY, "cannot be read as JSON")]
        if (run / SAMPLES_INDEX).exists():
            damage += jsonl_damage(run / SAMPLES_INDEX)
        for item in damage:  # both are written again by the next run of the study
            findings.append(Finding(f"run {run.relative_to(root)}", [item], item.path))
    for leftover in walk_temp(root):
        findings.append(
            Finding(
                "leftover",
                [Damage(leftover, "a temp file or folder of a killed writer")],
                leftover,
                _leftover_lock(leftover, root, locks),
            )
        )
    return findings


def _swap_corners(run: Path) -> List[Path]:
    """The sample folders a run's attribution.json names (its swap corners); [] when it has none."""
    try:
        pairs = read_json(run / ATTRIBUTION).get("pairs", [])
        return [(run / folder).resolve() for pair in pairs for folder in pair.get("corners", {}).values()]
    except (OSError, ValueError, AttributeError):
        return []


def _leftover_lock(leftover: Path, root: Path, stage_locks: Dict[Path, Optional[Path]]) -> Optional[Path]:
    """The lock its writer held while writing it, if it is still writing: the stage's, or the sample folder's."""
    parts = leftover.relative_to(root).parts
    if parts[:2] == ("cache", "stages") and len(parts) > 3:
        return stage_locks.get(root / "cache" / "stages" / parts[2])
    if parts[:2] == ("cache", "samples") and len(parts) == 3:  # .<folder>.<random>.tmp beside <folder>
        return root / "cache" / "samples" / (parts[2][1:].rsplit(".", 2)[0] + ".lock")
    return None


def _stage_dependents(identity: str, runs: Dict[Path, dict], root: Path) -> List[str]:
    """The stages below `identity` in the studies that name it, and those runs."""
    found = []
    for run, study in runs.items():
        stages = study.get("stages", {})
        names = [name for name, entry in stages.items() if entry.get("identity") == identity]
        if not names:
            continue
        below, frontier = [], set(names)
        while frontier:
            children = {n for n, e in stages.items() if e.get("parent") in frontier and n not in below}
            below += sorted(children)
            frontier = children
        labels = [f"stage {n} ({stages[n].get('identity')})" for n in below]
        found += [label for label in labels if label not in found]
        found.append(f"run {run.relative_to(root)}")
    return found


def _remove(finding: Finding) -> str:
    path = finding.remove
    if path is None or not path.exists():
        return f"removed {path} (with the folder holding it)"
    lock = FileLock(str(finding.lock), timeout=0) if finding.lock else None
    try:
        if lock:
            lock.acquire()
    except Timeout:
        return f"not removed: {finding.lock} is held by a running study"
    try:
        if path.is_dir() and not is_temp_leftover(path.name):
            remove_folder(path)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    finally:
        if lock:
            lock.release()
    return f"removed {path}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="burnlab-verify", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the run store (paths.runs)")
    parser.add_argument(
        "--repair", action="store_true", help="remove the damaged entries so that the next run rebuilds them"
    )
    args = parser.parse_args(argv)
    if not (args.runs / "cache").is_dir():
        print(
            f"burnlab-verify: {args.runs} is no run store: it has no cache/ folder (paths.runs holds one).",
            file=sys.stderr,
        )
        return 2
    findings = find_damage(args.runs)
    for note in (f for f in findings if f.note):
        print(f"note: {note.what}; the next run of a study naming its parent stage trains that stage again")
        for item in note.damage:
            print(f"  {item}")
    damaged = [f for f in findings if not f.note]
    left = 0
    for finding in damaged:
        print(f"damaged: {finding.what}")
        for item in finding.damage:
            print(f"  {item}")
        if finding.depends:
            print(f"  depends on it: {', '.join(finding.depends)}")
        if args.repair:
            outcome = _remove(finding)
            left += not outcome.startswith("removed")
            print(f"  repair: {outcome}")
    if not damaged:
        print(f"{args.runs}: clean")
        return 0
    if args.repair:
        print(
            f"{len(damaged)} damaged entries, {len(damaged) - left} removed; the next run of their studies "
            f"rebuilds them"
        )
        return 1 if left else 0
    print(f"{len(damaged)} damaged entries; `burnlab-verify {args.runs} --repair` removes them")
    return 1


if __name__ == "__main__":
    sys.exit(main())
