"""The measuring instruments behind the feature-space metrics: the toy probe and CLIP.

    instruments = load_instruments(feature_space="auto", clip_model=None)
    instruments.features(images)   # uint8 [N, H, W, 3] -> float32 [N, D], or None when unavailable

`auto` uses CLIP image features when a CLIP model is given, else the toy probe's features when
the toy world's probe is installed (entry point `burnlab.probes: toy`). A CLIP model is a local
folder (transformers' save_pretrained layout) or a hub id: taken from the local Hugging Face
cache when it is there, else downloaded when the hub answers, else left out with a note saying
how to get it (load_clip). Tests inject their own extractor (`Instruments(features=..., ...)`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from burnlab.analysis.defaults import FEATURE_SPACES
from burnlab.analysis.run import AnalysisError

CLIP_EXAMPLE = "openai/clip-vit-large-patch14"  # SD 1.5's text encoder is this CLIP's
CLIP_MEASURES = "CLIP score, CLIP variability and CLIP style distance not measured"


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
    """A CLIP model (transformers' CLIPModel + CLIPProcessor) from a folder or a hub id, on the
    GPU when there is one. Raises OSError when the files are not there, ValueError when they
    are not a CLIP model's."""

    BATCH = 32  # images per forward pass, so that a training set of any size fits in memory

    def __init__(self, source: str | Path, local_files_only: bool = True):
        import torch
        from transformers import AutoConfig, CLIPModel, CLIPProcessor

        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        if config.model_type != "clip":  # CLIPModel would load e.g. a CLIP text encoder half random
            raise ValueError(f"its config describes a {config.model_type!r} model, not CLIP (model_type 'clip')")
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # safetensors only, as burnlab's models: pickle weights (pytorch_model.bin) can run code when loaded
        self.model = CLIPModel.from_pretrained(
            source, config=config, local_files_only=local_files_only, use_safetensors=True
        )
        self.model = self.model.to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(source, local_files_only=local_files_only)

    def image_features(self, images: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return np.concatenate(
                [
                    projected(
                        self.model.get_image_features(
                            **self.processor(images=list(images[start : start + self.BATCH]), return_tensors="pt").to(
                                self.device
                            )
                        )
                    )
                    for start in range(0, len(images), self.BATCH)
                ]
            )

    def text_features(self, prompt: str) -> np.ndarray:
        with self.torch.no_grad():
            inputs = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
            return projected(self.model.get_text_features(**inputs.to(self.device)))


def projected(output) -> np.ndarray:
    """CLIP's projected embeddings: transformers 4 returns them as a tensor, transformers 5 as
    the pooler_output of a model output."""
    embeddings = getattr(output, "pooler_output", output)
    return embeddings.float().cpu().numpy()


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


def clip_model_problem(spec: str | Path) -> str | None:
    """Why `spec` can name no CLIP model, or None when it can: an existing path must be a folder
    whose config.json is a CLIP model's; anything else must be a hub id (owner/name). Checked
    without loading or downloading anything, so a study can check it before training."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(spec).strip()
    if not text:
        return "an empty name"
    folder = Path(text).expanduser()
    if folder.exists():
        config = folder / "config.json"
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except OSError:
            return f"{folder} is not a folder with a config.json"
        except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
            return f"{config} is not a model config (a JSON object)"
        if model_type != "clip":
            return f"{config} describes a {model_type!r} model, not CLIP (model_type 'clip')"
        return None
    try:
        validate_repo_id(text)
    except HFValidationError:
        return "no such folder, and not a hub id (owner/name)"
    return None


def load_clip(spec: str | Path) -> tuple[ClipModel | None, str | None]:
    """(the CLIP model, None), or (None, why CLIP is not measured). A folder is loaded as it is;
    a hub id from the local Hugging Face cache (local_files_only first), else downloaded when
    the hub answers. A hub id that cannot be had is a note, not a failed analysis; a value that
    names no CLIP model (clip_model_problem) or a folder that does not load is an AnalysisError."""
    expected = (
        f"expected a hub id such as {CLIP_EXAMPLE} or a local CLIP model folder "
        f"(transformers' save_pretrained layout: config.json, .safetensors weights, processor files)"
    )
    problem = clip_model_problem(spec)
    if problem:
        raise AnalysisError(f"CLIP model {str(spec)!r} (--clip-model, analysis.clip_model): {problem}; {expected}.")
    hub_id = str(spec).strip()
    folder = Path(hub_id).expanduser()
    if folder.exists():
        try:
            return ClipModel(folder), None
        except (OSError, ValueError) as error:
            raise AnalysisError(
                f"CLIP model folder {folder} (--clip-model, analysis.clip_model) does not load ({error}); {expected}."
            ) from None
    try:
        return ClipModel(hub_id), None
    except ValueError as error:  # in the local cache, but not a CLIP model
        where = f"is not a CLIP model ({error})"
    except OSError:  # not (completely) in the local cache: ask the hub
        where = hub_problem(hub_id)
        if where is None:
            try:
                return ClipModel(hub_id, local_files_only=False), None
            except (OSError, ValueError) as error:
                where = f"could not be loaded from the hub ({error})"
    return None, (
        f"CLIP model {hub_id} {where}: {CLIP_MEASURES}; download it with `hf download "
        f"{hub_id}` or set analysis.clip_model=/path (burnlab-analyze: --clip-model /path)."
    )


def hub_problem(hub_id: str) -> str | None:
    """Why the hub cannot give `hub_id` (unreachable, offline mode, no such model), or None. One
    quick request: a download attempt retries an unreachable hub for tens of seconds."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import HfHubHTTPError

    try:
        model_info(hub_id)
    except HfHubHTTPError as error:  # the hub answered: no such model, gated, private
        return f"is not in the local Hugging Face cache and the hub refuses it ({str(error).splitlines()[0]})"
    except Exception:  # offline mode, no network, a proxy: the client raises many kinds of error
        return "not found in the local Hugging Face cache and the hub is unreachable"
    return None


def load_instruments(
    feature_space: str = "auto",
    clip_model: str | Path | None = None,
    use_probe: bool = True,
    probe_loader: Callable[[], tuple[Any, str | None]] = load_toy_probe,
) -> Instruments:
    """The instruments the options ask for; what is unavailable is noted, not fatal, except an
    option that names something unusable (a bad feature space, a folder that is not CLIP)."""
    if feature_space not in FEATURE_SPACES:
        raise AnalysisError(
            f"--features {feature_space!r} is not a feature space; expected one of {', '.join(FEATURE_SPACES)}."
        )
    if feature_space == "clip" and clip_model is None:
        raise AnalysisError("--features clip needs --clip-model (a hub id or a local CLIP model folder).")
    instruments = Instruments()
    if clip_model is None:
        instruments.notes.append(
            "CLIP score not measured: no CLIP model given (analysis.clip_model, burnlab-analyze --clip-model)."
        )
    else:
        instruments.clip, why_not = load_clip(clip_model)
        if why_not:
            instruments.notes.append(why_not)
    if use_probe:
        instruments.probe, why_not = probe_loader()
        if why_not:
            instruments.notes.append(f"Probe style score and subject accuracy not measured: {why_not}.")
    if instruments.clip is not None and feature_space in ("auto", "clip"):
        instruments.features, instruments.feature_space = instruments.clip.image_features, "CLIP image features"
    elif instruments.probe is not None and feature_space in ("auto", "probe"):
        instruments.features, instruments.feature_space = instruments.probe.features, "toy probe features"
    elif feature_space != "none":
        instruments.notes.append(
            "Feature-space variability and style distance not measured: no "
            "feature extractor (toy probe or CLIP model) is available."
        )
    return instruments
