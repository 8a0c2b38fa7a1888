"""Socket types: the named, coloured kinds of value that flow along links."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SocketType",
    "TypeRegistry",
    "TypeConflictError",
    "BUILTIN_TYPES",
    "ANY",
    "MODEL",
    "CLIP",
    "VAE",
    "CONDITIONING",
    "LATENT",
    "IMAGE",
    "MASK",
    "SIGMAS",
    "SAMPLER",
    "NOISE",
    "GUIDER",
    "UPSCALE_MODEL",
    "INT",
    "FLOAT",
    "STRING",
    "BOOLEAN",
    "COMBO",
]


@dataclass(frozen=True)
class SocketType:
    """A socket type: its name on the wire, the Python type it carries, its editor colour.

    `widget` is true for the primitive types (INT, FLOAT, STRING, BOOLEAN, COMBO) whose values can
    be typed into a node instead of linked. `accepts` lists other type names this one takes links
    from (e.g. FLOAT accepts INT).
    """

    name: str
    python_type: type | None = None
    color: str = "#a0a0a0"
    description: str = ""
    widget: bool = False
    accepts: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name) or "," in self.name:
            raise ValueError(f"socket type name {self.name!r} must be non-empty, without spaces or commas")

    def __str__(self) -> str:
        return self.name


ANY = SocketType("*", color="#cccccc", description="Accepts any type.")
MODEL = SocketType("MODEL", color="#b39ddb", description="A denoising model (UNet) with its sampling settings.")
CLIP = SocketType("CLIP", color="#ffd500", description="Text encoders and tokenizer.")
VAE = SocketType("VAE", color="#ff6e6e", description="Autoencoder between pixels and latents.")
CONDITIONING = SocketType("CONDITIONING", color="#ffa931", description="Encoded prompt(s) with their options.")
LATENT = SocketType("LATENT", color="#ff9cf9", description="Latent samples, optionally with a noise mask.")
IMAGE = SocketType("IMAGE", color="#64b5f6", description="Float image batch [B,H,W,C] in 0..1.")
MASK = SocketType("MASK", color="#81c784", description="Float mask batch [B,H,W] in 0..1.")
SIGMAS = SocketType("SIGMAS", color="#cddc39", description="A noise schedule: decreasing sigmas ending in 0.")
SAMPLER = SocketType("SAMPLER", color="#ecb4b4", description="A sampling algorithm.")
NOISE = SocketType("NOISE", color="#b0b0b0", description="A source of initial noise.")
GUIDER = SocketType("GUIDER", color="#66ffff", description="A guidance method around a model.")
UPSCALE_MODEL = SocketType("UPSCALE_MODEL", color="#8d6e63", description="An image upscaling model.")
INT = SocketType("INT", python_type=int, color="#7fb3d5", widget=True)
FLOAT = SocketType("FLOAT", python_type=float, color="#aab7b8", widget=True, accepts=("INT",))
STRING = SocketType("STRING", python_type=str, color="#82e0aa", widget=True)
BOOLEAN = SocketType("BOOLEAN", python_type=bool, color="#f8c471", widget=True)
COMBO = SocketType("COMBO", python_type=str, color="#c39bd3", widget=True, accepts=("STRING",))

BUILTIN_TYPES: tuple[SocketType, ...] = (
    ANY, MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK, SIGMAS, SAMPLER, NOISE, GUIDER,
    UPSCALE_MODEL, INT, FLOAT, STRING, BOOLEAN, COMBO,
)


class TypeConflictError(ValueError):
    """Two registrations claim the same socket type name with different definitions."""


class TypeRegistry:
    """The socket types known to one plugin host; compatibility between them."""

    def __init__(self, types: Iterable[SocketType] = ()) -> None:
        self._types: dict[str, SocketType] = {}
        self._owner: dict[str, str] = {}
        for t in types:
            self.register(t, plugin="core")

    def register(self, socket_type: SocketType, plugin: str = "core") -> SocketType:
        if not isinstance(socket_type, SocketType):
            raise TypeError(f"register_types expects SocketType instances, got {socket_type!r}")
        existing = self._types.get(socket_type.name)
        if existing is not None and existing != socket_type:
            raise TypeConflictError(
                f"socket type {socket_type.name!r} from plugin {plugin!r} conflicts with the one "
                f"registered by plugin {self._owner[socket_type.name]!r}; rename one of them"
            )
        self._types[socket_type.name] = socket_type
        self._owner.setdefault(socket_type.name, plugin)
        return socket_type

    def get(self, name: str) -> SocketType | None:
        return self._types.get(name)

    def owner(self, name: str) -> str | None:
        return self._owner.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[SocketType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def compatible(self, output_type: str, input_type: str) -> bool:
        """Whether a link from an output of `output_type` may feed an input of `input_type`.

        Names may be comma-separated unions (as in ComfyUI): the link is valid when the sets meet.
        `*` matches anything.
        """
        outs = {t.strip() for t in output_type.split(",")}
        ins = {t.strip() for t in input_type.split(",")}
        if "*" in outs or "*" in ins or outs & ins:
            return True
        for name in ins:
            t = self._types.get(name)
            if t is not None and outs & set(t.accepts):
                return True
        return False

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the editor: name -> colour, description, widget flag."""
        return {
            t.name: {"color": t.color, "description": t.description, "widget": t.widget,
                     "plugin": self._owner.get(t.name)}
            for t in self._types.values()
        }
