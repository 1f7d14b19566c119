"""Checkpoints: one directory per saved epoch holding only the components the stage changed.

    python -m burnlab.checkpoint runs/cache/stages/<id>/checkpoints/epoch_0500 out/pipeline

writes a standard diffusers pipeline folder (`StableDiffusionPipeline.from_pretrained` loads
it); a LoRA checkpoint (`train.adapter=lora`, one pytorch_lora_weights.safetensors) is baked:
its adapters fused into the base weights. A checkpoint's manifest.json names, for every
component it does not hold, the checkpoint or base-model folder that does (docs/run_store.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Dict, Iterable

import torch
from safetensors.torch import save_file

from burnlab.components import Source, base_pipeline, base_source
from burnlab.errors import UserError
from burnlab.precision import dtype_name
from burnlab.store import atomic_write_json, hash_json, publish_dir, read_json, sha256_file, temp_dir_for

CHECKPOINT_COMPONENTS = ("unet", "text_encoder")
MANIFEST = "manifest.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def checkpoint_id(stage_identity: str, epoch: int) -> str:
    return hash_json(["checkpoint", stage_identity, epoch])


def checkpoint_dir(stage_dir: Path, epoch: int) -> Path:
    return Path(stage_dir) / "checkpoints" / f"epoch_{epoch:04d}"


def base_sources(base: dict) -> Dict[str, Source]:
    """Component sources of the base model described by `BaseModel.describe()`."""
    return {name: base_source(base, name) for name in CHECKPOINT_COMPONENTS}


def save_checkpoint(target: Path, models: Dict[str, object], inherited: Dict[str, Source], *,
                    stage: str, stage_identity: str, epoch: int, lineage: Iterable[str], base: dict,
                    dtype: torch.dtype = torch.float32) -> None:
    """Write the trained `models` (name -> diffusers/transformers model), their weights in
    `dtype`, and a manifest atomically."""
    tmp = temp_dir_for(target)
    components = {}
    for name, model in models.items():
        save_component(model, tmp / name, dtype)
        components[name] = {"dir": name, "dtype": dtype_name(dtype),
                            "sha256": {p.name: sha256_file(p) for p in sorted((tmp / name).iterdir())}}
    for name, source in inherited.items():
        components[name] = _inherited_entry(source, target)
    publish_checkpoint(tmp, target, components, stage=stage, stage_identity=stage_identity, epoch=epoch,
                       lineage=lineage, base=base)


def publish_checkpoint(tmp: Path, target: Path, components: Dict[str, dict], *, stage: str, stage_identity: str,
                       epoch: int, lineage: Iterable[str], base: dict) -> None:
    """The manifest into the temp folder `tmp` that holds the checkpoint's files, then `tmp` published
    as `target` (full weights: save_checkpoint; LoRA files: burnlab.adapters)."""
    atomic_write_json(tmp / MANIFEST, {
        "checkpoint_id": checkpoint_id(stage_identity, epoch), "stage": stage, "stage_identity": stage_identity,
        "epoch": epoch, "components": components, "lineage": list(lineage), "base": base})
    publish_dir(tmp, target)


def save_component(model, folder: Path, dtype: torch.dtype) -> None:
    """The model's config and weights, as its `save_pretrained` lays them out, the floating-point
    weights in `dtype`; the model itself is left as it is (it goes on training)."""
    if dtype == torch.float32:
        model.save_pretrained(folder, safe_serialization=True)
        return
    weights = {key: value.detach().to("cpu", dtype) if value.is_floating_point() else value.detach().cpu()
               for key, value in model.state_dict().items()}
    if hasattr(model, "save_config"):  # diffusers: its save_pretrained takes no state dict
        folder.mkdir(parents=True)
        model.save_config(folder)
        save_file({key: value.contiguous() for key, value in weights.items()},
                  folder / DIFFUSERS_WEIGHTS, metadata={"format": "pt"})
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
    return read_json(path)


def component_sources(checkpoint: Path) -> Dict[str, Source]:
    """Where each trainable component of a checkpoint lives (its own folder or an ancestor's)."""
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint)
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
    from burnlab.adapters import bake

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
