"""make bench-train's reference: diffusers' train_text_to_image.py itself, run by
bench/peers/launch_example.py with the stage's settings, and images/s timed the same way on
both sides (the steps after the first epoch)."""

import math

import pytest
import torch
from safetensors.torch import load_file

from study_helpers import TINY_RESOLUTION
from test_throughput import bench  # bench/train_throughput.py, loaded once


def test_images_per_second_leave_the_first_epoch_out():
    # 3 epochs of 2 steps, 20 images an epoch: the last 40 images from the end of step 2 (t=11)
    row = {"step_ends": [10.0, 11.0, 12.0, 14.0, 15.0, 17.0], "epochs": 3, "images": 60}
    assert bench.speed(row) == pytest.approx(40 / 6)
    with pytest.raises(ValueError, match="5 steps over 3 epochs"):
        bench.speed({**row, "step_ends": row["step_ends"][:5]})


def flags(arguments: list) -> dict:
    """--key value pairs (a flag without a value maps to True)."""
    parsed, key = {}, None
    for item in arguments:
        if item.startswith("--"):
            key = item[2:]
            parsed[key] = True
        else:
            parsed[key] = item
    return parsed


def test_the_example_gets_the_stages_settings(tiny_model, tiny_data, tmp_path):
    overrides = [
        f"model.path={tiny_model}",
        f"data.path={tiny_data}",
        f"data.resolution={TINY_RESOLUTION}",
        "train.batch_size=3",
        "train.max_grad_norm=0.5",
        "data.flip_p=0.5",
        "train.mixed_precision=bf16",
        "train.weight_decay=0.02",
        "train.seed=7",
    ]
    config = bench.make_runner(bench.compose_study(overrides, tmp_path, 2, "unet"), tmp_path).config
    got = flags(bench.example_arguments(config, str(tiny_model), tmp_path / "data", tmp_path, 5))
    assert {
        k: got[k]
        for k in (
            "resolution",
            "train_batch_size",
            "num_train_epochs",
            "learning_rate",
            "max_grad_norm",
            "mixed_precision",
            "adam_weight_decay",
            "seed",
        )
    } == {
        "resolution": str(TINY_RESOLUTION),
        "train_batch_size": "3",
        "num_train_epochs": "5",
        "learning_rate": "1e-05",
        "max_grad_norm": "0.5",
        "mixed_precision": "bf16",
        "adam_weight_decay": "0.02",
        "seed": "7",
    }
    assert got["random_flip"] is True and "gradient_checkpointing" not in got
    odd = bench.make_runner(
        bench.compose_study(overrides + ["data.flip_p=0.3"], tmp_path / "odd", 2, "unet"), tmp_path / "odd"
    ).config
    with pytest.raises(SystemExit, match="data.flip_p=0.3"):
        bench.example_arguments(odd, str(tiny_model), tmp_path / "data", tmp_path, 5)


@pytest.mark.skipif(
    not (bench.EXAMPLE_LAUNCHER.parent / "train_text_to_image.py").exists(),
    reason="the diffusers example is not fetched: make bench-peers",
)
def test_the_diffusers_example_trains_the_stages_unet_at_tiny_size(tiny_model, tiny_data, tmp_path):
    overrides = [
        f"model.path={tiny_model}",
        f"data.path={tiny_data}",
        f"data.resolution={TINY_RESOLUTION}",
        "train.batch_size=4",
    ]
    runner = bench.make_runner(bench.compose_study(overrides, tmp_path, 2, "unet"), tmp_path)
    images = len(runner.data.train)
    row = bench.example_row(runner, 2, tmp_path / "example")
    assert len(row["step_ends"]) == 2 * math.ceil(images / 4)  # the launcher timed every optimizer step
    assert bench.speed({**row, "epochs": 2, "images": 2 * images}) > 0
    assert (tmp_path / "example" / "data" / "metadata.jsonl").read_text().count("\n") == images
    trained = load_file(tmp_path / "example" / "output" / "unet" / "diffusion_pytorch_model.safetensors")
    base = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == base.keys()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # it trained the base's UNet
