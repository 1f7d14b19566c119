"""Sweeps on a SLURM cluster: one GPU job per sweep job, one accelerate process per GPU in it.

    burnlab -m hydra/launcher=slurm_gpu hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=4 \\
        experiment=burn_unet stages.unet_hi.lr=2e-4,6e-4

hydra-submitit-launcher (`pip install 'burnlab[cluster]'`) submits each job with sbatch; submitit
starts `tasks_per_node` tasks on the job's node, and each task runs the job's study. burnlab adds
what makes that one accelerate run rather than several studies trained side by side:
- `check_slurm_launcher`, called by the preflight before Hydra starts: the launcher's settings
  (a partition, a task per GPU, one node, a time limit) are checked before anything is submitted;
- `join_submitit_job`, called by each task before the study builds its Accelerator: the task's
  place in the job becomes RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which
  accelerate reads as `accelerate launch` would set them, and rank 0 alone writes the job's log.
"""

from __future__ import annotations

import logging
import os
from typing import NoReturn

from omegaconf import DictConfig

from burnlab.errors import ConfigError

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def check_slurm_launcher(launcher: DictConfig) -> None:
    """Raise a ConfigError over the first setting of `hydra.launcher` that a burnlab GPU job cannot
    run with; launchers other than submitit's SLURM launcher are not checked. (The launcher's schema
    has made every number a whole number already.)"""
    if launcher.get("_target_") != SLURM_LAUNCHER:
        return
    partition = launcher.get("partition")
    if not isinstance(partition, str) or not partition.strip():
        _refuse(
            "partition",
            partition,
            "the SLURM partition the jobs are submitted to (sbatch --partition), e.g. hydra.launcher.partition=gpu",
        )
    gpus = launcher.get("gpus_per_node")
    if gpus is None or gpus < 1:
        _refuse(
            "gpus_per_node", gpus, "a whole number of GPUs per job, 1 or more (each GPU runs one accelerate process)"
        )
    tasks = launcher.get("tasks_per_node")
    if tasks != gpus:
        _refuse(
            "tasks_per_node",
            tasks,
            f"the same as hydra.launcher.gpus_per_node ({gpus}): each task is the "
            f"accelerate process of one GPU (leave tasks_per_node out and it follows gpus_per_node)",
        )
    nodes = launcher.get("nodes")
    if nodes != 1:
        _refuse("nodes", nodes, "1: a job runs on one node (burnlab does not join nodes into one run)")
    timeout = launcher.get("timeout_min")
    if timeout <= 0:
        _refuse("timeout_min", timeout, "the job's time limit in minutes, > 0 (sbatch --time)")
    for key in ("cpus_per_task", "mem_gb"):
        value = launcher.get(key)
        if value is not None and value < 1:
            _refuse(key, value, "null (the partition's default) or a whole number >= 1")


def _refuse(key: str, value, allowed: str) -> NoReturn:
    raise ConfigError(f"hydra.launcher.{key}", value, allowed)


def join_submitit_job() -> None:
    """In a submitit job of several tasks, set the environment accelerate forms its process group
    from, as `accelerate launch` or torchrun would: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR (the job's first node) and MASTER_PORT (drawn from the job id, the same in every
    task); and leave the job's log file to rank 0. Nothing is done outside submitit, in a job of
    one task, or where RANK is set already."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks < 2:
        return
    # CUDA_VISIBLE_DEVICES stays as SLURM set it: accelerate takes GPU LOCAL_RANK modulo the GPUs
    # a task sees, which is right whether a task sees the node's GPUs or only its own
    ranks = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if ranks.rank > 0:
        # Hydra set up every task as the job's only process, each appending to the job's log file;
        # the other ranks' output still reaches their own submitit logs (stdout)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
