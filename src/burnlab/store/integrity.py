"""Checks of what the run store holds before it is used (docs/run_store.md, "Damage").

A checkpoint file is read only after its sha256 matches the one its manifest.json recorded; a
JSON-lines file only when every complete line parses as an object; a sample folder only when its
index rows parse and every PNG it names decodes to the last pixel. Hashing costs about 1.3-1.5
GB/s on this project's CPU machine (README, "Verified reads"), so a file that passed is
remembered in its folder's `.verified.json` by (relative path, size, mtime_ns): the next read
of an unchanged file is a stat, not a hash. An edit in place changes the mtime and is hashed
again; what keeps size and mtime (a tool that restores them) is not seen until the record is
removed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from PIL import Image

from burnlab.errors import UserError
from burnlab.store.files import TMP_SUFFIX, atomic_write_json, read_json, sha256_file
from burnlab.store.layout import COMPLETE, IMAGE_INDEX, VERIFIED

DECODED = "decoded"  # the record's `sha256` for a file checked by decoding it (a sample PNG)


@dataclass(frozen=True)
class Damage:
    """One damaged file or folder of the run store and what is wrong with it."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DamagedStore(UserError):
    """A file of the run store that cannot be used as it is; names it and the command that repairs it."""

    def __init__(self, damage: Damage):
        self.damage = damage
        super().__init__(
            f"the run store file {damage.path} is damaged ({damage.problem}), so it is not used. "
            f"`burnlab-verify {store_root(damage.path)} --repair` removes what is damaged, and the "
            f"next run of the study trains or samples it again."
        )


def store_root(path: Path) -> Path:
    """The run store (`paths.runs`) holding `path`: the folder above its `cache/`; else its folder."""
    path = Path(path)
    for parent in path.parents:
        if parent.name == "cache":
            return parent.parent
    return path.parent


def _stat_key(path: Path) -> List[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _load_record(folder: Path) -> dict:
    try:
        record = read_json(folder / VERIFIED)
    except (OSError, ValueError):  # none yet, or unreadable: every file is checked afresh
        return {}
    return record if isinstance(record, dict) else {}


def _remembered(record: dict, relative: str, key: List[int], expected: str) -> bool:
    entry = record.get(relative)
    return isinstance(entry, dict) and entry.get("stat") == key and entry.get("sha256") == expected


def check_hashed(folder: Path, expected: Dict[str, str], fresh: bool = False) -> List[Damage]:
    """Files of `folder` (relative path -> sha256) that are missing, unreadable or differ.
    `fresh`: hash every file, trusting no record and writing none (burnlab-verify)."""
    folder = Path(folder)
    record, damage, changed = {} if fresh else _load_record(folder), [], False
    for relative, sha in sorted(expected.items()):
        path = folder / relative
        try:
            key = _stat_key(path)
            if _remembered(record, relative, key, sha):
                continue
            actual = sha256_file(path)
        except OSError as error:
            damage.append(Damage(path, f"cannot be read: {error.strerror or error}"))
            continue
        if actual != sha:
            damage.append(Damage(path, f"its sha256 is {actual[:12]}…, its manifest records {sha[:12]}…"))
        elif key == _stat_key(path):  # not rewritten while it was hashed
            record[relative], changed = {"stat": key, "sha256": sha}, True
    if changed and not fresh:
        _save_record(folder, record)
    return damage


def remember_hashed(folder: Path, hashes: Dict[str, str]) -> None:
    """Record files whose hashes were just computed from them (a checkpoint as it is written)."""
    folder = Path(folder)
    record = _load_record(folder)
    for relative, sha in hashes.items():
        record[relative] = {"stat": _stat_key(folder / relative), "sha256": sha}
    _save_record(folder, record)


def _save_record(folder: Path, record: dict) -> None:
    try:
        atomic_write_json(folder / VERIFIED, record)
    except OSError:  # a read-only store is checked, just not remembered
        pass


def jsonl_damage(path: Path) -> List[Damage]:
    """Lines of a JSON-lines file that are not JSON objects; a last line without its newline (a
    writer killed mid-line) is not damage: readers drop it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        return [Damage(path, f"cannot be read: {error.strerror or error}")]
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except (ValueError, UnicodeDecodeError) as error:
            return [Damage(path, f"line {number} is not JSON ({getattr(error, 'msg', error)}): {line[:40]!r}")]
        if not isinstance(row, dict):
            return [Damage(path, f"line {number} is not a JSON object: {line[:40]!r}")]
    return []


def image_damage(path: Path) -> Optional[str]:
    """Why the image at `path` cannot be decoded in full; None when it can."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"cannot be decoded ({error})"
    return None


def sample_folder_damage(folder: Path, fresh: bool = False) -> List[Damage]:
    """A published sample folder (docs/run_store.md): COMPLETE, index.jsonl rows that parse and
    name PNGs inside the folder that decode in full. Decoded PNGs are remembered like hashes
    (`fresh`: as in check_hashed)."""
    folder = Path(folder)
    if not (folder / COMPLETE).exists():
        return [Damage(folder, "has no COMPLETE marker: its writer did not finish")]
    index = folder / IMAGE_INDEX
    if not index.exists():
        return [Damage(index, "is missing")]
    damage = jsonl_damage(index)
    if damage:
        return damage
    record, changed = {} if fresh else _load_record(folder), False
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        relative = json.loads(line).get("path")
        path = (folder / str(relative)).resolve()
        if not isinstance(relative, str) or folder.resolve() not in path.parents:
            return [Damage(index, f"line {number} names {relative!r}, not an image inside the folder")]
        try:
            key = _stat_key(path)
        except OSError as error:
            return [Damage(path, f"cannot be read: {error.strerror or error}")]
        if _remembered(record, relative, key, DECODED):
            continue
        problem = image_damage(path)
        if problem:
            return [Damage(path, problem)]
        record[relative], changed = {"stat": key, "sha256": DECODED}, True
    if changed and not fresh:
        _save_record(folder, record)
    return []


def raise_damage(damage: List[Damage]) -> None:
    if damage:
        raise DamagedStore(damage[0])


def is_temp_leftover(name: str) -> bool:
    """A name the store's atomic writers give their temp files and folders (burnlab.store.files)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def walk_temp(root: Path) -> List[Path]:
    """Every temp leftover below `root`, outermost only."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in list(dirs):
            if is_temp_leftover(name):
                found.append(Path(folder) / name)
                dirs.remove(name)
        found += [Path(folder) / name for name in files if is_temp_leftover(name)]
    return sorted(found)
