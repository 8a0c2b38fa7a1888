"""The PALETTE socket type and its nodes: extract a palette from images, type one in, render it, recolour."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from engine import IMAGE, Environment, In, Input, Node, NodeContext, NodeResult, Output, Problem, SocketType

__all__ = [
    "PALETTE",
    "Palette",
    "PaletteError",
    "parse_hex_colors",
    "kmeans_palette",
    "render_palette",
    "apply_palette",
    "ExtractPalette",
    "PaletteFromColors",
    "RenderPalette",
    "ApplyPalette",
    "NODES",
]

MAX_SAMPLES = 8192  # pixels k-means looks at (a random subset); more only costs time
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


class PaletteError(ValueError):
    """A palette that cannot be built: bad hex codes, no colours, a wrong tensor shape."""


@dataclass(frozen=True, eq=False)
class Palette:
    """K colours as a float [K, 3] tensor in 0..1, with weights [K] that sum to 1 (most used first)."""

    colors: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        if self.colors.ndim != 2 or self.colors.shape[1] != 3 or self.colors.shape[0] == 0:
            raise PaletteError(f"palette colours must be a [K, 3] tensor with K >= 1, got {tuple(self.colors.shape)}")
        if self.weights.shape != self.colors.shape[:1]:
            raise PaletteError(
                f"palette weights must have shape [{self.colors.shape[0]}], got {tuple(self.weights.shape)}")

    def __len__(self) -> int:
        return int(self.colors.shape[0])

    def hex(self) -> list[str]:
        """The colours as `#rrggbb` strings."""
        values = (self.colors.clamp(0, 1) * 255).round().to(torch.int64).tolist()
        return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in values]


PALETTE = SocketType("PALETTE", python_type=Palette, color="#e57373",
                     description="A colour palette: K RGB colours in 0..1 with weights (latentgraph-extras).")


def parse_hex_colors(text: str) -> Palette:
    """`"#1b1b3a, #f84aa7 fff"` -> a Palette with equal weights; commas, spaces or new lines separate."""
    tokens = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    if not tokens:
        raise PaletteError("no colours given; write hex codes such as #1b1b3a, #f84aa7")
    rgb: list[list[float]] = []
    for token in tokens:
        match = _HEX.match(token)
        if match is None:
            raise PaletteError(f"{token!r} is not a hex colour; write #rrggbb or #rgb, e.g. #f84aa7")
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(ch * 2 for ch in digits)
        rgb.append([int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4)])
    colors = torch.tensor(rgb, dtype=torch.float32)
    return Palette(colors, torch.full((len(rgb),), 1.0 / len(rgb)))


def _sq_distances(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared distances [N, K] via |p|^2 - 2 p.c + |c|^2 (one matmul; cdist is much slower on the CPU)."""
    return ((points * points).sum(1, keepdim=True) - 2 * points @ centers.T + (centers * centers).sum(1)).clamp(min=0)


def kmeans_palette(images: torch.Tensor, k: int, iterations: int = 20, seed: int = 0) -> Palette:
    """The k main colours of an IMAGE batch: Lloyd's k-means seeded by k-means++ (Arthur & Vassilvitskii 2007)."""
    if k < 1:
        raise PaletteError(f"a palette needs at least 1 colour, got {k}")
    pixels = images[..., :3].reshape(-1, 3).float()  # (N, 3)
    generator = torch.Generator().manual_seed(seed)
    if pixels.shape[0] > MAX_SAMPLES:
        pixels = pixels[torch.randperm(pixels.shape[0], generator=generator)[:MAX_SAMPLES]]
    codes = (pixels.clamp(0, 1) * 255).round().to(torch.int64) @ torch.tensor([65536, 256, 1])  # (N,) 24-bit
    k = min(k, int(torch.unique(codes).numel()))  # never more colours than the image has
    centers = pixels[torch.randint(pixels.shape[0], (1,), generator=generator)]
    while centers.shape[0] < k:
        dist = _sq_distances(pixels, centers).min(dim=1).values  # (N,)
        pick = torch.multinomial(dist / dist.sum(), 1, generator=generator)
        centers = torch.cat([centers, pixels[pick]])
    for _ in range(iterations):
        labels = _sq_distances(pixels, centers).argmin(dim=1)
        counts = torch.bincount(labels, minlength=k).to(pixels.dtype)
        sums = torch.zeros_like(centers).index_add_(0, labels, pixels)
        updated = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        if torch.allclose(updated, centers):
            break
        centers = updated
    labels = _sq_distances(pixels, centers).argmin(dim=1)
    weights = torch.bincount(labels, minlength=k).to(torch.float32) / labels.numel()
    order = torch.argsort(weights, descending=True, stable=True)
    return Palette(centers[order].contiguous(), weights[order].contiguous())


def render_palette(palette: Palette, width: int, height: int, proportional: bool = True) -> torch.Tensor:
    """A [1, H, W, 3] IMAGE of vertical swatches, as wide as each colour's weight (or equal)."""
    weights = palette.weights if proportional else torch.ones(len(palette))
    edges = torch.cumsum(weights / weights.sum(), 0) * width  # right edge of each swatch
    columns = (torch.arange(width, dtype=torch.float32) + 0.5)[:, None]  # pixel centres, (W, 1)
    index = (columns >= edges[None, :]).sum(dim=1).clamp(max=len(palette) - 1)  # (W,)
    row = palette.colors[index]  # (W, 3)
    return row[None, None].expand(1, height, width, 3).contiguous()


def apply_palette(images: torch.Tensor, palette: Palette, strength: float = 1.0) -> torch.Tensor:
    """Each pixel moved towards its nearest palette colour (RGB distance) by `strength`."""
    rgb = images[..., :3]
    colors = palette.colors.to(images.device, images.dtype)
    flat = rgb.reshape(-1, 3)  # (B*H*W, 3)
    nearest = colors[_sq_distances(flat, colors).argmin(dim=1)].reshape(rgb.shape)
    out = rgb + (nearest - rgb) * strength
    return torch.cat([out, images[..., 3:]], dim=-1)


class ExtractPalette(Node):
    """The main colours of images, by k-means clustering."""

    category = "image/palette"
    outputs = (Output(PALETTE),)

    image: In[IMAGE]
    colors: int = Input(5, ge=1, le=64)
    iterations: int = Input(20, ge=1, le=500)
    seed: int = Input(0, ge=0, le=2**63 - 1)

    def run(self, ctx: NodeContext) -> NodeResult:
        palette = kmeans_palette(self.image, self.colors, self.iterations, self.seed)
        return NodeResult((palette,), ui={"palette": palette.hex(), "weights": palette.weights.tolist()})


class PaletteFromColors(Node):
    """A palette typed in as hex codes."""

    category = "image/palette"
    outputs = (Output(PALETTE),)

    colors: str = Input("#1b1b3a, #693668, #a74482, #f84aa7, #ff3562", multiline=False,
                        tooltip="hex codes separated by commas or spaces")

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        text = inputs.get("colors")
        if isinstance(text, str):
            try:
                parse_hex_colors(text)
            except PaletteError as exc:
                yield Problem("colors", str(exc), text)

    def run(self, ctx: NodeContext) -> NodeResult:
        palette = parse_hex_colors(self.colors)
        return NodeResult((palette,), ui={"palette": palette.hex(), "weights": palette.weights.tolist()})


class RenderPalette(Node):
    """An image of a palette's swatches."""

    category = "image/palette"
    outputs = (Output(IMAGE),)

    palette: In[PALETTE]
    width: int = Input(512, ge=1, le=8192)
    height: int = Input(64, ge=1, le=8192)
    proportional: bool = Input(True, tooltip="swatch widths follow the colours' weights")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (render_palette(self.palette, self.width, self.height, self.proportional),)


class ApplyPalette(Node):
    """Recolour images to the nearest colours of a palette."""

    category = "image/palette"
    outputs = (Output(IMAGE),)

    image: In[IMAGE]
    palette: In[PALETTE]
    strength: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (apply_palette(self.image, self.palette, self.strength),)


NODES = (ExtractPalette, PaletteFromColors, RenderPalette, ApplyPalette)
