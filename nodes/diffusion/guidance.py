"""Guidance: conditioning entries, their batched evaluation, and classifier-free guidance (CFGGuider / BasicGuider).

Conditioning is a list of `Cond` entries. At each sigma every active entry (its timestep range covers
sigma) is evaluated on its area of the latent; entries whose inputs fit together (same area size, token
lengths that tile to a common length within 4x, as ComfyUI's CONDCrossAttn) run in one batched forward,
cond and uncond together (batch 2B). Entries of one list combine as ComfyUI's ConditioningCombine does:
a strength-weighted average of their predictions, with an 8-pixel feather at inner area edges.
CFG: D = D_u + cfg * (D_c - D_u) (Ho & Salimans 2022, arXiv 2207.12598); with cfg == 1 only cond runs.
Post-CFG hooks see {'denoised', 'cond_denoised', 'uncond_denoised', 'sigma', 'input', 'cond_scale'}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import torch

__all__ = [
    "BasicGuider",
    "CFGGuider",
    "Cond",
    "calc_cond_batch",
    "combine_conditioning",
    "concat_conditioning",
    "set_timestep_range",
]


@dataclass(frozen=True)
class Cond:
    """One conditioning entry.

    context: cross-attention tokens [B or 1, T, C]; y: the UNet's vector conditioning [B or 1, adm]
    (SDXL: pooled + size embeddings), pooled: the pooled text embedding (kept for y builders).
    start_percent / end_percent: the part of sampling it is active in (ConditioningSetTimestepRange).
    area: (height, width, top, left) in latent pixels (ConditioningSetArea's values / 8), strength its weight;
    mask: optional [H, W] or [1, H, W] weight map over the latent (ConditioningSetMask).
    """

    context: torch.Tensor
    y: Optional[torch.Tensor] = None
    pooled: Optional[torch.Tensor] = None
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    area: Optional[tuple[int, int, int, int]] = None
    mask: Optional[torch.Tensor] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_comfy(cls, tensor: torch.Tensor, options: dict) -> "Cond":
        """From a ComfyUI CONDITIONING pair [tensor, {pooled_output, strength, start_percent, area, mask, ...}]."""
        area = options.get("area")
        if area is not None and len(area) == 4 and isinstance(area[0], str):
            raise ValueError("Cond.from_comfy: percentage areas are not supported; give the area in latent pixels")
        known = {"pooled_output", "y", "strength", "start_percent", "end_percent", "area", "mask"}
        return cls(
            context=tensor,
            y=options.get("y"),
            pooled=options.get("pooled_output"),
            strength=float(options.get("strength", 1.0)),
            start_percent=float(options.get("start_percent", 0.0)),
            end_percent=float(options.get("end_percent", 1.0)),
            area=tuple(int(v) for v in area) if area is not None else None,
            mask=options.get("mask"),
            extra={k: v for k, v in options.items() if k not in known},
        )


def set_timestep_range(conditioning: Sequence[Cond], start: float, end: float) -> list[Cond]:
    """ConditioningSetTimestepRange: active from `start` to `end` (fractions of sampling, 0 = first step)."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"set_timestep_range: need 0 <= start <= end <= 1, got start={start}, end={end}")
    return [replace(c, start_percent=start, end_percent=end) for c in conditioning]


def combine_conditioning(a: Sequence[Cond], b: Sequence[Cond]) -> list[Cond]:
    """ConditioningCombine: both lists' entries, whose predictions are averaged at sampling time."""
    return list(a) + list(b)


def concat_conditioning(to: Sequence[Cond], source: Sequence[Cond]) -> list[Cond]:
    """ConditioningConcat: append the first source entry's tokens to every entry of `to` (along T)."""
    if not source:
        return list(to)
    extra_tokens = source[0].context
    return [replace(c, context=torch.cat([c.context, extra_tokens.to(c.context)], dim=1)) for c in to]


def _batch(t: torch.Tensor, n: int) -> torch.Tensor:
    """t repeated (or cut) to batch size n."""
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1 or n % t.shape[0] == 0:
        return t.repeat((n // t.shape[0],) + (1,) * (t.ndim - 1))
    raise ValueError(f"conditioning batch {t.shape[0]} does not fit a latent batch of {n}")


@dataclass
class _Job:
    """One entry's evaluation: the latent crop, its weight map and its conditioning."""

    slot: int  # 0 = cond, 1 = uncond
    area: tuple[int, int, int, int]
    weight: torch.Tensor
    x: torch.Tensor
    sigma: torch.Tensor
    context: torch.Tensor
    y: Optional[torch.Tensor]


def _job(slot: int, c: Cond, x: torch.Tensor, sigma: torch.Tensor, y_fn: Optional[Callable]) -> _Job:
    b, _, height, width = x.shape
    h, w, top, left = c.area if c.area is not None else (height, width, 0, 0)
    h, w = min(h, height - top), min(w, width - left)
    crop = x[:, :, top : top + h, left : left + w]
    weight = torch.ones_like(crop) * c.strength
    if c.mask is not None:
        mask = c.mask.reshape((-1,) + tuple(c.mask.shape[-2:])).to(x)
        if mask.shape[-2:] != (height, width):
            mask = torch.nn.functional.interpolate(mask[:, None], size=(height, width), mode="bilinear")[:, 0]
        weight = weight * _batch(mask, b)[:, None, top : top + h, left : left + w]
    if c.area is not None:
        # Feather 8 latent pixels at edges inside the image, so areas blend (ComfyUI's rr = 8).
        rr = 8
        for t in range(min(rr, h, w)):
            f = (t + 1) / rr
            if top != 0:
                weight[:, :, t : t + 1] *= f
            if top + h < height:
                weight[:, :, h - 1 - t : h - t] *= f
            if left != 0:
                weight[:, :, :, t : t + 1] *= f
            if left + w < width:
                weight[:, :, :, w - 1 - t : w - t] *= f
    y = c.y if c.y is not None else (y_fn(c, x.shape) if y_fn is not None else None)
    return _Job(slot, (h, w, top, left), weight, crop, sigma, _batch(c.context.to(x), b), None if y is None else _batch(y.to(x), b))


def _tile_tokens(contexts: list[torch.Tensor], max_factor: int = 4) -> Optional[list[torch.Tensor]]:
    """Contexts tiled along T to their common multiple (exact for attention), or None if that exceeds max_factor."""
    lengths = {c.shape[1] for c in contexts}
    if len(lengths) == 1:
        return contexts
    common = math.lcm(*lengths)
    if common // min(lengths) > max_factor:
        return None
    return [c.repeat(1, common // c.shape[1], 1) for c in contexts]


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs that can share one forward: same crop shape, same y presence, tileable token lengths."""
    groups: list[list[_Job]] = []
    for job in jobs:
        for g in groups:
            head = g[0]
            if head.x.shape == job.x.shape and (head.y is None) == (job.y is None) and head.context.shape[2] == job.context.shape[2]:
                if _tile_tokens([j.context for j in g] + [job.context]) is not None:
                    g.append(job)
                    break
        else:
            groups.append([job])
    return groups


def calc_cond_batch(model: Callable[..., torch.Tensor], conds: Sequence[Optional[Sequence[Cond]]], x: torch.Tensor, sigma: torch.Tensor, percent_sigma: Callable[[float], float], y_fn: Optional[Callable] = None, **model_kwargs: Any) -> list[Optional[torch.Tensor]]:
    """Denoised predictions for each conditioning list (None lists give None), batching compatible entries."""
    sigma_value = float(sigma.reshape(-1)[0])
    jobs: list[_Job] = []
    for slot, conditioning in enumerate(conds):
        for c in conditioning or ():
            # Active while percent_to_sigma(start) >= sigma >= percent_to_sigma(end) (ComfyUI compares sigmas).
            if sigma_value > percent_sigma(c.start_percent) or sigma_value < percent_sigma(c.end_percent):
                continue
            jobs.append(_job(slot, c, x, sigma, y_fn))
    totals = [torch.zeros_like(x) if conds[i] is not None else None for i in range(len(conds))]
    counts = [torch.full_like(x, 1e-37) if conds[i] is not None else None for i in range(len(conds))]
    for group in _groups(jobs):
        contexts = _tile_tokens([j.context for j in group])
        xs = torch.cat([j.x for j in group])  # (len(group)*B, C, h, w)
        sig = torch.cat([_batch(j.sigma.reshape(-1), j.x.shape[0]) for j in group])
        ys = torch.cat([j.y for j in group]) if group[0].y is not None else None
        kwargs = dict(model_kwargs)
        if ys is not None:
            kwargs["y"] = ys
        out = model(xs, sig, context=torch.cat(contexts), **kwargs).chunk(len(group))
        for job, pred in zip(group, out):
            h, w, top, left = job.area
            totals[job.slot][:, :, top : top + h, left : left + w] += pred * job.weight
            counts[job.slot][:, :, top : top + h, left : left + w] += job.weight
    return [None if t is None else t / n for t, n in zip(totals, counts)]


class CFGGuider:
    """The GUIDER of CFGGuider: `guider(x, sigma, **extra) -> denoised` with classifier-free guidance.

    `denoiser(x, sigma, context=..., y=...)` is a `model_sampling.Denoiser` (or any such callable);
    `percent_to_sigma` maps timestep-range fractions to sigmas (the model sampling's method).
    """

    supports_post_cfg = True

    def __init__(self, denoiser: Callable[..., torch.Tensor], positive: Sequence[Cond], negative: Optional[Sequence[Cond]], cfg: float, model_sampling: Any = None, y_fn: Optional[Callable] = None, post_cfg_functions: Sequence[Callable] = ()) -> None:
        if not positive:
            raise ValueError("CFGGuider: the positive conditioning is empty; connect a text encoder's output")
        self.denoiser = denoiser
        self.positive, self.negative = list(positive), (list(negative) if negative is not None else None)
        self.cfg = float(cfg)
        self.model_sampling = model_sampling if model_sampling is not None else getattr(denoiser, "model_sampling", None)
        self.y_fn = y_fn
        self.post_cfg_functions = tuple(post_cfg_functions)

    def percent_to_sigma(self, percent: float) -> float:
        if self.model_sampling is None:
            return 999999999.9 if percent <= 0 else (0.0 if percent >= 1 else math.nan)
        return self.model_sampling.percent_to_sigma(percent)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, post_cfg_functions: Sequence[Callable] = (), disable_cfg1_optimization: bool = False, **model_kwargs: Any) -> torch.Tensor:
        skip_uncond = self.negative is None or (math.isclose(self.cfg, 1.0) and not disable_cfg1_optimization)
        uncond = None if skip_uncond else self.negative
        cond_pred, uncond_pred = calc_cond_batch(self.denoiser, [self.positive, uncond], x, sigma, self.percent_to_sigma, self.y_fn, **model_kwargs)
        if uncond_pred is None:
            denoised = cond_pred
        else:
            denoised = uncond_pred + (cond_pred - uncond_pred) * self.cfg
        hooks = self.post_cfg_functions + tuple(post_cfg_functions)
        for hook in hooks:
            denoised = hook({
                "denoised": denoised,
                "cond_denoised": cond_pred,
                "uncond_denoised": uncond_pred if uncond_pred is not None else cond_pred,
                "cond_scale": self.cfg,
                "sigma": sigma,
                "input": x,
            })
        return denoised


class BasicGuider(CFGGuider):
    """The GUIDER of BasicGuider: conditioned prediction only (no negative, no CFG)."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], conditioning: Sequence[Cond], model_sampling: Any = None, y_fn: Optional[Callable] = None) -> None:
        super().__init__(denoiser, conditioning, None, 1.0, model_sampling, y_fn)
