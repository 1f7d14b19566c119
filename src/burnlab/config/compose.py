"""Composing a config and checking it: Hydra registration, `load_config`, the checks that span
groups or reach other parts of burnlab (the stage graph, shipped architectures, the analysis'
CLIP rule), the secrets policy and user paths.

The schemas themselves (burnlab.config.schema) check one value at a time and import nothing of
burnlab but its errors; this module sits above them and above what it checks. Every bad value
fails here, before any training, with a `ConfigError` naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from burnlab.config.schema import (
    BASE,
    AnalysisConfig,
    BurnlabConfig,
    ModelConfig,
    SamplingConfig,
    StageConfig,
    check_folder_name,
)
from burnlab.errors import ConfigError, UserError, schema_keys

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # shipped in the package (conf/experiment/ too)
log = logging.getLogger("burnlab")


def _toy_asset(name: str) -> str:
    from burnlab.toy import asset_dir  # only configs that name the toy world need it

    return str(asset_dir(name))


def register_configs() -> None:
    """The schema for conf/config.yaml and the `${toy_asset:NAME}` resolver for the toy world
    (the `burnlab` command adds the sweep job folders' resolver: burnlab.launch.cli)."""
    ConfigStore.instance().store(name="burnlab_schema", node=BurnlabConfig)
    OmegaConf.register_new_resolver("toy_asset", _toy_asset, replace=True)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/config.yaml composed with Hydra overrides, as the `burnlab` command composes it (no
    hydra node): for tools and tests that build a study's config without running the command."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


_GROUPS = ("paths", "model", "data", "train", "lora", "validation", "sampling", "logger", "analysis")


def load_config(cfg: DictConfig) -> BurnlabConfig:
    """Validate a composed config and return it as dataclasses; raises ConfigError."""
    _check_known_keys(cfg, "")
    groups: Dict[str, Any] = {}
    for group in _GROUPS:
        groups[group] = _to_object(cfg[group], group)
    stages = {name: _to_object(cfg.stages[name], f"stages.{name}") for name in cfg.stages}
    check_folder_name("name", cfg.name, "the study's name (its run dir)")
    config = BurnlabConfig(name=cfg.name, stages=stages, analyze=cfg.analyze, **groups)
    check_sampling(config.sampling)
    check_model_build(config.model)
    check_clip_model(config.analysis)
    check_stage_graph(config.stages)
    for name, stage in config.stages.items():
        if stage.dropped_save_epochs:
            log.info(
                "stages.%s.save_epochs: %s lie beyond the stage's %d epochs and are dropped (its last epoch "
                "is always saved)",
                name,
                ", ".join(map(str, stage.dropped_save_epochs)),
                stage.epochs,
            )
    return config


def _check_known_keys(node: DictConfig, prefix: str) -> None:
    """Hydra adds a `+key=value` override even where the schema has no such key, and
    OmegaConf.to_object keeps it as a stray attribute: refuse it, so that a typo never passes
    for a setting."""
    schema = OmegaConf.get_type(node)
    for key, value in node.items_ex(resolve=False):
        if is_dataclass(schema) and key not in {f.name for f in fields(schema)}:
            raise ConfigError(f"{prefix}{key}", value, "no such key; " + schema_keys(schema, prefix[:-1]))
        if isinstance(value, DictConfig):
            _check_known_keys(value, f"{prefix}{key}.")


def _to_object(node: DictConfig, prefix: str):
    try:
        return OmegaConf.to_object(node)
    except ConfigError as error:
        raise error.under(prefix) from None
    except MissingMandatoryValue as error:
        key = error.full_key if error.full_key.startswith(prefix) else f"{prefix}.{error.full_key}"
        raise ConfigError(
            key,
            "???",
            f"a value; this one has no default, set it on the command line ({key}=...) or in an experiment file",
        ) from None


def check_stage_graph(stages: Dict[str, StageConfig]) -> None:
    """Every parent exists and the parents form a tree rooted at `base`."""
    if not stages:
        raise ConfigError("stages", {}, "at least one stage (pick an experiment, e.g. experiment=burn_unet)")
    if BASE in stages:
        raise ConfigError(f"stages.{BASE}", BASE, f"stage names other than `{BASE}`, which names the base model")
    for name in stages:  # a branch's TensorBoard folder is named after its leaf stage
        check_folder_name(f"stages.{name}", name, "a stage name")
    for name, stage in stages.items():
        if stage.parent != BASE and stage.parent not in stages:
            raise ConfigError(
                f"stages.{name}.parent", stage.parent, f"`{BASE}` or one of the stages: {', '.join(stages)}"
            )
    for name in stages:
        seen = [name]
        parent = stages[name].parent
        while parent != BASE:
            if parent in seen:
                cycle = " -> ".join(seen[seen.index(parent) :] + [parent])
                raise ConfigError(
                    f"stages.{name}.parent",
                    stages[name].parent,
                    f"a parent chain that ends at `{BASE}`, not a cycle ({cycle})",
                )
            seen.append(parent)
            parent = stages[parent].parent


def check_sampling(sampling: SamplingConfig) -> None:
    """Sampling that is on needs prompts: a study would train, then show nothing of its testing plan."""
    if not sampling.prompts and (sampling.testing_plan or sampling.every_n_epochs):
        raise ConfigError(
            "sampling.prompts",
            {},
            "at least one prompt set while sampling.testing_plan=true or "
            "sampling.every_n_epochs > 0 (they sample every checkpoint with them); to train without "
            "samples, switch sampling off: sampling.testing_plan=false sampling.every_n_epochs=0",
        )


def check_model_build(model: ModelConfig) -> None:
    """`model.build` names an architecture burnlab ships (burnlab/models/architectures/)."""
    if model.build is not None:
        from burnlab.models.architectures import ARCHITECTURES

        if model.build not in ARCHITECTURES:
            raise ConfigError(
                "model.build", model.build, "null or one of the shipped architectures: " + ", ".join(ARCHITECTURES)
            )


def check_clip_model(analysis: AnalysisConfig) -> None:
    """The analysis' own rule for a CLIP model, checked before any training."""
    if analysis.clip_model is not None:
        from burnlab.analysis.features import clip_model_problem

        problem = clip_model_problem(analysis.clip_model)
        if problem is not None:
            raise ConfigError(
                "analysis.clip_model",
                analysis.clip_model,
                f"null, a hub id such as openai/clip-vit-large-patch14, or a local CLIP model folder "
                f"(transformers' save_pretrained layout; {problem})",
            )


# A config is copied into the run dir (config.yaml, Hydra's .hydra/ with the command line),
# study.json and the W&B run's config: a secret in it would be kept in every one of them.
_SECRET_NAME = re.compile(r"(^|[._/-])(api_?key|token|secret|password|passwd|credentials?)s?($|[._/-])", re.IGNORECASE)
_MIN_KEY_LENGTH = 16  # W&B keys have 40 or more characters; a shorter value would match ordinary text
_KEPT = (
    "burnlab keeps no secret in a config: the run dir, Hydra's .hydra/ copy of the command line, "
    "study.json and the W&B run's config would all hold it"
)


def check_no_secrets(items: Iterable[Tuple[str, Any]]) -> None:
    """Refuse (key, value) pairs of a config or a command line that would keep a secret: a key
    named like one, or a value holding WANDB_API_KEY's. The message never shows the value."""
    api_key = os.environ.get("WANDB_API_KEY", "")
    for key, value in items:
        if _SECRET_NAME.search(key):
            raise UserError(
                f"config key `{key}` is named like a secret (its value is not shown), and {_KEPT}. "
                f"Give W&B its key with the environment variable WANDB_API_KEY or `wandb login`."
            )
        if len(api_key) >= _MIN_KEY_LENGTH and api_key in str(value):
            raise UserError(
                f"config key `{key}` holds the value of WANDB_API_KEY (not shown), and {_KEPT}. "
                f"W&B reads the key from the environment by itself: leave it out of the config."
            )


def flatten_config(nested: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, lists and None as text: the pairs the secrets check reads
    (and what TensorBoard's hparams take)."""
    flat = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def resolve_path(path: str) -> Path:
    """A user path, absolute or relative to the directory burnlab was started in."""
    return Path(path).expanduser().resolve()
