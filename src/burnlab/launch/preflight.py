"""What the `burnlab` command checks before Hydra runs a job.

Hydra creates the run dir under `paths.runs` and writes the command line and the composed config
into the run dir's .hydra/ before any burnlab code runs. So a run store that cannot be written
(else a traceback from Hydra's mkdir) and a secret on the command line or in the config (else a
copy in .hydra/) are refused first: the command line is read with Hydra's own parser, and the
config composed with Hydra's compose API from the same overrides; so is a study name that would put
the run dir outside `paths.runs` (`name=../../x`). A sweep's jobs compose their
swept values later; here its other overrides are composed, and every override is checked for
secrets as written; a sweep's launcher settings, and every job's config, are checked before the
launcher submits a job (a SLURM job that cannot run would be found out on the cluster, in its
queue or its logs). Commands
that run no job (--help, --cfg, --info) are left to Hydra.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import (
    BasicSweeper,  # how Hydra expands a sweep into jobs
)
from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from burnlab.config.compose import check_no_secrets, flatten_config, resolve_path
from burnlab.config.schema import check_folder_name
from burnlab.errors import ConfigError
from burnlab.launch.cluster import check_slurm_launcher


def check_before_hydra(argv: list, conf_dir: Path) -> None:
    """Raise a UserError (or Hydra's own error over a bad override) for `burnlab <argv>`."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.experimental_rerun:
        return
    overrides = OverridesParser.create().parse_overrides(args.overrides)
    check_no_secrets((override.key_or_group, override.input_line) for override in overrides)
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    cfg = _compose(args, conf_dir, fixed)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # a bad interpolation (name=${nope}) names its key
    check_no_secrets(flatten_config(resolved).items())
    check_folder_name("name", resolved["name"], "the study's name (its run dir)")  # before Hydra makes the run dir
    check_runs_writable(cfg.paths.runs)
    if args.multirun:
        check_slurm_launcher(_compose(args, conf_dir, fixed, return_hydra_config=True).hydra.launcher)
        check_sweep_jobs(args, conf_dir, overrides)


def check_sweep_jobs(args, conf_dir: Path, overrides: list) -> None:
    """Every job of the sweep validated as its own run will be, before the launcher starts one: a
    bad swept value is one paragraph here, not a failed job (a traceback from submitit, on a
    cluster, in its queue)."""
    from burnlab.config.compose import load_config

    for batch in BasicSweeper.split_arguments(overrides, None):
        for job in batch:
            load_config(_compose(args, conf_dir, job))


def _compose(args, conf_dir: Path, overrides: list, return_hydra_config: bool = False) -> DictConfig:
    """The config as Hydra will compose it, with the command line's config dirs and name."""
    if args.config_path:  # as hydra.main reads it: absolute, or relative to the burnlab package
        conf_dir = conf_dir.parent / args.config_path
    if args.config_dir:
        overrides = overrides + [f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(
            config_name=args.config_name or "config", overrides=overrides, return_hydra_config=return_hydra_config
        )


def check_runs_writable(runs: str) -> None:
    """`paths.runs` must be a folder that exists or can be created, and can be written in; tried
    with a temporary folder in it (or in its nearest existing parent), which is removed again."""
    path = resolve_path(runs)
    existing = next(p for p in (path, *path.parents) if p.exists())
    allowed = "a folder burnlab can create and write in (the run store: run dirs and the stage cache)"
    if not existing.is_dir():
        raise ConfigError("paths.runs", runs, f"{allowed}; {existing} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise ConfigError(
            "paths.runs", runs, f"{allowed}; {existing} cannot be written in ({error.strerror})"
        ) from None
