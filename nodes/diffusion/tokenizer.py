"""The CLIP byte-pair tokenizer (OpenAI CLIP / OpenCLIP vocabulary), built on the `tokenizers` library.

The vocabulary is the MIT-licensed `bpe_simple_vocab_16e6.txt.gz` shipped in `data/` (see its README).
It is read on first use, not at import, and the built tokenizer is cached per process.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "VOCAB_PATH",
    "VOCAB_SIZE",
    "CLIPTokenizer",
    "bytes_to_unicode",
    "get_tokenizer",
    "read_bpe_vocab",
]

VOCAB_PATH = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408  # 256 bytes + 256 bytes with </w> + 48,894 merges + 2 special tokens
BOS_ID = 49406  # <|startoftext|>
EOS_ID = 49407  # <|endoftext|>, also the largest id, which is how the pooled position is found
_NUM_MERGES = 49152 - 256 - 2  # 48,894: CLIP keeps the first 48,894 merges of the file (after its header line)

# OpenAI's split pattern (simple_tokenizer.py) without its two special-token alternatives, which are
# handled as added special tokens instead; the text is lower-cased before this runs.
_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable bytes keep their own character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)  # control and space bytes move above 255
            extra += 1
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def read_bpe_vocab(path: str | Path = VOCAB_PATH) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read CLIP's gz merges file into (vocab token -> id, ordered merges), as OpenAI's SimpleTokenizer does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP vocabulary not found at {path}; it ships with latentgraph in nodes/diffusion/data/")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merge_lines = lines[1 : _NUM_MERGES + 1]  # line 0 is the "#version" header
    assert len(merge_lines) == _NUM_MERGES, f"expected {_NUM_MERGES} merges in {path}, found {len(merge_lines)}"
    merges = [tuple(line.split()) for line in merge_lines]
    assert all(len(m) == 2 for m in merges), f"malformed merge line in {path}"
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, f"expected {VOCAB_SIZE} distinct tokens, got {len(vocab)}"
    return vocab, merges  # type: ignore[return-value]


class CLIPTokenizer:
    """CLIP's BPE tokenizer: NFC, whitespace collapse, lower case, CLIP's split regex, byte-level BPE with </w>."""

    def __init__(self, vocab_path: str | Path = VOCAB_PATH):
        self.vocab, merges = read_bpe_vocab(vocab_path)
        bpe = models.BPE(
            vocab=self.vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            unk_token="<|endoftext|>",
        )
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", EOS_ID), ("<|startoftext|>", BOS_ID))
        tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])  # a literal special token in text maps to its id
        self._tok = tok
        self._id_to_token = {i: t for t, i in self.vocab.items()}
        self._char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
        self._char_to_byte[" "] = ord(" ")  # the word separator decode() puts in place of </w>

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with add_special_tokens, wrapped in BOS ... EOS."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_word(self, word: str) -> list[int]:
        """Ids of one space-free word the way ComfyUI does it: the exact vocab entry `word</w>` wins if present."""
        exact = self.vocab.get(word + "</w>")
        if exact is not None:
            return [exact]
        return self.encode(word)

    def tokenize_words(self, text: str) -> list[list[int]]:
        """Split on spaces and newlines (as ComfyUI does) and tokenize each word on its own."""
        words = [w for w in text.replace("\n", " ").split(" ") if w]
        return [self.encode_word(w) for w in words]

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens dropped); the inverse of encode up to normalization."""
        text = "".join(self._id_to_token[i] for i in ids if i not in (BOS_ID, EOS_ID))
        data = bytes(self._char_to_byte[c] for c in text.replace("</w>", " "))
        return data.decode("utf-8", errors="replace").strip()

    def id_to_token(self, token_id: int) -> str:
        return self._id_to_token[token_id]


@functools.lru_cache(maxsize=None)
def get_tokenizer(vocab_path: str | Path = VOCAB_PATH) -> CLIPTokenizer:
    """The process-wide tokenizer for a vocabulary file, built on first call."""
    return CLIPTokenizer(vocab_path)
