"""Resizing of image and latent batches: torch modes, Lanczos (through PIL) and bislerp.

All functions take and return channel-first batches `[B, C, H, W]`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["LATENT_METHODS", "IMAGE_METHODS", "resize", "center_crop", "bislerp", "lanczos"]

LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def center_crop(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop the middle of `x` to the aspect ratio of `width`x`height` (ComfyUI's crop="center")."""
    old_h, old_w = x.shape[-2], x.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = dy = 0
    if old_aspect > new_aspect:
        dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x[..., dy:old_h - dy, dx:old_w - dx]


def resize(x: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize `[B,C,H,W]` to `height`x`width` with one of LATENT_METHODS or IMAGE_METHODS."""
    if crop == "center":
        x = center_crop(x, width, height)
    if method == "bislerp":
        return bislerp(x, width, height)
    if method == "lanczos":
        return lanczos(x, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic", "nearest"):
        raise ValueError(f"unknown resize method {method!r}; use one of {', '.join(LATENT_METHODS + ('lanczos',))}")
    dtype = x.dtype
    # interpolate has no half-precision kernels for every mode on the CPU.
    out = F.interpolate(x.float(), size=(height, width), mode=method)
    return out.to(dtype)


def lanczos(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Lanczos resampling per channel through PIL's float ('F') mode, so nothing is quantised."""
    b, c = x.shape[:2]
    planes = x.detach().float().cpu().numpy()
    out = np.empty((b, c, height, width), dtype=np.float32)
    for i in range(b):
        for j in range(c):
            img = Image.fromarray(planes[i, j], mode="F")
            out[i, j] = np.asarray(img.resize((width, height), Image.Resampling.LANCZOS))
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def _slerp(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors `a`, `b` ([..., C]) by ratio r ([..., 1]).

    Directions are slerped and magnitudes lerped. Nearly parallel or opposite vectors take a plain
    lerp: the first is slerp's limit, and for the second the slerp plane is undefined.
    """
    na = a.norm(dim=-1, keepdim=True)
    nb = b.norm(dim=-1, keepdim=True)
    ua = torch.where(na > 0, a / na.clamp_min(1e-12), torch.zeros_like(a))
    ub = torch.where(nb > 0, b / nb.clamp_min(1e-12), torch.zeros_like(b))
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    safe_so = torch.where(so.abs() < 1e-8, torch.ones_like(so), so)
    out = (torch.sin((1 - r) * omega) / safe_so) * ua + (torch.sin(r * omega) / safe_so) * ub
    out = out * (na * (1 - r) + nb * r)
    degenerate = (dot > 1 - 1e-5) | (dot < -1 + 1e-5)
    out = torch.where(degenerate, a * (1 - r) + b * r, out)
    return out


def _axis_sources(old: int, new: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `new` output positions: the two source indices and the ratio between them.

    Positions follow bilinear resampling with half-pixel centres (align_corners=False).
    """
    pos = (torch.arange(new, device=device, dtype=torch.float64) + 0.5) * (old / new) - 0.5
    pos = pos.clamp(0, old - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=old - 1)
    r = (pos - i0.double()).float()
    return i0, i1, r


def bislerp(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize by slerping channel vectors along width, then height (ComfyUI's "bislerp").

    Latent channels behave like directions more than intensities, so slerp keeps their norm where
    bilinear shrinks it between unlike neighbours.
    """
    dtype = x.dtype
    v = x.float().movedim(1, -1)  # (B, H, W, C)
    i0, i1, r = _axis_sources(v.shape[2], width, v.device)
    v = _slerp(v[:, :, i0], v[:, :, i1], r.view(1, 1, -1, 1))  # (B, H, width, C)
    i0, i1, r = _axis_sources(v.shape[1], height, v.device)
    v = _slerp(v[:, i0], v[:, i1], r.view(1, -1, 1, 1))  # (B, height, width, C)
    return v.movedim(-1, 1).contiguous().to(dtype)
