"""Text encoders as SDXL, the SDXL refiner and SD1 use them; SDXL's size / crop / aesthetic vector; loading.

SDXL (Podell et al. 2023, arXiv 2307.01952): the context is [CLIP-L penultimate, bigG penultimate]
concatenated on features (768 + 1280 = 2048), the pooled vector is bigG's projected EOS output, and
the UNet's vector input y adds sinusoidal embeddings of the image size, crop and target size (base)
or the aesthetic score (refiner). Prompt handling follows ComfyUI (see prompt.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from ._loading import IGNORED_SUFFIXES, load_on_meta
from .clip import CLIPTextModel, OpenCLIPTextModel, config_from_state_dict
from .lora import LoraMatch, LoraPatch, LoraPatcher
from .prompt import Chunk, EmbeddingLibrary, apply_weights, empty_chunk, tokenize_prompt
from .tokenizer import CLIPTokenizer, get_tokenizer
from .unet import timestep_embedding

__all__ = [
    "BIGG_PREFIXES",
    "CLIP_L_PREFIXES",
    "SD1Clip",
    "SDXLClip",
    "SDXLRefinerClip",
    "SDXLTextEncoder",
    "TextEncoderLoadError",
    "detect_text_encoders",
    "load_text_encoders",
    "refiner_adm",
    "sdxl_adm",
    "text_encoder_keys",
]

CLIP_L_PAD = 49407  # CLIP-L pads with EOS (ComfyUI pad_with_end=True; HF pad "<|endoftext|>")
BIGG_PAD = 0  # bigG pads with 0 ("!"), as open_clip.tokenize and ComfyUI's SDXLClipGTokenizer do

Model = CLIPTextModel | OpenCLIPTextModel


@dataclass
class _Branch:
    """One text model and how a wrapper uses it."""

    model: Model
    pad_id: int
    embedding_key: str  # the key of this encoder's vectors in SDXL embedding files
    default_layer: int | None  # -2: penultimate (SDXL); None: final-LN output (SD1)
    norm_hidden: bool  # apply the final LayerNorm to an intermediate layer (SD1 with clip skip, as ComfyUI)


class _ClipWrapper:
    """Shared machinery: tokenize, encode chunk lists with weights, clip skip, LoRA patches, clone()."""

    def __init__(self, branches: dict[str, _Branch], embeddings: EmbeddingLibrary | None = None,
                 tokenizer: CLIPTokenizer | None = None):
        self.branches = branches
        self.embeddings = embeddings
        self._tokenizer = tokenizer
        self.clip_skip: int | None = None  # CLIPSetLastLayer's value (-1, -2, ...); None: the model's default
        self.patches: dict[str, tuple[LoraPatch, ...]] = {name: () for name in branches}

    @property
    def tokenizer(self) -> CLIPTokenizer:
        return self._tokenizer or get_tokenizer()

    @property
    def models(self) -> dict[str, Model]:
        return {name: b.model for name, b in self.branches.items()}

    def clone(self):
        """A copy sharing the weights, with its own clip_skip and LoRA stack."""
        other = copy.copy(self)
        other.patches = dict(self.patches)
        return other

    def with_clip_skip(self, layer: int):
        """CLIPSetLastLayer: a clone whose encoders stop at `layer` (-1 last, -2 penultimate, ...)."""
        if not isinstance(layer, int) or layer >= 0:
            raise ValueError(f"clip_skip must be a negative layer index such as -1 or -2, got {layer!r}")
        other = self.clone()
        other.clip_skip = layer
        return other

    def with_lora(self, match: LoraMatch, strength: float):
        """LoraLoader's clip half: a clone with this LoRA's text-encoder updates stacked at `strength`."""
        other = self.clone()
        for name in self.branches:
            if f"clip_{name}" in match.weights:  # match_lora's module names: clip_l, clip_g
                other.patches[name] = self.patches[name] + (match.patch(f"clip_{name}", strength),)
        return other

    # -- tokenization ---------------------------------------------------------------------------

    def tokenize(self, text: str) -> dict[str, list[Chunk]]:
        """Per encoder name, the prompt as 77-token weighted chunks (pad rules per encoder)."""
        return {name: self._tokenize_branch(name, text) for name in self.branches}

    def _tokenize_branch(self, name: str, text: str) -> list[Chunk]:
        b = self.branches[name]
        return tokenize_prompt(
            text, self.tokenizer, pad_id=b.pad_id, embeddings=self.embeddings,
            embedding_key=b.embedding_key, embedding_width=b.model.config.width,
        )

    def _equalize(self, tokens: dict[str, list[Chunk]]) -> dict[str, list[Chunk]]:
        """Pad every encoder's chunk list with empty-prompt chunks to the longest (CLIPTextEncodeSDXL)."""
        n = max(len(chunks) for chunks in tokens.values())
        out = {}
        for name, chunks in tokens.items():
            empty = self._tokenize_branch(name, "")
            out[name] = list(chunks) + empty * (n - len(chunks))
        return out

    # -- encoding -------------------------------------------------------------------------------

    def _layer(self, b: _Branch, clip_skip: int | None) -> int | None:
        layer = b.default_layer
        if self.clip_skip is not None:
            layer = self.clip_skip  # set on this clone by CLIPSetLastLayer
        if clip_skip is not None:
            layer = clip_skip  # given for this call
        if layer is not None and abs(layer) > b.model.config.layers:
            return None  # ComfyUI: an index beyond the model means its last layer (after the final LN)
        return layer

    @torch.no_grad()
    def _run(self, name: str, rows: list[list], layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode rows of tokens (ids or embedding vectors) -> (z (n, T, C), pooled (n, P)) in float32."""
        b = self.branches[name]
        LoraPatcher.of(b.model).apply(self.patches[name])
        weight = b.model.token_embedding_weight
        ids = torch.tensor([[t if isinstance(t, int) else 0 for t in row] for row in rows], device=weight.device)
        vectors = [(i, j, t) for i, row in enumerate(rows) for j, t in enumerate(row) if not isinstance(t, int)]
        token_embeds = None
        if vectors:
            token_embeds = b.model.embed_tokens(ids)  # (n, T, C)
            for i, j, v in vectors:
                token_embeds[i, j] = v.to(device=weight.device, dtype=token_embeds.dtype)
        out = b.model(ids, layer_idx=layer, token_embeds=token_embeds)
        z = out.hidden
        if layer is not None and b.norm_hidden:
            z = b.model.final_norm(z)
        return z.float(), out.pooled.float()

    def _encode_branch(self, name: str, chunks: list[Chunk], clip_skip: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks -> (z (1, 77k, C), pooled of chunk 0 (1, P)), weights applied against the empty prompt."""
        b = self.branches[name]
        weights = torch.tensor([[w for _, w in chunk] for chunk in chunks], dtype=torch.float32)  # (k, 77)
        has_weights = bool((weights != 1.0).any())
        rows: list[list] = [[t for t, _ in chunk] for chunk in chunks]
        if has_weights:
            rows.append(empty_chunk(b.pad_id, len(rows[0])))
        z, pooled = self._run(name, rows, self._layer(b, clip_skip))
        k = len(chunks)
        zk = z[:k]  # (k, 77, C)
        if has_weights:
            zk = apply_weights(zk, z[k], weights.to(z.device))
        return zk.reshape(1, -1, zk.shape[-1]), pooled[:1]  # (1, 77k, C), (1, P)

    def unpatch(self) -> None:
        """Restore the shared models' base weights (another clone's next encode re-applies its own stack)."""
        for b in self.branches.values():
            LoraPatcher.of(b.model).unpatch()


class SDXLClip(_ClipWrapper):
    """SDXL base text encoding: CLIP-L (pad EOS) + OpenCLIP bigG (pad 0), penultimate layers, bigG pooled."""

    def __init__(self, clip_l: CLIPTextModel, clip_g: OpenCLIPTextModel, embeddings: EmbeddingLibrary | None = None,
                 tokenizer: CLIPTokenizer | None = None):
        assert clip_g.config.projection_dim is not None, "bigG needs its text_projection for the pooled output"
        super().__init__(
            {
                "l": _Branch(clip_l, CLIP_L_PAD, "clip_l", -2, False),
                "g": _Branch(clip_g, BIGG_PAD, "clip_g", -2, False),
            },
            embeddings, tokenizer,
        )

    @property
    def clip_l(self) -> CLIPTextModel:
        return self.branches["l"].model  # type: ignore[return-value]

    @property
    def clip_g(self) -> OpenCLIPTextModel:
        return self.branches["g"].model  # type: ignore[return-value]

    def encode_tokens(self, tokens: Mapping[str, list[Chunk]], clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """{"l": chunks, "g": chunks} -> (context (1, 77k, 768 + 1280), pooled (1, 1280))."""
        tokens = self._equalize(dict(tokens))
        l_z, _ = self._encode_branch("l", tokens["l"], clip_skip)
        g_z, g_pooled = self._encode_branch("g", tokens["g"], clip_skip)
        return torch.cat([l_z, g_z], dim=-1), g_pooled

    def encode(self, text: str, clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPTextEncode: the same text for both encoders."""
        return self.encode_tokens(self.tokenize(text), clip_skip)

    def encode_sdxl(self, text_g: str, text_l: str, clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIPTextEncodeSDXL: text_g for bigG, text_l for CLIP-L, the shorter padded with empty chunks."""
        return self.encode_tokens({"l": self._tokenize_branch("l", text_l), "g": self._tokenize_branch("g", text_g)}, clip_skip)


class SDXLRefinerClip(_ClipWrapper):
    """SDXL refiner text encoding: bigG only (pad 0), penultimate layer; context and pooled are 1280."""

    def __init__(self, clip_g: OpenCLIPTextModel, embeddings: EmbeddingLibrary | None = None,
                 tokenizer: CLIPTokenizer | None = None):
        assert clip_g.config.projection_dim is not None, "bigG needs its text_projection for the pooled output"
        super().__init__({"g": _Branch(clip_g, BIGG_PAD, "clip_g", -2, False)}, embeddings, tokenizer)

    @property
    def clip_g(self) -> OpenCLIPTextModel:
        return self.branches["g"].model  # type: ignore[return-value]

    def encode_tokens(self, tokens: Mapping[str, list[Chunk]], clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode_branch("g", tokens["g"], clip_skip)

    def encode(self, text: str, clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(self.tokenize(text), clip_skip)


class SD1Clip(_ClipWrapper):
    """SD 1.x text encoding: CLIP-L (pad EOS), last layer after the final LayerNorm unless clip skip is set.

    With clip skip, ComfyUI applies the final LayerNorm to the chosen layer (layer_norm_hidden_state).
    """

    def __init__(self, clip_l: CLIPTextModel, embeddings: EmbeddingLibrary | None = None,
                 tokenizer: CLIPTokenizer | None = None):
        super().__init__({"l": _Branch(clip_l, CLIP_L_PAD, "clip_l", None, True)}, embeddings, tokenizer)

    @property
    def clip_l(self) -> CLIPTextModel:
        return self.branches["l"].model  # type: ignore[return-value]

    def encode_tokens(self, tokens: Mapping[str, list[Chunk]], clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode_branch("l", tokens["l"], clip_skip)

    def encode(self, text: str, clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(self.tokenize(text), clip_skip)


SDXLTextEncoder = SDXLClip  # the name docs/architecture.md uses


# ---------------------------------------------------------------------------------------------
# SDXL vector conditioning


def _with_scalars(pooled: torch.Tensor, scalars: list[float]) -> torch.Tensor:
    """[pooled, emb(s_1), ..., emb(s_n)]: each raw scalar through sgm's 256-wide sinusoidal embedding, cos first."""
    assert pooled.dim() == 2, f"pooled must be (B, P), got {tuple(pooled.shape)}"
    B = pooled.shape[0]
    emb = timestep_embedding(torch.tensor(scalars, dtype=torch.float32), 256)  # (n, 256)
    emb = emb.reshape(1, -1).expand(B, -1).to(device=pooled.device, dtype=pooled.dtype)  # (B, n * 256)
    return torch.cat([pooled, emb], dim=-1)


def sdxl_adm(pooled: torch.Tensor, width: int, height: int, crop_w: int = 0, crop_h: int = 0,
             target_width: int | None = None, target_height: int | None = None) -> torch.Tensor:
    """SDXL base y = [pooled, emb(h), emb(w), emb(crop_h), emb(crop_w), emb(target_h), emb(target_w)] -> (B, 2816)."""
    target_width = width if target_width is None else target_width
    target_height = height if target_height is None else target_height
    return _with_scalars(pooled, [height, width, crop_h, crop_w, target_height, target_width])


def refiner_adm(pooled: torch.Tensor, width: int, height: int, crop_w: int = 0, crop_h: int = 0,
                aesthetic_score: float = 6.0) -> torch.Tensor:
    """SDXL refiner y = [pooled, emb(h), emb(w), emb(crop_h), emb(crop_w), emb(aesthetic score)] -> (B, 2560)."""
    return _with_scalars(pooled, [height, width, crop_h, crop_w, aesthetic_score])


# ---------------------------------------------------------------------------------------------
# finding and loading text encoders in single-file checkpoints

CLIP_L_PREFIXES = {
    "sdxl": "conditioner.embedders.0.transformer.text_model.",
    "sd1": "cond_stage_model.transformer.text_model.",
    "sd1_old": "cond_stage_model.transformer.",  # SD1 files saved with transformers < 4.x: no text_model.
}
BIGG_PREFIXES = {"sdxl": "conditioner.embedders.1.model.", "sdxl_refiner": "conditioner.embedders.0.model."}


class TextEncoderLoadError(ValueError):
    """A checkpoint's text-encoder tensors are missing, misshapen or of an unknown layout."""


def detect_text_encoders(keys: Iterable[str]) -> str | None:
    """Which text encoders a checkpoint holds: "sdxl", "sdxl_refiner", "sd1" (or "sd1_old"), or None."""
    keys = set(keys)
    if any(k.startswith(BIGG_PREFIXES["sdxl"] + "transformer.") for k in keys) and any(
        k.startswith(CLIP_L_PREFIXES["sdxl"]) for k in keys
    ):
        return "sdxl"
    if any(k.startswith(BIGG_PREFIXES["sdxl_refiner"] + "transformer.") for k in keys):
        return "sdxl_refiner"
    if any(k.startswith(CLIP_L_PREFIXES["sd1"]) for k in keys):
        return "sd1"
    if CLIP_L_PREFIXES["sd1_old"] + "embeddings.token_embedding.weight" in keys:
        return "sd1_old"
    return None


def _prefixes(kind: str) -> dict[str, str]:
    return {
        "sdxl": {"l": CLIP_L_PREFIXES["sdxl"], "g": BIGG_PREFIXES["sdxl"]},
        "sdxl_refiner": {"g": BIGG_PREFIXES["sdxl_refiner"]},
        "sd1": {"l": CLIP_L_PREFIXES["sd1"]},
        "sd1_old": {"l": CLIP_L_PREFIXES["sd1_old"]},
    }[kind]


def text_encoder_keys(sd: Mapping[str, object]) -> dict[str, dict[str, str]]:
    """{"l"|"g": {our key: checkpoint key}} for the text encoders found, without ignored keys."""
    kind = detect_text_encoders(sd.keys())
    if kind is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for name, prefix in _prefixes(kind).items():
        out[name] = {
            k[len(prefix):]: k for k in sd if k.startswith(prefix) and not k.endswith(IGNORED_SUFFIXES)
        }
    return out


def _build(model_cls, layout: Literal["hf", "open_clip"], tensors: dict[str, torch.Tensor], where: str, dtype, device):
    try:
        config = config_from_state_dict(tensors, layout)
    except KeyError as e:
        raise TextEncoderLoadError(f"text encoder at {where}: {e.args[0]}") from None
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    return load_on_meta(model_cls, config, shapes, tensors.__getitem__, dtype, device, prefix=where,
                        fail=lambda message: TextEncoderLoadError(f"text encoder at {where}: {message}"))


def load_text_encoders(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu", embeddings: EmbeddingLibrary | None = None):
    """Build the text-encoder wrapper a checkpoint calls for (SDXLClip, SDXLRefinerClip or SD1Clip), or None."""
    kind = detect_text_encoders(state_dict.keys())
    if kind is None:
        return None
    keys = text_encoder_keys(state_dict)
    prefixes = _prefixes(kind)
    models = {}
    for name, mapping in keys.items():
        tensors = {ours: state_dict[theirs] for ours, theirs in mapping.items()}
        if name == "l":
            models[name] = _build(CLIPTextModel, "hf", tensors, prefixes[name], dtype, device)
        else:
            models[name] = _build(OpenCLIPTextModel, "open_clip", tensors, prefixes[name], dtype, device)
    if kind == "sdxl":
        return SDXLClip(models["l"], models["g"], embeddings)
    if kind == "sdxl_refiner":
        return SDXLRefinerClip(models["g"], embeddings)
    return SD1Clip(models["l"], embeddings)
