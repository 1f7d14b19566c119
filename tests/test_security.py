"""Security: weights load from safetensors only, unless the user opts into pickle files for a
base model."""
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from analysis.features import load_clip
from analysis.model import AnalysisError
from burnlab.components import BaseModel, base_pipeline
from burnlab.config import ModelConfig
from burnlab.errors import ConfigError

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
    assert "unet/diffusion_pytorch_model.bin is a pickle file" in message and "model.allow_pickle_weights=true" in message

    base = BaseModel(ModelConfig(path=str(pickled_unet_model), allow_pickle_weights=True))
    assert "unet/diffusion_pytorch_model.bin" in caplog.text and "can run code" in caplog.text
    expected = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = base.source("unet").load("unet").state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())
    pipeline_unet = base_pipeline(base.describe()).unet.state_dict()  # what sampling and materialize load
    assert all(torch.equal(pipeline_unet[key], value) for key, value in expected.items())


def test_a_single_file_checkpoint_is_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"a pickle")
    with pytest.raises(ConfigError, match=r"`model.path` has value '.*model.ckpt'.* not a single-file checkpoint"):
        BaseModel(ModelConfig(path=str(tmp_path / "model.ckpt")))


def test_the_clip_instrument_loads_safetensors_only(tiny_clip, tmp_path):
    folder = shutil.copytree(tiny_clip, tmp_path / "clip")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(AnalysisError, match="does not load"):
        load_clip(folder)
