"""The toy SDXL (model=toy_xl): SDXL's pipeline and conditioning, on the shipped weights.

The pretraining itself is `python -m burnlab.toy.pretrain_xl` (its numbers are in the README);
here: the folder loads as a StableDiffusionXLPipeline and samples, pretraining encodes prompts and
size/crop conditioning exactly as the pipeline does, the trained UNet reads both encoders and the
time ids, and an interrupted pretraining resumes to the same weights.
"""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline
from hydra import compose, initialize_config_dir
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from burnlab.config.compose import CONF_DIR, load_config
from burnlab.toy import asset_dir, pretrain_xl
from burnlab.toy.build import build_tokenizer, vae_config
from burnlab.toy.build_xl import TE1_WIDTH, TE2_WIDTH, encode_prompt_ids, time_ids
from burnlab.toy.pretrain import SMOKE

PROMPT = "a photo of ada"
# bytes of unet/ (float16) + text_encoder/ + text_encoder_2/ (vae, tokenizer, scheduler shared)
SIZE_BUDGET = 13_000_000


@pytest.fixture(scope="module")
def pipeline():
    pipe = StableDiffusionXLPipeline.from_pretrained(asset_dir("base_xl"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def encoded(pipeline):
    ids = pipeline.tokenizer(
        [PROMPT, ""],
        padding="max_length",
        truncation=True,
        max_length=pipeline.tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return encode_prompt_ids(pipeline.text_encoder, pipeline.text_encoder_2, ids)


def test_shipped_folder_shares_the_vae_and_fits_the_budget():
    folder = asset_dir("base_xl")
    assert (folder / "vae").is_symlink()
    assert (folder / "vae").resolve() == (asset_dir("base") / "vae").resolve()
    files = [path for part in ("unet", "text_encoder", "text_encoder_2") for path in (folder / part).iterdir()]
    assert sum(path.stat().st_size for path in files) <= SIZE_BUDGET
    assert {path.suffix for path in files} == {".json", ".safetensors"}


def test_loads_as_sdxl_and_samples_two_steps(pipeline):
    assert isinstance(pipeline.text_encoder, CLIPTextModel)
    assert isinstance(pipeline.text_encoder_2, CLIPTextModelWithProjection)
    assert pipeline.unet.config.addition_embed_type == "text_time"
    assert pipeline.unet.config.cross_attention_dim == TE1_WIDTH + TE2_WIDTH
    assert pipeline.vae.config.scaling_factor != 1.0  # the SD toy's measured VAE
    images = pipeline(
        PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_pretraining_encodes_prompts_as_the_pipeline_does(pipeline, encoded):
    hidden, pooled = encoded
    assert hidden.shape == (2, 77, TE1_WIDTH + TE2_WIDTH) and pooled.shape == (2, TE2_WIDTH)
    with torch.no_grad():
        embeds, negative, pooled_embeds, negative_pooled = pipeline.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    torch.testing.assert_close(hidden[:1], embeds)
    torch.testing.assert_close(pooled[:1], pooled_embeds)
    # the empty negative prompt is encoded (as caption dropout trained it), not zeroed
    torch.testing.assert_close(hidden[1:], negative)
    torch.testing.assert_close(pooled[1:], negative_pooled)
    assert negative.abs().mean() > 0


def test_time_ids_are_the_pipelines_and_come_from_the_data(pipeline):
    ours = time_ids(original_size=(64, 64), crop_top_left=(0, 0), target_size=(64, 64))
    theirs = pipeline._get_add_time_ids(
        (64, 64),
        (0, 0),
        (64, 64),
        dtype=torch.float32,
        text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim,
    )
    assert torch.equal(ours, theirs)
    pool = {"mean": torch.zeros(3, 4, 8, 8), "std": torch.ones(3, 4, 8, 8)}  # 8x8 latents of 64x64 images
    assert torch.equal(pretrain_xl.pool_time_ids(pool, pipeline.vae), ours.repeat(3, 1))
    pool = {"mean": torch.zeros(2, 4, 6, 10)}
    assert pretrain_xl.pool_time_ids(pool, pipeline.vae)[0].tolist() == [48, 80, 0, 0, 48, 80]


def test_unet_reads_both_encoders_the_pooled_vector_and_the_time_ids(pipeline, encoded):
    hidden, pooled = encoded
    hidden, pooled = hidden[:1], pooled[:1]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    size = time_ids((64, 64), (0, 0), (64, 64))

    @torch.no_grad()
    def predict(hidden, pooled, ids):
        return pipeline.unet(
            latents, torch.tensor([500]), hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}
        ).sample

    reference = predict(hidden, pooled, size)
    te1_zeroed, te2_zeroed = hidden.clone(), hidden.clone()
    te1_zeroed[..., :TE1_WIDTH] = 0
    te2_zeroed[..., TE1_WIDTH:] = 0
    changes = {
        "te1 states zeroed": predict(te1_zeroed, pooled, size),
        "te2 states and pooled zeroed": predict(te2_zeroed, torch.zeros_like(pooled), size),
        "te2 pooled zeroed": predict(hidden, torch.zeros_like(pooled), size),
        "crop (16, 16)": predict(hidden, pooled, time_ids((64, 64), (16, 16), (64, 64))),
    }
    scale = reference.abs().mean()
    moved = {name: float((out - reference).abs().mean() / scale) for name, out in changes.items()}
    # measured on the shipped weights: te1 0.21, te2 0.08, pooled alone 0.03, crop 0.005 (every
    # training image had the same time ids, so a crop it never saw moves it least; the path is live)
    assert min(moved["te1 states zeroed"], moved["te2 states and pooled zeroed"], moved["te2 pooled zeroed"]) > 0.01, (
        moved
    )
    assert moved["crop (16, 16)"] > 0.001, moved


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    tokenizer = build_tokenizer(tmp_path / "tokenizer")
    vae = AutoencoderKL(**vae_config())  # only its config is read: scaling factor, downsampling
    generator = torch.Generator().manual_seed(0)
    pool = {"mean": torch.randn(6, 4, 8, 8, generator=generator), "std": torch.full((6, 4, 8, 8), 0.1)}
    captions = ["a photo of ada", "black and white circles", "a man wearing sunglasses"] * 2
    settings = dataclasses.replace(SMOKE, unet_steps=4, unet_batch=3, save_every=2)

    def train(folder):
        folder.mkdir(exist_ok=True)
        modules = pretrain_xl.train_unet_xl(settings, folder, vae, pool, captions, tokenizer)
        return [module.state_dict() for module in modules]

    straight = train(tmp_path / "straight")

    class Interrupted(Exception):
        pass

    step_generator = pretrain_xl._step_generator

    def interrupt_at_step_3(stream, step):
        if step == 3:
            raise Interrupted
        return step_generator(stream, step)

    monkeypatch.setattr(pretrain_xl, "_step_generator", interrupt_at_step_3)
    with pytest.raises(Interrupted):
        train(tmp_path / "resumed")
    monkeypatch.setattr(pretrain_xl, "_step_generator", step_generator)
    resumed = train(tmp_path / "resumed")
    for before, after in zip(straight, resumed):
        assert before.keys() == after.keys()
        assert all(torch.equal(before[key], after[key]) for key in before)


def test_model_config_composes():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = load_config(compose(config_name="config", overrides=["experiment=burn_unet", "model=toy_xl"]))
    assert config.model.path == str(asset_dir("base_xl"))


def test_the_toy_sdxl_is_an_sdxl_base_model_a_study_trains():
    from burnlab.config.compose import compose_config
    from burnlab.models.components import BaseModel
    from burnlab.store.layout import XL_COMPONENTS

    base = BaseModel(load_config(compose_config(["experiment=followfox_xl"])).model)
    assert base.components == XL_COMPONENTS and base.conditioner().encoders == XL_COMPONENTS[1:]
