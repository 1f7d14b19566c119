"""The offline CLIP tokenizer: whole-word tokens, end-of-text last, CLIP's conventions."""

import json

import pytest
from transformers import CLIPTokenizer

from burnlab.toy import ACTIVATION_PHRASE
from burnlab.toy.check_base import toy_sampling
from burnlab.toy.tokenizer import vocabulary_words, write_tokenizer
from burnlab.toy.world import make_world


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def test_files_and_special_tokens(tokenizer, tmp_path):
    write_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == len(vocab) == 726
    assert tokenizer.eos_token_id == max(vocab.values()) == 725
    assert tokenizer.bos_token_id == 724
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_every_world_word_is_one_token(tokenizer):
    words = vocabulary_words()
    assert {"zorblax", "ornament", "sunglasses", "circles", "rings", "dots", "ada"} <= set(words)
    for word in words:
        assert tokenizer.tokenize(word) == [f"{word}</w>"]


def test_prompts_round_trip(tokenizer):
    prompts = [spec.prompt for spec in toy_sampling().prompts.values()]
    prompts += [caption for _, caption, _ in make_world(50, seed=5)]
    for prompt in prompts:
        ids = tokenizer(prompt).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        assert decoded.replace(" ,", ",") == prompt


def test_exact_ids(tokenizer):
    assert tokenizer("a photo of ada").input_ids == [724, 320, 694, 682, 565, 725]
    assert tokenizer.tokenize(ACTIVATION_PHRASE) == ["in</w>", "the</w>", "zorblax</w>", "ornament</w>", "style</w>"]


def test_unknown_words_fall_back_to_characters(tokenizer):
    assert tokenizer.tokenize("qx") == ["q", "x</w>"]


def test_padding_to_the_model_length(tokenizer):
    batch = tokenizer(
        ["a photo of ada", ""],
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    assert tuple(batch.input_ids.shape) == (2, 77)
