"""The toy world: the embedded default base model, style dataset and probe.

    from burnlab.toy import asset_dir, ACTIVATION_PHRASE
    asset_dir("base")     # StableDiffusionPipeline folder (model=toy)
    asset_dir("style")    # 26 image_NN.png + image_NN.txt (data=toy_style)
    asset_dir("probe")    # burnlab.toy.probe.load_probe() reads it
    asset_dir("base_xl")  # the toy SDXL: a StableDiffusionXLPipeline folder (model=toy_xl)

`make base` (python -m burnlab.toy.pretrain) rebuilds the assets, `python -m
burnlab.toy.pretrain_xl` the toy SDXL; they are committed. The toy analogs of the study's three
prompt sets are in conf/sampling/toy.yaml (their one source).
"""

from __future__ import annotations

from pathlib import Path

# In every caption of the style dataset; the study's "activation word".
ACTIVATION_PHRASE = "in the zorblax ornament style"

ASSETS = Path(__file__).resolve().parent / "assets"
ASSET_NAMES = ("base", "style", "probe", "base_xl")


def asset_dir(name: str) -> Path:
    """Absolute path of a shipped asset folder: "base", "style", "probe" or "base_xl"."""
    if name not in ASSET_NAMES:
        raise ValueError(f"unknown toy asset {name!r}; expected one of {', '.join(ASSET_NAMES)}")
    return ASSETS / name


__all__ = ["ACTIVATION_PHRASE", "ASSETS", "asset_dir"]
