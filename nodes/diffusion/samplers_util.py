"""Shared pieces of the sampler family: the Karras ODE derivative, ancestral steps, noise defaults, progress."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .noise import BrownianTreeNoiseSampler, NoiseSampler

__all__ = [
    "append_dims",
    "brownian_or",
    "get_ancestral_step",
    "noise_or",
    "phi1",
    "report",
    "to_d",
    "uncond_tap",
]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """v with trailing singleton dims up to ndim (so a per-sample sigma broadcasts over x)."""
    v = torch.as_tensor(v)
    return v[(...,) + (None,) * (ndim - v.ndim)]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from: Any, sigma_to: Any, eta: float = 1.0) -> tuple[Any, Any]:
    """Ancestral split of a step: go deterministically to sigma_down, then add sigma_up of fresh noise."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def noise_or(noise_sampler: Optional[NoiseSampler], x: torch.Tensor) -> NoiseSampler:
    """The given noise sampler, or unseeded standard normal noise (callers seed via `Sampler.sample`)."""
    if noise_sampler is not None:
        return noise_sampler
    return lambda sigma, sigma_next: torch.randn_like(x)


def brownian_or(noise_sampler: Optional[NoiseSampler], x: torch.Tensor, sigmas: torch.Tensor) -> NoiseSampler:
    """The given noise sampler, or an unseeded Brownian tree over the schedule's (positive) sigma range."""
    if noise_sampler is not None:
        return noise_sampler
    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(x, positive.min(), sigmas.max())


def report(callback: Optional[Callable[[dict], Any]], x: torch.Tensor, i: int, sigma: Any, sigma_hat: Any, denoised: torch.Tensor) -> None:
    """Call the per-step progress callback with k-diffusion's dict."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


class uncond_tap:
    """Captures the unconditional prediction through the guider's post-CFG hook (for CFG++ samplers).

    `extra_args = tap.install(model, extra_args)`; after each model call `tap.value` holds the
    uncond denoised (or the guided one when the model has no guidance, which makes CFG++ plain).
    """

    def __init__(self) -> None:
        self.value: Optional[torch.Tensor] = None
        self.enabled = False

    def _hook(self, args: dict) -> torch.Tensor:
        self.value = args["uncond_denoised"]
        return args["denoised"]

    def install(self, model: Any, extra_args: Optional[dict]) -> dict:
        extra_args = {} if extra_args is None else dict(extra_args)
        if getattr(model, "supports_post_cfg", False):
            self.enabled = True
            extra_args["post_cfg_functions"] = tuple(extra_args.get("post_cfg_functions", ())) + (self._hook,)
            extra_args["disable_cfg1_optimization"] = True
        return extra_args

    def get(self, denoised: torch.Tensor) -> torch.Tensor:
        """The uncond prediction of the latest call (denoised itself for an unguided model)."""
        return self.value if self.enabled and self.value is not None else denoised


def phi1(z: torch.Tensor) -> torch.Tensor:
    """phi_1(z) = (e^z - 1) / z of exponential integrators."""
    return torch.expm1(z) / z
