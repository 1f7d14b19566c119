"""burnlab.models.loading, burnlab.models.export and burnlab-diagnose on the toy SDXL: an SDXL folder,
the same model as an SGM single file, LoRA checkpoints and files with diffusers' keys and kohya's
(`lora_te1_`, `lora_te2_`) load as the weights they hold, three components each; a second-text-encoder
LoRA is diagnosed over the eight swap corners; SD files on an SDXL base and SDXL files on an SD base
are one paragraph naming the file."""

import json
import re

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

from burnlab.attribution.diagnose import main
from burnlab.config.schema import LoraConfig
from burnlab.errors import UserError
from burnlab.models import export
from burnlab.models.adapters import attach
from burnlab.models.checkpoint import save_lora_checkpoint
from burnlab.models.components import MODEL_CLASSES
from burnlab.models.loading import load_model
from burnlab.store.layout import LORA_FILE, XL_COMPONENTS, swap_corners
from burnlab.toy import asset_dir
from test_model_files import ALPHA, TOY, assert_equal, changed, lora_checkpoint, max_difference, perturb

TOY_XL = asset_dir("base_xl")
BASE_XL = {
    "path": str(TOY_XL),
    "revision": None,
    "variant": None,
    "allow_pickle_weights": False,
    "identity": "toy_xl",
    "components": list(XL_COMPONENTS),
}
MANIFEST_XL = {"stage": "test", "stage_identity": "test", "epoch": 1, "lineage": [], "base": BASE_XL}
CLIP_LAYERS = 3 * 6  # the toy encoders' layers x (q, k, v, out_proj, fc1, fc2)
# SGM's names (diffusers' single-file conversion read backwards): the addition embedding, the
# OpenCLIP encoder's top-level weights and the renamed parts of its layers
LABEL_EMB = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.": "attn.",
}


def xl_lora_checkpoint(target, trained, scale=0.1):
    """An SDXL LoRA checkpoint as a LoRA stage writes it (StableDiffusionXLPipeline.save_lora_weights),
    its lora_B drawn (a fresh adapter's is zero)."""
    models = {name: MODEL_CLASSES[name].from_pretrained(TOY_XL, subfolder=name) for name in XL_COMPONENTS}
    attach(models, trained, LoraConfig(rank=2, alpha=ALPHA), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in trained:
            for parameter_name, parameter in models[name].named_parameters():
                if "lora_B" in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    save_lora_checkpoint(target, models, trained, **MANIFEST_XL)
    return target


def sgm_single_file(pipeline, out):
    """The pipeline as an SDXL single file with SGM's key names, the inverse of diffusers' conversion:
    the UNet as SD 1.x's plus `label_emb` (SDXL's addition embedding), the first encoder under
    `conditioner.embedders.0.transformer.`, the second in OpenCLIP's layout (q, k, v as one in_proj,
    the projection transposed) under `conditioner.embedders.1.model.`."""
    unet = dict(pipeline.unet.state_dict())
    weights = {}
    for key in [key for key in unet if key.startswith("add_embedding.")]:
        module, parameter = key.rsplit(".", 1)
        weights[f"{export.LDM_UNET_PREFIX}{LABEL_EMB[module]}.{parameter}"] = unet.pop(key)
    weights.update(
        {export.LDM_UNET_PREFIX + k: v for k, v in export.unet_to_ldm(unet, dict(pipeline.unet.config)).items()}
    )
    vae = export.vae_to_ldm(pipeline.vae.state_dict(), dict(pipeline.vae.config))
    weights.update({export.LDM_VAE_PREFIX + k: v for k, v in vae.items()})
    for key, value in pipeline.text_encoder.state_dict().items():
        weights["conditioner.embedders.0.transformer.text_model." + key.removeprefix("text_model.")] = value
    open_clip = "conditioner.embedders.1.model."
    encoder = pipeline.text_encoder_2.state_dict()
    weights[open_clip + "text_projection"] = encoder["text_projection.weight"].T
    for key, value in encoder.items():
        key = key.removeprefix("text_model.")
        if key in OPEN_CLIP_TOP:
            weights[open_clip + OPEN_CLIP_TOP[key]] = value
        elif key.startswith("encoder.layers.") and not re.search(r"self_attn\.[qkv]_proj\.", key):
            layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
            for old, new in OPEN_CLIP_LAYER.items():
                rest = rest.replace(old, new)
            weights[f"{open_clip}transformer.resblocks.{layer}.{rest}"] = value
    for layer in range(pipeline.text_encoder_2.config.num_hidden_layers):
        for kind in ("weight", "bias"):
            qkv = [encoder[f"text_model.encoder.layers.{layer}.self_attn.{q}_proj.{kind}"] for q in "qkv"]
            weights[f"{open_clip}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv)
    save_file({key: value.contiguous() for key, value in weights.items()}, str(out))
    return out


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl_models")
    pipeline = StableDiffusionXLPipeline.from_pretrained(TOY_XL, add_watermarker=False)
    perturb(pipeline.text_encoder_2, seed=4, scale=2e-2)
    pipeline.save_pretrained(root / "te2_burn", safe_serialization=True)
    sgm_single_file(pipeline, root / "te2_burn.safetensors")
    lora_all = xl_lora_checkpoint(root / "lora_all", list(XL_COMPONENTS))
    export.export_kohya_lora(lora_all, root / "lora_all_kohya.safetensors")
    (root / "rule.json").write_text(json.dumps({"threshold": 0.3, "source": "test"}))
    return {
        "root": root,
        "te2_burn": root / "te2_burn",
        "single": root / "te2_burn.safetensors",
        "lora_te2": xl_lora_checkpoint(root / "lora_te2", ["text_encoder_2"], scale=0.3),
        "lora_all": lora_all,
        "kohya": root / "lora_all_kohya.safetensors",
    }


@pytest.fixture(scope="module")
def toy_xl():
    return states(load_model(str(TOY_XL)))


def states(loaded):
    assert tuple(loaded.components) == XL_COMPONENTS
    return {name: model.state_dict() for name, model in loaded.components.items()}


def test_an_sdxl_folder_and_the_same_model_as_an_sgm_single_file(xl, toy_xl):
    folder = load_model(str(xl["te2_burn"]))
    assert folder.kind == "diffusers folder" and folder.pipeline_folder == str(xl["te2_burn"].resolve())
    for name in ("unet", "text_encoder"):
        assert_equal(states(folder)[name], toy_xl[name])
    assert changed(states(folder)["text_encoder_2"], toy_xl["text_encoder_2"]) == len(toy_xl["text_encoder_2"])
    single = load_model(str(xl["single"]), base=str(TOY_XL))
    assert single.kind == "single-file checkpoint" and "SGM keys" in single.description
    for name in XL_COMPONENTS:  # every weight from the file, bit for bit
        assert_equal(states(single)[name], states(folder)[name])


def test_a_second_text_encoder_lora_changes_only_the_second_text_encoder(xl, toy_xl):
    checkpoint = load_model(str(xl["lora_te2"]))
    in_file = load_model(str(xl["lora_te2"] / LORA_FILE), base=str(TOY_XL))
    assert checkpoint.lora_components == in_file.lora_components == ("text_encoder_2",)
    assert in_file.kind == "LoRA file (diffusers keys)" and checkpoint.pipeline_folder == str(TOY_XL)
    for loaded in (checkpoint, in_file):
        assert_equal(states(loaded)["unet"], toy_xl["unet"])
        assert_equal(states(loaded)["text_encoder"], toy_xl["text_encoder"])
        assert changed(states(loaded)["text_encoder_2"], toy_xl["text_encoder_2"]) == CLIP_LAYERS
    assert_equal(states(checkpoint)["text_encoder_2"], states(in_file)["text_encoder_2"])


def test_the_kohya_export_of_an_sdxl_lora_names_both_encoders_and_loads_back(xl, toy_xl):
    weights = load_file(str(xl["kohya"]))
    assert {key.split("_text_model_")[0] for key in weights if "_text_model_" in key} == {"lora_te1", "lora_te2"}
    assert all(key.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for key in weights)
    assert weights["lora_te2_text_model_encoder_layers_2_self_attn_q_proj.alpha"].item() == ALPHA
    assert "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight" in weights
    kohya = load_model(str(xl["kohya"]), base=str(TOY_XL))  # StableDiffusionXLPipeline.load_lora_weights
    diffusers_keys = load_model(str(xl["lora_all"] / LORA_FILE), base=str(TOY_XL))
    assert kohya.kind == "LoRA file (kohya keys)" and kohya.lora_components == XL_COMPONENTS
    for name in XL_COMPONENTS:
        assert max_difference(states(kohya)[name], states(diffusers_keys)[name]) <= 1e-6
        expected = 88 if name == "unet" else CLIP_LAYERS  # 22 attentions x q, k, v, out
        assert changed(states(kohya)[name], toy_xl[name]) == expected


def test_an_sd_file_on_an_sdxl_base_and_the_other_way_round_are_one_paragraph(xl, tmp_path):
    sd_lora = lora_checkpoint(tmp_path / "sd_lora", ["unet", "text_encoder"])
    export.export_kohya_lora(sd_lora, tmp_path / "sd_kohya.safetensors")
    export.export_single_file(TOY, tmp_path / "sd_single.safetensors")
    cases = [
        (xl["kohya"], TOY, "is an SDXL LoRA file (kohya keys) that does not fit its base: 36 of its 124"),
        (xl["lora_all"] / LORA_FILE, TOY, "is an SDXL LoRA file (diffusers keys) that does not fit its base"),
        (tmp_path / "sd_kohya.safetensors", TOY_XL, "`lora_unet_`, `lora_te1_`, `lora_te2_`"),
        (sd_lora / LORA_FILE, TOY_XL, "diffusers could not load its adapters"),
        (xl["single"], TOY, "is an SDXL single-file checkpoint"),
        (tmp_path / "sd_single.safetensors", TOY_XL, "is an SD 1.x single-file checkpoint"),
    ]
    for path, base, phrase in cases:
        with pytest.raises(UserError) as error:
            load_model(str(path), base=str(base))
        message = str(error.value)
        assert phrase in message and str(path) in message and "\n" not in message, (path.name, message)
    assert export.main(["single-file", str(xl["te2_burn"]), str(tmp_path / "out.safetensors")]) == 2


def test_diagnose_finds_a_second_text_encoder_burn_over_eight_corners(xl, tmp_path, capsys):
    out = tmp_path / "te2"
    rule = str(xl["root"] / "rule.json")
    assert (
        main(
            [
                str(xl["lora_te2"]),
                "--base",
                str(TOY_XL),
                "--out",
                str(out),
                "--rule",
                rule,
                "--seeds",
                "3",
                "--steps",
                "3",
            ]
        )
        == 0
    )
    found = json.loads((out / "analysis" / "attribution.json").read_text())["pairs"][0]
    assert found["verdict"] == "text_encoder_2", found["sentence"]
    shares = {name: share["value"] for name, share in found["shares"].items()}
    assert shares["unet"] == shares["text_encoder"] == shares["interaction"] == 0.0 and shares["text_encoder_2"] > 1
    corners = json.loads((out / "attribution.json").read_text())["pairs"][0]["corners"]
    assert set(corners) == set(swap_corners(XL_COMPONENTS)) and len(corners) == 8
    assert len(set(corners.values())) == 2  # unet and text_encoder are the base's: each corner is R's or M's
    assert capsys.readouterr().out.startswith("text_encoder_2: ")
    # an SDXL model against the default (SD) base is a paragraph, not a traceback
    assert main([str(xl["te2_burn"]), "--out", str(tmp_path / "mixed")]) == 2
    error = capsys.readouterr().err
    assert "is an SDXL model" in error and str(TOY_XL) in error and len(error.strip().splitlines()) == 1
