"""Data loading: both folder layouts, the split, and clear errors for bad folders."""
import json

import pytest
import torch
from PIL import Image

from burnlab.components import BaseModel
from burnlab.config import DataConfig, ModelConfig, ValidationConfig
from burnlab.data import caption_source, load_study_data, scan_captioned_folder
from burnlab.errors import ConfigError, UserError
from study_helpers import write_captioned_images


def _load(folder, **data):
    return load_study_data(DataConfig(path=str(folder), resolution=32, **data), ValidationConfig(stabilize_count=3))


def test_folder_is_resized_cropped_and_split(tmp_path):
    folder = write_captioned_images(tmp_path / "d", 10, size=48)
    (folder / "nested").mkdir()
    Image.new("RGB", (80, 40), (255, 0, 0)).save(folder / "nested" / "wide.webp")
    (folder / "nested" / "wide.txt").write_text("a wide red image\n")
    data = _load(folder)
    assert len(data.train) + len(data.validation) == 11
    assert len(data.validation) == round(11 * 0.15) == 2
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert len(data.stabilize) == 3 and set(data.stabilize.files) <= set(data.train.files)
    assert "a wide red image" in data.train.captions + data.validation.captions
    assert _load(folder).identity == data.identity


def test_metadata_jsonl_layout(tmp_path):
    write_captioned_images(tmp_path, 3)
    rows = [{"file_name": f"img{i:02d}.png", "text": f"caption {i}"} for i in range(3)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pairs = scan_captioned_folder(tmp_path, "data.path", None)
    assert [caption for _, caption in pairs] == ["caption 0", "caption 1", "caption 2"]


def test_caption_source_names_where_each_caption_was_read(tmp_path):
    txt = write_captioned_images(tmp_path / "txt", 2)
    (txt / "nested").mkdir()
    (txt / "img01.png").rename(txt / "nested" / "img01.png")  # its caption left behind: the default
    assert [caption_source(image, txt) for image, _ in scan_captioned_folder(txt, "data.path", "a painting")] == [
        "img00.txt", "nested/img01.png (data.default_caption)"]
    listed = write_captioned_images(tmp_path / "listed", 1)
    outside = write_captioned_images(tmp_path / "outside", 1) / "img00.png"
    rows = [{"file_name": "img00.png", "text": "a"}, {"file_name": str(outside), "text": "b"}]
    (listed / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert [caption_source(image, listed) for image, _ in scan_captioned_folder(listed, "data.path", None)] == [
        "metadata.jsonl (img00.png)", f"metadata.jsonl ({outside})"]


def test_missing_folder_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"`data.path` has value '.*nowhere'"):
        _load(tmp_path / "nowhere")


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"holds no images: expected files ending in \.jpg"):
        _load(tmp_path)


def test_images_without_captions_are_listed_unless_default_caption(tmp_path):
    write_captioned_images(tmp_path, 8)
    for i in range(7):
        (tmp_path / f"img{i:02d}.txt").unlink()
    with pytest.raises(UserError) as caught:
        _load(tmp_path)
    assert "7 image(s)" in str(caught.value) and "img00.png" in str(caught.value) and "and 2 more" in str(caught.value)
    assert "data.default_caption" in str(caught.value)
    assert _load(tmp_path, default_caption="a painting").train.captions.count("a painting") >= 5


def test_corrupt_image_is_named(tmp_path):
    write_captioned_images(tmp_path, 3)
    (tmp_path / "img01.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="img01.png cannot be read"):
        _load(tmp_path)


def test_unknown_model_path(tmp_path):
    with pytest.raises(ConfigError, match="`model.path` has value 'not a model'"):
        BaseModel(ModelConfig(path="not a model"))
    with pytest.raises(ConfigError, match="model_index.json"):
        BaseModel(ModelConfig(path=str(tmp_path)))
    with pytest.raises(UserError, match="cannot load `unet` from nobody/no-such-model"):
        BaseModel(ModelConfig(path="nobody/no-such-model")).source("unet").load("unet")
