"""The run store's file primitives: atomic writes, JSON lines, hashing (docs/run_store.md).

Every file and folder is written under a temp name ending in `.tmp`, fsynced, renamed into place
and its directory fsynced, so a kill (or a power cut) at any instruction leaves the old version
or the new one, never half of one; the `.tmp` leftovers of a killed writer are removed by
`remove_temp` under the lock of whoever owns the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

TMP_SUFFIX = ".tmp"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()


def read_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSON-lines file; a last line cut short by a crash is dropped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return
            yield json.loads(line)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def fsync_dir(folder: Path) -> None:
    """Make the names in `folder` (a rename, a new file) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_dir_for(final_dir: Path) -> Path:
    """A new, uniquely named empty folder beside `final_dir` (the same file system, so the rename
    that publishes it is atomic); concurrent writers of the same folder never share one."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=TMP_SUFFIX, dir=final_dir.parent))


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temp dir into place, durably. An existing `final_dir` (left by an
    attempt that was killed before it could finish its work) is first renamed to a temp name:
    between the two renames neither exists, which the owners of such folders allow for (a missing
    checkpoint is written again)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    for folder, _, files in os.walk(tmp_dir):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(folder))
    aside = None
    if final_dir.exists():
        aside = temp_dir_for(final_dir)
        os.replace(final_dir, aside / final_dir.name)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    if aside is not None:
        shutil.rmtree(aside)


def remove_folder(folder: Path) -> None:
    """Remove a published folder as one step: renamed to a temp name first (readers then find it
    gone, not half gone), then deleted; a kill in between leaves a `.tmp` leftover."""
    aside = temp_dir_for(folder)
    os.replace(folder, aside / Path(folder).name)
    fsync_dir(Path(folder).parent)
    shutil.rmtree(aside)


def remove_temp(folder: Path, prefix: str = "", recursive: bool = True) -> int:
    """Remove the `.tmp` leftovers of killed writers in (or below) `folder`, those whose name
    starts with `.` + `prefix`; the caller holds the lock of what they belonged to. Returns how
    many it removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = f".{prefix}*{TMP_SUFFIX}"
    leftovers = list(folder.rglob(pattern) if recursive else folder.glob(pattern))
    for path in sorted(leftovers, key=lambda p: len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(leftovers)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_json(data) -> str:
    """A short stable hash of JSON-able data (identities of stages, checkpoints, sample sets)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def hash_tree(root: Path, files: Iterable[Path]) -> str:
    """Hash of the files' paths relative to `root` and their contents."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(Path(path).relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()[:16]
