"""Load "a model a user has" as its components (UNet, text encoder and, for SDXL, the second text
encoder), for `burnlab-diagnose` to swap them.

A model can be a burnlab checkpoint, a diffusers pipeline folder, a hub id already in the local
Hugging Face cache, an SD 1.x or SDXL single-file checkpoint (A1111/LDM or SGM key names) read
with a base model's configs, or a LoRA file (diffusers' or kohya's key names) fused into a base model. Nothing
is downloaded; pickle files (.ckpt, .bin) are read only when the user opts in, since unpickling
can run code. Every input that is not one of these is one paragraph (UserError) that names the
file, what it holds and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from burnlab.errors import ConfigError, UserError
from burnlab.models.components import PICKLE_SUFFIXES, PIPELINE_OPTIONS, index_components
from burnlab.store.files import publish_dir, sha256_file, temp_dir_for
from burnlab.store.layout import COMPLETE, COMPONENTS, MANIFEST, XL_COMPONENTS, components_of

ALLOWED = (
    "a burnlab checkpoint folder (manifest.json), a diffusers pipeline folder (model_index.json), a hub id "
    "in the local Hugging Face cache, an SD 1.x or SDXL single-file checkpoint (.safetensors with A1111/LDM/SGM keys) "
    "or a LoRA file (.safetensors, diffusers or kohya keys) with --base"
)
SDXL_KEYS = ("conditioner.embedders.1.", "model.diffusion_model.label_emb")
FAMILY_LABELS = {COMPONENTS: "SD 1.x", XL_COMPONENTS: "SDXL"}
# each family's LoRA key prefixes per component: diffusers' (save_lora_weights) and kohya's, whose
# SD 1.x files name the text encoder lora_te_ and whose SDXL files name the two lora_te1_, lora_te2_
LORA_PREFIXES = {
    "diffusers": {family: {name: f"{name}." for name in family} for family in FAMILY_LABELS},
    "kohya": {
        COMPONENTS: {"unet": "lora_unet_", "text_encoder": "lora_te_"},
        XL_COMPONENTS: {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    },
}
# from_single_file's options per family, as burnlab.models.components.base_pipeline's: no safety
# checker (SD), no watermarker (SDXL)
LORA_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight", ".lora_down.weight")


@dataclass
class LoadedModel:
    """A model's components (unet, text_encoder[, text_encoder_2]): float32, eval mode, on the CPU, frozen."""

    components: Dict[str, torch.nn.Module]
    kind: str  # burnlab checkpoint, diffusers folder, hub id, single-file checkpoint, LoRA file (diffusers/kohya keys)
    description: str  # one line for a report
    lora_components: Tuple[str, ...] = ()  # the components a LoRA (file or checkpoint) has adapters for
    pipeline_folder: Optional[str] = None  # a diffusers folder whose vae/tokenizer/scheduler fit this model


def load_model(spec: str, base: Optional[str] = None, allow_pickle: bool = False) -> LoadedModel:
    """The model named by `spec` (see the module's docstring); `base` (a diffusers folder or a cached
    hub id) gives a single-file checkpoint its configs and a LoRA file its weights."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / MANIFEST).exists():
            return _frozen(_load_checkpoint(path))
        if (path / "model_index.json").exists():
            return _frozen(_load_folder(path.resolve(), "diffusers folder", f"diffusers folder {path}", allow_pickle))
        raise UserError(
            f"{spec} is a folder with neither manifest.json nor model_index.json, so it is not a model; "
            f"allowed: {ALLOWED}."
        )
    if path.is_file():
        return _frozen(_load_file(path, base, allow_pickle))
    if _looks_like_hub_id(spec):
        return _frozen(_load_folder(cached_folder(spec), "hub id", f"hub id {spec} (local cache)", allow_pickle))
    raise UserError(f"{spec} does not exist (no such file or folder, and not a hub id); allowed: {ALLOWED}.")


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~")) and "\\" not in spec


def cached_folder(hub_id: str) -> Path:
    """The local snapshot of a hub id in the Hugging Face cache; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        folder = None
    if folder is None or not (folder / "model_index.json").exists():
        raise UserError(
            f"{hub_id} is not in the local Hugging Face cache (burnlab-diagnose never downloads): get "
            f"it with `hf download {hub_id}` (or pass a local diffusers folder), then run this again."
        )
    return folder


def _base_folder(base: Optional[str], spec: Path, what: str) -> Path:
    """The base model's local diffusers folder, required for a single file or a LoRA file."""
    if base is None:
        raise UserError(
            f"{spec} is {what}, which needs the model it was made from: pass --base with that model's "
            f"diffusers folder or cached hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)."
        )
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise UserError(
                f"the base {base} is not a diffusers pipeline folder (it has no model_index.json); "
                f"the base of {spec} must be a diffusers folder or a cached hub id."
            )
        return path.resolve()
    if _looks_like_hub_id(base):
        return cached_folder(base)
    raise UserError(
        f"the base {base} does not exist: the base of {spec} must be a diffusers folder or a cached hub id."
    )


# -- folders ---------------------------------------------------------------------------------------------
def _load_folder(folder: Path, kind: str, description: str, allow_pickle: bool) -> LoadedModel:
    from burnlab.models.components import Source

    models = {
        name: Source(str(folder), name, allow_pickle=allow_pickle).load(name) for name in folder_components(folder)
    }
    return LoadedModel(models, kind, description, pipeline_folder=str(folder))


def folder_components(folder: Path) -> Tuple[str, ...]:
    """The components of a diffusers pipeline folder (burnlab.models.components.index_components)."""
    return index_components(json.loads((Path(folder) / "model_index.json").read_text()))


def _load_checkpoint(folder: Path) -> LoadedModel:
    """A burnlab checkpoint, its components resolved through the manifest; a LoRA checkpoint's
    adapters are fused into the base weights, as `burnlab.models.checkpoint.materialize` bakes them."""
    from burnlab.models.adapters import bake
    from burnlab.models.checkpoint import component_sources, read_manifest
    from burnlab.models.components import base_pipeline

    manifest = read_manifest(folder)
    sources = component_sources(folder)
    components = components_of(manifest["base"])
    lora = tuple(name for name in components if sources[name].lora)
    if lora:
        pipeline = base_pipeline(manifest["base"])
        for name in components:
            if not sources[name].lora and not manifest["components"][name].get("base"):
                setattr(pipeline, name, sources[name].load(name))
        bake(pipeline, sources)
        models = {name: getattr(pipeline, name) for name in components}
    else:
        models = {name: sources[name].load(name) for name in components}
    base = manifest["base"]["path"]
    pipeline_folder = base if Path(base).is_dir() else str(cached_folder(base))
    what = f"LoRA checkpoint ({', '.join(lora)} adapters fused)" if lora else "checkpoint"
    return LoadedModel(
        models,
        "burnlab checkpoint",
        f"burnlab {what} {folder} (stage {manifest['stage']}, epoch {manifest['epoch']}), base {base}",
        lora_components=lora,
        pipeline_folder=pipeline_folder,
    )


# -- files -----------------------------------------------------------------------------------------------
def _load_file(path: Path, base: Optional[str], allow_pickle: bool) -> LoadedModel:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UserError(
                f"{path} is a pickle file ({path.suffix}): loading one can run any code it carries, so "
                f"burnlab reads it only when you trust it and opt in with --allow-pickle (or convert it "
                f"to .safetensors first)."
            )
        weights = _read_pickle(path)
        keys = list(weights)
    else:
        weights, keys = str(path), _safetensors_keys(path)
    kind = _file_kind(path, keys)
    if kind == "single-file checkpoint":
        folder = _base_folder(base, path, "a single-file checkpoint")
        return _load_single_file(path, folder, keys)
    folder = _base_folder(base, path, "a LoRA file")
    return _load_lora_file(path, weights, folder, kind, keys, allow_pickle)


def _safetensors_keys(path: Path) -> list:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        head = path.read_bytes()[:8]
        raise UserError(
            f"{path} is not a model: it is not a safetensors file ({str(error).splitlines()[0]}; it "
            f"starts with {head!r}); allowed: {ALLOWED}."
        ) from None


def _read_pickle(path: Path) -> Dict[str, torch.Tensor]:
    """A pickled checkpoint's state dict (the user opted in to unpickling it)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    while isinstance(state, dict) and "state_dict" in state:  # Lightning checkpoints nest it
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(
            f"{path} is not a model: its pickle holds a {type(state).__name__}, not a state dict; allowed: {ALLOWED}."
        )
    return state


def _file_kind(path: Path, keys: list) -> str:
    """What a weight file is, from its key names."""
    if any(key.startswith("model.diffusion_model.") for key in keys):
        return "single-file checkpoint"
    for style, families in LORA_PREFIXES.items():
        prefixes = tuple({prefix for family in families.values() for prefix in family.values()})
        if any(key.startswith(prefixes) and key.endswith(LORA_DOWN) for key in keys):
            return f"LoRA file ({style} keys)"
    shown = ", ".join(f"`{key}`" for key in keys[:3]) or "no weights at all"
    raise UserError(
        f"{path} is not a model burnlab knows: its keys ({len(keys)}, e.g. {shown}) match neither an "
        f"SD 1.x or SDXL single-file checkpoint (`model.diffusion_model.*`) nor a LoRA file "
        f"(`unet.*.lora_A.weight`, `lora_unet_*.lora_down.weight`); allowed: {ALLOWED}."
    )


def _load_single_file(path: Path, base: Path, keys: list) -> LoadedModel:
    """An SD 1.x or SDXL single file with the base's configs, for a diagnosis: the VAE is the base's."""
    from diffusers import AutoencoderKL

    components = folder_components(base)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", use_safetensors=True)  # the diagnosis uses the base's
    pipeline = single_file_pipeline(path, base, keys, vae)
    return LoadedModel(
        {name: getattr(pipeline, name) for name in components},
        "single-file checkpoint",
        f"single-file checkpoint {path} ({'SGM' if components == XL_COMPONENTS else 'A1111/LDM'} keys), "
        f"configs from {base}",
        pipeline_folder=str(base),
    )


def single_file_pipeline(path: Path, base: Path, keys: list, vae=None):
    """An SD 1.x or SDXL single file through diffusers' from_single_file with the base's configs
    (its family's pipeline); every weight of the base's architecture must come from the file, the
    VAE's too unless `vae` is given."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from burnlab.models.components import PIPELINE_CLASSES

    components = folder_components(base)
    label = FAMILY_LABELS[components]
    made_for = XL_COMPONENTS if any(key.startswith(SDXL_KEYS) for key in keys) else COMPONENTS
    if made_for != components:
        raise UserError(
            f"{path} is an {FAMILY_LABELS[made_for]} single-file checkpoint (SDXL's have "
            f"`conditioner.embedders.1.` and `label_emb` weights, SD 1.x's `cond_stage_model.`) and its "
            f"base {base} is an {label} model; the base must be the {FAMILY_LABELS[made_for]} model it "
            f"was fine-tuned from."
        )
    given = {"vae": vae} if vae is not None else {}
    try:
        pipeline = getattr(diffusers, PIPELINE_CLASSES[components]).from_single_file(
            str(path), config=str(base), local_files_only=True, **given, **PIPELINE_OPTIONS[components]
        )
    except (SingleFileComponentError, ValueError, RuntimeError, KeyError, OSError) as error:
        # diffusers builds the models with empty (meta) weights and fills in the file's: a UNet weight
        # the file lacks stays empty, and moving the UNet then fails with torch's "meta tensor" message
        found = (
            "its unet lacks weights that the base's architecture has"
            if "meta tensor" in str(error)
            else f"diffusers could not load it with the base's configs ({_first_line(error)})"
        )
        raise UserError(
            f"{path} does not fit the architecture of the base {base}: {found}; the base must be the "
            f"{label} model it was fine-tuned from."
        ) from None
    for name in components[1:]:  # the text encoders are not moved: a weight the file lacks is still empty
        missing = [key for key, value in getattr(pipeline, name).state_dict().items() if value.is_meta]
        if missing:
            raise UserError(
                f"{path} does not fit the architecture of the base {base}: its {name} lacks "
                f"{len(missing)} weight(s) that the base's architecture has (e.g. `{missing[0]}`); the "
                f"base must be the {label} model it was fine-tuned from."
            )
    return pipeline


def converted_single_file(path: Path, configs: str, cache: Path) -> Path:
    """A single-file checkpoint (`model.path`) as a diffusers pipeline folder a study trains on:
    converted once into cache/<file stem>-<sha256 of the file, 16 digits>/ with the configs,
    tokenizers and scheduler of `configs` (`model.single_file_configs`: a diffusers folder or a
    cached hub id of the same family) and the file's own weights, its VAE's too where it has one
    (else the configs' VAE). Concurrent processes wait on a file lock; one converts."""
    from diffusers import AutoencoderKL
    from filelock import FileLock

    path = Path(path).expanduser().resolve()
    target = Path(cache) / f"{path.stem}-{sha256_file(path)[:16]}"
    if (target / COMPLETE).exists():
        return target
    base = _base_folder(configs, path, "the single-file checkpoint model.path")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / COMPLETE).exists():
            allowed = (
                "a diffusers pipeline folder, a hub id, or an SD 1.x or SDXL single-file checkpoint "
                "(.safetensors with A1111/LDM or SGM keys)"
            )
            try:
                keys = _safetensors_keys(path)
                kind = _file_kind(path, keys)
            except UserError as error:  # its words name burnlab-diagnose's options: say it for model.path
                raise ConfigError("model.path", str(path), f"{allowed}; {str(error).split('; allowed:')[0]}") from None
            if kind != "single-file checkpoint":
                raise ConfigError("model.path", str(path), f"{allowed}; this file is a {kind}")
            has_vae = any(key.startswith("first_stage_model.") for key in keys)
            vae = None if has_vae else AutoencoderKL.from_pretrained(base, subfolder="vae", use_safetensors=True)
            pipeline = single_file_pipeline(path, base, keys, vae)
            staging = temp_dir_for(target)
            pipeline.save_pretrained(staging, safe_serialization=True)
            (staging / COMPLETE).write_text(json.dumps({"single_file": str(path), "configs": str(base)}) + "\n")
            publish_dir(staging, target)
    return target


def _load_lora_file(path: Path, weights, base: Path, kind: str, keys: list, allow_pickle: bool) -> LoadedModel:
    """A LoRA file fused into the base with diffusers' own loader (which converts kohya's keys);
    each component the file has adapters for must have received them, and every adapter must be
    for a component of the base's family (diffusers would skip the others without a word).
    `weights`: the file's path, or a pickle's state dict already read."""
    from burnlab.models.adapters import carries_adapter
    from burnlab.models.components import base_pipeline

    components = folder_components(base)
    family = f"the base {base} is an {FAMILY_LABELS[components]} model"
    style = "kohya" if "kohya" in kind else "diffusers"
    prefixes = LORA_PREFIXES[style][components]
    modules = [key for key in keys if key.endswith(LORA_DOWN)]
    foreign = [key for key in modules if not key.startswith(tuple(prefixes.values()))]
    if foreign:
        made_for = [
            FAMILY_LABELS[other]
            for other, table in LORA_PREFIXES[style].items()
            if all(key.startswith(tuple(table.values())) for key in modules)
        ]
        raise UserError(
            f"{path} is {'an ' + made_for[0] if made_for else 'a'} LoRA file ({style} keys) that does not "
            f"fit its base: {len(foreign)} of its {len(modules)} adapter modules (e.g. `{foreign[0]}`) are "
            f"for no component of the base, and {family}, whose LoRA modules' {style} keys start with "
            f"{', '.join(f'`{prefix}`' for prefix in prefixes.values())}; the base must be the model the "
            f"LoRA was trained on."
        )
    in_file = {name: sum(key.startswith(prefixes[name]) for key in modules) for name in components}
    pipeline = base_pipeline({"path": str(base), "allow_pickle_weights": allow_pickle, "components": list(components)})
    # diffusers logs a failed load's error in full before raising it; the paragraph below says it
    peft_log = logging.getLogger("diffusers.loaders.peft")
    level = peft_log.level
    peft_log.setLevel(logging.CRITICAL)
    try:
        pipeline.load_lora_weights(weights, adapter_name="loaded")
    except (ValueError, RuntimeError, KeyError) as error:
        raise UserError(
            f"{path} does not fit the base {base}: diffusers could not load its adapters "
            f"({_first_line(error)}); the base must be the model the LoRA was trained on ({family})."
        ) from None
    finally:
        peft_log.setLevel(level)
    for name in components:
        applied = _lora_layers(getattr(pipeline, name)) if carries_adapter(getattr(pipeline, name)) else 0
        if in_file[name] and applied < in_file[name]:
            raise UserError(
                f"{path} does not fit the base {base}: {in_file[name] - applied} of its {in_file[name]} "
                f"{name} adapter modules match no module of the base's {name}; the base must be the "
                f"model the LoRA was trained on ({family})."
            )
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    lora = tuple(name for name in components if in_file[name])
    return LoadedModel(
        {name: getattr(pipeline, name) for name in components},
        kind,
        f"{kind} {path} ({', '.join(lora)} adapters) fused into {base}",
        lora_components=lora,
        pipeline_folder=str(base),
    )


def _lora_layers(model: torch.nn.Module) -> int:
    """How many of the model's modules carry a LoRA adapter (peft's LoraLayer)."""
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(module, LoraLayer) for module in model.modules())


def _first_line(error: Exception) -> str:
    """The error's first sentence; torch's `Error(s) in loading state_dict ...:` with its first item."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [error.__class__.__name__]
    return (" ".join(lines[:2]) if lines[0].endswith(":") else lines[0]).rstrip(".")


def _frozen(loaded: LoadedModel) -> LoadedModel:
    """The models as load_model promises them: float32, eval mode, on the CPU, no gradients."""
    models = {}
    for name, model in loaded.components.items():
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
            model = model.to("cpu", torch.float32)
        models[name] = model.eval().requires_grad_(False)
    return dataclasses.replace(loaded, components=models)
