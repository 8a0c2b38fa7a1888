"""The sampler registry: ComfyUI's sampler names -> `Sampler` objects (function + options), with seeding,
progress, evaluation counting and interrupts.

A `Sampler` is what a SAMPLER socket carries (KSamplerSelect). `Sampler.sample(model, x, sigmas, ...)`
seeds the default noise as ComfyUI does (ancestral: a CPU generator at seed + 1; SDE: a Brownian tree at
seed), calls `callback` once per step, checks `should_stop()` between steps (raising `SamplingInterrupted`),
and counts model evaluations in `info['nfe']`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .noise import BrownianTreeNoiseSampler, default_noise_sampler
from .samplers_kdiff import (
    sample_ddpm,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpm_adaptive,
    sample_dpm_fast,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_heunpp2,
    sample_lcm,
    sample_lms,
)
from .samplers_multistep import (
    sample_deis,
    sample_dpmpp_2m,
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
    sample_gradient_estimation,
    sample_ipndm,
    sample_ipndm_v,
    sample_res_multistep,
)
from .samplers_unipc import sample_uni_pc, sample_uni_pc_bh2

__all__ = [
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "Sampler",
    "SamplingInterrupted",
    "UnknownSamplerError",
    "get_sampler",
]


class SamplingInterrupted(RuntimeError):
    """Sampling was stopped between two steps because `should_stop()` returned True."""


class UnknownSamplerError(KeyError):
    """A sampler name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Sampler:
    """A named sampler function with its fixed options.

    noise: which default noise sampler a seed builds ("none", "randn" or "brownian").
    discard_penultimate_sigma: KSampler computes steps+1 sigmas and drops the second to last.
    uses_uncond: a CFG++ sampler that reads the unconditional prediction (cfg=1 still runs both passes).
    random_inpaint_noise: ComfyUI's "ddim" re-noises the kept region with noise seeded at seed + 1.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    options: dict = field(default_factory=dict)
    noise: str = "none"
    discard_penultimate_sigma: bool = False
    uses_uncond: bool = False
    random_inpaint_noise: bool = False

    def __call__(self, model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Run in k-diffusion's signature with the fixed options (so a Sampler is also a plain sampler function)."""
        return self.fn(model, x, sigmas, **{**self.options, **kwargs})

    def with_options(self, **options: Any) -> "Sampler":
        """A copy with more fixed options (e.g. eta, s_noise, order)."""
        return Sampler(self.name, self.fn, {**self.options, **options}, self.noise, self.discard_penultimate_sigma, self.uses_uncond, self.random_inpaint_noise)

    def sample(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigmas: torch.Tensor,
        extra_args: Optional[dict] = None,
        callback: Optional[Callable[[dict], Any]] = None,
        seed: Optional[int] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        info: Optional[dict] = None,
        **options: Any,
    ) -> torch.Tensor:
        """Run the sampler from x (already noised to sigmas[0]) along sigmas; returns the final x."""
        if len(sigmas) <= 1:
            return x
        opts = {**self.options, **options}
        accepted = inspect.signature(self.fn).parameters
        if "noise_sampler" in accepted and opts.get("noise_sampler") is None and seed is not None:
            if self.noise == "brownian":
                positive = sigmas[sigmas > 0]
                opts["noise_sampler"] = BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=seed)
            elif self.noise == "randn":
                opts["noise_sampler"] = default_noise_sampler(x, seed)
        unknown = set(opts) - set(accepted)
        if unknown:
            raise TypeError(f"sampler {self.name!r} has no option(s) {sorted(unknown)}; it takes {sorted(p for p in accepted if p not in ('model', 'x', 'sigmas', 'extra_args', 'callback', 'disable'))}")
        stats = {"nfe": 0} if info is None else info
        stats["nfe"] = 0
        counted = _Counting(model)
        if "info" in accepted and "info" not in opts:
            opts["info"] = stats

        def step(payload: dict) -> None:
            if should_stop is not None and should_stop():
                raise SamplingInterrupted(f"sampler {self.name!r} interrupted at step {payload.get('i', '?')}")
            if callback is not None:
                callback(payload)

        wrapped = step if (callback is not None or should_stop is not None) else None
        result = self.fn(counted, x, sigmas, extra_args=extra_args, callback=wrapped, disable=True, **opts)
        stats["nfe"] = counted.count  # model evaluations actually made (dpm_adaptive's own count agrees)
        return result


class _Counting:
    """A model wrapper counting evaluations; it keeps the wrapped model's post-CFG support visible."""

    def __init__(self, model: Callable[..., torch.Tensor]) -> None:
        self.model, self.count = model, 0
        self.supports_post_cfg = getattr(model, "supports_post_cfg", False)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.count += 1
        return self.model(x, sigma, **kwargs)


def _s(name: str, fn: Callable, noise: str = "none", **flags: Any) -> Sampler:
    return Sampler(name, fn, noise=noise, **flags)


# ComfyUI's KSAMPLER_NAMES order (those implemented), then ddim, uni_pc, uni_pc_bh2 as SAMPLER_NAMES.
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in [
        _s("euler", sample_euler),
        _s("euler_cfg_pp", sample_euler_cfg_pp, uses_uncond=True),
        _s("euler_ancestral", sample_euler_ancestral, "randn"),
        _s("euler_ancestral_cfg_pp", sample_euler_ancestral_cfg_pp, "randn", uses_uncond=True),
        _s("heun", sample_heun),
        _s("heunpp2", sample_heunpp2),
        _s("dpm_2", sample_dpm_2, discard_penultimate_sigma=True),
        _s("dpm_2_ancestral", sample_dpm_2_ancestral, "randn", discard_penultimate_sigma=True),
        _s("lms", sample_lms),
        _s("dpm_fast", sample_dpm_fast, "randn"),
        _s("dpm_adaptive", sample_dpm_adaptive, "randn"),
        _s("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral, "randn"),
        _s("dpmpp_sde", sample_dpmpp_sde, "brownian"),
        _s("dpmpp_2m", sample_dpmpp_2m),
        _s("dpmpp_2m_cfg_pp", sample_dpmpp_2m_cfg_pp, uses_uncond=True),
        _s("dpmpp_2m_sde", sample_dpmpp_2m_sde, "brownian"),
        _s("dpmpp_2m_sde_heun", sample_dpmpp_2m_sde_heun, "brownian"),
        _s("dpmpp_3m_sde", sample_dpmpp_3m_sde, "brownian"),
        _s("ddpm", sample_ddpm, "randn"),
        _s("lcm", sample_lcm, "randn"),
        _s("ipndm", sample_ipndm),
        _s("ipndm_v", sample_ipndm_v),
        _s("deis", sample_deis),
        _s("res_multistep", sample_res_multistep, "randn"),
        _s("res_multistep_cfg_pp", sample_res_multistep, "randn", uses_uncond=True).with_options(cfg_pp=True),
        _s("gradient_estimation", sample_gradient_estimation),
        _s("gradient_estimation_cfg_pp", sample_gradient_estimation, uses_uncond=True).with_options(cfg_pp=True),
        _s("ddim", sample_euler, random_inpaint_noise=True),
        _s("uni_pc", sample_uni_pc, discard_penultimate_sigma=True),
        _s("uni_pc_bh2", sample_uni_pc_bh2, discard_penultimate_sigma=True),
    ]
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
DISCARD_PENULTIMATE_SIGMA_SAMPLERS: frozenset[str] = frozenset(n for n, s in SAMPLERS.items() if s.discard_penultimate_sigma)


def get_sampler(name: str, samplers: Optional[dict] = None, **options: Any) -> Sampler:
    """The registered sampler (KSamplerSelect), optionally with extra fixed options; a clear error for unknown names."""
    registry = SAMPLERS if samplers is None else samplers
    if name not in registry:
        raise UnknownSamplerError(f"unknown sampler {name!r}; choose one of: {', '.join(registry)}")
    sampler = registry[name]
    if not isinstance(sampler, Sampler):
        sampler = Sampler(name, sampler)  # a plugin may register a bare k-diffusion-style function
    return sampler.with_options(**options) if options else sampler
