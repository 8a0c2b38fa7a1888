"""Prompt weights, textual-inversion embeddings and long-prompt chunking, with ComfyUI's semantics.

Grammar (ComfyUI `sd1_clip.token_weights`): `(text)` multiplies the weight by 1.1 and nests;
`(text:1.3)` sets it to 1.3 (the last `:` inside the parentheses); `\\(` and `\\)` are literal
parentheses; there is no `[ ]`. Text is split on spaces and newlines and each word is tokenized on its
own; `embedding:name` inserts textual-inversion vectors. Weights are applied after encoding by
interpolating towards the encoding of an empty prompt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import torch

from .tokenizer import BOS_ID, EOS_ID, CLIPTokenizer

__all__ = [
    "EMBEDDING_PREFIX",
    "MAX_LENGTH",
    "MAX_WORD_LENGTH",
    "Chunk",
    "EmbeddingLibrary",
    "Token",
    "apply_weights",
    "empty_chunk",
    "load_embedding",
    "parse_weights",
    "tokenize_prompt",
]

log = logging.getLogger(__name__)

EMBEDDING_PREFIX = "embedding:"
MAX_LENGTH = 77  # tokens per chunk: BOS + 75 + EOS
MAX_WORD_LENGTH = 8  # a word of at least this many tokens may be split across chunks; shorter words move whole
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")

Token = Union[int, torch.Tensor]  # a vocabulary id, or one textual-inversion vector (C,)
Chunk = list[tuple[Token, float]]  # MAX_LENGTH (token, weight) pairs

_ESCAPED_CLOSE, _ESCAPED_OPEN = "\0\1", "\0\2"


def _split_parentheses(text: str) -> list[str]:
    """Top-level pieces: plain runs and balanced `( ... )` groups (an unclosed group runs to the end)."""
    pieces, current, depth = [], "", 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += ch  # a stray ")" at depth 0 makes depth negative and is kept as text
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for piece in _split_parentheses(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner, inner_weight = piece[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])  # sets the weight; not relative to the parent
                    inner = inner[:colon]
                except ValueError:
                    pass  # "(a:b)" is text with the 1.1 emphasis
            out += _weights(inner, inner_weight)
        else:
            out.append((piece, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments: `a (b:1.3) ((c))` -> [("a ", 1), ("b", 1.3), ("c", 1.21)]."""
    text = text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)
    return [
        (segment.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "("), w) for segment, w in _weights(text, 1.0)
    ]


# ---------------------------------------------------------------------------------------------
# textual-inversion embeddings


def _select_vector(name: str, data: object, key: str, width: int) -> torch.Tensor | None:
    """The (n, width) vectors for one encoder from a loaded embedding file, or None with a warning."""
    if isinstance(data, torch.Tensor):
        tensor = data
    elif isinstance(data, Mapping):
        if key in data:  # SDXL files: clip_l (768) and clip_g (1280)
            tensor = data[key]
        elif "emb_params" in data:  # SD1 safetensors from kohya / A1111
            tensor = data["emb_params"]
        elif "string_to_param" in data and isinstance(data["string_to_param"], Mapping):  # A1111 .pt
            tensor = next(iter(data["string_to_param"].values()))
        else:
            tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                log.warning("embedding %s: no %r, 'emb_params' or 'string_to_param' among %s; ignored", name, key, sorted(data))
                return None
            tensor = tensors[0]
    else:
        log.warning("embedding %s: unsupported content %s; ignored", name, type(data).__name__)
        return None
    tensor = tensor.detach().reshape(-1, tensor.shape[-1]) if tensor.dim() else tensor
    if tensor.dim() != 2 or tensor.shape[-1] != width:
        log.warning("embedding %s: vectors of size %s do not fit this text encoder (width %d); ignored",
                    name, tuple(tensor.shape), width)
        return None
    return tensor.float()


def load_embedding(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an embedding file: safetensors, or a torch file loaded with weights_only=True (no pickled code)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, torch.Tensor):
        return {"emb_params": data}
    if not isinstance(data, dict):
        raise ValueError(f"embedding {path}: expected a dict of tensors, got {type(data).__name__}")
    return data


class EmbeddingLibrary:
    """Textual-inversion embeddings by name, from folders (searched recursively) and/or a mapping."""

    def __init__(self, directories: Sequence[str | Path] = (), mapping: Mapping[str, object] | None = None):
        self.directories = [Path(d).resolve() for d in directories]
        self.mapping = dict(mapping or {})
        self._files: dict[Path, dict[str, torch.Tensor]] = {}

    def _find_file(self, name: str) -> Path | None:
        for root in self.directories:
            for folder in [root, *sorted(Path(p) for p, _, _ in os.walk(root, followlinks=True) if Path(p) != root)]:
                candidate = (folder / name).resolve()
                if os.path.commonpath([root, candidate]) != str(root):
                    continue  # a name with ../ must not leave the folder
                if candidate.is_file():
                    return candidate
                for ext in EMBEDDING_EXTENSIONS:
                    with_ext = candidate.with_name(candidate.name + ext)
                    if with_ext.is_file():
                        return with_ext
        return None

    def _raw(self, name: str) -> object | None:
        if name in self.mapping:
            return self.mapping[name]
        path = self._find_file(name)
        if path is None:
            return None
        if path not in self._files:
            self._files[path] = load_embedding(path)
        return self._files[path]

    def get(self, name: str, key: str, width: int) -> torch.Tensor | None:
        """Vectors (n, width) of embedding `name` for the encoder whose file key is `key`, or None."""
        raw = self._raw(name)
        return None if raw is None else _select_vector(name, raw, key, width)


# ---------------------------------------------------------------------------------------------
# tokenization into 77-token chunks


def _word_tokens(
    word: str, weight: float, tokenizer: CLIPTokenizer, embeddings: EmbeddingLibrary | None, key: str, width: int
) -> list[list[tuple[Token, float]]]:
    """Token groups for one space-free word: embedding vectors and/or BPE ids, each group kept together."""
    groups: list[list[tuple[Token, float]]] = []
    if word.startswith(EMBEDDING_PREFIX) and embeddings is not None:
        name = word[len(EMBEDDING_PREFIX) :]
        leftover = ""
        vectors = embeddings.get(name, key, width)
        if vectors is None and name.rstrip(",") != name:  # "embedding:foo," : the comma is text
            stripped = name.rstrip(",")
            vectors, leftover = embeddings.get(stripped, key, width), name[len(stripped) :]
        if vectors is None:
            log.warning("embedding:%s does not exist (or does not fit this encoder); ignored", name)
        else:
            groups.append([(v, weight) for v in vectors])
        if not leftover:
            return groups
        word = leftover
    groups.append([(t, weight) for t in tokenizer.encode_word(word)])
    return groups


def tokenize_prompt(
    text: str,
    tokenizer: CLIPTokenizer,
    *,
    pad_id: int,
    embeddings: EmbeddingLibrary | None = None,
    embedding_key: str = "clip_l",
    embedding_width: int = 768,
    max_length: int = MAX_LENGTH,
) -> list[Chunk]:
    """Weighted prompt -> chunks of `max_length` (token, weight): BOS, up to 75 tokens, EOS, then pad_id."""
    assert max_length >= 3, f"max_length must leave room for BOS, a token and EOS, got {max_length}"
    groups: list[list[tuple[Token, float]]] = []
    for segment, weight in parse_weights(text):
        for word in segment.replace("\n", " ").split(" "):
            if word:
                groups += _word_tokens(word, weight, tokenizer, embeddings, embedding_key, embedding_width)

    chunks: list[Chunk] = []
    chunk: Chunk = [(BOS_ID, 1.0)]
    for group in groups:
        splittable = len(group) >= MAX_WORD_LENGTH
        while group:
            room = max_length - 1 - len(chunk)  # places left before the EOS
            if len(group) <= room:
                chunk += group
                break
            if splittable:  # fill this chunk with the word's head, carry the rest
                chunk += group[:room]
                group = group[room:]
                chunk.append((EOS_ID, 1.0))
            else:  # close this chunk and move the whole word to the next one
                chunk.append((EOS_ID, 1.0))
                chunk += [(pad_id, 1.0)] * room
            chunks.append(chunk)
            chunk = [(BOS_ID, 1.0)]
    chunk.append((EOS_ID, 1.0))
    chunk += [(pad_id, 1.0)] * (max_length - len(chunk))
    chunks.append(chunk)
    return chunks


def empty_chunk(pad_id: int, length: int = MAX_LENGTH) -> list[int]:
    """Ids of the empty prompt: BOS, EOS, then padding (the z_empty that weights interpolate towards)."""
    return [BOS_ID, EOS_ID] + [pad_id] * (length - 2)


def apply_weights(z: torch.Tensor, z_empty: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """z_j <- (z_j - z_empty_j) * w_j + z_empty_j for every position j; z (B, T, C), z_empty (T, C), w (B, T)."""
    assert z.shape[-2:] == z_empty.shape, f"z {tuple(z.shape)} and z_empty {tuple(z_empty.shape)} differ in length or width"
    assert weights.shape == z.shape[:-1], f"weights must be {tuple(z.shape[:-1])}, got {tuple(weights.shape)}"
    w = weights.to(z.dtype).unsqueeze(-1)  # (B, T, 1)
    weighted = (z - z_empty) * w + z_empty
    return torch.where(w == 1.0, z, weighted)  # weight 1 leaves the value bit-exact, as ComfyUI's loop does
