"""The model's parts: where each one is loaded from, and the base model's identity.

A component source is a diffusers folder plus a subfolder: the base model (hub id or local
folder, `subfolder="unet"`) or a checkpoint directory that saved that component. The same
`from_pretrained` code loads the toy model, a local SD 1.5 folder and a hub id, with
`use_safetensors=True`: pickle weights (.bin, .ckpt, .pt) can run code when loaded, so a base
model that has only those is refused unless the user opts in (`model.allow_pickle_weights`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from burnlab.config.schema import ModelConfig
from burnlab.errors import ConfigError, UserError
from burnlab.models.encoding import TOKENIZER_FOLDERS, TextConditioner
from burnlab.models.precision import resolve_dtype
from burnlab.store.files import hash_json, hash_tree
from burnlab.store.layout import COMPONENTS, FAMILIES, XL_COMPONENTS, components_of

MODEL_CLASSES = {
    "unet": UNet2DConditionModel,
    "text_encoder": CLIPTextModel,
    "text_encoder_2": CLIPTextModelWithProjection,  # SDXL's second encoder (OpenCLIP bigG), with its projection
    "vae": AutoencoderKL,
}
# the pipeline class of each family's components, as model_index.json names it
PIPELINE_CLASSES = {COMPONENTS: "StableDiffusionPipeline", XL_COMPONENTS: "StableDiffusionXLPipeline"}
# what each family's pipeline is loaded without: SD's safety checker, SDXL's invisible watermark
PIPELINE_OPTIONS = {
    COMPONENTS: {"safety_checker": None, "requires_safety_checker": False},
    XL_COMPONENTS: {"add_watermarker": False},
}


def index_components(index: dict) -> tuple:
    """The components a pipeline's model_index.json (as a dict) describes: SDXL's where it names a
    text_encoder_2, else SD's."""
    return XL_COMPONENTS if "text_encoder_2" in index else COMPONENTS


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")  # weight files torch.load unpickles
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
log = logging.getLogger("burnlab")


@dataclass(frozen=True)
class Source:
    """Where one component's weights live."""

    root: str  # diffusers folder or hub id
    subfolder: str
    revision: Optional[str] = None
    variant: Optional[str] = None
    allow_pickle: bool = False  # the base model's opt-in (model.allow_pickle_weights); checkpoints are safetensors
    # a LoRA file whose adapter for this component rides on these weights (burnlab.models.adapters)
    lora: Optional[str] = None

    def load(self, component: str, dtype: torch.dtype = torch.float32):
        model = _from_pretrained(MODEL_CLASSES[component], self, dtype=dtype)
        if self.lora:
            from burnlab.models.adapters import load_adapter

            load_adapter(model, component, self.lora)
        return model


def base_source(base: dict, subfolder: str) -> Source:
    """One part of the base model described by `BaseModel.describe()`."""
    return Source(
        base["path"], subfolder, base.get("revision"), base.get("variant"), base.get("allow_pickle_weights", False)
    )


def base_pipeline(base: dict, **kwargs):
    """The base model described by `BaseModel.describe()` as its family's pipeline
    (StableDiffusionPipeline without safety checker, or StableDiffusionXLPipeline without
    watermarker); `kwargs` go to from_pretrained (e.g. dtype)."""
    import diffusers

    return getattr(diffusers, PIPELINE_CLASSES[components_of(base)]).from_pretrained(
        base["path"],
        revision=base.get("revision"),
        variant=base.get("variant"),
        use_safetensors=_use_safetensors(base.get("allow_pickle_weights", False)),
        **PIPELINE_OPTIONS[components_of(base)],
        **kwargs,
    )


def _use_safetensors(allow_pickle: bool) -> Optional[bool]:
    # from_pretrained's None: safetensors where a component has them, else its pickle file
    return None if allow_pickle else True


def _from_pretrained(cls, source: Source, **kwargs):
    extra = {"use_safetensors": _use_safetensors(source.allow_pickle)} if cls is not CLIPTokenizer else {}
    if source.variant and cls is not CLIPTokenizer:
        extra["variant"] = source.variant
    try:
        return cls.from_pretrained(source.root, subfolder=source.subfolder, revision=source.revision, **extra, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        problem = (
            f"cannot load `{source.subfolder}` from {source.root} (revision {source.revision or 'main'}): "
            f"{first_line.rstrip('.')}"
        )
        weights = "with .safetensors weights (pickle weights such as .bin only with model.allow_pickle_weights=true)"
        if not Path(source.root).is_dir():  # a hub id: only the base model comes from the hub
            raise ConfigError(
                "model.path",
                source.root,
                f"a hub id that the hub or the local Hugging Face cache "
                f"holds {weights}, or a local diffusers folder; {problem}",
            ) from None
        raise UserError(
            f"{problem}. A diffusers folder has unet/, text_encoder/, vae/, tokenizer/, scheduler/ {weights}."
        ) from None


class BaseModel:
    """The base model named by `model.*`: a local diffusers folder or a hub id; with
    `model.build`, a folder built once with seeded random weights (burnlab.models.architectures)."""

    def __init__(self, config: ModelConfig):
        self.config = config
        path = Path(config.path).expanduser()
        if config.build:
            _build_once(config.build, path.resolve(), config.build_seed)
        if path.is_file():
            raise ConfigError(
                "model.path",
                config.path,
                "a diffusers pipeline folder (model_index.json, unet/, text_encoder/, vae/) or a hub "
                "id; a single-file checkpoint with model.single_file_configs set to the diffusers folder or "
                "cached hub id of its family, from which the burnlab command converts it once",
            )
        if path.is_dir():
            self.root, self.is_local = str(path.resolve()), True
        elif _HUB_ID.match(config.path) and not config.path.startswith((".", "/", "~")):
            self.root, self.is_local = config.path, False
        else:
            raise ConfigError(
                "model.path",
                config.path,
                "an existing local diffusers folder or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5",
            )
        if self.is_local and not (path / "model_index.json").exists():
            raise ConfigError(
                "model.path",
                config.path,
                "a diffusers pipeline folder (with model_index.json, unet/, text_encoder/, vae/)",
            )
        if self.is_local and _pipeline_class(path) not in PIPELINE_CLASSES.values():
            raise ConfigError(
                "model.path",
                config.path,
                f"a Stable Diffusion (1.x, 2.x) or SDXL pipeline folder: its model_index.json names "
                f"{_pipeline_class(path) or 'no readable pipeline class'}, and the harness trains "
                f"{' and '.join(PIPELINE_CLASSES.values())} models",
            )
        pickled = _pickle_only_weights(path) if self.is_local else []
        if pickled and not config.allow_pickle_weights:
            raise ConfigError(
                "model.path",
                config.path,
                f"a diffusers folder with .safetensors weights; {pickled[0].relative_to(path)} is a "
                f"pickle file, which can run code when loaded: convert it to safetensors, or set "
                f"model.allow_pickle_weights=true for a model you trust",
            )
        if config.allow_pickle_weights and (pickled or not self.is_local):
            log.warning(
                "model.allow_pickle_weights=true: the parts of %s without .safetensors weights load "
                "from pickle files%s, which can run code when loaded",
                config.path,
                f" ({', '.join(str(p.relative_to(path)) for p in pickled)})" if pickled else "",
            )
        self._identity: Optional[str] = None
        self._components: Optional[tuple] = None

    @property
    def identity(self) -> str:
        """Content hash of a local folder; hub id + revision + variant for the hub."""
        if self._identity is None:
            if self.is_local:
                root = Path(self.root)
                files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
                self._identity = hash_tree(root, files)
            else:
                self._identity = hash_json(["hub", self.root, self.config.revision, self.config.variant])
        return self._identity

    def source(self, component: str) -> Source:
        return Source(self.root, component, self.config.revision, self.config.variant, self.config.allow_pickle_weights)

    @property
    def components(self) -> tuple:
        """What the model trains and swaps: (unet, text_encoder), or SDXL's (unet, text_encoder,
        text_encoder_2): `model.family`, else read from its model_index.json (a hub id's from the
        hub or its cache). A local folder's model_index.json must agree with model.family."""
        if self._components is None:
            self._components = self._read_components()
        return self._components

    def _read_components(self) -> tuple:
        family = self.config.family
        if not self.is_local and family:
            return FAMILIES[family]
        if self.is_local:
            index = json.loads((Path(self.root) / "model_index.json").read_text())
        else:
            from diffusers import DiffusionPipeline

            try:
                index = DiffusionPipeline.load_config(self.root, revision=self.config.revision)
            except (OSError, ValueError, EnvironmentError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
                raise ConfigError(
                    "model.family",
                    None,
                    f"sd or sdxl for a hub id whose model_index.json is neither in the local Hugging Face "
                    f"cache nor reachable ({self.root}: {first_line})",
                ) from None
        found = index_components(index)
        if family and FAMILIES[family] != found:
            actual = next(name for name, components in FAMILIES.items() if components == found)
            raise ConfigError(
                "model.family",
                family,
                f"{actual}, the family of {self.config.path} (its model_index.json "
                f"{'names' if actual == 'sdxl' else 'has no'} text_encoder_2), or null",
            )
        return found

    def tokenizer(self) -> CLIPTokenizer:
        """The first text encoder's tokenizer (SD's only one)."""
        return _from_pretrained(CLIPTokenizer, self.source("tokenizer"))

    def conditioner(self) -> TextConditioner:
        """Captions to the UNet's conditioning, with each text encoder's own tokenizer."""
        return TextConditioner(
            {
                name: _from_pretrained(CLIPTokenizer, self.source(TOKENIZER_FOLDERS[name]))
                for name in self.components[1:]
            }
        )

    def noise_scheduler(self) -> DDPMScheduler:
        return _from_pretrained(DDPMScheduler, self.source("scheduler"))

    def describe(self) -> dict:
        return {
            "path": self.root,
            "revision": self.config.revision,
            "variant": self.config.variant,
            "allow_pickle_weights": self.config.allow_pickle_weights,
            "identity": self.identity,
            "components": list(self.components),
        }

    def frozen_dtype(self, device) -> torch.dtype:
        """The dtype of the VAE and the frozen component on `device` (`model.dtype`)."""
        return resolve_dtype(self.config.dtype, device)

    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler().config.num_train_timesteps)


def _pickle_only_weights(folder: Path) -> List[Path]:
    """The weight files of the parts of a local pipeline folder (unet/, text_encoder/, vae/) that
    have no .safetensors file: pickles, which from_pretrained(use_safetensors=True) refuses."""
    found = []
    for part in MODEL_CLASSES:
        files = sorted(p for p in (folder / part).glob("*") if p.suffix in PICKLE_SUFFIXES)
        if not any((folder / part).glob("*.safetensors")):
            found += files
    return found


def _build_once(architecture: str, folder: Path, seed: int) -> None:
    """Build the random-weight model unless it is there; concurrent processes (ranks, sweep
    jobs) wait on a file lock, and one of them builds."""
    from filelock import FileLock

    # the builder's own marker (BUILT), written last: checking the store's COMPLETE here took the
    # lock and logged "building" on every run of a built model
    from burnlab.models.architectures import COMPLETE as BUILT
    from burnlab.models.architectures import build_random_pipeline

    if (folder / BUILT).exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / BUILT).exists():
            log.info("building %s with random weights (seed %d) into %s", architecture, seed, folder)
            build_random_pipeline(architecture, folder, seed)


def _pipeline_class(folder: Path) -> str:
    """The pipeline class a diffusers folder's model_index.json names ("" when unreadable)."""
    try:
        return str(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""
