"""CLIP tokenizer: ids against transformers' CLIPTokenizer built from the same vocabulary, and by hand."""

import gzip
import json

import pytest

from nodes.diffusion import tokenizer as tk
from nodes.diffusion.tokenizer import BOS_ID, EOS_ID, VOCAB_PATH, CLIPTokenizer, get_tokenizer

STRINGS = [
    "a photo of a cat",
    "A PHOTO   of\ta\n\ncat",
    "Hello, World!! it's a test; (masterpiece:1.2), best-quality...",
    "café naïve Zürich 東京タワー ĳ Ωmega",
    "emoji 🐱🚀👩‍🚀 and 🇫🇷 flags",
    "numbers 1234567 and 3.14159 and 1e-5",
    "don't won't they're I've we'll he'd I'm",
    "tabs\tand\u00a0non-breaking\u2003spaces",
    "e\u0301 composed vs é",  # NFC folds e + combining acute into é
    "",
]


def _oracle_files(tmp_path):
    """vocab.json and merges.txt derived independently from the shipped gz file (OpenAI's recipe)."""
    lines = gzip.open(VOCAB_PATH, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    vocab_file, merges_file = _oracle_files(tmp_path_factory.mktemp("clipvocab"))
    return transformers.CLIPTokenizer(str(vocab_file), str(merges_file))


def test_vocab_shape():
    vocab, merges = tk.read_bpe_vocab()
    assert len(merges) == 48_894
    assert len(vocab) == 49_408
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == BOS_ID == 49406
    assert vocab["<|endoftext|>"] == EOS_ID == 49407


def test_known_ids_by_hand():
    tok = get_tokenizer()
    # ids looked up by hand in the vocabulary: a</w>=320, photo</w>=1125, of</w>=539, cat</w>=2368
    assert [tok.id_to_token(i) for i in (320, 1125, 539, 2368)] == ["a</w>", "photo</w>", "of</w>", "cat</w>"]
    assert tok.encode("a photo of a cat", add_special_tokens=True) == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.encode("A Photo of A CAT") == [320, 1125, 539, 320, 2368]  # lower-cased first
    assert tok.encode("cat,") == [2368, 267]  # ",</w>" = 267
    assert tok.encode("") == [] and tok.encode("", add_special_tokens=True) == [BOS_ID, EOS_ID]
    assert tok.encode("1234") == [272, 273, 274, 275]  # digits split one by one: "1</w>" = 272


@pytest.mark.parametrize("text", STRINGS)
def test_matches_transformers_clip_tokenizer(oracle, text):
    ours = get_tokenizer().encode(text, add_special_tokens=True)
    assert ours == oracle(text)["input_ids"]


def test_special_token_in_text(oracle):
    tok = get_tokenizer()
    assert tok.encode("<|endoftext|>x") == [EOS_ID, tok.vocab["x</w>"]]
    assert tok.encode("<|endoftext|>x", add_special_tokens=True) == oracle("<|endoftext|>x")["input_ids"]


def test_non_ascii_round_trip():
    tok = get_tokenizer()
    text = "café naïve 東京 🐱🚀, a photo"
    ids = tok.encode(text)
    assert max(ids) < BOS_ID and len(ids) > 8
    assert tok.decode(ids) == text  # "🚀," is one pre-token (both are non-letter, non-digit)


def test_tokenize_words_uses_exact_vocab_entry_first():
    tok = get_tokenizer()
    assert tok.tokenize_words("a (cat) dog,\ncat") == [[320], [263, 2368, 264], [1929, 267], [2368]]
    assert tok.tokenize_words("  ") == []
    # "cat" is a whole vocab word: one token without running BPE; "Cat" is not, so it goes through BPE
    assert tok.encode_word("cat") == [2368] and tok.encode_word("Cat") == [2368]
    word = "supercalifragilistic"
    assert tok.encode_word(word) == tok.encode(word) and len(tok.encode_word(word)) > 3


def test_cached_and_lazy(tmp_path):
    assert get_tokenizer() is get_tokenizer()
    with pytest.raises(FileNotFoundError, match="CLIP vocabulary not found"):
        CLIPTokenizer(tmp_path / "missing.txt.gz")
