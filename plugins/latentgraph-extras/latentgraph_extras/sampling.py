"""A sampler and noise schedules in k-diffusion's form, plus the schedule nodes that expose them.

Samplers take `(model, x, sigmas, extra_args=None, callback=None, disable=None)` and schedules give
n + 1 decreasing sigmas ending in 0, so the built-in KSampler, SamplerCustom and BasicScheduler use
them by name once the plugin registers them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from engine import SIGMAS, Input, Node, NodeContext, Output

__all__ = [
    "sample_ralston",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "fit_vp",
    "vp_scheduler",
    "PolyexponentialScheduler",
    "VPScheduler",
    "NODES",
]


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _check_steps(n: int) -> None:
    if n < 1:
        raise ValueError(f"a schedule needs at least 1 step, got {n}")


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0,
                               device: Any = "cpu") -> torch.Tensor:
    """Polynomial in log sigma (Karras et al. 2022, as k-diffusion); rho = 1 is the exponential schedule."""
    _check_steps(n)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(1, 0, n, device=device, dtype=torch.float64) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return _append_zero(sigmas.float())


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3,
                  device: Any = "cpu") -> torch.Tensor:
    """The continuous VP schedule (Song et al. 2021, as k-diffusion): sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    _check_steps(n)
    t = torch.linspace(1, eps_s, n, device=device, dtype=torch.float64)
    sigmas = torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    return _append_zero(sigmas.float())


def fit_vp(sigma_min: float, sigma_max: float, beta_min: float = 0.1) -> tuple[float, float]:
    """(beta_d, eps_s) of the VP schedule that starts at sigma_max (t = 1) and ends at sigma_min (t = eps_s)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    beta_d = 2 * (math.log1p(sigma_max**2) - beta_min)
    if beta_d <= 0:
        raise ValueError(f"sigma_max={sigma_max} is too small for beta_min={beta_min}; lower beta_min")
    # beta_d / 2 t^2 + beta_min t - log(1 + sigma_min^2) = 0, the positive root
    c = math.log1p(sigma_min**2)
    eps_s = (-beta_min + math.sqrt(beta_min**2 + 2 * beta_d * c)) / beta_d
    return beta_d, eps_s


def vp_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """The `vp` named scheduler: a VP schedule fitted to the model's sigma range."""
    sigma_min, sigma_max = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    beta_d, eps_s = fit_vp(sigma_min, sigma_max)
    return get_sigmas_vp(steps, beta_d, 0.1, eps_s)


@torch.no_grad()
def sample_ralston(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                   extra_args: dict[str, Any] | None = None, callback: Callable[[dict[str, Any]], Any] | None = None,
                   disable: bool | None = None) -> torch.Tensor:
    """Ralston's second-order Runge-Kutta method (Ralston 1962), the RK2 of least error bound, on the PF-ODE."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        d = (x - denoised) / sigma
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        dt = sigma_next - sigma
        if sigma_next == 0:  # the model cannot be evaluated at sigma 0: the last step is Euler's
            x = x + d * dt
            continue
        sigma_2 = sigma + dt * 2 / 3
        x_2 = x + d * (dt * 2 / 3)
        d_2 = (x_2 - model(x_2, sigma_2 * s_in, **extra_args)) / sigma_2
        x = x + dt * (d / 4 + d_2 * 3 / 4)
    return x


class PolyexponentialScheduler(Node):
    """Sigmas spaced as a polynomial in log sigma; rho = 1 is the exponential schedule."""

    category = "sampling/custom_sampling/schedulers"
    outputs = (Output(SIGMAS),)

    steps: int = Input(20, ge=1, le=10000)
    sigma_max: float = Input(14.614642, ge=0.0, le=5000.0, step=0.01, round=False)
    sigma_min: float = Input(0.0291675, ge=0.0, le=5000.0, step=0.01, round=False)
    rho: float = Input(1.0, ge=0.0, le=100.0, step=0.01, round=False)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (get_sigmas_polyexponential(self.steps, self.sigma_min, self.sigma_max, self.rho),)


class VPScheduler(Node):
    """The continuous variance-preserving schedule of Song et al. 2021."""

    category = "sampling/custom_sampling/schedulers"
    outputs = (Output(SIGMAS),)

    steps: int = Input(20, ge=1, le=10000)
    beta_d: float = Input(19.9, ge=0.0, le=5000.0, step=0.01, round=False)
    beta_min: float = Input(0.1, ge=0.0, le=5000.0, step=0.01, round=False)
    eps_s: float = Input(0.001, ge=0.0, le=1.0, step=0.0001, round=False)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (get_sigmas_vp(self.steps, self.beta_d, self.beta_min, self.eps_s),)


NODES = (PolyexponentialScheduler, VPScheduler)
