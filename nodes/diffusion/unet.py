"""The latent-diffusion UNet of SD 1.x and SDXL, in the original ldm/sgm module layout.

Ronneberger et al. 2015 (UNet), Ho et al. 2020 (timestep-conditioned ResBlocks), Rombach et al. 2022
(arXiv 2112.10752, latent diffusion with cross-attention SpatialTransformers), Podell et al. 2023
(arXiv 2307.01952, SDXL: vector conditioning `y` through `label_emb`).

Module names reproduce sgm's `openaimodel.UNetModel` exactly, so `UNet(config).state_dict()` keys
equal a checkpoint's keys with `model.diffusion_model.` removed, and loading is a prefix strip.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import multihead_attention

__all__ = [
    "UNetConfig",
    "UNet",
    "SDXL_BASE_UNET",
    "SDXL_REFINER_UNET",
    "SD1_UNET",
    "timestep_embedding",
    "unet_config_from_state_dict",
    "UNetConfigError",
]


class UNetConfigError(ValueError):
    """The tensors do not describe a UNet this module can build."""


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4  # latent channels in (4 for SD/SDXL)
    out_channels: int = 4  # predicted eps / v channels
    model_channels: int = 320  # width of level 0; level i is model_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 4)  # SDXL base: 320, 640, 1280 channels; one entry per resolution level
    num_res_blocks: int = 2  # ResBlocks per level on the way down (the way up has one more)
    transformer_depth: tuple[int, ...] = (0, 2, 10)  # SpatialTransformer blocks per level, 0 = no attention
    # Per-block overrides for variants (SSD-1B, Vega) whose depth changes inside a level. None = from the
    # per-level list. Input: one entry per down ResBlock (levels x num_res_blocks); output: one per up
    # block (levels x (num_res_blocks + 1)), in execution order (deepest level first).
    transformer_depth_input: tuple[int, ...] | None = None
    transformer_depth_output: tuple[int, ...] | None = None
    transformer_depth_middle: int | None = 10  # middle SpatialTransformer depth; None = middle is one ResBlock
    num_head_channels: int = 64  # SDXL: heads = channels // 64; -1 = use num_heads instead
    num_heads: int = -1  # SD 1.x: 8 heads at every level (head width = channels // 8)
    context_dim: int | None = 2048  # cross-attention context width (SDXL 768 + 1280; refiner 1280; SD1 768)
    adm_in_channels: int | None = 2816  # vector conditioning y width (SDXL 1280 + 6 * 256); None = no label_emb (SD1)
    use_linear_in_transformer: bool = True  # proj_in / proj_out as Linear (SDXL) or 1x1 conv (SD1)
    norm_groups: int = 32  # GroupNorm groups everywhere

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        assert len(self.transformer_depth) == levels, (
            f"transformer_depth has {len(self.transformer_depth)} entries, expected one per level ({levels})"
        )
        if self.transformer_depth_input is not None:
            assert len(self.transformer_depth_input) == levels * self.num_res_blocks, (
                f"transformer_depth_input needs {levels * self.num_res_blocks} entries, got {len(self.transformer_depth_input)}"
            )
        if self.transformer_depth_output is not None:
            assert len(self.transformer_depth_output) == levels * (self.num_res_blocks + 1), (
                f"transformer_depth_output needs {levels * (self.num_res_blocks + 1)} entries, got {len(self.transformer_depth_output)}"
            )
        assert (self.num_head_channels > 0) != (self.num_heads > 0), "set exactly one of num_head_channels and num_heads"
        for mult in self.channel_mult:
            ch = self.model_channels * mult
            assert ch % self.norm_groups == 0, f"level width {ch} is not divisible by {self.norm_groups} GroupNorm groups"

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def input_depths(self) -> list[int]:
        """SpatialTransformer depth after each down ResBlock, in order."""
        if self.transformer_depth_input is not None:
            return list(self.transformer_depth_input)
        return [d for d in self.transformer_depth for _ in range(self.num_res_blocks)]

    def output_depths(self) -> list[int]:
        """SpatialTransformer depth after each up ResBlock, in order (deepest level first)."""
        if self.transformer_depth_output is not None:
            return list(self.transformer_depth_output)
        return [d for d in reversed(self.transformer_depth) for _ in range(self.num_res_blocks + 1)]

    def heads(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a SpatialTransformer at this width."""
        if self.num_head_channels > 0:
            # at least one head, so that tiny test widths under 64 still build
            return max(1, channels // self.num_head_channels), min(channels, self.num_head_channels)
        assert channels % self.num_heads == 0, f"width {channels} is not divisible by {self.num_heads} heads"
        return self.num_heads, channels // self.num_heads


SDXL_BASE_UNET = UNetConfig()
SDXL_REFINER_UNET = UNetConfig(
    model_channels=384,
    channel_mult=(1, 2, 4, 4),
    transformer_depth=(0, 4, 4, 0),
    transformer_depth_middle=4,
    context_dim=1280,
    adm_in_channels=2560,
)
SD1_UNET = UNetConfig(
    channel_mult=(1, 2, 4, 4),
    transformer_depth=(1, 1, 1, 0),
    transformer_depth_middle=1,
    num_head_channels=-1,
    num_heads=8,
    context_dim=768,
    adm_in_channels=None,
    use_linear_in_transformer=False,
)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f), sin(t f)], f_i = max_period^(-i / half) (ldm util, cos first).

    Also embeds SDXL's size / crop / aesthetic scalars (dim 256). Returns float32 (B, dim).
    """
    assert dim % 2 == 0, f"embedding width must be even, got {dim}"
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1, 1).float() * freqs  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


# ---------------------------------------------------------------------------------------------
# building blocks


class ResBlock(nn.Module):
    """GN-SiLU-conv, + timestep embedding, GN-SiLU-conv, plus a (1x1 conv) skip."""

    def __init__(self, channels: int, emb_dim: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        # index 2 is ldm's Dropout (inference: identity); kept so the conv is named out_layers.3
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, out_channels), nn.SiLU(), nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (ldm's Upsample with use_conv; the VAE uses it too)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when no context is given."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))  # ldm: [Linear, Dropout]; the weight is to_out.0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        return self.to_out(multihead_attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads))


class GEGLU(nn.Module):
    """x * gelu(gate), with x and gate from one projection (Shazeer 2020, arXiv 2002.05202)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # ldm names: net.0 = GEGLU, net.1 = Dropout, net.2 = Linear
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention to the text context, GEGLU feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, project to tokens, `depth` transformer blocks, project back, residual."""

    def __init__(self, channels: int, depth: int, context_dim: int, heads: int, head_dim: int, linear: bool, groups: int):
        super().__init__()
        inner = heads * head_dim
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(inner, context_dim, heads, head_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # (B, H*W, inner)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(B, -1, H, W)  # (B, inner or C, H, W)
        if not self.linear:
            h = self.proj_out(h)
        return x + h


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that hands the embedding to ResBlocks and the context to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# ---------------------------------------------------------------------------------------------
# the UNet


class UNet(nn.Module):
    def __init__(self, config: UNetConfig = SDXL_BASE_UNET):
        super().__init__()
        cfg = self.config = config
        mc, ted, groups = cfg.model_channels, cfg.time_embed_dim, cfg.norm_groups
        if any(cfg.input_depths()) or any(cfg.output_depths()) or cfg.transformer_depth_middle is not None:
            assert cfg.context_dim is not None, "a UNet with SpatialTransformers needs context_dim"

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, head_dim = cfg.heads(ch)
            return SpatialTransformer(ch, depth, cfg.context_dim, heads, head_dim, cfg.use_linear_in_transformer, groups)  # type: ignore[arg-type]

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg.adm_in_channels is not None:
            # sgm's num_classes="sequential": one Sequential inside another, hence label_emb.0.0
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(cfg.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted)))

        in_depths = iter(cfg.input_depths())
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, ted, mc * mult, groups)]
                ch = mc * mult
                if (depth := next(in_depths)) > 0:
                    layers.append(transformer(ch, depth))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        middle: list[nn.Module] = [ResBlock(ch, ted, ch, groups)]
        if cfg.transformer_depth_middle is not None:
            middle += [transformer(ch, cfg.transformer_depth_middle), ResBlock(ch, ted, ch, groups)]
        self.middle_block = TimestepEmbedSequential(*middle)

        out_depths = iter(cfg.output_depths())
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), ted, mc * mult, groups)]
                ch = mc * mult
                if (depth := next(out_depths)) > 0:
                    layers.append(transformer(ch, depth))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        assert not skip_channels, "every skip connection must be consumed"

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.out[2].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps (or v) for latents x (B, C, H, W) at timesteps (B,), text context (B, T, context_dim), vector y (B, adm)."""
        cfg = self.config
        B = x.shape[0]
        levels = len(cfg.channel_mult) - 1
        assert x.shape[1] == cfg.in_channels, f"expected {cfg.in_channels} latent channels, got {x.shape[1]}"
        assert x.shape[2] % (1 << levels) == 0 and x.shape[3] % (1 << levels) == 0, (
            f"latent size {tuple(x.shape[2:])} must be a multiple of {1 << levels} (pixel size a multiple of {8 << levels})"
        )
        assert (y is not None) == (cfg.adm_in_channels is not None), (
            f"this UNet {'needs' if cfg.adm_in_channels else 'takes no'} vector conditioning y"
            + (f" of width {cfg.adm_in_channels}" if cfg.adm_in_channels else "")
        )
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(B)
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(dtype))  # (B, ted)
        if y is not None:
            assert y.shape == (B, cfg.adm_in_channels), f"y must be ({B}, {cfg.adm_in_channels}), got {tuple(y.shape)}"
            emb = emb + self.label_emb(y.to(dtype))
        if context is not None:
            assert context.shape[0] == B and context.shape[2] == cfg.context_dim, (
                f"context must be ({B}, T, {cfg.context_dim}), got {tuple(context.shape)}"
            )
            context = context.to(dtype)

        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # (B, C + C_skip, H, W)
        return self.out(h)


# ---------------------------------------------------------------------------------------------
# architecture from tensor names and shapes


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _depth(keys: set[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def unet_config_from_state_dict(sd: Mapping[str, Any]) -> UNetConfig:
    """Infer the whole UNet architecture from prefix-stripped tensor names and shapes.

    `sd` maps names to tensors or shapes. Levels are found by walking `input_blocks`: a ResBlock's
    out-conv gives the level width, `N.0.op` marks a downsample (a new level), and the count of
    `transformer_blocks.K` after each ResBlock gives its depth. Heads are not visible in shapes:
    SD 1.x (conv proj_in, no label_emb, 768 context) uses 8 heads, everything else 64-wide heads.
    """
    keys = set(sd)
    required = ["input_blocks.0.0.weight", "time_embed.0.weight", "out.2.weight"]
    if missing := [k for k in required if k not in keys]:
        raise UNetConfigError(f"not an ldm UNet: missing {', '.join(missing)}")
    conv_in = _shape(sd["input_blocks.0.0.weight"])
    mc = conv_in[0]

    widths: list[list[int]] = [[]]  # per level: out width of each ResBlock
    in_depths: list[int] = []
    n = 1
    while any(k.startswith(f"input_blocks.{n}.") for k in keys):
        if f"input_blocks.{n}.0.op.weight" in keys:
            widths.append([])
        elif f"input_blocks.{n}.0.in_layers.2.weight" in keys:
            widths[-1].append(_shape(sd[f"input_blocks.{n}.0.out_layers.3.weight"])[0])
            in_depths.append(_depth(keys, f"input_blocks.{n}.1."))
        else:
            raise UNetConfigError(f"input_blocks.{n} is neither a ResBlock nor a Downsample")
        n += 1
    counts = {len(w) for w in widths}
    if len(counts) != 1 or 0 in counts:
        raise UNetConfigError(f"ResBlocks per level differ ({[len(w) for w in widths]}); only a uniform count is supported")
    num_res_blocks = counts.pop()
    for level, w in enumerate(widths):
        if len(set(w)) != 1 or w[0] % mc:
            raise UNetConfigError(f"level {level} has ResBlock widths {w}, expected one multiple of {mc}")
    channel_mult = tuple(w[0] // mc for w in widths)

    n_out = len(widths) * (num_res_blocks + 1)
    out_depths = [_depth(keys, f"output_blocks.{i}.1.") for i in range(n_out)]
    if any(k.startswith(f"output_blocks.{n_out}.") for k in keys):
        raise UNetConfigError(f"found more output_blocks than the {n_out} that {len(widths)} levels x {num_res_blocks + 1} imply")

    middle = _depth(keys, "middle_block.1.") if "middle_block.1.norm.weight" in keys else None

    proj_in = next((k for k in sorted(keys) if k.endswith(".proj_in.weight")), None)
    attn2 = next((k for k in sorted(keys) if k.endswith("attn2.to_k.weight")), None)
    context_dim = _shape(sd[attn2])[1] if attn2 else None
    linear = proj_in is None or len(_shape(sd[proj_in])) == 2
    adm = _shape(sd["label_emb.0.0.weight"])[1] if "label_emb.0.0.weight" in keys else None
    sd1_heads = not linear and adm is None and context_dim == 768

    per_level = tuple(max(in_depths[i * num_res_blocks : (i + 1) * num_res_blocks]) for i in range(len(widths)))
    uniform_in = in_depths == [d for d in per_level for _ in range(num_res_blocks)]
    uniform_out = out_depths == [d for d in reversed(per_level) for _ in range(num_res_blocks + 1)]
    return UNetConfig(
        in_channels=conv_in[1],
        out_channels=_shape(sd["out.2.weight"])[0],
        model_channels=mc,
        channel_mult=channel_mult,
        num_res_blocks=num_res_blocks,
        transformer_depth=per_level,
        transformer_depth_input=None if uniform_in else tuple(in_depths),
        transformer_depth_output=None if uniform_out else tuple(out_depths),
        transformer_depth_middle=middle,
        num_head_channels=-1 if sd1_heads else 64,
        num_heads=8 if sd1_heads else -1,
        context_dim=context_dim,
        adm_in_channels=adm,
        use_linear_in_transformer=linear,
    )
