"""model=sdxl (SDXL base 1.0 from the hub) and model=sdxl_random compose into the SDXL study
(experiment=followfox_xl) with SDXL's learning rates, and the study plans without the network."""

import socket

import pytest
from omegaconf import OmegaConf

from burnlab.config.compose import load_config
from burnlab.store.layout import XL_COMPONENTS
from study_helpers import compose_config

SDXL_STUDY = [
    "experiment=followfox_xl",
    "model=sdxl",
    "train=sdxl",
    "data=folder",
    "data.path=/data/paintings",
    "data.resolution=1024",
    "sampling=study_xl",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test; the Hugging Face clients are told they are offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_sdxl_study_composes_with_sdxls_model_training_prompts_and_rates():
    cfg = compose_config(SDXL_STUDY)
    print(OmegaConf.to_yaml(cfg))  # the composed SDXL study (pytest -s shows it)
    config = load_config(cfg)
    assert config.name == "followfox_xl"
    assert config.model.path == "stabilityai/stable-diffusion-xl-base-1.0" and config.model.family == "sdxl"
    assert config.model.dtype == "bfloat16" and config.model.build is None
    assert config.model.study_lrs == {"baseline": 1e-6, "lo": 1e-6, "hi": 6e-6}
    assert config.analysis.clip_model == "openai/clip-vit-large-patch14"  # SDXL's first encoder is CLIP ViT-L/14
    assert (config.train.mixed_precision, config.train.gradient_checkpointing) == ("bf16", True)
    assert (config.train.batch_size, config.train.gradient_accumulation_steps) == (1, 4)
    assert config.data.resolution == 1024
    assert (config.sampling.width, config.sampling.height, config.sampling.steps) == (1024, 1024, 30)
    assert config.sampling.prompts["person"].prompt == "a photo of Jennifer Lawrence"
    trains = {name: stage.train for name, stage in config.stages.items()}
    assert trains == {
        "baseline": None,  # every component of the model
        "unet_lo": ["unet"],
        "unet_hi": ["unet"],
        "te_lo": ["text_encoder"],
        "te_hi": ["text_encoder"],
        "te2_lo": ["text_encoder_2"],
        "te2_hi": ["text_encoder_2"],
        "tes_lo": ["text_encoder", "text_encoder_2"],
        "tes_hi": ["text_encoder", "text_encoder_2"],
    }
    lrs = {name: stage.lr for name, stage in config.stages.items()}
    assert lrs["baseline"] == 1e-6 and all(
        lrs[f"{b}_lo"] == 1e-6 and lrs[f"{b}_hi"] == 6e-6 for b in ("unet", "te", "te2", "tes")
    )
    assert lrs["unet_hi"] / lrs["unet_lo"] == pytest.approx(6.0)  # the study's lo -> hi step


def test_the_sdxl_study_plans_without_the_network(no_network):
    from burnlab.models.components import BaseModel
    from burnlab.plan.study import plan_stages

    config = load_config(compose_config(SDXL_STUDY))
    base = BaseModel(config.model)  # a hub id: model.family says what it holds, nothing is fetched
    assert not base.is_local and base.components == XL_COMPONENTS
    planned = plan_stages(config, base.identity, "data0", "bfloat16", components=base.components)
    assert list(planned) == list(config.stages)
    assert planned["baseline"].config.train == list(XL_COMPONENTS)  # every component, text_encoder_2 included
    assert planned["te2_hi"].lineage == ["base", "baseline", "te2_lo", "te2_hi"]
    assert len({stage.identity for stage in planned.values()}) == len(planned)


def test_sdxl_random_composes_to_sdxl_built_in_the_run_store(tmp_path):
    config = load_config(compose_config([*SDXL_STUDY, "model=sdxl_random", f"paths.runs={tmp_path}"]))
    assert config.model.build == "sdxl" and config.model.path == f"{tmp_path}/cache/models/sdxl_random-seed0"
    assert config.model.family == "sdxl" and config.model.dtype == "bfloat16"
    assert config.stages["te2_hi"].lr == 6e-6  # the study's rates, as model=sdxl
    assert config.analysis.clip_model is None  # random weights: nothing to measure with a CLIP
