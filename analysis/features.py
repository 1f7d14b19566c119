"""The measuring instruments behind the feature-space metrics: the toy probe and a local CLIP.

    instruments = load_instruments(feature_space="auto", clip_dir=None)
    instruments.features(images)   # uint8 [N, H, W, 3] -> float32 [N, D], or None when unavailable

`auto` uses CLIP image features when a local CLIP model folder is given, else the toy probe's
features when the toy world's probe is installed (entry point `burnlab.probes: toy`). Nothing is downloaded: CLIP loads with
local_files_only. Tests inject their own extractor (`Instruments(features=..., ...)`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from analysis.model import AnalysisError
from analysis.defaults import FEATURE_SPACES



@dataclass
class Instruments:
    """features: uint8 [N,H,W,3] -> float [N,D] (None: no feature space); probe: has
    .predict(images) -> {"subject": [...], "identity": [...], "style": float [N]};
    clip: a ClipModel for CLIP scores; notes: what is unavailable and why."""
    features: Callable[[np.ndarray], np.ndarray] | None = None
    feature_space: str = "none"
    probe: Any | None = None
    clip: "ClipModel | None" = None
    notes: list[str] = field(default_factory=list)


class ClipModel:
    """A CLIP model from a local folder (transformers' CLIPModel + CLIPProcessor)."""

    def __init__(self, folder: Path):
        import torch
        from transformers import CLIPModel, CLIPProcessor
        self.torch = torch
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def image_features(self, images: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            inputs = self.processor(images=list(images), return_tensors="pt")
            return projected(self.model.get_image_features(**inputs))

    def text_features(self, prompt: str) -> np.ndarray:
        with self.torch.no_grad():
            inputs = self.processor(text=[prompt], return_tensors="pt", padding=True,
                                    truncation=True)
            return projected(self.model.get_text_features(**inputs))


def projected(output) -> np.ndarray:
    """CLIP's projected embeddings: transformers 4 returns them as a tensor, transformers 5 as
    the pooler_output of a model output."""
    embeddings = getattr(output, "pooler_output", output)
    return embeddings.float().numpy()


PROBES = "burnlab.probes"  # the entry-point group through which a world offers its probe


def load_toy_probe() -> tuple[Any | None, str | None]:
    """(the toy probe, None), or (None, why it is unavailable). The toy world offers its probe as
    the entry point `toy` of the group `burnlab.probes` (pyproject.toml): a loader returning an
    object with .features(images) and .predict(images); the analysis imports no burnlab code."""
    from importlib.metadata import entry_points

    found = list(entry_points(group=PROBES, name="toy"))
    if not found:
        return None, f"no probe is installed (entry point `toy` in the group `{PROBES}`)"
    try:
        return found[0].load()(), None
    except Exception as error:  # optional instrument: any failure only means "not measured"
        return None, f"the toy probe ({found[0].value}) is unavailable ({type(error).__name__}: {error})"


def load_instruments(feature_space: str = "auto", clip_dir: Path | None = None, use_probe: bool = True,
                     probe_loader: Callable[[], tuple[Any, str | None]] = load_toy_probe) -> Instruments:
    """The instruments the options ask for; what is unavailable is noted, not fatal, except an
    option that names something unusable (a bad feature space, a folder that is not CLIP)."""
    if feature_space not in FEATURE_SPACES:
        raise AnalysisError(f"--features {feature_space!r} is not a feature space; expected one of "
                            f"{', '.join(FEATURE_SPACES)}.")
    if feature_space == "clip" and clip_dir is None:
        raise AnalysisError("--features clip needs --clip-model DIR (a local CLIP model folder).")
    instruments = Instruments()
    if clip_dir is None:
        instruments.notes.append("CLIP score not measured: no --clip-model folder given.")
    elif not (Path(clip_dir) / "config.json").is_file():
        raise AnalysisError(f"--clip-model {clip_dir}: no config.json there; expected a local CLIP "
                            f"model folder (transformers' save_pretrained layout). Nothing is "
                            f"downloaded.")
    else:
        instruments.clip = ClipModel(Path(clip_dir))
    if use_probe:
        instruments.probe, why_not = probe_loader()
        if why_not:
            instruments.notes.append(f"Probe style score and subject accuracy not measured: {why_not}.")
    if instruments.clip is not None and feature_space in ("auto", "clip"):
        instruments.features, instruments.feature_space = instruments.clip.image_features, "CLIP image features"
    elif instruments.probe is not None and feature_space in ("auto", "probe"):
        instruments.features, instruments.feature_space = instruments.probe.features, "toy probe features"
    elif feature_space != "none":
        instruments.notes.append("Feature-space variability and style distance not measured: no "
                                 "feature extractor (toy probe or --clip-model) is available.")
    return instruments
