"""Bad config values fail at start with a message naming the key, the value and what is allowed."""

import logging
import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from burnlab.config.compose import load_config
from burnlab.errors import ConfigError
from study_helpers import compose_config, run_study


def _error(overrides) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(compose_config(overrides))
    return str(caught.value)


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("stages.unet_hi.lr=-1", "stages.unet_hi.lr", "> 0"),
        ("stages.unet_hi.lr=0", "stages.unet_hi.lr", "> 0"),
        ("stages.unet_lo.epochs=0", "stages.unet_lo.epochs", ">= 1"),
        ("stages.unet_lo.save_epochs=[0,100]", "stages.unet_lo.save_epochs", "a list of epochs >= 1"),
        ("train.keep_states=sometimes", "train.keep_states", "auto, always, never"),
        ("stages.unet_lo.train=[]", "stages.unet_lo.train", "non-empty"),
        ("stages.unet_lo.train=[vae]", "stages.unet_lo.train", "`vae` is unknown"),
        ("stages.unet_lo.parent=nowhere", "stages.unet_lo.parent", "`base` or one of the stages"),
        ("data.resolution=60", "data.resolution", "multiple of 8"),
        ("train.mixed_precision=fp8", "train.mixed_precision", "no, fp16, bf16"),
        ("sampling.scheduler=plms", "sampling.scheduler", "ddim"),
        ("sampling.dtype=half", "sampling.dtype", "auto, float32, float16, bfloat16"),
        ("model.dtype=fp16", "model.dtype", "auto, float32, float16, bfloat16"),
        ("model.build=sd21", "model.build", "shipped architectures: sd15"),
        ("validation.timesteps=[-5]", "validation.timesteps", "integer timesteps >= 0"),
        ("analysis.clip_model=/", "analysis.clip_model", "/ is not a folder with a config.json"),
        ("analysis.clip_model=./no/such/clip", "analysis.clip_model", "no such folder, and not a hub id"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, key, allowed):
    message = _error(["experiment=burn_unet", override])
    assert f"`{key}`" in message
    assert override.split("=", 1)[1].strip("[]").split(",")[0] in message
    assert allowed in message


def test_a_parent_cycle_is_named():
    message = _error(["experiment=burn_unet", "stages.baseline.parent=unet_hi"])
    assert "stages.baseline.parent" in message and "cycle" in message
    assert "baseline -> unet_hi -> unet_lo -> baseline" in message or "unet_hi -> unet_lo -> baseline" in message


def test_study_experiments_compose_to_the_study_shape():
    config = load_config(compose_config(["experiment=followfox", "model=sd15"]))
    assert list(config.stages) == ["baseline", "unet_lo", "unet_hi", "te_lo", "te_hi"]
    assert config.stages["baseline"].lr == 1.5e-6 and config.stages["baseline"].epochs == 50
    assert config.stages["unet_hi"].lr == 9e-6 and config.stages["unet_hi"].parent == "unet_lo"
    assert config.stages["te_lo"].train == ["text_encoder"] and config.stages["te_lo"].save_epochs == [100, 300, 500]
    assert config.model.path == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the maintained copy


def test_cli_prints_one_paragraph_and_exits_nonzero(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "burnlab.launch.cli",
            "experiment=burn_unet",
            "stages.unet_hi.lr=-1",
            f"paths.runs={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("burnlab:")]
    assert error_lines == [
        "burnlab: config key `stages.unet_hi.lr` has value -1.0, which is not allowed: "
        "a learning rate > 0, e.g. 1.5e-6."
    ]


def test_a_missing_mandatory_value_is_named():
    message = _error(["experiment=burn_te", "data=folder"])
    assert message.startswith("config key `data.path` has value '???'")
    assert "data.path=..." in message


def test_timesteps_beyond_the_models_schedule_fail_before_training(tiny_model, tiny_data, tmp_path):
    with pytest.raises(ConfigError) as caught:
        run_study(tiny_model, tiny_data, tmp_path, "validation.timesteps=[100,2000]")
    message = str(caught.value)
    assert message.startswith("config key `validation.timesteps` has value [100, 2000]")
    assert "timesteps from 0 to 999" in message and "[2000] lie outside" in message
    assert not (tmp_path / "cache" / "stages").exists()  # nothing trained


def test_the_sd15_experiment_sets_model_training_data_and_prompts_together():
    cfg = compose_config(["experiment=followfox_sd15", "data.path=/data/paintings"])
    print(OmegaConf.to_yaml(cfg))  # the composed real-model study (pytest -s shows it)
    config = load_config(cfg)
    assert config.name == "followfox_sd15"
    assert config.model.path == "stable-diffusion-v1-5/stable-diffusion-v1-5" and config.model.dtype == "auto"
    assert config.train.mixed_precision == "bf16" and config.train.gradient_checkpointing
    assert config.data.path == "/data/paintings" and config.data.resolution == 512
    assert (config.sampling.width, config.sampling.height, config.sampling.dtype) == (512, 512, "auto")
    assert config.sampling.prompts["person"].prompt == "a photo of Jennifer Lawrence"
    assert list(config.stages) == ["baseline", "unet_lo", "unet_hi", "te_lo", "te_hi"]
    assert (config.stages["baseline"].lr, config.stages["unet_hi"].lr) == (1.5e-6, 9e-6)


def test_sd15_random_composes_to_a_model_built_in_the_run_store(tmp_path):
    config = load_config(
        compose_config(["experiment=followfox_sd15", "data.path=/data", "model=sd15_random", f"paths.runs={tmp_path}"])
    )
    assert config.model.build == "sd15" and config.model.path == f"{tmp_path}/cache/models/sd15_random-seed0"
    assert config.stages["unet_hi"].lr == 9e-6  # the study's rates, as model=sd15


def test_the_baseline_is_defined_once_and_every_study_follows_it(tmp_path):
    from hydra import compose, initialize_config_dir

    from burnlab.config.compose import CONF_DIR

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)  # the experiment group (conf/experiment/) is copied too
    baseline = conf / "stages" / "baseline.yaml"
    baseline.write_text(baseline.read_text().replace("epochs: 50", "epochs: 7"))
    studies = ("burn_unet", "burn_te", "followfox", "followfox_sd15")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for study in studies:
            cfg = compose(config_name="config", overrides=[f"experiment={study}", "data.path=/data"])
            assert cfg.stages.baseline.epochs == 7, study
    assert not any("baseline:" in (conf / "experiment" / f"{study}.yaml").read_text() for study in studies)


def test_each_model_picks_its_clip_and_no_stage_identity_depends_on_it(tiny_clip):
    """model=sd15 measures with the CLIP its text encoder comes from; the toy world and the
    random-weight stand-in with none. The CLIP only measures: stages train and cache the same."""
    from burnlab.plan.study import plan_stages

    def clip_model(*overrides):
        return load_config(compose_config(["data.path=/data", *overrides])).analysis.clip_model

    assert clip_model("experiment=burn_unet") is None
    assert clip_model("experiment=burn_unet", "model=sd15") == "openai/clip-vit-large-patch14"
    assert clip_model("experiment=followfox_sd15") == "openai/clip-vit-large-patch14"
    assert clip_model("experiment=followfox_sd15", "model=sd15_random") is None
    assert clip_model("experiment=followfox_sd15", f"analysis.clip_model={tiny_clip}") == str(tiny_clip)
    assert clip_model("experiment=followfox_sd15", "analysis.clip_model=null") is None
    identities = [
        {
            name: stage.identity
            for name, stage in plan_stages(
                load_config(compose_config(["experiment=followfox_sd15", "data.path=/data", *overrides])),
                "base0",
                "data0",
                "float32",
            ).items()
        }
        for overrides in ([], ["analysis.clip_model=null"])
    ]
    assert identities[0] == identities[1]


def _planned(*overrides, epochs_swept=()):
    from burnlab.plan.study import plan_stages

    config = load_config(compose_config(["experiment=burn_unet", *overrides]))
    return plan_stages(config, "base0", "data0", "float32", epochs_swept)


def test_save_epochs_beyond_the_stage_are_dropped_with_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="burnlab"):
        dropped = _planned("stages.unet_hi.epochs=100")["unet_hi"]
    assert dropped.config.checkpoint_epochs() == [100]
    assert "stages.unet_hi.save_epochs: 300, 500 lie beyond the stage's 100 epochs and are dropped" in caplog.text
    # the stage is what it trains: the same identity as with the list written out
    assert (
        dropped.identity
        == _planned("stages.unet_hi.epochs=100", "stages.unet_hi.save_epochs=[100]")["unet_hi"].identity
    )


def test_lengths_of_a_stage_share_a_trajectory_unless_the_schedule_depends_on_the_length():
    short, long = (_planned(f"stages.unet_hi.epochs={n}")["unet_hi"] for n in (100, 300))
    assert short.identity != long.identity and short.trajectory == long.trajectory
    assert _planned("stages.unet_hi.epochs=100", "stages.unet_hi.lr=1e-3")["unet_hi"].trajectory != short.trajectory
    cosine = [_planned(f"stages.unet_hi.epochs={n}", "train.lr_scheduler=cosine")["unet_hi"] for n in (100, 300)]
    assert cosine[0].trajectory != cosine[1].trajectory
    warmup = [
        _planned(f"stages.unet_hi.epochs={n}", "train.lr_scheduler=constant_with_warmup", "train.lr_warmup_steps=5")[
            "unet_hi"
        ]
        for n in (100, 300)
    ]
    assert warmup[0].trajectory == warmup[1].trajectory


def test_keep_states_auto_keeps_those_of_the_stages_a_sweep_job_lengthens():
    from burnlab.launch.sweeps import epochs_set_by

    swept = epochs_set_by(["experiment=burn_unet", "stages.unet_hi.epochs=300", "stages.unet_lo.lr=1e-4"])
    assert swept == {"unet_hi"}
    kept = {name: stage.keep_states for name, stage in _planned(epochs_swept=swept).items()}
    assert kept == {"baseline": False, "unet_lo": False, "unet_hi": True}
    assert all(s.keep_states for s in _planned("train.keep_states=always").values())
    assert not any(s.keep_states for s in _planned("train.keep_states=never", epochs_swept=swept).values())
    # keeping states changes no weights: not part of the identity
    assert _planned("train.keep_states=always")["unet_hi"].identity == _planned()["unet_hi"].identity
