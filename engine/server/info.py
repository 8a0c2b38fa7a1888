"""Read-only information routes: node schema, system stats, model folders, extensions, features."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.server.jsonio import ApiError, json_response
from engine.server.state import ServerState

__all__ = ["MODEL_FOLDERS", "MODEL_EXTENSIONS", "list_models", "system_stats", "ram_info", "extension_urls",
           "InfoRoutes"]

# ComfyUI's model folder names, so clients asking for them get a (possibly empty) list.
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "vae_approx", "text_encoders", "clip", "diffusion_models",
    "unet", "clip_vision", "style_models", "embeddings", "diffusers", "controlnet", "gligen",
    "upscale_models", "latent_upscale_models", "hypernetworks", "photomaker", "classifiers",
)
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf"})


def list_models(models_dir: Path, folder: str) -> list[str]:
    """Model files under `models_dir/folder` (recursive, '/'-separated, sorted); 404 for unknown folders."""
    if not folder or folder.startswith(".") or "/" in folder or "\\" in folder or "\x00" in folder:
        raise ApiError(400, "invalid_path", f"model folder {folder!r} must be a plain folder name, e.g. checkpoints")
    root = models_dir / folder
    if folder not in MODEL_FOLDERS and not root.is_dir():
        raise ApiError(404, "not_found", f"no model folder {folder!r}; GET /models lists the folders")
    if not root.is_dir():
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if Path(name).suffix.lower() in MODEL_EXTENSIONS:
                found.append((rel / name).as_posix())
    return sorted(found)


def ram_info() -> tuple[int, int]:
    """(total, available) bytes of RAM, from /proc/meminfo where there is one."""
    try:
        fields = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields[key] = int(value.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _devices() -> tuple[str, list[dict[str, Any]]]:
    try:
        import torch
    except ImportError:
        return "not installed", []
    total, free = ram_info()
    devices: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free_b, total_b = torch.cuda.mem_get_info(index)
            devices.append({
                "name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda", "index": index,
                "vram_total": total_b, "vram_free": free_b,
                "torch_vram_total": torch.cuda.memory_reserved(index),
                "torch_vram_free": torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index),
            })
    else:
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
                        "torch_vram_total": total, "torch_vram_free": free})
    return str(torch.__version__), devices


def system_stats(version: str) -> dict[str, Any]:
    """`GET /system_stats` in ComfyUI's shape."""
    total, free = ram_info()
    torch_version, devices = _devices()
    return {
        "system": {
            "os": os.name,
            "platform": platform.platform(),
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": version,
            "latentgraph_version": version,
            "python_version": sys.version,
            "pytorch_version": torch_version,
            "embedded_python": os.path.split(os.path.split(sys.executable)[0])[1] == "python_embeded",
            "argv": list(sys.argv),
        },
        "devices": devices,
    }


def extension_urls(web_extensions: dict[str, Path]) -> list[str]:
    """`/extensions/<plugin>/<file>.js` for every script in every plugin's web folder."""
    urls: list[str] = []
    for plugin, folder in sorted(web_extensions.items()):
        root = Path(folder)
        for path in sorted(root.rglob("*.js")):
            if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts):
                urls.append(f"/extensions/{plugin}/{path.relative_to(root).as_posix()}")
    return urls


class InfoRoutes:
    """Handlers of the read-only routes, bound to the server's state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def _models_dir(self) -> Path:
        return Path(self.state.settings.models_dir or "models")

    async def object_info(self, request: web.Request) -> web.Response:
        registry, env = self.state.host.nodes, self.state.env
        return json_response(await asyncio.to_thread(registry.object_info, env))

    async def object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        cls = self.state.host.nodes.get(name)
        if cls is None:
            return json_response({})
        plugin = self.state.host.nodes.owner(name)
        return json_response({name: await asyncio.to_thread(cls.object_info, self.state.env, plugin)})

    async def system_stats(self, request: web.Request) -> web.Response:
        return json_response(await asyncio.to_thread(system_stats, self.state.version))

    async def models(self, request: web.Request) -> web.Response:
        root = self._models_dir()
        found = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} if root.is_dir() else set()
        return json_response(list(MODEL_FOLDERS) + sorted(found - set(MODEL_FOLDERS)))

    async def models_in(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        return json_response(await asyncio.to_thread(list_models, self._models_dir(), folder))

    async def embeddings(self, request: web.Request) -> web.Response:
        files = await asyncio.to_thread(list_models, self._models_dir(), "embeddings")
        return json_response([Path(f).with_suffix("").as_posix() for f in files])

    async def extensions(self, request: web.Request) -> web.Response:
        return json_response(extension_urls(self.state.host.web_extensions))

    async def features(self, request: web.Request) -> web.Response:
        return json_response(self.state.features)

    async def schema(self, request: web.Request) -> web.Response:
        return json_response(await asyncio.to_thread(self.state.host.nodes.json_schema))

    async def plugins(self, request: web.Request) -> web.Response:
        return json_response([r.to_dict() for r in self.state.host.records])
