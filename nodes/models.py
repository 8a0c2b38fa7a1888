"""What MODEL, CLIP and VAE sockets carry, and the shared model cache that loads them.

Design (LoRA without reloading or corrupting the base):
- Loaders return handles around the *cached* modules. The cache (nodes/diffusion/model_cache.py) holds
  one loaded checkpoint per (file, mtime, dtype, device), and its weights are never left patched.
- LoraLoader returns a *clone* of the handle that carries one more `LoraPatch` in its stack; nothing is
  changed on load. The stack is applied in place when the model is used (`with model.patched() as unet:`
  around sampling) and removed right after (LoraPatcher keeps the original tensors and restores them bit
  for bit). CLIP clones do the same around encoding. So another prompt, or the same graph without
  the LoRA, sees the base weights, and a LoRA strength change re-patches without reloading the file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nodes.diffusion import devices
from nodes.diffusion.ksampler import SD1_LATENT, SDXL_LATENT, LatentFormat
from nodes.diffusion.lora import LoraPatch, LoraPatcher
from nodes.diffusion.model_cache import ModelCache, model_key
from nodes.diffusion.model_sampling import ModelSamplingDiscrete, ModelSamplingEDM

__all__ = ["ModelHandle", "VAEHandle", "model_cache", "compute_device", "compute_dtype", "model_sampling_for",
           "cached_load", "file_fingerprint", "models_lock"]

# One lock for in-place patching: two handles sharing a module must not patch it at the same time.
models_lock = threading.RLock()


def model_cache(env: Any) -> ModelCache:
    """The environment's shared model cache (budget from settings `model_cache_gb`, else half the RAM)."""

    def create(env: Any) -> ModelCache:
        gb = env.settings.get("model_cache_gb")
        return ModelCache(int(float(gb) * (1 << 30)) if gb else None)

    return env.service("models", create)


def compute_device(env: Any) -> torch.device:
    return devices.pick_device(env.settings.get("device") or "auto")


def compute_dtype(env: Any, device: torch.device) -> torch.dtype:
    return devices.pick_dtype(device, env.settings.get("precision") or "auto")


def model_sampling_for(prediction: str, markers: dict[str, float]) -> Any:
    """The model sampling a checkpoint's prediction type and marker tensors call for (as ComfyUI).

    eps / v: SD's discrete DDPM schedule; `edm_vpred.sigma_*` markers: continuous EDM sigmas with v
    prediction; "edm" (Playground 2.5 style): EDM preconditioning with sigma_data 0.5.
    """
    if "edm_vpred.sigma_max" in markers:
        return ModelSamplingEDM("v", markers.get("edm_vpred.sigma_min", 0.002), markers["edm_vpred.sigma_max"], 1.0)
    if prediction == "edm":
        return ModelSamplingEDM("edm", 0.002, 80.0, 0.5)
    return ModelSamplingDiscrete(prediction)


def file_fingerprint(path: Path | None) -> tuple[int, int] | None:
    """(modification time, size) of a file, so a file replaced under the same name is reloaded."""
    if path is None:
        return None
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def latent_format_of(family: str) -> LatentFormat:
    return SD1_LATENT if family == "sd1" else SDXL_LATENT


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """A MODEL: a (cached, shared) UNet, its model sampling, its family, and a LoRA stack of its own."""

    unet: torch.nn.Module
    model_sampling: Any
    family: str
    name: str = ""
    patches: tuple[LoraPatch, ...] = field(default=())

    @property
    def latent_format(self) -> LatentFormat:
        return latent_format_of(self.family)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def with_lora(self, patch: LoraPatch) -> ModelHandle:
        """A clone with one more LoRA in its stack; this handle and the cached UNet are unchanged."""
        return replace(self, patches=self.patches + (patch,))

    @contextmanager
    def patched(self) -> Iterator[torch.nn.Module]:
        """The UNet with this handle's LoRA stack applied, restored to the base weights on exit."""
        with models_lock:
            patcher = LoraPatcher.of(self.unet)
            patcher.apply(self.patches)
            try:
                yield self.unet
            finally:
                patcher.unpatch()


@dataclass(frozen=True, eq=False)
class VAEHandle:
    """A VAE: the autoencoder and the dtype/device it runs in."""

    vae: torch.nn.Module
    name: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device


def cached_load(env: Any, path: Path, loader: Any, *extra: Any) -> Any:
    """Load `path` through the shared cache (once per file, mtime, dtype and device)."""
    device = compute_device(env)
    dtype = compute_dtype(env, device)
    key = model_key(path, dtype, device, *extra)
    return model_cache(env).get(key, lambda: loader(path, dtype, device))
