"""Prompt weights, embeddings and long-prompt chunking (ComfyUI's sd1_clip semantics)."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from nodes.diffusion.prompt import (
    EmbeddingLibrary,
    apply_weights,
    empty_chunk,
    parse_weights,
    tokenize_prompt,
)
from nodes.diffusion.tokenizer import BOS_ID, EOS_ID, get_tokenizer


CAT, DOG, A, COMMA = 2368, 1929, 320, 267


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("((cat))", [("cat", pytest.approx(1.21))]),
        ("(((cat)))", [("cat", pytest.approx(1.331))]),
        ("(cat:1.3)", [("cat", 1.3)]),
        ("((cat:1.3))", [("cat", 1.3)]),  # `:` sets the weight, it does not multiply the parent's
        ("(a (cat:0.5) dog)", [("a ", 1.1), ("cat", 0.5), (" dog", 1.1)]),
        ("(a (cat) dog:1.5)", [("a ", 1.5), ("cat", pytest.approx(1.65)), (" dog", 1.5)]),
        ("(a:b:1.2)", [("a:b", 1.2)]),  # the last `:` counts
        ("(cat:x)", [("cat:x", 1.1)]),  # not a number: text, with the 1.1 emphasis
        ("(:1.2)", [(":1.2", 1.1)]),  # a `:` at position 0 is not a weight
        (r"\(cat\)", [("(cat)", 1.0)]),
        (r"(\(cat\):1.2)", [("(cat)", 1.2)]),
        ("[cat]", [("[cat]", 1.0)]),  # no [ ] de-emphasis
        ("a (cat", [("a ", 1.0), ("(cat", 1.0)]),  # unclosed: literal text
        ("cat) dog", [("cat) dog", 1.0)]),
        ("(cat:1.2), (dog:0.8)", [("cat", 1.2), (", ", 1.0), ("dog", 0.8)]),
        ("", []),
    ],
)
def test_parse_weights_comfyui_examples(text, expected):
    assert parse_weights(text) == expected


def _ids(chunk):
    return [t for t, _ in chunk]


def test_chunk_layout_and_pad_rules():
    tok = get_tokenizer()
    l_chunks = tokenize_prompt("a cat", tok, pad_id=EOS_ID)
    g_chunks = tokenize_prompt("a cat", tok, pad_id=0)
    assert len(l_chunks) == len(g_chunks) == 1
    assert _ids(l_chunks[0]) == [BOS_ID, A, CAT, EOS_ID] + [EOS_ID] * 73  # CLIP-L pads with EOS
    assert _ids(g_chunks[0]) == [BOS_ID, A, CAT, EOS_ID] + [0] * 73  # bigG pads with 0
    assert _ids(tokenize_prompt("", tok, pad_id=0)[0]) == empty_chunk(0) == [BOS_ID, EOS_ID] + [0] * 75


def test_weights_per_token_and_special_tokens_at_one():
    chunk = tokenize_prompt("a (cat dog:1.5) ((cat,))", get_tokenizer(), pad_id=0)[0]
    assert chunk[:7] == [(BOS_ID, 1.0), (A, 1.0), (CAT, 1.5), (DOG, 1.5), (CAT, pytest.approx(1.21)),
                         (COMMA, pytest.approx(1.21)), (EOS_ID, 1.0)]
    assert all(w == 1.0 for _, w in chunk[7:])


def test_exact_vocab_word_first():
    # "cat," is not a vocab word: BPE gives cat + ","; "photo" is: one token
    chunk = tokenize_prompt("photo cat,", get_tokenizer(), pad_id=0)[0]
    assert _ids(chunk)[:5] == [BOS_ID, 1125, CAT, COMMA, EOS_ID]


def test_long_prompt_moves_short_words_whole():
    tok = get_tokenizer()
    # 74 single-token words, then "cat," (2 tokens): only 1 place is left, so "cat," moves to chunk 2
    chunks = tokenize_prompt("a " * 74 + "cat,", tok, pad_id=EOS_ID)
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    assert _ids(chunks[0]) == [BOS_ID] + [A] * 74 + [EOS_ID, EOS_ID]
    assert _ids(chunks[1])[:4] == [BOS_ID, CAT, COMMA, EOS_ID]
    # exactly 75 tokens fit in one chunk
    assert len(tokenize_prompt("a " * 75, tok, pad_id=0)) == 1
    assert len(tokenize_prompt("a " * 76, tok, pad_id=0)) == 2
    assert len(tokenize_prompt("a " * 151, tok, pad_id=0)) == 3


def test_long_word_of_eight_or_more_tokens_splits():
    tok = get_tokenizer()
    long_word = "1234567890"  # digits tokenize one by one: 10 tokens
    assert len(tok.encode_word(long_word)) == 10
    chunks = tokenize_prompt("a " * 70 + long_word, tok, pad_id=0)
    digits = list(range(272, 281)) + [271]  # "1".."9" = 272..280 and "0" = 271
    assert _ids(chunks[0])[71:] == digits[:5] + [EOS_ID]  # 5 places left: the word's head fills them
    assert _ids(chunks[1])[:7] == [BOS_ID] + digits[5:] + [EOS_ID]
    seven = "1234567"  # 7 tokens: kept whole
    chunks = tokenize_prompt("a " * 70 + seven, tok, pad_id=0)
    assert _ids(chunks[0])[70:73] == [A, EOS_ID, 0]
    assert _ids(chunks[1])[:9] == [BOS_ID] + digits[:7] + [EOS_ID]


def test_apply_weights_interpolates_towards_empty():
    z = torch.randn(2, 77, 8)
    z_empty = torch.randn(77, 8)
    w = torch.ones(2, 77)
    w[0, 3] = 1.5
    w[1, 10] = 0.0
    out = apply_weights(z, z_empty, w)
    torch.testing.assert_close(out[0, 3], (z[0, 3] - z_empty[3]) * 1.5 + z_empty[3])
    torch.testing.assert_close(out[1, 10], z_empty[10])
    mask = w == 1.0
    assert torch.equal(out[mask], z[mask])  # untouched positions are bit-exact
    with pytest.raises(AssertionError, match="weights must be"):
        apply_weights(z, z_empty, torch.ones(2, 76))


@pytest.fixture
def embedding_dir(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file({"emb_params": torch.randn(2, 768, generator=g)}, str(tmp_path / "sd1style.safetensors"))
    save_file({"clip_l": torch.randn(3, 768, generator=g), "clip_g": torch.randn(3, 1280, generator=g)},
              str(tmp_path / "sdxlstyle.safetensors"))
    (tmp_path / "sub").mkdir()
    save_file({"emb_params": torch.randn(1, 1280, generator=g)}, str(tmp_path / "sub" / "nested.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(2, 768, generator=g)}}, tmp_path / "a1111.pt")
    return tmp_path


def test_embeddings_from_folder(embedding_dir):
    tok = get_tokenizer()
    lib = EmbeddingLibrary([embedding_dir])
    chunk = tokenize_prompt("a embedding:sd1style cat", tok, pad_id=EOS_ID, embeddings=lib)[0]
    assert chunk[0] == (BOS_ID, 1.0) and chunk[1] == (A, 1.0)
    assert isinstance(chunk[2][0], torch.Tensor) and isinstance(chunk[3][0], torch.Tensor)
    assert chunk[4] == (CAT, 1.0) and chunk[5] == (EOS_ID, 1.0)
    raw = lib._raw("sd1style")["emb_params"]
    assert torch.equal(chunk[2][0], raw[0]) and torch.equal(chunk[3][0], raw[1])

    # SDXL files: clip_l for CLIP-L, clip_g for bigG; weights apply to the vectors too
    l_chunk = tokenize_prompt("(embedding:sdxlstyle:1.2)", tok, pad_id=EOS_ID, embeddings=lib,
                              embedding_key="clip_l", embedding_width=768)[0]
    g_chunk = tokenize_prompt("(embedding:sdxlstyle:1.2)", tok, pad_id=0, embeddings=lib,
                              embedding_key="clip_g", embedding_width=1280)[0]
    assert [t.shape[0] for t, _ in l_chunk[1:4]] == [768] * 3 and [w for _, w in l_chunk[1:4]] == [1.2] * 3
    assert [t.shape[0] for t, _ in g_chunk[1:4]] == [1280] * 3
    assert l_chunk[4] == (EOS_ID, 1.0) and g_chunk[4] == (EOS_ID, 1.0)

    # subfolders, .pt files read with weights_only, a trailing comma left over as text
    g_nested = tokenize_prompt("embedding:nested", tok, pad_id=0, embeddings=lib, embedding_key="clip_g",
                               embedding_width=1280)[0]
    assert isinstance(g_nested[1][0], torch.Tensor) and g_nested[2] == (EOS_ID, 1.0)
    pt = tokenize_prompt("embedding:a1111, cat", tok, pad_id=0, embeddings=lib)[0]
    assert [isinstance(t, torch.Tensor) for t, _ in pt[1:3]] == [True, True]
    assert pt[3:6] == [(COMMA, 1.0), (CAT, 1.0), (EOS_ID, 1.0)]


def test_embedding_missing_or_wrong_width_is_ignored_with_warning(embedding_dir, caplog):
    tok = get_tokenizer()
    lib = EmbeddingLibrary([embedding_dir])
    with caplog.at_level(logging.WARNING):
        chunk = tokenize_prompt("embedding:nope cat", tok, pad_id=0, embeddings=lib)[0]
        assert _ids(chunk)[:3] == [BOS_ID, CAT, EOS_ID]
        chunk = tokenize_prompt("embedding:nested cat", tok, pad_id=0, embeddings=lib)[0]  # 1280 wide, CLIP-L 768
        assert _ids(chunk)[:3] == [BOS_ID, CAT, EOS_ID]
        chunk = tokenize_prompt("embedding:../escape", tok, pad_id=0, embeddings=lib)[0]
        assert _ids(chunk)[:2] == [BOS_ID, EOS_ID]
    assert "embedding:nope does not exist" in caplog.text
    assert "do not fit this text encoder (width 768)" in caplog.text


def test_embedding_from_mapping_and_without_library():
    tok = get_tokenizer()
    vec = torch.randn(768)
    lib = EmbeddingLibrary(mapping={"mine": vec})
    chunk = tokenize_prompt("embedding:mine", tok, pad_id=0, embeddings=lib)[0]
    assert torch.equal(chunk[1][0], vec) and chunk[2] == (EOS_ID, 1.0)
    # without a library, "embedding:mine" is ordinary text
    plain = tokenize_prompt("embedding:mine", tok, pad_id=0)[0]
    assert all(isinstance(t, int) for t, _ in plain)
    assert _ids(plain)[1:-1][: len(tok.encode("embedding:mine"))] == tok.encode("embedding:mine")


def test_long_embedding_splits_like_a_long_word():
    tok = get_tokenizer()
    lib = EmbeddingLibrary(mapping={"big": {"emb_params": torch.randn(10, 768)}})
    chunks = tokenize_prompt("a " * 70 + "embedding:big", tok, pad_id=0, embeddings=lib)
    kinds = [isinstance(t, torch.Tensor) for t, _ in chunks[0]]
    assert kinds[71:76] == [True] * 5 and chunks[0][76] == (EOS_ID, 1.0)
    assert [isinstance(t, torch.Tensor) for t, _ in chunks[1][1:6]] == [True] * 5
