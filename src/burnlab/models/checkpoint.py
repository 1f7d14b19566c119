"""Checkpoints: one directory per saved epoch holding only the components the stage changed.

    python -m burnlab.models.checkpoint runs/cache/stages/<id>/checkpoints/epoch_0500 out/pipeline

writes a standard diffusers pipeline folder (`StableDiffusionPipeline.from_pretrained` loads
it); a LoRA checkpoint (`train.adapter=lora`, one pytorch_lora_weights.safetensors) is baked:
its adapters fused into the base weights. A checkpoint's manifest.json names, for every
component it does not hold, the checkpoint or base-model folder that does (docs/run_store.md),
and the sha256 of every file it holds: a checkpoint's files are checked against those before they
are loaded (sampled, continued from, exported), and a damaged one is refused (burnlab.store.integrity).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List

import torch
from safetensors.torch import save_file

from burnlab.errors import UserError
from burnlab.models.adapters import ADAPTER, bake, carries_adapter
from burnlab.models.components import Source, base_pipeline, base_source
from burnlab.models.precision import dtype_name
from burnlab.store.files import (
    atomic_write_json,
    publish_dir,
    read_json,
    sha256_file,
    temp_dir_for,
)
from burnlab.store.integrity import (
    Damage,
    check_hashed,
    jsonl_damage,
    raise_damage,
    remember_hashed,
)
from burnlab.store.layout import (
    LORA_FILE,
    MANIFEST,
    METRICS,
    checkpoint_dir,
    checkpoint_id,
    components_of,
)

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def base_sources(base: dict) -> Dict[str, Source]:
    """Component sources of the base model described by `BaseModel.describe()`."""
    return {name: base_source(base, name) for name in components_of(base)}


def save_checkpoint(
    target: Path,
    models: Dict[str, object],
    inherited: Dict[str, Source],
    *,
    stage: str,
    stage_identity: str,
    epoch: int,
    lineage: Iterable[str],
    base: dict,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the trained `models` (name -> diffusers/transformers model), their weights in
    `dtype`, and a manifest atomically."""
    tmp = temp_dir_for(target)
    components = {}
    for name, model in models.items():
        save_component(model, tmp / name, dtype)
        components[name] = {
            "dir": name,
            "dtype": dtype_name(dtype),
            "sha256": {p.name: sha256_file(p) for p in sorted((tmp / name).iterdir())},
        }
        remember_hashed(tmp, {f"{name}/{file}": sha for file, sha in components[name]["sha256"].items()})
    for name, source in inherited.items():
        components[name] = _inherited_entry(source, target)
    publish_checkpoint(
        tmp, target, components, stage=stage, stage_identity=stage_identity, epoch=epoch, lineage=lineage, base=base
    )


def publish_checkpoint(
    tmp: Path,
    target: Path,
    components: Dict[str, dict],
    *,
    stage: str,
    stage_identity: str,
    epoch: int,
    lineage: Iterable[str],
    base: dict,
) -> None:
    """The manifest into the temp folder `tmp` that holds the checkpoint's files, then `tmp` published
    as `target` (full weights: save_checkpoint; LoRA files: burnlab.models.adapters)."""
    atomic_write_json(
        tmp / MANIFEST,
        {
            "checkpoint_id": checkpoint_id(stage_identity, epoch),
            "stage": stage,
            "stage_identity": stage_identity,
            "epoch": epoch,
            "components": components,
            "lineage": list(lineage),
            "base": base,
        },
    )
    publish_dir(tmp, target)


def save_lora_checkpoint(target: Path, models: Dict[str, torch.nn.Module], trained: List[str], **manifest) -> None:
    """A checkpoint holding every adapter of `models` in LORA_FILE, as `save_lora_weights` writes
    it; its manifest's component entries take the base weights from the base model and the
    adapter from the file. `manifest`: publish_checkpoint's fields."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers, entries = {}, {}
    for name, model in models.items():
        entries[name] = {"base": True, "subfolder": name}
        if carries_adapter(model):
            metadata = dataclasses.replace(model.peft_config[ADAPTER], base_model_name_or_path=None).to_dict()
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(model, adapter_name=ADAPTER)
            )
            layers[f"{name}_lora_adapter_metadata"] = metadata  # rank, alpha, targets: what load_lora_weights rebuilds
            entries[name].update({"lora": LORA_FILE, "trained": name in trained})
    tmp = temp_dir_for(target)
    # SDXL's saver also writes the second text encoder's adapters (keys text_encoder_2.*)
    saver = StableDiffusionXLPipeline if "text_encoder_2" in models else StableDiffusionPipeline
    saver.save_lora_weights(tmp, **layers)
    digest = {LORA_FILE: sha256_file(tmp / LORA_FILE)}
    remember_hashed(tmp, digest)
    for entry in entries.values():
        if "lora" in entry:
            entry["sha256"] = digest
    publish_checkpoint(tmp, target, entries, **manifest)


def save_component(model, folder: Path, dtype: torch.dtype) -> None:
    """The model's config and weights, as its `save_pretrained` lays them out, the floating-point
    weights in `dtype`; the model itself is left as it is (it goes on training)."""
    if dtype == torch.float32:
        model.save_pretrained(folder, safe_serialization=True)
        return
    weights = {
        key: value.detach().to("cpu", dtype) if value.is_floating_point() else value.detach().cpu()
        for key, value in model.state_dict().items()
    }
    if hasattr(model, "save_config"):  # diffusers: its save_pretrained takes no state dict
        folder.mkdir(parents=True)
        model.save_config(folder)
        save_file(
            {key: value.contiguous() for key, value in weights.items()},
            folder / DIFFUSERS_WEIGHTS,
            metadata={"format": "pt"},
        )
    else:  # transformers
        model.save_pretrained(folder, state_dict=weights)


def _inherited_entry(source: Source, target: Path) -> dict:
    root = Path(source.root)
    if root.is_dir() and (root / MANIFEST).exists():
        return {"dir": os.path.relpath(root / source.subfolder, target)}
    return {"base": True, "subfolder": source.subfolder}


def read_manifest(checkpoint: Path) -> dict:
    path = Path(checkpoint) / MANIFEST
    if not path.exists():
        raise UserError(f"{checkpoint} is not a burnlab checkpoint: it has no {MANIFEST}.")
    damage = manifest_damage(path)
    raise_damage(damage)
    return read_json(path)


def manifest_damage(path: Path) -> List[Damage]:
    """A manifest.json that does not parse as a JSON object with `components` and `base`."""
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as error:
        return [Damage(Path(path), f"cannot be read as JSON ({error})")]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("components"), dict) or "base" not in manifest:
        return [Damage(Path(path), "is not a checkpoint manifest (no `components` or `base`)")]
    return []


def checkpoint_damage(checkpoint: Path, inherited: bool = True, fresh: bool = False) -> List[Damage]:
    """What is wrong with a checkpoint folder: its manifest, a file it holds whose sha256 differs
    from the manifest's, and (with `inherited`) a checkpoint it takes a component from that is
    missing or damaged the same way. `fresh`: every file hashed (burnlab.store.integrity.check_hashed)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / MANIFEST).exists():
        return [Damage(checkpoint / MANIFEST, "is missing: the folder is no complete checkpoint")]
    damage = manifest_damage(checkpoint / MANIFEST)
    if damage:
        return damage
    for name, entry in read_json(checkpoint / MANIFEST)["components"].items():
        if entry.get("sha256") and (entry.get("lora") or entry.get("dir") == name):
            prefix = "" if entry.get("lora") else f"{name}/"
            damage += check_hashed(checkpoint, {prefix + file: sha for file, sha in entry["sha256"].items()}, fresh)
        elif entry.get("dir") and inherited:
            owner = (checkpoint / entry["dir"]).resolve().parent
            if not (owner / MANIFEST).exists():
                damage.append(
                    Damage(owner, f"is missing: the checkpoint that holds this checkpoint's `{name}` ({checkpoint})")
                )
            else:
                damage += checkpoint_damage(owner, inherited=False, fresh=fresh)
    return damage


def stage_damage(stage_dir: Path, epochs: Iterable[int]) -> List[Damage]:
    """What makes a complete stage folder unusable: a metrics.jsonl row that does not parse, or a
    checkpoint at one of `epochs` (the stage's checkpoint epochs) that is missing or damaged (its
    own files: what it inherits belongs to an ancestor stage, checked as that stage)."""
    stage_dir = Path(stage_dir)
    metrics = stage_dir / METRICS
    damage = jsonl_damage(metrics) if metrics.exists() else [Damage(metrics, "is missing")]
    for epoch in sorted(epochs):
        damage += checkpoint_damage(checkpoint_dir(stage_dir, epoch), inherited=False)
    return damage


def component_sources(checkpoint: Path) -> Dict[str, Source]:
    """Where each trainable component of a checkpoint lives (its own folder or an ancestor's),
    once every file it names has been checked against its manifest."""
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint)
    raise_damage(checkpoint_damage(checkpoint))
    base = manifest["base"]
    sources = {}
    for name, entry in manifest["components"].items():
        if entry.get("base"):
            sources[name] = base_source(base, entry["subfolder"])
            if entry.get("lora"):
                sources[name] = dataclasses.replace(sources[name], lora=str(checkpoint / entry["lora"]))
        else:
            folder = (checkpoint / entry["dir"]).resolve()
            sources[name] = Source(str(folder.parent), folder.name)
    return sources


def materialize(checkpoint: Path, out: Path) -> Path:
    """A full diffusers pipeline folder for `checkpoint` (base model parts + the checkpoint's, a
    LoRA checkpoint's adapters fused in)."""
    pipeline = base_pipeline(read_manifest(checkpoint)["base"])
    sources = component_sources(checkpoint)
    for name, source in sources.items():
        if source.lora:  # its base weights are the pipeline's own; its adapter is fused below
            continue
        setattr(pipeline, name, source.load(name))
        pipeline.register_modules(**{name: getattr(pipeline, name)})
    bake(pipeline, sources)
    pipeline.save_pretrained(out, safe_serialization=True)
    return Path(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write a checkpoint as a diffusers pipeline folder.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint dir (…/checkpoints/epoch_0500)")
    parser.add_argument("out", type=Path, help="the pipeline folder to write")
    args = parser.parse_args(argv)
    try:
        print(materialize(args.checkpoint, args.out))
    except UserError as error:
        print(f"burnlab: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
