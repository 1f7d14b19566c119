"""Captions longer than the tokenizer's limit: the words truncation cuts, the study's one warning,
its record in study.json and the note in the report."""

import html
import json
import logging

from transformers import CLIPTokenizer

from burnlab.config.compose import load_config
from burnlab.launch.runner import StudyRunner
from burnlab.models.encoding import cut_words, tokenize
from study_helpers import (
    compose_config,
    run_study,
    tiny_overrides,
    write_captioned_images,
)

ACTIVATION = "in the zorblax ornament style"
LONG = " ".join(["a red tree"] * 26) + ", " + ACTIVATION  # 84 tokens: 9 past the 75 that fit
SHORT_STAGES = [
    "stages.baseline.epochs=1",
    "stages.baseline.save_epochs=[1]",
    "stages.unet_lo.epochs=1",
    "stages.unet_lo.save_epochs=[1]",
    "stages.unet_hi.epochs=1",
    "stages.unet_hi.save_epochs=[1]",
]


def test_cut_words_are_the_tokens_tokenize_drops(tiny_model):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model, subfolder="tokenizer")
    assert tokenizer.model_max_length == 77  # 75 words of one token each, BOS and EOS
    fits, one_over = " ".join(["tree"] * 75), " ".join(["tree"] * 76)
    assert cut_words(tokenizer, [fits, one_over, LONG]) == [None, "tree", "a red tree , " + ACTIVATION]
    kept = tokenize(tokenizer, [one_over])[0].tolist()
    assert kept == tokenizer(fits).input_ids  # tokenize keeps exactly the 75 words that fit
    assert cut_words(tokenizer, []) == []


def test_long_captions_are_warned_recorded_and_reported(tiny_model, tmp_path, caplog):
    data = write_captioned_images(tmp_path / "style", 8)
    (data / "img05.txt").write_text(LONG)
    validation = write_captioned_images(tmp_path / "held_out", 2, seed=1)
    (validation / "img01.txt").write_text("black and white circles " + LONG)
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        study, run_dir = run_study(
            tiny_model,
            data,
            tmp_path / "runs",
            f"validation.path={validation}",
            *SHORT_STAGES,
            experiment="burn_unet",
            analyze=True,
        )
    warnings = [r.getMessage() for r in caplog.records if "longer than the tokenizer" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "2 captions are longer than the tokenizer's limit of 77 tokens (1 training, 1 validation)"
    )
    assert f"img05.txt loses 'a red tree , {ACTIVATION}'" in warnings[0]
    record = json.loads((run_dir / "study.json").read_text())["long_captions"]
    assert (
        record
        == study["long_captions"]
        == {
            "limit": 77,
            "count": 2,
            "by_set": {"train": 1, "validation": 1},
            "examples": [
                {"set": "train", "file": "img05.txt", "cut": f"a red tree , {ACTIVATION}"},
                {"set": "validation", "file": "img01.txt", "cut": f"tree a red tree a red tree , {ACTIVATION}"},
            ],
        }
    )
    note = (
        "2 captions are longer than the tokenizer's 77 tokens; words past the limit are not "
        f"trained, e.g. 'img05.txt': '... a red tree , {ACTIVATION}'."
    )
    report = html.unescape((run_dir / "analysis" / "report.html").read_text(encoding="utf-8"))
    assert f"Long captions</h2><ul><li>burn_unet: {note}" in report
    assert f"## Captions\n\n- burn_unet: {note}\n" in (run_dir / "analysis" / "summary.md").read_text()


def test_captions_within_the_limit_give_no_warning_and_no_examples(tiny_model, tiny_data, tmp_path, caplog):
    config = load_config(compose_config(tiny_overrides(tiny_model, tiny_data, tmp_path, "burn_unet")))
    with caplog.at_level(logging.WARNING, logger="burnlab"):
        runner = StudyRunner(config, tmp_path / "burn_unet", "", {})
        runner.setup()
    assert not [r for r in caplog.records if "longer than the tokenizer" in r.getMessage()]
    assert runner.study_json()["long_captions"] == {
        "limit": 77,
        "count": 0,
        "by_set": {"train": 0, "validation": 0},
        "examples": [],
    }
