"""burnlab.models.loading and burnlab.models.export on the toy model: every kind of model a user may have loads as
the weights it holds (a single-file export reads back bit for bit, a kohya export of a LoRA fuses to the
diffusers-key LoRA's weights), LoRA components are named, and every bad input is one paragraph naming
the file."""

import os
import re

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from burnlab.config.schema import LoraConfig
from burnlab.errors import UserError
from burnlab.models import export
from burnlab.models.adapters import attach
from burnlab.models.checkpoint import (
    base_sources,
    materialize,
    save_checkpoint,
    save_lora_checkpoint,
)
from burnlab.models.loading import load_model
from burnlab.store.layout import COMPONENTS, LORA_FILE
from burnlab.toy import asset_dir

TOY = asset_dir("base")
BASE = {"path": str(TOY), "revision": None, "variant": None, "allow_pickle_weights": False, "identity": "toy"}
MANIFEST = {"stage": "test", "stage_identity": "test", "epoch": 1, "lineage": [], "base": BASE}
ALPHA = 3.0


def toy_models():
    return {
        "unet": UNet2DConditionModel.from_pretrained(TOY, subfolder="unet"),
        "text_encoder": CLIPTextModel.from_pretrained(TOY, subfolder="text_encoder"),
    }


def perturb(model, seed: int, scale: float = 1e-2):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def lora_checkpoint(target, trained):
    """A LoRA checkpoint as a LoRA stage writes it, its lora_B drawn (a fresh adapter's is zero)."""
    models = toy_models()
    attach(models, trained, LoraConfig(rank=2, alpha=ALPHA), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in trained:
            for parameter_name, parameter in models[name].named_parameters():
                if "lora_B" in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    save_lora_checkpoint(target, models, trained, **MANIFEST)
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_files")
    pipeline = StableDiffusionPipeline.from_pretrained(TOY, safety_checker=None, requires_safety_checker=False)
    perturb(pipeline.unet, 0)
    perturb(pipeline.text_encoder, 1)
    pipeline.save_pretrained(root / "tuned", safe_serialization=True)
    unet = perturb(toy_models()["unet"], 2)
    save_checkpoint(root / "full", {"unet": unet}, {"text_encoder": base_sources(BASE)["text_encoder"]}, **MANIFEST)
    return {
        "root": root,
        "tuned": root / "tuned",
        "full": root / "full",
        "full_unet": unet.state_dict(),
        "lora_unet": lora_checkpoint(root / "lora_unet", ["unet"]),
        "lora_both": lora_checkpoint(root / "lora_both", ["unet", "text_encoder"]),
    }


@pytest.fixture(scope="module")
def toy():
    return load_model(str(TOY))


def states(loaded):
    return {name: loaded.components[name].state_dict() for name in COMPONENTS}


def assert_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, different[:3]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def changed(a: dict, b: dict) -> int:
    return sum(not torch.equal(a[key], b[key]) for key in a)


def test_a_diffusers_folder_loads_frozen_float32_on_cpu(files, toy):
    loaded = load_model(str(files["tuned"]))
    assert loaded.kind == "diffusers folder" and loaded.pipeline_folder == str(files["tuned"].resolve())
    assert loaded.lora_components == () and str(files["tuned"]) in loaded.description
    reference = StableDiffusionPipeline.from_pretrained(
        files["tuned"], safety_checker=None, requires_safety_checker=False
    )
    for name in COMPONENTS:
        model = loaded.components[name]
        assert_equal(model.state_dict(), getattr(reference, name).state_dict())
        assert changed(model.state_dict(), states(toy)[name]) > 0
        assert not model.training
        assert all(
            p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad for p in model.parameters()
        )


def test_a_cached_hub_id_loads_from_its_snapshot_and_a_missing_one_says_how_to_get_it(monkeypatch, toy):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def snapshot(hub_id, local_files_only):
        assert local_files_only  # never a download
        if hub_id == "toy/base":
            return str(TOY)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    loaded = load_model("toy/base")
    assert loaded.kind == "hub id" and loaded.pipeline_folder == str(TOY)
    assert_equal(loaded.components["unet"].state_dict(), toy.components["unet"].state_dict())
    with pytest.raises(UserError) as error:
        load_model("someone/missing-model")
    assert "`hf download someone/missing-model`" in str(error.value) and "\n" not in str(error.value)


def test_a_full_weights_checkpoint_loads_its_own_unet_and_its_parents_text_encoder(files, toy):
    loaded = load_model(str(files["full"]))
    assert loaded.kind == "burnlab checkpoint" and loaded.lora_components == ()
    assert loaded.pipeline_folder == str(TOY)
    assert_equal(loaded.components["unet"].state_dict(), files["full_unet"])
    assert_equal(loaded.components["text_encoder"].state_dict(), toy.components["text_encoder"].state_dict())


def test_a_lora_checkpoint_loads_fused_as_materialize_bakes_it(files, toy, tmp_path):
    loaded = load_model(str(files["lora_unet"]))
    assert loaded.kind == "burnlab checkpoint" and loaded.lora_components == ("unet",)
    assert "LoRA checkpoint" in loaded.description
    baked = StableDiffusionPipeline.from_pretrained(materialize(files["lora_unet"], tmp_path / "baked"))
    for name in COMPONENTS:
        assert_equal(loaded.components[name].state_dict(), getattr(baked, name).state_dict())
        assert not any(".lora_" in key for key in loaded.components[name].state_dict())  # plain modules
    unet = loaded.components["unet"].state_dict()
    assert changed(unet, toy.components["unet"].state_dict()) == 80  # 16 attentions x q, k, v, out
    assert_equal(loaded.components["text_encoder"].state_dict(), toy.components["text_encoder"].state_dict())
    assert load_model(str(files["lora_both"])).lora_components == ("unet", "text_encoder")


@pytest.mark.parametrize("source", ["tuned", "full"])
def test_a_single_file_export_loads_back_bit_for_bit(files, source, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert export.main(["single-file", str(files[source]), str(out)]) == 0
    with safe_open(str(out), "pt") as handle:
        prefixes = {key.split(".")[0] for key in handle.keys()}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    loaded = load_model(str(out), base=str(TOY))
    assert loaded.kind == "single-file checkpoint" and loaded.pipeline_folder == str(TOY)
    assert str(out) in loaded.description and str(TOY) in loaded.description
    for name, weights in states(load_model(str(files[source]))).items():
        assert_equal(states(loaded)[name], weights)


def test_the_single_file_mapping_fits_sd15s_block_layout(tiny_model, tmp_path):
    """The tiny model has SD 1.5's plain DownBlock2D / UpBlock2D blocks, which the toy lacks: its
    UNet, VAE and text encoder read back through diffusers' single-file loaders bit for bit."""
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    out = tmp_path / "tiny.safetensors"
    save_file(export.single_file_weights(pipeline.unet, pipeline.vae, pipeline.text_encoder), str(out))
    loaded = load_model(str(out), base=str(tiny_model))
    for name in COMPONENTS:
        assert_equal(loaded.components[name].state_dict(), getattr(pipeline, name).state_dict())
    vae = AutoencoderKL.from_single_file(str(out), config=str(tiny_model), subfolder="vae", local_files_only=True)
    assert_equal(vae.state_dict(), pipeline.vae.state_dict())
    assert load_file(str(out))["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # LDM's 1x1 conv


# LDM's modules by the names of their weights' first level: diffusers' single-file loader also reads some
# diffusers names (conv_shortcut, an upsampler in the attention's slot), so reading back alone misses them
LDM_MODULES = [
    {"in_layers", "out_layers", "emb_layers"},
    {"in_layers", "out_layers", "emb_layers", "skip_connection"},
    {"norm", "proj_in", "transformer_blocks", "proj_out"},
    {"op"},
    {"conv"},
    {"norm1", "conv1", "norm2", "conv2"},
    {"norm1", "conv1", "norm2", "conv2", "nin_shortcut"},
    {"norm", "q", "k", "v", "proj_out"},
]
LDM_SLOT = re.compile(
    r"^(model\.diffusion_model\.(?:(?:input|output)_blocks\.\d+\.\d+|middle_block\.\d+)"
    r"|first_stage_model\.\w+\.(?:(?:down|up)\.\d+\.(?:block\.\d+|downsample|upsample)"
    r"|mid\.\w+))\.(\w+)\."
)


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_a_single_file_has_ldms_module_names(model, tiny_model, tmp_path):
    folder = TOY if model == "toy" else tiny_model
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    keys = export.single_file_weights(pipeline.unet, pipeline.vae, pipeline.text_encoder)
    modules = {}
    for key in keys:
        if LDM_SLOT.match(key):
            slot, name = LDM_SLOT.match(key).groups()
            modules.setdefault(slot, set()).add(name)
    assert {slot: names for slot, names in modules.items() if names not in LDM_MODULES} == {}
    assert len(modules) > 30 and {
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.bias",
        "first_stage_model.decoder.norm_out.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    } <= set(keys)


@pytest.mark.parametrize("checkpoint, components", [("lora_both", ("unet", "text_encoder")), ("lora_unet", ("unet",))])
def test_a_kohya_export_fuses_to_the_diffusers_loras_weights(files, checkpoint, components, toy, tmp_path):
    out = tmp_path / "kohya.safetensors"
    assert export.main(["kohya-lora", str(files[checkpoint]), str(out)]) == 0
    weights = load_file(str(out))
    assert all(key.startswith(("lora_unet_", "lora_te_")) for key in weights)
    assert weights["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"].item() == ALPHA
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in weights
    kohya = load_model(str(out), base=str(TOY))
    diffusers_keys = load_model(str(files[checkpoint] / LORA_FILE), base=str(TOY))
    assert kohya.kind == "LoRA file (kohya keys)" and diffusers_keys.kind == "LoRA file (diffusers keys)"
    assert kohya.lora_components == diffusers_keys.lora_components == components
    for name in COMPONENTS:
        fused, reference = kohya.components[name].state_dict(), diffusers_keys.components[name].state_dict()
        assert max_difference(fused, reference) <= 1e-6
        assert changed(fused, states(toy)[name]) == {"unet": 80, "text_encoder": 12}[name] * (name in components)
    if "text_encoder" in components:
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in weights


def test_a_pickled_single_file_loads_only_with_allow_pickle(files, tmp_path):
    single = tmp_path / "model.safetensors"
    export.export_single_file(files["tuned"], single)
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(single))}, pickled)
    with pytest.raises(UserError, match="--allow-pickle"):
        load_model(str(pickled), base=str(TOY))
    loaded = load_model(str(pickled), base=str(TOY), allow_pickle=True)
    for name, weights in states(load_model(str(files["tuned"]))).items():
        assert_equal(states(loaded)[name], weights)


def _bad_inputs(root, files, tiny_model):
    """(spec, base, a phrase the paragraph must hold) for every kind of bad input."""
    (root / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (root / "random.safetensors").write_bytes(os.urandom(1024))
    save_file({"foo.weight": torch.zeros(2)}, str(root / "other.safetensors"))
    save_file(
        {
            "conditioner.embedders.1.model.ln_final.weight": torch.zeros(2),
            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2),
        },
        str(root / "sdxl.safetensors"),
    )
    save_file(
        {
            "lora_unet_no_such_module.lora_down.weight": torch.zeros(2, 8),
            "lora_unet_no_such_module.lora_up.weight": torch.zeros(8, 2),
            "lora_unet_no_such_module.alpha": torch.tensor(2.0),
        },
        str(root / "nomatch.safetensors"),
    )
    lora = load_file(str(files["lora_unet"] / LORA_FILE))
    one = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    lora.update(
        {key.replace("to_q", "to_nothing"): value.clone() for key, value in lora.items() if key.startswith(one)}
    )
    save_file(lora, str(root / "partial.safetensors"))
    export.export_single_file(TOY, root / "toy.safetensors")
    single = load_file(str(root / "toy.safetensors"))
    del single["model.diffusion_model.middle_block.1.proj_in.weight"]
    save_file(single, str(root / "incomplete.safetensors"))
    single = load_file(str(root / "toy.safetensors"))
    del single["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight"]
    save_file(single, str(root / "incomplete_te.safetensors"))
    export.export_kohya_lora(files["lora_unet"], root / "kohya.safetensors")
    (root / "empty").mkdir()
    return [
        ("picture.png", str(TOY), "is not a safetensors file"),
        ("random.safetensors", str(TOY), "is not a safetensors file"),
        ("other.safetensors", str(TOY), "is not a model burnlab knows"),
        ("sdxl.safetensors", str(TOY), "is an SDXL single-file checkpoint"),
        ("nomatch.safetensors", str(TOY), "could not load its adapters"),
        ("partial.safetensors", str(TOY), "1 of its 81 unet adapter modules match no module"),
        ("kohya.safetensors", str(tiny_model), "does not fit the base"),
        ("toy.safetensors", str(tiny_model), "does not fit the architecture of the base"),
        ("incomplete.safetensors", str(TOY), "its unet lacks weights that the base's architecture has"),
        ("incomplete_te.safetensors", str(TOY), "its text_encoder lacks 1 weight(s)"),
        ("toy.safetensors", None, "pass --base"),
        ("kohya.safetensors", None, "pass --base"),
        ("toy.safetensors", str(root / "empty"), "is not a diffusers pipeline folder"),
        ("missing.safetensors", None, "does not exist"),
        ("empty", None, "neither manifest.json nor model_index.json"),
    ]


def test_every_bad_input_is_one_paragraph_naming_the_file(files, tiny_model):
    root = files["root"] / "bad"
    root.mkdir()
    for name, base, phrase in _bad_inputs(root, files, tiny_model):
        with pytest.raises(UserError) as error:
            load_model(str(root / name), base=base)
        message = str(error.value)
        assert phrase in message and str(root / name) in message and "\n" not in message, (name, message)


def test_export_errors_are_one_paragraph_and_exit_2(files, tmp_path, capsys):
    assert export.main(["kohya-lora", str(files["full"]), str(tmp_path / "out.safetensors")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("burnlab: ") and "not a LoRA checkpoint" in stderr and stderr.count("\n") == 1
    assert export.main(["single-file", str(tmp_path / "nothing"), str(tmp_path / "out.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
