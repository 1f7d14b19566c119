"""The probe: a small CNN that measures generated toy images against the world's ground truth.

Heads: subject (what is drawn), identity (which named person, None for anything else) and style
(probability that the zorblax ornament style is present). Trained by `make base` on clean world
and styled images and on their VAE round trips (so it reads decoded samples as well as ground
truth); shipped in src/burnlab/toy/assets/probe/.

    from burnlab.toy.probe import load_probe
    probe = load_probe()                  # the shipped probe; load_probe(folder) for another
    probe.predict(images)                 # images: uint8 [N, H, W, 3]
    probe.features(images)                # float32 [N, 256]

    .venv/bin/python -m burnlab.toy.probe      # held-out accuracy of the shipped probe
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from burnlab.toy import asset_dir
from burnlab.toy.style import styled_sample
from burnlab.toy.world import IDENTITY_NAMES, SIZE, SUBJECTS, draw_sample, sample_rng

LABELS: dict[str, list] = {
    "subject": list(SUBJECTS),
    "identity": [None] + IDENTITY_NAMES,
    "style": [False, True],
}
FEATURES = 256
WEIGHTS_FILE = "probe.safetensors"
CONFIG_FILE = "probe.json"
HOLDOUT_SEED = 99


class ProbeNet(nn.Module):
    """Four stride-2 conv stages (64 -> 4 pixels), a feature layer and one linear head per label."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        stages, previous = [], 3
        for width in channels:
            stages += [
                nn.Conv2d(previous, width, 3, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, stride=2, padding=1),
                nn.SiLU(),
            ]
            previous = width
        self.body = nn.Sequential(*stages, nn.Flatten(), nn.Linear(previous * (SIZE // 16) ** 2, FEATURES), nn.SiLU())
        self.subject = nn.Linear(FEATURES, len(LABELS["subject"]))
        self.identity = nn.Linear(FEATURES, len(LABELS["identity"]))
        self.style = nn.Linear(FEATURES, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.body(pixels)
        logits = {
            "subject": self.subject(features),
            "identity": self.identity(features),
            "style": self.style(features).squeeze(-1),
        }
        return features, logits


class Probe:
    """A trained ProbeNet behind a numpy interface (uint8 images in, labels out)."""

    def __init__(self, net: ProbeNet, batch_size: int = 256):
        self.net = net.eval()
        self.labels = LABELS
        self.batch_size = batch_size

    @torch.no_grad()
    def _run(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        features, logits = [], {name: [] for name in LABELS}
        for start in range(0, len(images), self.batch_size):
            batch_features, batch_logits = self.net(to_tensor(images[start : start + self.batch_size]))
            features.append(batch_features.numpy())
            for name, value in batch_logits.items():
                logits[name].append(value.numpy())
        return np.concatenate(features), {name: np.concatenate(v) for name, v in logits.items()}

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._run(images)[0].astype(np.float32)

    def predict(self, images: np.ndarray) -> dict:
        _, logits = self._run(images)
        return {
            "subject": [LABELS["subject"][k] for k in logits["subject"].argmax(-1)],
            "identity": [LABELS["identity"][k] for k in logits["identity"].argmax(-1)],
            "style": (1 / (1 + np.exp(-logits["style"]))).astype(np.float32),
        }


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] (any H, W) -> float [N, 3, 64, 64] in [-1, 1]."""
    images = np.asarray(images)
    if images.shape[1:3] != (SIZE, SIZE):
        images = np.stack(
            [np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BILINEAR)) for image in images]
        )
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1


def load_probe(folder: str | os.PathLike | None = None) -> Probe:
    """The probe saved in `folder`; by default the shipped one."""
    folder = Path(folder) if folder is not None else asset_dir("probe")
    config = json.loads((folder / CONFIG_FILE).read_text())
    net = ProbeNet(tuple(config["channels"]))
    net.load_state_dict(load_file(folder / WEIGHTS_FILE))
    return Probe(net)


def save_probe(net: ProbeNet, folder: str | os.PathLike, accuracy: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / WEIGHTS_FILE)
    channels = [m.out_channels for m in net.body if isinstance(m, nn.Conv2d)][::2]
    config = {"channels": channels, "labels": LABELS, "image_size": SIZE, "holdout_accuracy": accuracy}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------
# data and training


def labelled_images(count: int, seed: int, styled_share: float = 1 / 3) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ground-truth images (a share of them styled) and their label indices."""
    images, targets = [], {name: [] for name in LABELS}
    for k in range(count):
        rng = sample_rng(seed, k)
        if rng.random() < styled_share:
            image, _, labels = styled_sample(rng)
        else:
            drawing = draw_sample(rng)
            image, labels = drawing.composite(), drawing.labels
        images.append(image)
        for name in LABELS:
            targets[name].append(LABELS[name].index(labels[name]))
    return np.stack(images), {name: np.array(v) for name, v in targets.items()}


def accuracy(probe: Probe, images: np.ndarray, targets: dict[str, np.ndarray]) -> dict:
    """Per-head accuracy; identity only over people (everything else is trivially None)."""
    predicted = probe.predict(images)
    subject = np.array([LABELS["subject"].index(s) for s in predicted["subject"]])
    identity = np.array([LABELS["identity"].index(i) for i in predicted["identity"]])
    people = targets["identity"] > 0
    return {
        "subject": float((subject == targets["subject"]).mean()),
        "identity": float((identity[people] == targets["identity"][people]).mean()),
        "style": float(((predicted["style"] > 0.5) == targets["style"].astype(bool)).mean()),
    }


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small shifts, contrast/brightness changes and noise: generated samples are not exact."""
    count = pixels.shape[0]
    shifts = torch.randint(-3, 4, (2,), generator=generator).tolist()
    pixels = torch.roll(pixels, shifts=shifts, dims=(2, 3))
    contrast = 1 + 0.15 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 2
    brightness = 0.1 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 2
    noise = torch.randn(pixels.shape, generator=generator) * 0.06 * torch.rand(count, 1, 1, 1, generator=generator)
    return (pixels * contrast + brightness + noise).clamp(-1, 1)


def train_probe(
    clean: np.ndarray,
    round_trip: np.ndarray,
    targets: dict[str, np.ndarray],
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> ProbeNet:
    """Trains on clean images and their VAE round trips, half and half in every batch."""
    torch.manual_seed(seed)
    net = ProbeNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    sources = (to_tensor(clean), to_tensor(round_trip))
    labels = {name: torch.from_numpy(v) for name, v in targets.items()}
    progress = tqdm(range(steps), desc="probe", unit="step")
    for _ in progress:
        index = torch.randint(len(clean), (batch_size,), generator=generator)
        from_round_trip = torch.rand(batch_size, generator=generator) < 0.5
        pixels = torch.where(from_round_trip[:, None, None, None], sources[1][index], sources[0][index])
        _, logits = net(_augment(pixels, generator))
        loss = (
            F.cross_entropy(logits["subject"], labels["subject"][index])
            + F.cross_entropy(logits["identity"], labels["identity"][index])
            + F.binary_cross_entropy_with_logits(logits["style"], labels["style"][index].float())
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


def holdout_accuracy(probe: Probe, count: int = 600) -> dict:
    images, targets = labelled_images(count, HOLDOUT_SEED)
    return accuracy(probe, images, targets)


if __name__ == "__main__":
    shipped = load_probe(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps(holdout_accuracy(shipped), indent=2))
