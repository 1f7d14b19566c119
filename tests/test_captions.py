"""Captions longer than the tokenizer's limit: the words truncation cuts."""
from transformers import CLIPTokenizer

from burnlab.encoding import cut_words, tokenize

ACTIVATION = "in the zorblax ornament style"
LONG = " ".join(["a red tree"] * 26) + ", " + ACTIVATION  # 84 tokens: 9 past the 75 that fit


def test_cut_words_are_the_tokens_tokenize_drops(tiny_model):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model, subfolder="tokenizer")
    assert tokenizer.model_max_length == 77  # 75 words of one token each, BOS and EOS
    fits, one_over = " ".join(["tree"] * 75), " ".join(["tree"] * 76)
    assert cut_words(tokenizer, [fits, one_over, LONG]) == [None, "tree", "a red tree , " + ACTIVATION]
    kept = tokenize(tokenizer, [one_over])[0].tolist()
    assert kept == tokenizer(fits).input_ids  # tokenize keeps exactly the 75 words that fit
    assert cut_words(tokenizer, []) == []

