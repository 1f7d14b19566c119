"""Security: weights load from safetensors only, unless the user opts into pickle files for a
base model; W&B keys never reach the run store, Hydra's copies of the config or the W&B run."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from burnlab.analysis.features import load_clip
from burnlab.analysis.run import AnalysisError
from burnlab.config.schema import ModelConfig
from burnlab.errors import ConfigError
from burnlab.models.components import BaseModel, base_pipeline
from study_helpers import QUICK_STUDY, burnlab_in_process, tiny_overrides

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a W&B API key


def files_holding(folder, text: str) -> list:
    return [str(p) for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


# -- weights -------------------------------------------------------------------------------------
@pytest.fixture
def pickled_unet_model(tiny_model, tmp_path):
    """The tiny pipeline with its UNet saved as diffusion_pytorch_model.bin (a pickle) only."""
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    UNet2DConditionModel.from_pretrained(folder / "unet").save_pretrained(folder / "unet", safe_serialization=False)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    return folder


def test_a_base_model_with_pickle_weights_is_refused_unless_opted_in(pickled_unet_model, tiny_model, caplog):
    with pytest.raises(ConfigError) as caught:
        BaseModel(ModelConfig(path=str(pickled_unet_model)))
    message = str(caught.value)
    assert message.startswith(f"config key `model.path` has value '{pickled_unet_model}'")
    assert (
        "unet/diffusion_pytorch_model.bin is a pickle file" in message and "model.allow_pickle_weights=true" in message
    )

    base = BaseModel(ModelConfig(path=str(pickled_unet_model), allow_pickle_weights=True))
    assert "unet/diffusion_pytorch_model.bin" in caplog.text and "can run code" in caplog.text
    expected = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = base.source("unet").load("unet").state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())
    pipeline_unet = base_pipeline(base.describe()).unet.state_dict()  # what sampling and materialize load
    assert all(torch.equal(pipeline_unet[key], value) for key, value in expected.items())


def test_a_single_file_checkpoint_is_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"a pickle")
    with pytest.raises(
        ConfigError,
        match=r"`model.path` has value '.*model.ckpt'.*single-file checkpoint with model.single_file_configs",
    ):
        BaseModel(ModelConfig(path=str(tmp_path / "model.ckpt")))


def test_the_clip_instrument_loads_safetensors_only(tiny_clip, tmp_path):
    folder = shutil.copytree(tiny_clip, tmp_path / "clip")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(AnalysisError, match="does not load"):
        load_clip(folder)


# -- W&B keys ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, key",
    [
        (f"+logger.wandb.api_key={FAKE_KEY}", "logger.wandb.api_key"),
        (f"logger.wandb.api_key={FAKE_KEY}", "logger.wandb.api_key"),
        (f"+train.hf_token={FAKE_KEY}", "train.hf_token"),
        (f"hydra.job.env_set.WANDB_API_KEY={FAKE_KEY}", "hydra.job.env_set.WANDB_API_KEY"),
        (f"name=study_{FAKE_KEY}", "name"),
        ("name=study_${oc.env:WANDB_API_KEY}", "name"),  # only the composed config holds the key
    ],
)
def test_a_secret_in_the_config_is_refused_before_anything_is_written(override, key, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    status, stderr = burnlab_in_process([*QUICK_STUDY, f"paths.runs={tmp_path}/runs", override], monkeypatch, capsys)
    assert status == 2
    assert stderr.strip().splitlines()[-1].startswith(f"burnlab: config key `{key}`")
    assert FAKE_KEY not in stderr
    assert list(tmp_path.iterdir()) == []  # no run dir, no .hydra/ copy of the command line


def test_a_secret_in_a_sweep_or_a_config_file_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    runs = f"paths.runs={tmp_path}/runs"
    status, stderr = burnlab_in_process(["-m", *QUICK_STUDY, runs, f"name=a,b_{FAKE_KEY}"], monkeypatch, capsys)
    assert status == 2 and "config key `name` holds the value of WANDB_API_KEY" in stderr
    experiments = tmp_path / "conf" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "leaky.yaml").write_text(f"# @package _global_\nname: study_{FAKE_KEY}\n")
    status, stderr = burnlab_in_process(
        ["--config-dir", str(tmp_path / "conf"), "experiment=leaky", runs], monkeypatch, capsys
    )
    assert status == 2 and "config key `name` holds the value of WANDB_API_KEY" in stderr
    assert FAKE_KEY not in stderr and files_holding(tmp_path, FAKE_KEY) == [str(experiments / "leaky.yaml")]


def test_an_api_key_in_the_environment_reaches_no_file(tiny_model, tiny_data, tmp_path):
    """A study with W&B (offline) and TensorBoard on: the key is in no file it writes."""
    overrides = [
        o
        for o in tiny_overrides(tiny_model, tiny_data, tmp_path / "runs", "burn_unet")
        if not o.startswith("logger.wandb.mode")
    ]
    env = {**os.environ, "WANDB_API_KEY": FAKE_KEY}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "burnlab.launch.cli",
            *overrides,
            "logger.wandb.mode=offline",
            "logger.tensorboard=true",
            "stages.unet_lo.epochs=1",
            "stages.unet_lo.save_epochs=[1]",
            "stages.unet_hi.epochs=1",
            "stages.unet_hi.save_epochs=[1]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert FAKE_KEY not in result.stdout + result.stderr
    written = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert "runs/burn_unet/.hydra/overrides.yaml" in written and "runs/burn_unet/study.json" in written
    assert any(p.startswith("runs/burn_unet/wandb/") for p in written)
    assert any(p.startswith("runs/burn_unet/tensorboard/") for p in written)
    assert files_holding(tmp_path, FAKE_KEY) == []
