"""Settings shared by the CLI, the server and the executor's environment."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Settings"]


def _default_root() -> Path:
    return Path(os.environ.get("LATENTGRAPH_HOME", Path.cwd()))


@dataclass
class Settings:
    """Every option a user can set; folder defaults live under one base folder (the working dir).

    `env_settings()` is what nodes see as `ctx.env.settings`: folders as strings plus device options.
    """

    base_dir: Path = field(default_factory=_default_root)
    listen: str = "127.0.0.1"  # loopback unless the user says otherwise (and sets a token)
    port: int = 8188
    output_dir: Path | None = None
    input_dir: Path | None = None
    temp_dir: Path | None = None
    user_dir: Path | None = None
    models_dir: Path | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    cache: str = "lru:128"  # none | lru:N | ram:GB
    plugin_dirs: list[Path] = field(default_factory=list)
    disabled_plugins: list[str] = field(default_factory=list)
    load_entry_points: bool = True
    token: str | None = None  # required when listening beyond loopback
    preview: str = "auto"  # none | auto | latent2rgb
    max_upload_mb: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        defaults = {"output_dir": "output", "input_dir": "input", "temp_dir": "temp",
                    "user_dir": "user", "models_dir": "models"}
        for name, sub in defaults.items():
            value = getattr(self, name)
            setattr(self, name, Path(value) if value is not None else self.base_dir / sub)
        self.plugin_dirs = [Path(p) for p in self.plugin_dirs]

    def ensure_dirs(self) -> None:
        for d in (self.output_dir, self.input_dir, self.temp_dir, self.user_dir):
            assert d is not None
            d.mkdir(parents=True, exist_ok=True)

    def env_settings(self) -> dict[str, Any]:
        """The plain dict handed to nodes as `Environment.settings`."""
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()
               if k not in ("plugin_dirs", "extra", "token")}
        out.update(self.extra)
        return out
