"""Read back what W&B wrote offline: the records of a `run-*.wandb` file.

wandb ships no Python reader for it, but its framing is LevelDB's log format: 32 KiB blocks,
each chunk a 7-byte header (crc32 4, length 2 little-endian, type 1: FULL 1, FIRST 2, MIDDLE 3,
LAST 4) and its payload; a block's tail shorter than a header is padding. The first block
starts with wandb's own 7-byte file header (`:W&B` magic, version). The payloads put together
are `wandb.proto.wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Dict, Iterator, List

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[object]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER:  # the block's padding
            position += room
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        payload = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 0 and length == 0:  # zeros: nothing more written
            break
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _value(item) -> object:
    return json.loads(item.value_json)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history(path: Path) -> List[Dict[str, object]]:
    """The run's history rows as {key: value} (media as their JSON descriptions), with `_step`."""
    return [
        {_key(item): _value(item) for item in record.history.item}
        for record in records(path)
        if record.WhichOneof("record_type") == "history"
    ]


def config(path: Path) -> Dict[str, object]:
    """The run's config: the one given at init (in the run record), then later updates."""
    values: Dict[str, object] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            values.update({_key(item): _value(item) for item in updates})
    return values


def summary(path: Path) -> Dict[str, object]:
    values: Dict[str, object] = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            values.update({_key(item): _value(item) for item in record.summary.update})
    return values


def run_name(path: Path) -> str:
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run.display_name
    raise AssertionError(f"{path}: no run record")


def _has_exit_record(file: Path) -> bool:
    if file.stat().st_size < HEADER:  # not even W&B's file header yet
        return False
    return any(record.WhichOneof("record_type") == "exit" for record in records(file))


def offline_runs(run_dir: Path, wait: float = 30.0) -> Dict[str, Path]:
    """The run dir's offline W&B runs, by display name -> their .wandb file, each read once it
    holds its exit record: W&B's service process writes the file, and once (in a full test run)
    a run's finish() returned before its records were on disk."""
    files = [next(folder.glob("run-*.wandb")) for folder in (Path(run_dir) / "wandb").glob("offline-run-*")]
    for file in files:
        deadline = time.monotonic() + wait
        while not _has_exit_record(file) and time.monotonic() < deadline:
            time.sleep(0.2)
    return {run_name(file): file for file in files}
