"""The demo model's training set: procedural captioned pictures of coloured shapes, made on the fly.

Every scene is a pure function of (seed, index), so the set is deterministic, endless and never
downloaded: a circle, square or triangle of one of six colours, small or large, on the left, right,
top, bottom or in the center, with a dark outline, over a plain or a vertical-gradient background of another colour.
Captions name the attributes ("a small red circle on the left, white background"); some attributes
are left out at random so that short prompts ("a red circle") mean something too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "NEUTRALS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "OUTLINE_WIDTH",
    "OUTLINE_RGB",
    "Scene",
    "sample_scene",
    "render",
    "render_with_mask",
    "caption",
    "CAPTION_GROUPS",
    "caption_labels",
    "scene_rng",
    "hue_of",
    "hue_class",
    "colour_mask",
    "dominant_colour",
    "shape_centre",
]

# Shape colours: hues spread round the wheel (about 0, 52, 129, 184, 230, 280 degrees).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (235, 210, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (150, 50, 200),
}
NEUTRALS: dict[str, tuple[int, int, int]] = {"white": (240, 240, 240), "gray": (128, 128, 128), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.12, "large": 0.22}  # shape "radius" as a fraction of the image side
# Where each position puts the shape's centre: (x range, y range) as fractions of the image side.
POSITIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "left": ((0.22, 0.32), (0.35, 0.65)),
    "right": ((0.68, 0.78), (0.35, 0.65)),
    "top": ((0.35, 0.65), (0.22, 0.32)),
    "bottom": ((0.35, 0.65), (0.68, 0.78)),
    "center": ((0.44, 0.56), (0.44, 0.56)),
}
# Every shape has a dark outline, OUTLINE_WIDTH of its radius thick (drawn inwards), in the style of clip-art
# stickers. It makes "where the shape is" visible in the latent whatever the shape's and background's colours:
# without it a shape is, averaged over colours, as bright as the backgrounds, and "on the left" says almost
# nothing about the mean picture (see docs/demo_model.md). Its pixels are too dark for `colour_mask`.
OUTLINE_WIDTH = 0.35
OUTLINE_RGB = np.array([20.0, 20.0, 20.0], dtype=np.float32)
_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom", "center": "in the center"}
_BACKGROUNDS = tuple(NEUTRALS) + tuple(COLOURS)


@dataclass(frozen=True)
class Scene:
    """One picture's content; pixel values come from `render`, words from `caption`."""

    colour: str  # a key of COLOURS
    shape: str  # one of SHAPES
    size: str  # a key of SIZES
    position: str  # a key of POSITIONS
    cx: float  # centre, fractions of the image side
    cy: float
    background: str  # a key of NEUTRALS or COLOURS: the plain colour, or the gradient's top
    background_bottom: str | None  # the gradient's bottom colour, None for a plain background
    jitter: tuple[int, ...]  # 9 small RGB offsets: shape, background top, background bottom


def scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of item `index` of stream `stream` (scenes 0, captions 1, ...) under `seed`."""
    return np.random.default_rng([seed, stream, index])


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene: the shape's colour always differs from every background colour."""
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    size = str(rng.choice(list(SIZES)))
    position = str(rng.choice(list(POSITIONS)))
    (x0, x1), (y0, y1) = POSITIONS[position]
    cx, cy = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
    others = [b for b in _BACKGROUNDS if b != colour]
    kind = rng.random()
    if kind < 0.5:  # plain neutral
        background, bottom = str(rng.choice(list(NEUTRALS))), None
    elif kind < 0.8:  # plain colour
        background, bottom = str(rng.choice([c for c in COLOURS if c != colour])), None
    else:  # vertical gradient between two different background colours
        i, j = rng.choice(len(others), size=2, replace=False)
        background, bottom = others[int(i)], others[int(j)]
    jitter = tuple(int(v) for v in rng.integers(-18, 19, size=9))
    return Scene(colour, shape, size, position, cx, cy, background, bottom, jitter)


def _rgb(name: str, offset: tuple[int, ...]) -> np.ndarray:
    base = np.array(COLOURS.get(name) or NEUTRALS[name], dtype=np.int32)
    shift = np.array(offset, dtype=np.int32)
    if name in NEUTRALS:  # greys stay grey: one brightness offset for all three channels
        shift = np.full(3, int(shift.mean()), dtype=np.int32)
    return np.clip(base + shift, 0, 255).astype(np.float32)


def render(scene: Scene, size: int = 128) -> np.ndarray:
    """The scene as an (size, size, 3) uint8 RGB array, anti-aliased by drawing at 4x and averaging."""
    return render_with_mask(scene, size)[0]


def _coverage(scene: Scene, cx: float, cy: float, r: float, ss: int, size: int) -> np.ndarray:
    """(size, size, 1) float coverage in 0..1 of the scene's shape of "radius" r centred at (cx, cy), drawn at ss px."""
    mask = Image.new("L", (ss, ss), 0)
    draw = ImageDraw.Draw(mask)
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif scene.shape == "square":
        h = 0.9 * r  # a square of the circle's area would be 0.886 r; keep sizes comparable
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    else:  # equilateral triangle pointing up, centred on its centroid
        R = 1.2 * r
        pts = [(cx + R * np.cos(a), cy - R * np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        draw.polygon(pts, fill=255)
    return np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float32)[..., None] / 255.0


def render_with_mask(scene: Scene, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """`render`'s picture and the shape's coverage, an (size, size) uint8 mask (255 inside, soft edges)."""
    top = _rgb(scene.background, scene.jitter[3:6])
    bottom = top if scene.background_bottom is None else _rgb(scene.background_bottom, scene.jitter[6:9])
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    canvas = (top * (1 - ramp) + bottom * ramp) * np.ones((1, size, 1), np.float32)  # (H, W, 3)

    ss = 4 * size  # masks are drawn at 4x and box-filtered: soft, exact-area edges
    r = SIZES[scene.size] * ss
    alpha = _coverage(scene, scene.cx * ss, scene.cy * ss, r, ss, size)  # the whole shape, outline included
    inner = _coverage(scene, scene.cx * ss, scene.cy * ss, r * (1 - OUTLINE_WIDTH), ss, size)  # its coloured inside
    shape_rgb = _rgb(scene.colour, scene.jitter[0:3])
    out = canvas * (1 - alpha) + OUTLINE_RGB * (alpha - inner) + shape_rgb * inner
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), np.rint(alpha[..., 0] * 255).astype(np.uint8)


def _background_words(scene: Scene) -> str:
    if scene.background_bottom is None:
        return f"{scene.background} background"
    return f"{scene.background} to {scene.background_bottom} gradient background"


def caption(scene: Scene, rng: np.random.Generator | None = None, drop: tuple[float, ...] = (0.25, 0.2, 0.3)) -> str:
    """The scene's caption; with `rng`, attributes are left out with the chances in `drop`: size, position,
    background, and (when `drop` has five entries) colour and shape ("a small circle", "a red shape")."""
    keep = [True] * 5
    if rng is not None:
        keep[:3] = (bool(v) for v in rng.random(3) >= drop[:3])
        if len(drop) > 3:
            keep[3:] = (bool(v) for v in rng.random(2) >= drop[3:5])
    keep_size, keep_position, keep_background, keep_colour, keep_shape = keep
    words = ["a"] + ([scene.size] if keep_size else []) + ([scene.colour] if keep_colour else []) + [scene.shape if keep_shape else "shape"]
    if keep_position:
        words.append(_PHRASES[scene.position])
    text = " ".join(words)
    return f"{text}, {_background_words(scene)}" if keep_background else text


# What `caption_labels` reads from a caption: one class per group, the last class meaning "not said".
CAPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "size": tuple(SIZES),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "background": _BACKGROUNDS,
}


def caption_labels(text: str) -> tuple[int, ...]:
    """What a caption says, one index per CAPTION_GROUPS group (len(values) where it says nothing of it).

    Read from the words alone, so it works for any caption `caption` writes, and for "" (all unsaid).
    The background is the plain colour or the gradient's top colour.
    """
    subject, _, rest = text.partition(",")
    words, after = subject.split(), rest.split()
    out = []
    for group, values in CAPTION_GROUPS.items():
        pool = after if group == "background" else words
        found = [v for v in pool if v in values]
        out.append(values.index(found[0]) if found else len(values))
    return tuple(out)


def hue_of(rgb: tuple[int, int, int] | np.ndarray) -> float:
    """Hue in degrees (0..360) of an RGB triple, as HSV defines it."""
    r, g, b = (float(v) for v in rgb)
    hi, lo = max(r, g, b), min(r, g, b)
    if hi == lo:
        return 0.0
    if hi == r:
        h = 60.0 * ((g - b) / (hi - lo))
    elif hi == g:
        h = 60.0 * ((b - r) / (hi - lo)) + 120.0
    else:
        h = 60.0 * ((r - g) / (hi - lo)) + 240.0
    return h % 360.0


def hue_class(hue: float) -> str:
    """The COLOURS name whose hue is nearest (on the circle) to `hue` in degrees."""
    def dist(name: str) -> float:
        d = abs(hue - hue_of(COLOURS[name])) % 360.0
        return min(d, 360.0 - d)

    return min(COLOURS, key=dist)


def colour_mask(image: np.ndarray, min_saturation: float = 0.4, min_value: float = 0.25) -> np.ndarray:
    """(H, W) bool: the strongly coloured pixels of an (H, W, 3) uint8 picture (a shape over a grey background)."""
    rgb = image.astype(np.float32) / 255.0
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = (hi - lo) / np.maximum(hi, 1e-6)
    return (saturation >= min_saturation) & (hi >= min_value)


def _hues(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    span = np.maximum(hi - lo, 1e-6)
    hue = np.where(hi == r, 60.0 * (g - b) / span, np.where(hi == g, 60.0 * (b - r) / span + 120.0, 60.0 * (r - g) / span + 240.0))
    return hue % 360.0


def dominant_colour(image: np.ndarray, min_pixels: int = 20) -> str | None:
    """The COLOURS name most of the strongly coloured pixels are nearest to, or None if there are fewer than `min_pixels`."""
    mask = colour_mask(image)
    if mask.sum() < min_pixels:
        return None
    hues = _hues(image)[mask]  # (n,)
    names = list(COLOURS)
    centres = np.array([hue_of(COLOURS[n]) for n in names], dtype=np.float32)  # (k,)
    d = np.abs(hues[:, None] - centres[None, :]) % 360.0
    nearest = np.minimum(d, 360.0 - d).argmin(axis=1)  # (n,)
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


def shape_centre(image: np.ndarray, min_pixels: int = 20) -> tuple[float, float] | None:
    """(x, y) centre of mass of the strongly coloured pixels, as fractions of the width / height; None if too few."""
    mask = colour_mask(image)
    if mask.sum() < min_pixels:
        return None
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()) + 0.5) / image.shape[1], (float(ys.mean()) + 0.5) / image.shape[0]
