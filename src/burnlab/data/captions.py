"""Captions longer than the tokenizer's limit (77 tokens on SD 1.5, BOS and EOS included).

Training cuts them there (burnlab.models.encoding.tokenize), so the words past the limit are never
trained, and captions often end with the activation phrase. A study checks its training and
validation captions once, with the study's own tokenizer, warns, and records what it found in
study.json (`long_captions`, docs/run_store.md), which the analysis report shows. Nothing here
changes what is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

from burnlab.data.dataset import ImageSet, caption_source
from burnlab.models.encoding import cut_words

MAX_EXAMPLES = 10
SET_NAMES = {"train": "training", "validation": "validation"}


def long_captions(tokenizer, sets: Dict[str, Tuple[ImageSet, Path]]) -> dict:
    """study.json's `long_captions`: the limit, how many captions pass it (in all and per set)
    and up to MAX_EXAMPLES of them, each with the caption's source in its data folder and the
    words cut. `sets`: name -> (images, the data folder they were read from)."""
    by_set, examples = {}, []
    for name, (images, folder) in sets.items():
        cut = [
            (image, words)
            for image, words in zip(images.files, cut_words(tokenizer, images.captions))
            if words is not None
        ]
        by_set[name] = len(cut)
        examples += [{"set": name, "file": caption_source(image, folder), "cut": words} for image, words in cut]
    return {
        "limit": tokenizer.model_max_length,
        "count": sum(by_set.values()),
        "by_set": by_set,
        "examples": examples[:MAX_EXAMPLES],
    }


def warning(record: dict) -> Optional[str]:
    """The study's one warning about its long captions; None when every caption fits."""
    if not record["count"]:
        return None
    sets = ", ".join(f"{count} {SET_NAMES[name]}" for name, count in record["by_set"].items() if count)
    first = record["examples"][0]
    for_example = "E.g. " if record["count"] > 1 else ""
    return (
        f"{_captions(record['count'])} longer than the tokenizer's limit of {record['limit']} "
        f"tokens ({sets}): training cuts captions there, so the words past the limit are never "
        f"trained (an activation phrase at the end of a caption is lost). {for_example}"
        f"{first['file']} loses {first['cut']!r}. Up to {MAX_EXAMPLES} examples are in "
        f"study.json (`long_captions`); shorten those captions, or move what matters to their start."
    )


def _captions(count: int) -> str:
    return "1 caption is" if count == 1 else f"{count} captions are"
