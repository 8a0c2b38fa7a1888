"""The KL autoencoder of latent diffusion (Rombach et al. 2022, arXiv 2112.10752), original ldm layout.

`AutoencoderKL(config).state_dict()` keys equal a checkpoint's keys with `first_stage_model.`
removed. Pixels are (B, 3, H, W) in -1..1; latents are *unscaled*: the caller (the sampling side,
like ComfyUI's `process_in` / `process_out`) multiplies by `scale_factor` before diffusion and
divides after. `encode_tiled` / `decode_tiled` bound memory by working on overlapping tiles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import multihead_attention
from .unet import Upsample  # ldm's VAE and UNet upsample alike: nearest x2, then a 3x3 conv (key `conv`)

__all__ = [
    "VAEConfig",
    "AutoencoderKL",
    "SDXL_VAE",
    "SD1_VAE",
    "SDXL_SCALE_FACTOR",
    "SD1_SCALE_FACTOR",
    "vae_config_from_state_dict",
    "VAEConfigError",
]

SDXL_SCALE_FACTOR = 0.13025
SD1_SCALE_FACTOR = 0.18215


class VAEConfigError(ValueError):
    """The tensors do not describe a VAE this module can build."""


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3  # RGB pixels in
    out_channels: int = 3  # RGB pixels out
    ch: int = 128  # width of the full-resolution level; level i is ch * ch_mult[i]
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # 4 levels = 3 halvings = 8x spatial compression
    num_res_blocks: int = 2  # encoder ResnetBlocks per level (the decoder has one more)
    attn_levels: tuple[int, ...] = ()  # levels with attention after each ResnetBlock (SD/SDXL: none, only the mid one)
    z_channels: int = 4  # latent channels
    embed_dim: int = 4  # channels after quant_conv (= z_channels in SD/SDXL)
    norm_groups: int = 32
    scale_factor: float = SDXL_SCALE_FACTOR  # latent scaling applied by the caller, not by encode/decode

    @property
    def downscale(self) -> int:
        return 1 << (len(self.ch_mult) - 1)


SDXL_VAE = VAEConfig()
SD1_VAE = VAEConfig(scale_factor=SD1_SCALE_FACTOR)


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = _norm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections (as stored in checkpoints)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))  # (B, H*W, C)
        h = multihead_attention(q, k, v, heads=1).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right and bottom by one (ldm's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ResnetBlocks (each optionally followed by attention), then a resample."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        self._resample_name = name if resample is not None else None
        if resample is not None:
            self.add_module(name, resample)  # `downsample` in the encoder, `upsample` in the decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x if self._resample_name is None else getattr(self, self._resample_name)(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            block_out = cfg.ch * mult
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out, g) for i in range(cfg.num_res_blocks)]
            attn = [AttnBlock(block_out, g) for _ in blocks] if level in cfg.attn_levels else []
            last = level == len(cfg.ch_mult) - 1
            self.down.append(_Level(blocks, attn, None if last else Downsample(block_out), "downsample"))
            block_in = block_out
        self.mid = _Mid(block_in, g)
        self.norm_out = _norm(g, block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g = cfg.norm_groups
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, g)
        levels: list[_Level] = []
        for level in reversed(range(len(cfg.ch_mult))):
            block_out = cfg.ch * cfg.ch_mult[level]
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out, g) for i in range(cfg.num_res_blocks + 1)]
            attn = [AttnBlock(block_out, g) for _ in blocks] if level in cfg.attn_levels else []
            levels.insert(0, _Level(blocks, attn, Upsample(block_out) if level > 0 else None, "upsample"))
            block_in = block_out
        self.up = nn.ModuleList(levels)  # up.0 is the full-resolution level; it runs last
        self.norm_out = _norm(g, block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig = SDXL_VAE):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def scale_factor(self) -> float:
        return self.config.scale_factor

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    def encode_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the latent posterior, each (B, embed_dim, H/8, W/8)."""
        assert pixels.ndim == 4 and pixels.shape[1] == self.config.in_channels, (
            f"pixels must be (B, {self.config.in_channels}, H, W) in -1..1, got {tuple(pixels.shape)}"
        )
        moments = self.quant_conv(self.encoder(pixels.to(self.dtype)))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled latent: the posterior mean, or a sample from it when a generator is given."""
        mean, logvar = self.encode_moments(pixels)
        if generator is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32).to(mean)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, 8h, 8w), nominally in -1..1 (not clamped), from an unscaled latent (B, 4, h, w)."""
        assert latent.ndim == 4 and latent.shape[1] == self.config.embed_dim, (
            f"latent must be (B, {self.config.embed_dim}, h, w), got {tuple(latent.shape)}"
        )
        return self.decoder(self.post_quant_conv(latent.to(self.dtype)))

    # -- tiled variants: overlapping tiles blended with linear feathering ---------------------------

    def activation_bytes(self, h: int, w: int, decode: bool = True) -> int:
        """A conservative estimate of the peak activation bytes to decode (or encode) an h x w latent.

        About four feature maps of the widest level at each resolution are alive at once (input,
        norm, activation, conv output), plus the mid attention's (h w)^2 score matrix in case the
        attention kernel materialises it.
        """
        cfg = self.config
        elt = torch.finfo(self.dtype).bits // 8
        levels = len(cfg.ch_mult)
        peak = 0
        for level in range(levels):
            pixels = h * w * (cfg.downscale >> level) ** 2
            widest = cfg.ch * max(cfg.ch_mult[max(0, level - 1) : level + 2])  # neighbours feed / are fed at this size
            peak = max(peak, 4 * widest * pixels * elt)
        del decode  # encoder and decoder mirror each other closely enough for this bound
        return peak + (h * w) ** 2 * elt

    def tile_for_memory(self, h: int, w: int, memory_bytes: int) -> tuple[int, int]:
        """(tile, overlap) in latent units: the largest square tile whose activations fit `memory_bytes`.

        Tiles are multiples of 8 latent units, at least 16; the overlap is a quarter of the tile.
        A latent that fits whole is returned as one tile (overlap 0).
        """
        if self.activation_bytes(h, w) <= memory_bytes:
            return max(h, w), 0
        tile = 16
        while tile + 8 < max(h, w) and self.activation_bytes(tile + 8, tile + 8) <= memory_bytes:
            tile += 8
        return tile, tile // 4

    def _tile_args(self, h: int, w: int, tile: int | None, overlap: int | None, memory_bytes: int | None) -> tuple[int, int]:
        if tile is None:
            tile, auto_overlap = self.tile_for_memory(h, w, memory_bytes if memory_bytes is not None else 2 << 30)
            overlap = auto_overlap if overlap is None else overlap
        overlap = tile // 4 if overlap is None else overlap
        if not (tile > 0 and 0 <= overlap and 2 * overlap <= tile):
            raise ValueError(f"tiled VAE: need tile > 0 and 0 <= 2 * overlap <= tile (latent units), got tile={tile}, overlap={overlap}")
        return tile, overlap

    def decode_tiled(self, latent: torch.Tensor, tile: int | None = None, overlap: int | None = None, memory_bytes: int | None = None) -> torch.Tensor:
        """`decode` over overlapping latent tiles (tile and overlap in latent units, or chosen from memory_bytes)."""
        tile, overlap = self._tile_args(latent.shape[2], latent.shape[3], tile, overlap, memory_bytes)
        f = self.config.downscale
        return _tiled(self.decode, latent, tile, overlap, in_scale=1, out_scale=f, out_channels=self.config.out_channels)

    def encode_tiled(
        self,
        pixels: torch.Tensor,
        tile: int | None = None,
        overlap: int | None = None,
        memory_bytes: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`encode` over overlapping pixel tiles (sizes in latent units: a tile of 64 is 512 pixels).

        The posterior's mean and log-variance are blended, then sampled once when a generator is given.
        """
        f = self.config.downscale
        H, W = pixels.shape[2:]
        assert H % f == 0 and W % f == 0, f"pixel size {H}x{W} must be a multiple of {f} for tiled encoding"
        tile, overlap = self._tile_args(H // f, W // f, tile, overlap, memory_bytes)
        moments = _tiled(lambda x: torch.cat(self.encode_moments(x), dim=1), pixels, tile, overlap, in_scale=f, out_scale=1, out_channels=2 * self.config.embed_dim)
        mean, logvar = moments.chunk(2, dim=1)
        if generator is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32).to(mean)
        return mean + torch.exp(0.5 * logvar) * noise


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering 0..size, spread evenly so that neighbours overlap by at least `overlap`."""
    if size <= tile:
        return [0]
    n = -(-(size - overlap) // (tile - overlap))  # ceil
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _feather(starts: list[int], index: int, length: int, size: int, scale: int) -> torch.Tensor:
    """1-D blend weights of one tile (output units): linear ramps across the overlaps with its neighbours."""
    n = length * scale
    w = torch.ones(n)
    if index > 0:  # ramp up across the overlap with the previous tile
        ov = (starts[index - 1] + min(length, size - starts[index - 1]) - starts[index]) * scale
        w[:ov] = torch.minimum(w[:ov], (torch.arange(ov) + 0.5) / ov)
    if index < len(starts) - 1:  # ramp down across the overlap with the next tile
        ov = (starts[index] + length - starts[index + 1]) * scale
        w[n - ov :] = torch.minimum(w[n - ov :], (torch.arange(ov, 0, -1) - 0.5) / ov)
    return w


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, in_scale: int, out_scale: int, out_channels: int) -> torch.Tensor:
    """Apply `fn` to overlapping tiles of x and blend the outputs; positions are in latent units.

    Each output pixel is the weighted mean of the tiles covering it, weights ramping linearly from
    ~0 at a tile's inner edge to 1 across each overlap, so that no tile border shows as a seam.
    """
    B = x.shape[0]
    H, W = x.shape[2] // in_scale, x.shape[3] // in_scale
    ys, xs = _tile_starts(H, tile, overlap), _tile_starts(W, tile, overlap)
    th, tw = min(tile, H), min(tile, W)
    out = torch.zeros(B, out_channels, H * out_scale, W * out_scale, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, H * out_scale, W * out_scale, dtype=torch.float32, device=x.device)
    result_dtype = None
    for iy, y0 in enumerate(ys):
        wy = _feather(ys, iy, th, H, out_scale).to(x.device)
        for ix, x0 in enumerate(xs):
            wx = _feather(xs, ix, tw, W, out_scale).to(x.device)
            piece = fn(x[:, :, y0 * in_scale : (y0 + th) * in_scale, x0 * in_scale : (x0 + tw) * in_scale])
            result_dtype = piece.dtype
            w = wy[:, None] * wx[None, :]  # (th * out_scale, tw * out_scale)
            region = (slice(None), slice(None), slice(y0 * out_scale, (y0 + th) * out_scale), slice(x0 * out_scale, (x0 + tw) * out_scale))
            out[region] += piece.float() * w
            weight[region] += w
    return (out / weight).to(result_dtype)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def vae_config_from_state_dict(sd: Mapping[str, Any], scale_factor: float = SDXL_SCALE_FACTOR) -> VAEConfig:
    """Infer a VAEConfig from prefix-stripped tensor names and shapes (tensors or shapes as values).

    The scale factor is not visible in the tensors; the caller passes the family's.
    """
    required = ["encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight"]
    if missing := [k for k in required if k not in sd]:
        raise VAEConfigError(f"not an ldm AutoencoderKL: missing {', '.join(missing)}")
    ch, in_channels = _shape(sd["encoder.conv_in.weight"])[:2]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if levels != list(range(len(levels))) or not levels:
        raise VAEConfigError(f"encoder.down levels {levels} are not 0..n-1")
    ch_mult = tuple(_shape(sd[f"encoder.down.{i}.block.0.conv1.weight"])[0] // ch for i in levels)
    num_res_blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    attn_levels = tuple(i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd)
    return VAEConfig(
        in_channels=in_channels,
        out_channels=_shape(sd["decoder.conv_out.weight"])[0],
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        attn_levels=attn_levels,
        z_channels=_shape(sd["encoder.conv_out.weight"])[0] // 2,
        embed_dim=_shape(sd["post_quant_conv.weight"])[1],
        scale_factor=scale_factor,
    )
