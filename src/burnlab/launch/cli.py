"""The `burnlab` command: compose a study from the package's conf/ with Hydra, and run it.

    burnlab experiment=burn_unet                      # the UNet burn on the toy world
    burnlab experiment=burn_te stages.te_hi.lr=3e-4   # override any key
    burnlab -m experiment=burn_unet stages.unet_hi.lr=2e-4,6e-4 hydra/launcher=joblib   # a sweep
    burnlab -m hydra/launcher=slurm_gpu hydra.launcher.partition=gpu ...              # on SLURM (cluster.py)
    accelerate launch --num_processes 2 -m burnlab.launch.cli experiment=burn_unet           # 2 processes

User errors (bad config values, missing data; Hydra's errors over the command line and the
config too) print one paragraph and exit with status 2.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Collection

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from burnlab.config.compose import (
    CONF_DIR,
    check_no_secrets,
    flatten_config,
    load_config,
    register_configs,
)
from burnlab.errors import USER_ERRORS, Interrupted, paragraph
from burnlab.launch import sweeps
from burnlab.launch.cluster import join_submitit_job
from burnlab.launch.preflight import check_before_hydra

log = logging.getLogger("burnlab")


def run(cfg: DictConfig, run_dir: Path, epochs_swept: Collection[str] = ()) -> dict:
    """Validate `cfg`, run the study into `run_dir`, build its outputs; returns study.json.
    `epochs_swept`: the stages whose epochs a sweep job's overrides set (train.keep_states=auto)."""
    flat = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    check_no_secrets(flat.items())  # first: the errors of load_config show values
    config = load_config(cfg)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from burnlab.launch.runner import (
        StudyRunner,  # after the checks: a config error needs no torch or diffusers
    )

    # a study loads components again and again (every stage, checkpoint and swap corner): the
    # stages' own progress bars, not a loading bar per component, are what a user reads
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    with StudyRunner(config, Path(run_dir).resolve(), resolved, flat, epochs_swept) as runner:
        study = runner.run()
    log.info("run dir: %s", run_dir)
    return study


@contextmanager
def _reported():
    """A user error as `burnlab: <one paragraph>` on stderr, and exit status 2; a run stopped by
    a signal with the command that resumes it, and 128 + the signal."""
    try:
        yield
    except Interrupted as error:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"burnlab: {error} Resume with: {resume_command()}", file=sys.stderr)
        sys.exit(error.exit_code)
    except USER_ERRORS as error:
        print(f"burnlab: {paragraph(error)}", file=sys.stderr)
        sys.exit(2)


def resume_command() -> str:
    """The command line this process was started with: running it again resumes the study."""
    program = sys.argv[0]  # as typed: .venv/bin/burnlab, say
    if Path(program).name in ("cli.py", "__main__.py"):
        program = f"{sys.executable} -m burnlab.launch.cli"
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    with _reported():  # here too: an error leaving a job makes Hydra print "Error executing job" first
        join_submitit_job()  # a SLURM job's tasks: one accelerate process each (no-op elsewhere)
        hydra_config = HydraConfig.get()
        run_dir = Path(hydra_config.runtime.output_dir)
        if hydra_config.mode != RunMode.MULTIRUN:
            run(cfg, run_dir)
            return
        overrides = list(hydra_config.overrides.task)
        if int(os.environ.get("RANK", "0")) == 0:
            sweeps.write_job_record(run_dir, overrides, hydra_config.job.num)
        run(cfg, run_dir, sweeps.epochs_set_by(overrides))


def main() -> None:
    register_configs()
    # the sweep dir's job folders are named from their overrides (conf/config.yaml: hydra.sweep.subdir)
    OmegaConf.register_new_resolver("burnlab_job_folder", sweeps.job_folder_name, replace=True)
    if int(os.environ.get("RANK", "0")) > 0:
        # `accelerate launch` starts this once per process, and every rank composes the same run
        # dir; only rank 0 writes there (Hydra's .hydra/ copy and log file included)
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    # Hydra raises its errors (a bad override, an unknown key or config option) instead of printing
    # them over several lines with a hint about stack traces; _reported words them as one paragraph
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with _reported():
        check_before_hydra(sys.argv[1:], CONF_DIR)
        _hydra_main()


if __name__ == "__main__":
    main()
