"""Speed settings a stage applies to its UNet: none changes the model or its checkpoints, only
how it runs (memory layout, kernels, compilation, TF32). Each was measured (README, Training
throughput) and is on by default only where it measured faster.

Pointwise convolutions: a 1x1 convolution over channels is a matrix multiply. On a CPU, oneDNN
spends most of a small convolution's time around the arithmetic (layout reorders, primitive
look-ups), so the UNet's 1x1 convolutions (its transformers' projections in and out and the
ResNet shortcuts) run as `linear` on the channels-last view of their input: the same weights,
state dict and checkpoints, the same result within float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PointwiseConv2d(torch.nn.Conv2d):
    """A 1x1, stride-1, unpadded, ungrouped Conv2d computed as a matrix multiply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.movedim(1, -1), self.weight.flatten(1), self.bias).movedim(-1, 1)


def is_pointwise(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def pointwise_as_linear(model: torch.nn.Module) -> int:
    """Turns `model`'s pointwise Conv2d modules into PointwiseConv2d in place (their class only:
    parameters and state dict stay); returns how many."""
    swapped = 0
    for module in model.modules():
        if is_pointwise(module):
            module.__class__ = PointwiseConv2d
            swapped += 1
    return swapped


def apply_fast_paths(unet: torch.nn.Module, train, device: torch.device) -> None:
    """`train`: the TrainConfig. Call after adapters are attached (their layers are swapped too)."""
    if train.pointwise_as_linear:
        pointwise_as_linear(unet)
    if train.channels_last:
        unet.to(memory_format=torch.channels_last)
    if train.compile:
        unet.compile()  # in place: the module, its state dict and checkpoints stay as they are
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = train.tf32
