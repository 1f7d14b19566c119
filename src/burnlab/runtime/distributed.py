"""Work shared by several processes (`accelerate launch`): who does which share, and putting
the shares together on every process.

Training batches, validation images and sample images are split with `shard`; every process
makes the same random draws for the whole set and keeps its share, so results do not depend on
the number of processes.
"""

from __future__ import annotations

from typing import List


def shard(size: int, world: int, rank: int) -> slice:
    """Rank `rank`'s share of `size` items: contiguous, in order, sizes differing by at most one."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def gather_shards(accelerator, mine: list) -> List:
    """Every rank's `mine` (its shard's results, in shard order) concatenated in rank order, on
    every rank. A collective: every rank must call it."""
    if accelerator.num_processes == 1:
        return list(mine)
    from accelerate.utils import gather_object

    return list(gather_object(list(mine)))


def any_rank(accelerator, flag: bool) -> bool:
    """Whether `flag` is true on any rank, on every rank (a collective with several processes),
    so that all of them take the same branch."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item())
