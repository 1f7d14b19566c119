"""burnlab-diagnose on models burnlab did not train, in every form a user has them: a diffusers
folder, the same model as a single-file checkpoint, a LoRA checkpoint and the same LoRA in
kohya's keys; the base against itself; bad input. Few seeds and steps: seconds each."""

import json

import pytest

from burnlab.attribution.diagnose import main
from burnlab.models.export import export_kohya_lora, export_single_file
from test_model_files import TOY, lora_checkpoint, perturb

QUICK = ["--seeds", "3", "--steps", "4"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("diagnose_models")
    for name, component in (("unet_burn", "unet"), ("te_burn", "text_encoder")):
        pipeline = StableDiffusionPipeline.from_pretrained(TOY, safety_checker=None, requires_safety_checker=False)
        perturb(getattr(pipeline, component), seed=3, scale=2e-2)
        pipeline.save_pretrained(root / name, safe_serialization=True)
    export_single_file(root / "unet_burn", root / "unet_burn.safetensors")
    lora = lora_checkpoint(root / "lora_unet", ["unet"])
    export_kohya_lora(lora, root / "lora_unet_kohya.safetensors")
    (root / "rule.json").write_text(json.dumps({"threshold": 0.3, "source": "test"}))
    return root


def diagnose(models, tuned, out, *extra):
    code = main([str(tuned), "--out", str(out), "--rule", str(models / "rule.json"), *QUICK, *extra])
    found = json.loads((out / "analysis" / "attribution.json").read_text())["pairs"][0] if code == 0 else None
    return code, found


def shares(found):
    return {name: found["shares"][name]["value"] for name in ("unet", "text_encoder", "interaction")}


def test_a_unet_burn_in_a_diffusers_folder_and_as_a_single_file(models, tmp_path, capsys):
    code, folder = diagnose(models, models / "unet_burn", tmp_path / "folder")
    assert code == 0 and folder["verdict"] == "unet", folder["sentence"]
    assert shares(folder)["text_encoder"] == 0.0  # its text encoder is the base's: the corner is R itself
    printed = capsys.readouterr().out
    assert printed.startswith("unet: ") and "report.html" in printed
    assert (tmp_path / "folder" / "report.html").exists()
    assert len(list((tmp_path / "folder" / "analysis").glob("swap_*.png"))) == 3
    code, single = diagnose(models, models / "unet_burn.safetensors", tmp_path / "single")
    assert code == 0 and shares(single) == shares(folder)  # the same weights, the same numbers


def test_a_text_encoder_burn(models, tmp_path):
    code, found = diagnose(models, models / "te_burn", tmp_path / "te")
    assert code == 0 and found["verdict"] == "text_encoder", found["sentence"]
    assert shares(found)["unet"] == 0.0


def test_a_unet_lora_and_the_same_lora_in_kohya_keys(models, tmp_path):
    code, diffusers_keys = diagnose(models, models / "lora_unet", tmp_path / "lora")
    assert code == 0 and shares(diffusers_keys)["text_encoder"] == 0.0 and shares(diffusers_keys)["unet"] > 0
    code, kohya = diagnose(models, models / "lora_unet_kohya.safetensors", tmp_path / "kohya")
    assert code == 0 and shares(kohya) == pytest.approx(shares(diffusers_keys), abs=0.02)
    assert kohya["verdict"] == diffusers_keys["verdict"]
    document = json.loads((tmp_path / "kohya" / "attribution.json").read_text())
    assert document["tuned"]["kind"] == "LoRA file (kohya keys)" and document["tuned"]["lora_components"] == ["unet"]


def test_the_base_against_itself_reads_none(models, tmp_path):
    code, found = diagnose(models, TOY, tmp_path / "self")
    assert code == 0 and found["verdict"] == "none"
    assert shares(found) == {"unet": 0.0, "text_encoder": 0.0, "interaction": 0.0}


def test_a_file_that_is_no_model_is_one_paragraph(models, tmp_path, capsys):
    picture = tmp_path / "cat.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main([str(picture), "--out", str(tmp_path / "bad"), *QUICK]) == 2
    error = capsys.readouterr().err
    assert str(picture) in error and len(error.strip().splitlines()) == 1 and "Traceback" not in error


def test_the_diagnosis_samples_at_the_family_s_size_and_takes_a_prompts_file(tmp_path):
    from types import SimpleNamespace

    from burnlab.attribution.diagnose import sampling_config

    options = dict(prompts_file=None, activation=None, seeds=None, steps=None, guidance=None, resolution=None)
    sd, xl = (
        sampling_config(False, SimpleNamespace(**options)),
        sampling_config(False, SimpleNamespace(**options), xl=True),
    )
    assert (sd.width, xl.width, xl.batch_size) == (512, 1024, 3) and list(sd.prompts) == list(xl.prompts)
    assert sampling_config(True, SimpleNamespace(**options)).width is None  # the toy's own 64 px
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of ada\na red house, zorblax\n")
    mine = sampling_config(False, SimpleNamespace(**{**options, "prompts_file": str(prompts), "activation": "zorblax"}))
    assert {name: (p.prompt, p.activation) for name, p in mine.prompts.items()} == {
        "prompt_1": ("a photo of ada", False),
        "prompt_2": ("a red house, zorblax", True),
    }
