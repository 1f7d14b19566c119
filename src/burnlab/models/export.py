"""Export burnlab models in the formats other tools read.

    python -m burnlab.models.export single-file CHECKPOINT_OR_DIFFUSERS_FOLDER OUT.safetensors
    python -m burnlab.models.export kohya-lora LORA_CHECKPOINT OUT.safetensors

`single-file` writes one .safetensors with the original Stable Diffusion (LDM / A1111) key names:
`model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer.text_model.*`
(CLIP text encoder, SD 1.x), which diffusers' `from_single_file` loads with the base model's configs.
The key mapping is the inverse of diffusers' single-file conversion, written for any number of
blocks and layers per block (read from the configs), so the toy model exports as SD 1.5 does.

`kohya-lora` writes a burnlab LoRA checkpoint's adapters with kohya's key names (`lora_unet_*`,
`lora_te_*`; an SDXL checkpoint's text encoders `lora_te1_*`, `lora_te2_*`; `lora_down` / `lora_up`
/ `alpha`), which diffusers' `load_lora_weights` and the A1111-style tools read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from burnlab.errors import UserError
from burnlab.models.loading import LORA_PREFIXES, load_model

Weights = Dict[str, torch.Tensor]

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
LORA_MATRICES = {
    ".lora_A.weight": "lora_down",
    ".lora_B.weight": "lora_up",
    ".lora.down.weight": "lora_down",
    ".lora.up.weight": "lora_up",
    ".lora_linear_layer.down.weight": "lora_down",
    ".lora_linear_layer.up.weight": "lora_up",
}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _rename_first(rest: str, names: Dict[str, str]) -> str:
    """`rest` with its leading module name (a key of `names`) replaced."""
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_to_ldm(weights: Weights, config: dict) -> Weights:
    """A diffusers UNet2DConditionModel state dict (SD 1.x layout) with LDM key names, without prefix.

    LDM numbers its blocks flat: input block 0 is conv_in, then each down block contributes
    `layers_per_block` (resnet, attention) blocks and, but for the last, a downsampler block; each
    up block contributes `layers_per_block + 1` blocks, the last one carrying the upsampler."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise UserError(
            f"the UNet's layers_per_block is {per_block!r}: the single-file export handles SD 1.x "
            f"UNets, whose blocks all have the same number of layers."
        )
    with_attention = [name.startswith("CrossAttn") for name in config["up_block_types"]]
    out = {}
    for key, value in weights.items():
        block, mid = _BLOCK.match(key), _MID.match(key)
        if block:
            kind, index, part, layer, rest = block.groups()
            first = int(index) * (per_block + 1)
            if part == "downsamplers":  # the next input block, its conv named op
                head, rest = f"input_blocks.{first + per_block + 1}.0", "op." + rest.split(".", 1)[1]
            elif part == "upsamplers":  # after the block's last resnet and, where it has one, its attention
                head = f"output_blocks.{first + per_block}.{2 if with_attention[int(index)] else 1}"
            elif kind == "down_blocks":
                head = f"input_blocks.{first + 1 + int(layer)}.{0 if part == 'resnets' else 1}"
            else:
                head = f"output_blocks.{first + int(layer)}.{0 if part == 'resnets' else 1}"
        elif mid:
            part, layer, rest = mid.groups()
            head = f"middle_block.{2 * int(layer) + (part == 'attentions')}"
        else:
            renamed = _rename_first(key, _UNET_TOP)
            if renamed == key:
                raise UserError(
                    f"the UNet has the weight `{key}`, which the SD 1.x single-file layout has no name "
                    f"for (class or addition embeddings are SD 2.x/SDXL features)."
                )
            out[renamed] = value
            continue
        out[f"{head}.{_rename_first(rest, _UNET_RESNET) if part == 'resnets' else rest}"] = value
    return out


def vae_to_ldm(weights: Weights, config: dict) -> Weights:
    """A diffusers AutoencoderKL state dict with LDM key names, without prefix. LDM numbers the
    decoder's up blocks from the bottom (diffusers' last up block is LDM's `up.0`) and its
    mid-block attention is 1x1 convolutions where diffusers has linear layers."""
    up_blocks = len(config["up_block_types"])
    out = {}
    for key, value in weights.items():
        coder, _, rest = key.partition(".")
        if coder not in ("encoder", "decoder"):  # quant_conv, post_quant_conv: the same names
            out[key] = value
            continue
        block = _BLOCK.match(rest)
        mid = _MID.match(rest)
        if block:
            kind, index, part, layer, tail = block.groups()
            index = int(index) if kind == "down_blocks" else up_blocks - 1 - int(index)
            name = "down" if kind == "down_blocks" else "up"
            if part == "resnets":
                ldm = f"{name}.{index}.block.{layer}.{_rename_first(tail, {'conv_shortcut': 'nin_shortcut'})}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                ldm = f"{name}.{index}.{'downsample' if part == 'downsamplers' else 'upsample'}.{tail}"
        elif mid and mid.group(1) == "resnets":
            ldm = f"mid.block_{int(mid.group(2)) + 1}.{_rename_first(mid.group(3), {'conv_shortcut': 'nin_shortcut'})}"
        elif mid:
            ldm = f"mid.attn_{int(mid.group(2)) + 1}.{_rename_first(mid.group(3), _VAE_ATTENTION)}"
            if value.ndim == 2:  # linear [out, in] -> 1x1 conv [out, in, 1, 1]
                value = value[:, :, None, None]
        else:
            ldm = _rename_first(rest, _VAE_TOP)
        out[f"{coder}.{ldm}"] = value
    return out


def text_encoder_to_ldm(weights: Weights) -> Weights:
    """A CLIPTextModel state dict with SD 1.x's names under `cond_stage_model.transformer.text_model.`
    (transformers >= 5.6 names the text model's weights without the `text_model.` level)."""
    return {LDM_CLIP_PREFIX + key.removeprefix("text_model."): value for key, value in weights.items()}


def single_file_weights(unet, vae, text_encoder) -> Weights:
    """The three models' weights as one SD 1.x single-file checkpoint's state dict."""
    out = {LDM_UNET_PREFIX + k: v for k, v in unet_to_ldm(unet.state_dict(), dict(unet.config)).items()}
    out.update({LDM_VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()})
    out.update(text_encoder_to_ldm(text_encoder.state_dict()))
    return {key: value.detach().to("cpu").contiguous() for key, value in out.items()}


def export_single_file(source: Path, out: Path) -> Path:
    """Write the model of `source` (a burnlab checkpoint, LoRA adapters fused in, or a diffusers
    pipeline folder) as one SD 1.x single-file checkpoint `out`, the VAE being the pipeline's
    (a checkpoint's: its base model's)."""
    from diffusers import AutoencoderKL

    loaded = load_model(str(source))
    if "text_encoder_2" in loaded.components:
        raise UserError(
            f"{source} is an SDXL model (it has a text_encoder_2): the single-file export writes SD 1.x "
            f"checkpoints only; export an SDXL model as a diffusers folder (python -m "
            f"burnlab.models.checkpoint) or its LoRA with kohya-lora."
        )
    vae = AutoencoderKL.from_pretrained(loaded.pipeline_folder, subfolder="vae", use_safetensors=True)
    _save(
        single_file_weights(loaded.components["unet"], vae, loaded.components["text_encoder"]),
        out,
        {"format": "pt", "burnlab_source": loaded.description},
    )
    return Path(out)


def kohya_weights(lora_file: Path, components: Tuple[str, ...]) -> Weights:
    """The adapters of a diffusers-format LoRA file, as burnlab's LoRA checkpoints hold them, of a
    model with `components` (SD's or SDXL's: kohya names their text encoders differently), with
    kohya's names, each module's `alpha` beside its weights (kohya scales by alpha / rank, as peft
    does). diffusers' convert_state_dict_to_diffusers names a matrix in one of three ways
    (LORA_MATRICES), all of them peft's lora_A (down) and lora_B (up)."""
    prefixes = LORA_PREFIXES["kohya"][components]
    with safe_open(str(lora_file), "pt") as handle:
        weights = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    out = {}
    for key, value in weights.items():
        component, _, rest = key.partition(".")
        suffix = next((suffix for suffix in LORA_MATRICES if rest.endswith(suffix)), None)
        if component not in prefixes or suffix is None:
            raise UserError(
                f"{lora_file} has the weight `{key}`: a burnlab LoRA file of a model with "
                f"{', '.join(components)} holds the lora_A / lora_B (down / up) weights of adapters of "
                f"those components only."
            )
        module = rest[: -len(suffix)]
        # kohya names the text encoders as CLIPTextModel nests them, under text_model.; transformers
        # >= 5.6 leaves that level out of CLIPTextModel's (not CLIPTextModelWithProjection's) names
        if component != "unet" and not module.startswith("text_model."):
            module = "text_model." + module
        name = prefixes[component] + module.replace(".", "_")
        out[f"{name}.{LORA_MATRICES[suffix]}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(_alpha(lora_file, metadata, component))
    return out


def _alpha(lora_file: Path, metadata: dict, component: str) -> float:
    """The adapter's lora_alpha, from the adapter metadata diffusers' save_lora_weights writes."""
    config = {key.split(".", 1)[1]: value for key, value in metadata.items() if key.startswith(component + ".")}
    if "lora_alpha" not in config:
        raise UserError(
            f"{lora_file} has no adapter metadata for its {component} (lora_alpha): it was not "
            f"written by burnlab's LoRA training, so its scale is unknown."
        )
    unsupported = [name for name in ("alpha_pattern", "rank_pattern", "use_rslora", "use_dora") if config.get(name)]
    if unsupported:  # kohya's format has one alpha per module and the plain alpha / rank scale
        raise UserError(
            f"{lora_file}'s {component} adapter uses {', '.join(unsupported)}, which kohya's LoRA "
            f"format cannot express."
        )
    return float(config["lora_alpha"])


def export_kohya_lora(checkpoint: Path, out: Path) -> Path:
    """Write the adapters of a burnlab LoRA checkpoint as a kohya-format LoRA file `out`."""
    from burnlab.models.adapters import lora_file
    from burnlab.models.checkpoint import component_sources, read_manifest
    from burnlab.store.layout import components_of

    found = lora_file(component_sources(Path(checkpoint)))
    if found is None:
        raise UserError(
            f"{checkpoint} is a full-weights checkpoint, not a LoRA checkpoint (train.adapter=lora): "
            f"it has no adapters to export; `single-file` exports its weights."
        )
    components = components_of(read_manifest(Path(checkpoint))["base"])
    _save(kohya_weights(Path(found), components), out, {"format": "pt"})
    return Path(out)


def _save(weights: Weights, out: Path, metadata: Dict[str, str]) -> None:
    """Write a safetensors file atomically (a temp file beside it, then a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(weights, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m burnlab.models.export",
        description="Export a burnlab model as a single-file checkpoint or a kohya LoRA.",
    )
    formats = parser.add_subparsers(dest="format", required=True)
    single = formats.add_parser("single-file", help="an SD 1.x single-file checkpoint (A1111/LDM key names)")
    single.add_argument("source", type=Path, help="a burnlab checkpoint dir or a diffusers pipeline folder")
    single.add_argument("out", type=Path, help="the .safetensors file to write")
    kohya = formats.add_parser("kohya-lora", help="a LoRA checkpoint's adapters with kohya's key names")
    kohya.add_argument("checkpoint", type=Path, help="a burnlab LoRA checkpoint dir (…/checkpoints/epoch_0500)")
    kohya.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        if args.format == "single-file":
            print(export_single_file(args.source, args.out))
        else:
            print(export_kohya_lora(args.checkpoint, args.out))
    except UserError as error:
        print(f"burnlab: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
