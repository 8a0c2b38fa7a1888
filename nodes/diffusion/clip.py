"""CLIP text transformers: CLIP-L in Hugging Face layout and OpenCLIP (bigG) in open_clip layout.

Both are the same pre-LayerNorm causal transformer (Radford et al. 2021, arXiv 2103.00020); only
the parameter names differ, so that a module's state_dict() equals the checkpoint's tensors with the
part's prefix removed (`conditioner.embedders.0.transformer.text_model.` for CLIP-L,
`conditioner.embedders.1.model.` for bigG).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CLIP_BIGG_CONFIG",
    "CLIP_L_CONFIG",
    "TINY_CLIP_BIGG_CONFIG",
    "TINY_CLIP_L_CONFIG",
    "CLIPTextConfig",
    "CLIPTextModel",
    "OpenCLIPTextModel",
    "TextModelOutput",
    "config_from_state_dict",
]


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408  # CLIP BPE: 256 bytes x2 (with </w>) + 48,894 merges + BOS + EOS
    max_positions: int = 77  # context length: BOS + 75 tokens + EOS
    width: int = 768  # residual stream width (CLIP-L 768, bigG 1280)
    layers: int = 12  # transformer blocks (CLIP-L 12, bigG 32)
    heads: int = 12  # attention heads; head_dim = width // heads = 64 in both released models
    mlp_width: int = 3072  # 4 x width in both released models
    activation: Literal["quick_gelu", "gelu"] = "quick_gelu"  # OpenAI CLIP-L: quick_gelu; LAION bigG: exact gelu
    projection_dim: int | None = None  # bigG: 1280 (text_projection [width, dim], used as x @ P); CLIP-L: none
    layer_norm_eps: float = 1e-5  # torch's LayerNorm default, as both originals use

    def __post_init__(self):
        assert self.width % self.heads == 0, f"width {self.width} must be divisible by heads {self.heads}"
        assert self.activation in ("quick_gelu", "gelu"), f"activation must be quick_gelu or gelu, got {self.activation!r}"


CLIP_L_CONFIG = CLIPTextConfig()
CLIP_BIGG_CONFIG = CLIPTextConfig(
    width=1280, layers=32, heads=20, mlp_width=5120, activation="gelu", projection_dim=1280
)
# Tiny models for tests and random checkpoints: the real vocabulary (so real prompts tokenize), few
# small layers, head_dim 64 (what config_from_state_dict infers), different widths so that a
# mistake in concatenating the two encoders shows up as a shape error.
TINY_CLIP_L_CONFIG = CLIPTextConfig(width=64, layers=3, heads=1, mlp_width=128)
TINY_CLIP_BIGG_CONFIG = CLIPTextConfig(
    width=128, layers=3, heads=2, mlp_width=256, activation="gelu", projection_dim=128
)


class TextModelOutput(NamedTuple):
    hidden: torch.Tensor  # (B, T, C) hidden state after the chosen layer, without the final LayerNorm
    last: torch.Tensor  # (B, T, C) last layer after the final LayerNorm
    pooled: torch.Tensor  # (B, P) final-LN output at the EOS position, projected when the model has a projection


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)  # OpenAI's sigmoid approximation of GELU
    return F.gelu(x)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head causal self-attention on (B, T, C) projections; no padding mask (SDXL uses none)."""
    B, T, C = q.shape
    q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_dim)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, head_dim)
    return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


def _resolve_layer(layer_idx: int | None, layers: int) -> int | None:
    """Negative index of a block (-1 = last) -> block number; None stays None (final-LN output)."""
    if layer_idx is None:
        return None
    assert -layers <= layer_idx <= -1, f"layer_idx must be in -{layers}..-1 (or None for the last layer), got {layer_idx}"
    return layers + layer_idx


def _pool(last: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    # EOS (49407) is the largest id, so argmax finds the first EOS whether padding is EOS or 0
    eos = tokens.argmax(dim=-1)  # (B,)
    return last[torch.arange(last.shape[0], device=last.device), eos.to(last.device)]  # (B, C)


# ---------------------------------------------------------------------------------------------
# CLIP-L, Hugging Face layout


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(_causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.activation = cfg.activation
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_activation(self.activation, self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.width)


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg) for _ in range(cfg.layers)])


class _TextTransformer(nn.Module):
    """The forward pass both layouts share; subclasses name the parts."""

    config: CLIPTextConfig

    @abc.abstractmethod
    def _parts(self) -> tuple[nn.Embedding, torch.Tensor, nn.ModuleList, nn.LayerNorm, torch.Tensor | None]:
        """(token embedding, position table (T, C), blocks, final LayerNorm, projection (C, P) or None)."""

    @property
    def token_embedding_weight(self) -> torch.Tensor:
        return self._parts()[0].weight

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm (SD1 applies it to a clip-skipped hidden state)."""
        return self._parts()[3](x)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C), before positions are added; textual inversion replaces rows of this."""
        return self._parts()[0](tokens)

    def forward(
        self, tokens: torch.Tensor, layer_idx: int | None = -2, token_embeds: torch.Tensor | None = None
    ) -> TextModelOutput:
        """Encode token ids (B, T); `layer_idx` picks the hidden state (-1 last block, -2 penultimate, None: final LN).

        token_embeds (B, T, C), when given, replaces the token-embedding lookup (textual inversion);
        `tokens` is still used to find the EOS position for pooling.
        """
        tok_emb, pos_emb, blocks, final_ln, projection = self._parts()
        B, T = tokens.shape
        assert T <= self.config.max_positions, f"at most {self.config.max_positions} tokens per sequence, got {T}"
        stop = _resolve_layer(layer_idx, len(blocks))
        x = tok_emb(tokens) if token_embeds is None else token_embeds
        assert x.shape == (B, T, self.config.width), f"token_embeds must be {(B, T, self.config.width)}, got {tuple(x.shape)}"
        x = x + pos_emb[:T].to(x.dtype)  # (B, T, C)
        hidden = None
        for i, block in enumerate(blocks):
            x = block(x)
            if i == stop:
                hidden = x
        last = final_ln(x)
        pooled = _pool(last, tokens)  # (B, C)
        if projection is not None:
            pooled = pooled @ projection.to(pooled.dtype)  # (B, P)
        return TextModelOutput(last if hidden is None else hidden, last, pooled)


class CLIPTextModel(_TextTransformer):
    """CLIP text transformer with Hugging Face's parameter names (CLIP-L in SDXL / SD1 checkpoints)."""

    def __init__(self, config: CLIPTextConfig = CLIP_L_CONFIG):
        super().__init__()
        self.config = config
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        # HF's CLIPTextModelWithProjection keeps a bias-free Linear; x @ P with P = weight.T
        self.text_projection = (
            nn.Linear(config.width, config.projection_dim, bias=False) if config.projection_dim else None
        )

    def _parts(self):
        proj = self.text_projection.weight.t() if self.text_projection is not None else None
        return (
            self.embeddings.token_embedding,
            self.embeddings.position_embedding.weight,
            self.encoder.layers,
            self.final_layer_norm,
            proj,
        )


# ---------------------------------------------------------------------------------------------
# OpenCLIP (bigG), open_clip layout


class OpenCLIPAttention(nn.Module):
    """torch.nn.MultiheadAttention's parameter layout: q, k, v fused by rows in in_proj_weight."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * cfg.width, cfg.width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * cfg.width))
        self.out_proj = nn.Linear(cfg.width, cfg.width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # 3 x (B, T, C)
        return self.out_proj(_causal_attention(q, k, v, self.heads))


class OpenCLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.activation = cfg.activation
        self.c_fc = nn.Linear(cfg.width, cfg.mlp_width)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(_activation(self.activation, self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = OpenCLIPAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = OpenCLIPMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(cfg) for _ in range(cfg.layers)])


class OpenCLIPTextModel(_TextTransformer):
    """OpenCLIP text tower with open_clip's parameter names (bigG in SDXL base and refiner)."""

    def __init__(self, config: CLIPTextConfig = CLIP_BIGG_CONFIG):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.max_positions, config.width))
        self.transformer = OpenCLIPTransformer(config)
        self.ln_final = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.text_projection = (
            nn.Parameter(torch.empty(config.width, config.projection_dim)) if config.projection_dim else None
        )
        nn.init.normal_(self.positional_embedding, std=0.01)
        if self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=config.width**-0.5)

    def _parts(self):
        return (self.token_embedding, self.positional_embedding, self.transformer.resblocks, self.ln_final, self.text_projection)


# ---------------------------------------------------------------------------------------------


def config_from_state_dict(
    sd: dict[str, torch.Tensor],
    layout: Literal["hf", "open_clip"],
    *,
    head_dim: int = 64,
    activation: Literal["quick_gelu", "gelu"] | None = None,
) -> CLIPTextConfig:
    """Infer a config from prefix-stripped tensors; heads = width // head_dim (64 in CLIP-L and bigG).

    The activation is not visible in the tensors: Hugging Face layout (OpenAI CLIP) defaults to
    quick_gelu, open_clip layout (LAION OpenCLIP) to gelu, as ComfyUI's configs do.
    """
    if layout == "hf":
        tok, pos = "embeddings.token_embedding.weight", "embeddings.position_embedding.weight"
        block_re, fc1, proj = r"encoder\.layers\.(\d+)\.", "encoder.layers.0.mlp.fc1.weight", "text_projection.weight"
    elif layout == "open_clip":
        tok, pos = "token_embedding.weight", "positional_embedding"
        block_re, fc1, proj = r"transformer\.resblocks\.(\d+)\.", "transformer.resblocks.0.mlp.c_fc.weight", "text_projection"
    else:
        raise ValueError(f"layout must be 'hf' or 'open_clip', got {layout!r}")
    missing = [k for k in (tok, pos, fc1) if k not in sd]
    if missing:
        raise KeyError(f"not a CLIP text model in {layout} layout: missing {', '.join(missing)}")
    vocab_size, width = sd[tok].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(block_re, k)))
    projection_dim = None
    if proj in sd:
        # open_clip stores P [width, dim] used as x @ P; HF stores the Linear weight [dim, width]
        projection_dim = sd[proj].shape[1] if layout == "open_clip" else sd[proj].shape[0]
    return CLIPTextConfig(
        vocab_size=vocab_size,
        max_positions=sd[pos].shape[0],
        width=width,
        layers=layers,
        heads=max(1, width // head_dim),
        mlp_width=sd[fc1].shape[0],
        activation=activation or ("quick_gelu" if layout == "hf" else "gelu"),
        projection_dim=projection_dim,
    )
