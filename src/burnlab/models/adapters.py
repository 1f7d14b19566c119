"""LoRA adapters (`train.adapter=lora`): the study on adapters instead of full weights.

Built with peft as diffusers' LoRA training examples build them (`LoraConfig`, `add_adapter`),
saved as they save them (`get_peft_model_state_dict` -> `StableDiffusionPipeline.save_lora_weights`)
and read back with diffusers' own loaders, so every checkpoint is a LoRA file that
`StableDiffusionPipeline.load_lora_weights` loads. A checkpoint's file holds every adapter the
model carries (the ones its stage trained and the frozen ones it inherited, bit for bit), so that
one `load_lora_weights` gives the checkpoint's model; its manifest says which ones the stage
trained. The base weights never change: they are always the base model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch

from burnlab.config.schema import LoraConfig
from burnlab.errors import ConfigError

ADAPTER = "default"  # the adapter's name in peft, in the trainer and in the training state alike
COMPONENT_LABELS = {"unet": "UNet", "text_encoder": "text encoder", "text_encoder_2": "second text encoder"}


def is_adapter_parameter(name: str) -> bool:
    return ".lora_" in name


def carries_adapter(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def attach(models: Dict[str, torch.nn.Module], trained: List[str], config: LoraConfig, seed: int) -> None:
    """Give each trained component an adapter unless it carries its parent's, then let only the
    trained components' adapters learn: base weights and the other adapters stay frozen. `seed`
    fixes the new adapters' initial weights (each component its own draw) and then the stream
    LoRA dropout draws from (torch's global generator, which the training state saves)."""
    from peft import LoraConfig as PeftLoraConfig

    for index, name in enumerate(trained):
        model = models[name]
        if carries_adapter(model):
            continue
        targets = _targets(model, name, config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + index)
            model.add_adapter(
                PeftLoraConfig(
                    r=config.rank,
                    lora_alpha=config.alpha,
                    lora_dropout=config.dropout,
                    init_lora_weights=config.init,
                    target_modules=targets,
                ),
                adapter_name=ADAPTER,
            )
    for name, model in models.items():
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trained and is_adapter_parameter(parameter_name))
    torch.manual_seed(seed + len(trained))


def _targets(model: torch.nn.Module, component: str, config: LoraConfig) -> List[str]:
    """`lora.target_modules.<component>`, each name matching a module (peft's rule: the full name
    or its ending after a dot); peft itself ignores a name that matches nothing."""
    key = f"lora.target_modules.{component}"
    targets = list(config.target_modules.get(component, []))
    if not targets and component == "text_encoder_2":  # the same CLIP layer names as the first encoder's
        key, targets = "lora.target_modules.text_encoder", list(config.target_modules.get("text_encoder", []))
    if not targets:
        raise ConfigError(
            key,
            None,
            f"the modules of the {COMPONENT_LABELS[component]} that get an adapter, since a stage trains its LoRA",
        )
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            leaves = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)
                }
            )
            raise ConfigError(
                key,
                targets,
                f"module names found in the {COMPONENT_LABELS[component]} "
                f"(`{target}` matches none); its linear layers are named "
                f"{', '.join(leaves)}",
            )
    return targets


# -- what the training state keeps -------------------------------------------------------------------
def trained_weights(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """What a stage changes in `model`: its adapters' weights when it carries any, else all."""
    weights = model.state_dict()
    if carries_adapter(model):
        weights = {k: v for k, v in weights.items() if is_adapter_parameter(k)}
    return weights


def load_trained_weights(model: torch.nn.Module, weights: Dict[str, torch.Tensor]) -> None:
    """The inverse of `trained_weights`: every key it wrote must land."""
    if not carries_adapter(model):
        model.load_state_dict(weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    left_out = [k for k in missing if is_adapter_parameter(k)]
    if unexpected or left_out:
        raise RuntimeError(f"adapter weights do not fit the model: unexpected {unexpected[:3]}, missing {left_out[:3]}")


# -- LoRA files (diffusers' format) --------------------------------------------------------------------
def load_adapter(model: torch.nn.Module, component: str, file: str) -> None:
    """Put the `component` adapter of a LoRA file into `model`, with diffusers' loaders."""
    from diffusers import StableDiffusionPipeline

    path = Path(file)
    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
        str(path.parent), weight_name=path.name, return_lora_metadata=True
    )
    if component == "unet":
        StableDiffusionPipeline.load_lora_into_unet(state, alphas, model, adapter_name=ADAPTER, metadata=metadata)
    else:
        StableDiffusionPipeline.load_lora_into_text_encoder(
            state, alphas, model, prefix=component, adapter_name=ADAPTER, metadata=metadata
        )


def lora_file(sources: dict) -> Optional[str]:
    """The LoRA file of a checkpoint's component sources (burnlab.models.components.Source), if any."""
    return next((source.lora for source in sources.values() if getattr(source, "lora", None)), None)


def swap_adapters(pipeline, current: Optional[str], sources: dict) -> Optional[str]:
    """Put the adapters of `sources` into `pipeline` in place of those of `current` (LoRA files,
    None = no adapter); returns what the pipeline carries now."""
    wanted = lora_file(sources)
    if wanted != current:
        if current is not None:
            pipeline.unload_lora_weights()  # back to the base modules, their weights untouched
        if wanted is not None:
            pipeline.load_lora_weights(str(Path(wanted).parent), weight_name=Path(wanted).name)
    return wanted


def bake(pipeline, sources: dict) -> None:
    """Fuse the adapters of `sources` into the pipeline's weights and drop the LoRA layers, so that
    `save_pretrained` writes a plain diffusers folder."""
    if swap_adapters(pipeline, None, sources) is not None:
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
