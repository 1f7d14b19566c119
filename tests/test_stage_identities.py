"""Every shipped experiment's stage identities, recorded: a change that moves one (a refactor of the
config, the plan or the data loading) would make every existing cache miss, so it must be
deliberate. Regenerate tests/data/stage_identities.json only for a change that is meant to
retrain (and say so in its commit)."""

import json
from pathlib import Path

import pytest
import torch

from burnlab.config.compose import CONF_DIR, compose_config, load_config
from burnlab.data.dataset import load_study_data
from burnlab.models.components import BaseModel
from burnlab.models.precision import dtype_name
from burnlab.plan.study import plan_stages

RECORDED = json.loads((Path(__file__).parent / "data" / "stage_identities.json").read_text())
SHIPPED = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


_BASES, _DATA = {}, {}  # the base model's and the data's identities, each computed once per setting


def identities(overrides):
    config = load_config(compose_config(overrides))
    model_key, data_key = repr(config.model), repr((config.data, config.validation))
    if model_key not in _BASES:
        base = BaseModel(config.model)
        _BASES[model_key] = base.identity, dtype_name(base.frozen_dtype(torch.device("cpu"))), base.components
    if data_key not in _DATA:
        _DATA[data_key] = load_study_data(config.data, config.validation).identity
    identity, frozen_dtype, components = _BASES[model_key]
    planned = plan_stages(config, identity, _DATA[data_key], frozen_dtype, components=components)
    return {name: [p.identity, p.trajectory] for name, p in planned.items()}


def test_every_shipped_experiment_has_recorded_identities():
    recorded = sorted({key.split()[0].removeprefix("experiment=") for key in RECORDED})
    assert recorded == SHIPPED


@pytest.mark.parametrize("key", sorted(RECORDED))
def test_stage_identities_are_the_recorded_ones(key):
    overrides = [part.replace("data.path=toy", "data.path=${toy_asset:style}") for part in key.split()]
    assert identities(overrides) == RECORDED[key]
