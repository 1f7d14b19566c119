"""A CLIP tokenizer built offline from the toy world's vocabulary.

CLIP's tokenizer is byte-level BPE with an end-of-word marker "</w>". This module trains the
merges on the words of the world's and the style's captions (every word ends up one token) and
writes vocab.json + merges.txt + tokenizer_config.json, which `CLIPTokenizer.from_pretrained`
loads. As in CLIP, the vocabulary starts with the 256 byte symbols and their "</w>" forms (so
any text still tokenizes), continues with one entry per merge, and ends with
<|startoftext|> and <|endoftext|>: the end-of-text token has the highest id.

    .venv/bin/python -m burnlab.toy.tokenizer /tmp/toy_tokenizer
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

from burnlab.toy import ACTIVATION_PHRASE
from burnlab.toy.style import styled_sample
from burnlab.toy.world import COLOUR_NAMES, HAIR, IDENTITY_NAMES, make_world, sample_rng

MODEL_MAX_LENGTH = 77
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"

_WORDS = re.compile(r"[a-z]+")
# Enough captions that every caption template word occurs; the variable parts (colours, names,
# hair) are added explicitly below.
_CAPTION_SAMPLE = 500
_VOCABULARY_SEED = 7


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) printable stand-in character for every byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def vocabulary_words() -> list[str]:
    """Every word of the world's and the style's captions, sorted."""
    captions = [caption for _, caption, _ in make_world(_CAPTION_SAMPLE, seed=_VOCABULARY_SEED)]
    captions += [styled_sample(sample_rng(_VOCABULARY_SEED, k))[1] for k in range(_CAPTION_SAMPLE // 10)]
    captions += [
        ACTIVATION_PHRASE,
        " ".join(COLOUR_NAMES),
        " ".join(IDENTITY_NAMES),
        " ".join(HAIR),
        "a man wearing sunglasses",
        "a woman wearing sunglasses",
        "vertical horizontal stripes background",
    ]
    return sorted({word for caption in captions for word in _WORDS.findall(caption.lower())})


def train_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first (ties: alphabetical), until each word is one token.

    Applying merges by rank (what the tokenizer does) to a training word retraces this
    training, so every word of the vocabulary encodes to exactly one token.
    """
    pieces = {word: list(word[:-1]) + [word[-1] + END_OF_WORD] for word in words}
    merges = []
    while True:
        pairs = Counter(pair for symbols in pieces.values() for pair in zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in pieces.items():
            pieces[word] = _merge(symbols, best)


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged, k = [], 0
    while k < len(symbols):
        if k + 1 < len(symbols) and (symbols[k], symbols[k + 1]) == pair:
            merged.append(symbols[k] + symbols[k + 1])
            k += 2
        else:
            merged.append(symbols[k])
            k += 1
    return merged


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + END_OF_WORD for symbol in symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def write_tokenizer(folder: str | os.PathLike) -> Path:
    """Writes the tokenizer files into `folder` (a pipeline's tokenizer/ folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = train_merges(vocabulary_words())
    vocab = build_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": START_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


if __name__ == "__main__":
    print("wrote", write_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "/tmp/toy_tokenizer"))
