"""The training fast paths: the same losses as the diffusers example's loop on the same batches,
pointwise convolutions as matrix multiplies, a TE-only stage's UNet without gradients or
optimizer state, SDPA attention, and checkpoints saved in train.save_dtype except the finals
that later stages start from."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from burnlab.training.fast_paths import PointwiseConv2d, pointwise_as_linear
from burnlab.training.trainer import StageTrainer
from study_helpers import (
    TINY_RESOLUTION,
    assert_same,
    final_checkpoint,
    run_study,
    weights,
)

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("train_throughput_bench", ROOT / "bench" / "train_throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# the fast paths compute the same arithmetic in another order (fused AdamW, text states and
# latents encoded in other batches): equal losses within float32 rounding, step after step
LOSS_TOLERANCE = 1e-5  # relative


@pytest.mark.parametrize(
    "train, extra",
    [
        ("unet", []),
        ("text_encoder", []),
        ("both", []),
        ("unet", ["train.channels_last=true", "train.adamw_impl=foreach"]),
        ("unet", ["train.pointwise_as_linear=false"]),
        ("both", ["train.max_grad_norm=0.001"]),
    ],
)  # every step clipped
def test_fast_paths_give_the_reference_loops_losses_on_the_same_batches(tiny_model, tiny_data, tmp_path, train, extra):
    overrides = [
        f"model.path={tiny_model}",
        f"data.path={tiny_data}",
        f"data.resolution={TINY_RESOLUTION}",
        "train.batch_size=4",
        *extra,
    ]
    runner = bench.make_runner(bench.compose_study(overrides, tmp_path, 3, train), tmp_path)
    ours = bench.burnlab_stage(runner)["losses"]
    reference = bench.reference_loop(runner, train, 3)["losses"]
    assert len(ours) == len(reference) == 3 * 2
    assert ours == pytest.approx(reference, rel=LOSS_TOLERANCE)
    assert len(set(ours)) == len(ours)  # the weights moved: every step's loss differs


def test_pointwise_convolutions_as_matrix_multiplies_give_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    convs = torch.nn.Sequential(
        torch.nn.Conv2d(6, 6, 3, padding=1),
        torch.nn.Conv2d(6, 5, 1),
        torch.nn.Conv2d(5, 4, 1, bias=False),
        torch.nn.Conv2d(4, 4, 1, stride=2),
        torch.nn.Conv2d(4, 4, 1, groups=2),
        torch.nn.Conv2d(4, 3, 3, padding=1),
    )
    swapped = copy.deepcopy(convs)
    assert pointwise_as_linear(swapped) == 2  # not the 3x3s, the strided or the grouped one
    assert [type(m) is PointwiseConv2d for m in swapped] == [False, True, True, False, False, False]
    assert swapped.state_dict().keys() == convs.state_dict().keys()
    x = torch.randn(3, 6, 5, 7)
    for model in (convs, swapped):
        model(x).square().sum().backward()
    assert_close(swapped(x), convs(x), rtol=1e-6, atol=1e-6)
    for (name, ours), theirs in zip(swapped.named_parameters(), convs.parameters()):
        assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_te_only_stage_runs_a_unet_without_gradients_or_optimizer_state(tiny_model, tiny_data, tmp_path, monkeypatch):
    seen = {}
    original_run = StageTrainer.run

    def run_and_look(trainer):
        original_run(trainer)
        unet, text_encoder = (trainer.accelerator.unwrap_model(trainer.models[n]) for n in ("unet", "text_encoder"))
        optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        seen[trainer.job.stage.name] = {
            "unet_grads": [p for p in unet.parameters() if p.requires_grad or p.grad is not None],
            "unet_in_optimizer": any(id(p) in optimized for p in unet.parameters()),
            "unet_state": [p for p in unet.parameters() if p in trainer.optimizer.state],
            "text_encoder_state": sum(p in trainer.optimizer.state for p in text_encoder.parameters()),
            "text_states": trainer.text_states,
            "attention": {type(p).__name__ for p in unet.attn_processors.values()},
            "text_attention": text_encoder.config._attn_implementation,
        }

    monkeypatch.setattr(StageTrainer, "run", run_and_look)
    run_study(tiny_model, tiny_data, tmp_path, "sampling.testing_plan=false", experiment="burn_te")
    te_stage = seen["te_lo"]
    assert te_stage["unet_grads"] == [] and not te_stage["unet_in_optimizer"] and te_stage["unet_state"] == []
    assert te_stage["text_encoder_state"] > 0 and te_stage["text_states"] is None
    assert te_stage["attention"] == {"AttnProcessor2_0"} and te_stage["text_attention"] == "sdpa"
    assert seen["baseline"]["text_states"] is None  # it trains the text encoder: nothing to cache


def test_a_unet_only_stage_encodes_each_caption_once(tiny_model, tiny_data, tmp_path, monkeypatch):
    from burnlab.models.encoding import TextConditioner

    calls = []  # the captions of each encoding
    original = TextConditioner.encode
    monkeypatch.setattr(
        TextConditioner,
        "encode",
        lambda self, encoders, captions, device: (
            calls.append(len(captions)) or original(self, encoders, captions, device)
        ),
    )
    study, _ = run_study(
        tiny_model,
        tiny_data,
        tmp_path,
        "sampling.testing_plan=false",
        "validation.every_n_epochs=0",
        "stages.baseline.epochs=1",
        "stages.baseline.save_epochs=[1]",
        experiment="burn_unet",
    )
    # the baseline's 2 steps of 4 captions; each UNet stage encodes its 4 distinct captions and the
    # empty one once, and its 6 steps encode nothing
    assert calls == [4, 4, 5, 5]


def test_checkpoints_are_saved_in_save_dtype_but_the_finals_children_start_from(tiny_model, tiny_data, tmp_path):
    exact, exact_dir = run_study(
        tiny_model, tiny_data, tmp_path / "float32", "sampling.testing_plan=false", experiment="burn_unet"
    )
    half, half_dir = run_study(
        tiny_model,
        tiny_data,
        tmp_path / "float16",
        "sampling.testing_plan=false",
        "train.save_dtype=float16",
        experiment="burn_unet",
    )
    for stage, epoch, dtype in (
        ("baseline", 2, torch.float32),
        ("unet_lo", 1, torch.float16),
        ("unet_lo", 3, torch.float32),
        ("unet_hi", 1, torch.float16),
        ("unet_hi", 3, torch.float16),
    ):
        checkpoint = half_dir / half["stages"][stage]["dir"] / "checkpoints" / f"epoch_{epoch:04d}"
        stored = load_file(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
        assert {v.dtype for v in stored.values()} == {dtype}, (stage, epoch)
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        assert manifest["components"]["unet"]["dtype"] == str(dtype).removeprefix("torch.")
        want = weights(exact_dir / exact["stages"][stage]["dir"] / "checkpoints" / f"epoch_{epoch:04d}", "unet")
        assert_same(weights(checkpoint, "unet"), {k: v.to(dtype).float() for k, v in want.items()})
    # training itself is the same: the children started from exact finals
    assert_same(
        weights(final_checkpoint(half_dir, half, "unet_hi"), "unet"),
        {k: v.half().float() for k, v in weights(final_checkpoint(exact_dir, exact, "unet_hi"), "unet").items()},
    )
    half_bytes = (
        (final_checkpoint(half_dir, half, "unet_hi") / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    )
    full_bytes = (
        (final_checkpoint(exact_dir, exact, "unet_hi") / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    )
    assert half_bytes < 0.52 * full_bytes
    assert half["stages"]["unet_hi"]["identity"] != exact["stages"]["unet_hi"]["identity"]
