"""Data loading: both folder layouts, the split, and clear errors for bad folders: every bad
file of a hostile folder in one error (or skipped), captions' encodings, images decoded as they
are meant to be seen, links, and the data's identity."""

import json
import logging
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from burnlab.config.compose import load_config
from burnlab.config.schema import DataConfig, ModelConfig, ValidationConfig
from burnlab.data.dataset import caption_source, load_study_data, scan_captioned_folder
from burnlab.errors import ConfigError, UserError
from burnlab.launch.runner import StudyRunner
from burnlab.models.components import BaseModel
from burnlab.plan.study import plan_stages
from study_helpers import compose_config, tiny_overrides, write_captioned_images


def _load(folder, **data):
    return load_study_data(DataConfig(path=str(folder), resolution=32, **data), ValidationConfig(stabilize_count=3))


def _scan(folder, default_caption=None):
    return list(
        scan_captioned_folder(folder, "data.path", DataConfig(path=str(folder), default_caption=default_caption), [])
    )


def _error(folder, **data) -> str:
    with pytest.raises(UserError) as caught:
        _load(folder, **data)
    return str(caught.value)


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
    pairs = _scan(tmp_path)
    assert [caption for _, caption in pairs] == ["caption 0", "caption 1", "caption 2"]


def test_caption_source_names_where_each_caption_was_read(tmp_path):
    txt = write_captioned_images(tmp_path / "txt", 2)
    (txt / "nested").mkdir()
    (txt / "img01.png").rename(txt / "nested" / "img01.png")  # its caption left behind: the default
    assert [caption_source(image, txt) for image, _ in _scan(txt, "a painting")] == [
        "img00.txt",
        "nested/img01.png (data.default_caption)",
    ]
    listed = write_captioned_images(tmp_path / "listed", 1)
    outside = write_captioned_images(tmp_path / "outside", 1) / "img00.png"
    rows = [{"file_name": "img00.png", "text": "a"}, {"file_name": str(outside), "text": "b"}]
    (listed / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert [caption_source(image, listed) for image, _ in _scan(listed)] == [
        "metadata.jsonl (img00.png)",
        f"metadata.jsonl ({outside})",
    ]


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
    message = _error(tmp_path)
    assert message.startswith("7 bad file(s) in the data folder") and "img06.png: no caption (img06.txt)" in message
    assert "data.default_caption" in message
    assert _load(tmp_path, default_caption="a painting").train.captions.count("a painting") >= 5


def test_corrupt_image_is_named(tmp_path):
    write_captioned_images(tmp_path, 3)
    (tmp_path / "img01.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"img01.png: not an image \(unknown format"):
        _load(tmp_path)


def test_unknown_model_path(tmp_path):
    with pytest.raises(ConfigError, match="`model.path` has value 'not a model'"):
        BaseModel(ModelConfig(path="not a model"))
    with pytest.raises(ConfigError, match="model_index.json"):
        BaseModel(ModelConfig(path=str(tmp_path)))
    with pytest.raises(UserError, match="cannot load `unet` from nobody/no-such-model"):
        BaseModel(ModelConfig(path="nobody/no-such-model")).source("unet").load("unet")


# -- captions: encodings -----------------------------------------------------------------------


def test_latin1_caption_is_a_problem_naming_file_and_byte(tmp_path):
    write_captioned_images(tmp_path, 3)
    (tmp_path / "img01.txt").write_bytes("a café in the zorblax style".encode("latin-1"))
    assert "img01.txt: not UTF-8 (byte 0xe9 at offset 5)" in _error(tmp_path)


def test_caption_encoding_is_the_fallback_for_files_that_are_not_utf8(tmp_path):
    write_captioned_images(tmp_path, 3)
    (tmp_path / "img01.txt").write_bytes("a café, in cp1252".encode("cp1252"))
    (tmp_path / "img02.txt").write_text("a café, in UTF-8", encoding="utf-8")  # still read as UTF-8
    data = _load(tmp_path, caption_encoding="cp1252")
    assert {"a café, in cp1252", "a café, in UTF-8"} <= set(data.train.captions + data.validation.captions)
    (tmp_path / "img01.txt").write_bytes(b"\x81 is no cp1252 character")
    assert "img01.txt: neither UTF-8 nor cp1252 (byte 0x81 at offset 0)" in _error(tmp_path, caption_encoding="cp1252")


def test_utf8_bom_is_dropped(tmp_path):
    write_captioned_images(tmp_path, 3)
    (tmp_path / "img01.txt").write_bytes(b"\xef\xbb\xbfa caf\xc3\xa9 with a BOM\n")
    data = _load(tmp_path)
    assert "a café with a BOM" in data.train.captions + data.validation.captions


def test_empty_captions_train_on_no_text_and_are_counted_in_a_warning(tmp_path, caplog):
    write_captioned_images(tmp_path, 4)
    (tmp_path / "img01.txt").write_text("  \n")
    (tmp_path / "img03.txt").write_text("")
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        data = _load(tmp_path)
    assert (data.train.captions + data.validation.captions).count("") == 2
    assert "2 image(s) have an empty caption and train on no text (e.g. img01.txt; img03.txt)" in caplog.text


# -- every problem in one pass -----------------------------------------------------------------


def _truncated(path, image_format):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, image_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_every_bad_file_is_listed_in_one_error(tmp_path):
    write_captioned_images(tmp_path, 14)
    for i in range(4):
        (tmp_path / f"img{i:02d}.png").write_bytes(b"not a png")
    _truncated(tmp_path / "img04.png", "PNG")
    (tmp_path / "img05.png").unlink()
    _truncated(tmp_path / "img05.jpg", "JPEG")
    (tmp_path / "img06.txt").unlink()
    (tmp_path / "img07.txt").write_bytes(b"caf\xe9")
    Image.new("RGB", (50, 50)).save(tmp_path / "img08.png")  # over the pixel limit below
    for i in range(9, 13):
        (tmp_path / f"img{i:02d}.txt").write_bytes(b"\xff")
    message = _error(tmp_path, max_image_pixels=48 * 48)
    assert message.startswith(f"13 bad file(s) in the data folder {tmp_path}: img00.png: not an image")
    for listed in [
        "img04.png: cannot be read (image file is truncated)",
        "img05.jpg: cannot be read (image file is truncated",
        "img06.png: no caption (img06.txt)",
        "img07.txt: not UTF-8 (byte 0xe9 at offset 3)",
        "img08.png: 50x50 pixels, over data.max_image_pixels (2304)",
    ]:
        assert listed in message
    assert message.count(": not UTF-8") == 2  # img07 and img09: ten listed, then the count of the rest
    assert "; and 3 more. Fix or remove them" in message and "`data.skip_bad=true`" in message


def test_bad_metadata_rows_are_listed_in_one_error(tmp_path):
    write_captioned_images(tmp_path, 3)
    rows = [
        b'{"file_name": "img00.png", "text": "fine"}',
        b'not json',
        b'{"file_name": "gone.png", "text": "a"}',
        b'{"file_name": "img01.png"}',
        b'{"file_name": "img02.png", "text": "caf\xe9"}',
    ]
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(rows))
    message = _error(tmp_path)
    assert message.startswith("4 bad file(s)")
    assert "metadata.jsonl line 2: not a JSON object with a `file_name`: 'not json'" in message
    assert "metadata.jsonl line 3: names gone.png, which does not exist" in message
    assert "metadata.jsonl line 4: img01.png has no `text` caption" in message
    offset = sum(len(row) + 1 for row in rows[:4]) + rows[4].index(b"\xe9")
    assert f"metadata.jsonl line 5: not UTF-8 (byte 0xe9 at offset {offset})" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_files_are_problems(tmp_path):
    write_captioned_images(tmp_path, 3)
    (tmp_path / "img01.png").chmod(0)
    (tmp_path / "img02.txt").chmod(0)
    (tmp_path / "sub").mkdir(mode=0)
    write_captioned_images(tmp_path / "locked", 1).chmod(0o444)  # listed, not entered
    message = _error(tmp_path)
    assert message.startswith("4 bad file(s)") and "sub: folder cannot be listed (Permission denied)" in message
    assert "locked/img00.png: cannot be read (Permission denied)" in message
    assert "img01.png: cannot be read (Permission denied)" in message
    assert "img02.txt: cannot be read (Permission denied)" in message


def test_skip_bad_leaves_bad_files_out_with_a_warning(tmp_path, caplog):
    write_captioned_images(tmp_path, 5)
    (tmp_path / "img01.png").write_bytes(b"not a png")
    (tmp_path / "img03.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        data = _load(tmp_path, skip_bad=True)
    assert sorted(f.name for f in data.train.files + data.validation.files) == ["img00.png", "img02.png", "img04.png"]
    assert data.problems_record() == {
        "skipped": 2,
        "files": [
            {"folder": "data.path", "path": "img01.png", "problem": "not an image (unknown format or corrupt header)"},
            {"folder": "data.path", "path": "img03.png", "problem": "no caption (img03.txt)"},
        ],
    }
    assert "data.skip_bad: left out 2 bad file(s)" in caplog.text and "img03.png: no caption" in caplog.text
    for i in (0, 2):
        (tmp_path / f"img{i:02d}.png").write_bytes(b"not a png")
    assert "keeps 1 usable image(s); at least 2 are needed" in _error(tmp_path, skip_bad=True)


def test_skipped_files_reach_study_json(tiny_model, tmp_path):
    data = write_captioned_images(tmp_path / "style", 6)
    (data / "img02.txt").write_bytes(b"caf\xe9")
    overrides = tiny_overrides(tiny_model, data, tmp_path / "runs", "burn_unet") + ["data.skip_bad=true"]
    with StudyRunner(load_config(compose_config(overrides)), tmp_path / "burn_unet", "", {}) as runner:
        runner.write_study_json()
    assert json.loads((tmp_path / "burn_unet" / "study.json").read_text())["data_problems"] == {
        "skipped": 1,
        "files": [{"folder": "data.path", "path": "img02.txt", "problem": "not UTF-8 (byte 0xe9 at offset 3)"}],
    }


# -- images decoded as they are meant to be seen ------------------------------------------------


def _only_image(folder, **data):
    """The one image of `folder` (copied twice, since a study needs two), loaded at 32x32."""
    shutil.copy(folder / "img00.png", folder / "img01.png") if (folder / "img00.png").exists() else None
    loaded = _load(folder, **data)
    return torch.cat([loaded.train.images, loaded.validation.images])[0].long()


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    stored = np.zeros((30, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)  # red left half, blue right half, as stored
    stored[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated 90 degrees clockwise, so red on top
    for name in ("a", "b"):
        Image.fromarray(stored).save(tmp_path / f"{name}.jpg", quality=95, exif=exif.tobytes())
        (tmp_path / f"{name}.txt").write_text("upright")
    image = _only_image(tmp_path)
    assert image[0, 2, 16] > 200 and image[2, 2, 16] < 50  # top: red
    assert image[2, 29, 16] > 200 and image[0, 29, 16] < 50  # bottom: blue


def _png_16bit_rgb(width, height, value) -> bytes:
    """A 16-bit RGB PNG (which PIL cannot write), every sample `value`."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + struct.pack(f">{3 * width}H", *[value] * 3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_16bit_png_is_scaled_not_clipped(tmp_path, kind):
    if kind == "grey":
        Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(tmp_path / "img00.png")  # mode I;16
    else:
        (tmp_path / "img00.png").write_bytes(_png_16bit_rgb(40, 40, 32768))
    (tmp_path / "img00.txt").write_text("mid grey")
    (tmp_path / "img01.txt").write_text("mid grey")
    assert torch.equal(_only_image(tmp_path), torch.full((3, 32, 32), 128))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
@pytest.mark.parametrize("background, rgb", [(None, (255, 255, 255)), ("#2040ff", (32, 64, 255))])
def test_transparent_pixels_show_the_background_not_the_colour_hidden_there(tmp_path, mode, background, rgb):
    if mode == "P":  # palette entry 0 (black) is the transparent one
        Image.new("P", (40, 40), 0).save(tmp_path / "img00.png", transparency=0)
    else:
        Image.new(mode, (40, 40), 0).save(tmp_path / "img00.png")  # black, alpha 0
    (tmp_path / "img00.txt").write_text("nothing")
    (tmp_path / "img01.txt").write_text("nothing")
    image = _only_image(tmp_path, **({"background": background} if background else {}))
    assert torch.equal(image, torch.tensor(rgb).view(3, 1, 1).expand(3, 32, 32))


# -- links ---------------------------------------------------------------------------------------


def test_link_loops_dangling_links_and_fifos_are_left_out_and_linked_files_read(tmp_path, caplog):
    folder = write_captioned_images(tmp_path / "d", 3)
    elsewhere = write_captioned_images(tmp_path / "elsewhere", 2, seed=1)
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..")  # a loop: d/sub/up/sub/up/...
    (folder / "linked").symlink_to(elsewhere)  # a linked folder: read
    (folder / "ghost.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop.png").symlink_to("loop.png")
    os.mkfifo(folder / "pipe.png")  # reading it would wait forever
    (folder / "img09.png").symlink_to(elsewhere / "img00.png")  # a linked file: read
    (folder / "img09.txt").write_text("a linked image")
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        data = _load(folder)
    used = sorted(f.relative_to(folder).as_posix() for f in data.train.files + data.validation.files)
    assert used == ["img00.png", "img01.png", "img02.png", "img09.png", "linked/img00.png", "linked/img01.png"]
    assert (
        "left out 4 path(s)" in caplog.text
        and "pipe.png (not a file)" in caplog.text
        and "loop.png (a dangling link or a loop of links)" in caplog.text
    )
    assert (
        "ghost.png (a dangling link or a loop of links)" in caplog.text
        and "sub/up (a folder already searched)" in caplog.text
    )


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.background=nope", "data.background"),
        ("data.background='#ffffff80'", "data.background"),
        ("data.caption_encoding=nope", "data.caption_encoding"),
        ("data.caption_encoding=rot13", "data.caption_encoding"),
        ("data.max_image_pixels=0", "data.max_image_pixels"),
    ],
)
def test_bad_data_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"`{key}` has value"):
        load_config(compose_config(["experiment=burn_unet", "data.path=/data", override]))


# -- identity ------------------------------------------------------------------------------------


def test_identity_hashes_the_files_used_not_where_the_folder_is(tmp_path):
    folder = write_captioned_images(tmp_path / "a", 5)
    (folder / "img04.png").write_bytes(b"not a png")
    skipping = _load(folder, skip_bad=True).identity
    moved = shutil.copytree(folder, tmp_path / "b")
    (moved / "img04.png").write_bytes(b"another bad file")
    assert _load(moved, skip_bad=True).identity == skipping  # moved, and the bad file changed: same data
    (moved / "img04.png").unlink()
    (moved / "img04.txt").unlink()
    assert _load(moved).identity == skipping  # the bad file removed: the same data again
    assert _load(moved, background="black").identity != skipping
    (moved / "img01.txt").write_text("another caption")
    assert _load(moved).identity != skipping


def test_stage_identities_leave_out_the_folders_paths_but_not_the_pixels_settings():
    def identities(*overrides):
        config = load_config(compose_config(["experiment=burn_unet", "data.path=/data", *overrides]))
        return {name: stage.identity for name, stage in plan_stages(config, "base0", "data0", "float32").items()}

    plain = identities()
    assert (
        identities(
            "data.path=/elsewhere",
            "validation.path=/held_out",
            "data.skip_bad=true",
            "data.max_image_pixels=1000",
            "data.caption_encoding=cp1252",
        )
        == plain
    )
    for changed in ("data.background=black", "data.flip_p=0.5", "data.default_caption=art", "data.resolution=32"):
        assert identities(changed) != plain, changed
