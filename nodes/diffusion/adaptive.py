"""An adaptive noise schedule: place the steps where this model, on this latent and conditioning, changes its mind.

Rule (derived here). Exponential-integrator samplers (DPM-Solver++, DDIM) solve the probability-flow ODE in
lambda = -log(sigma) exactly except for the data prediction D(lambda) along the path, which a p-th order
method replaces by a polynomial of degree p - 1. A step of length h then errs by about
c * h^(p+1) * ||D^(p)(lambda)|| (Lu et al. 2022, arXiv 2211.01095, sec. 3), and the total error
sum_i h_i^(p+1) ||D^(p)_i|| under the budget sum_i h_i = lambda_end - lambda_start is smallest when
h_i^p ||D^(p)_i|| is the same for every step (Lagrange), i.e. when the step density in lambda is

    rho(lambda) ∝ ||D^(p)(lambda)||^(1/p),

the equidistribution principle of adaptive meshes (de Boor 1973, "Good approximation by splines with
variable knots"; Ascher, Mattheij & Russell 1995, sec. 9.3). With p = 1 every step covers the same change
of the prediction ∫||dD/dlambda||; p = 2 (the default, matching the second-order DPM-Solver++(2M))
equidistributes ∫||d²D/dlambda²||^(1/2).

The derivatives come from a pilot pass: `pilot_steps` model evaluations along a coarse DPM-Solver++(2M)
trajectory on a log-uniform grid, from the actual starting latent with the actual guider. Finite
differences of the recorded predictions give ||D^(p)|| per pilot interval; a `floor` share of uniform
density keeps every region sampled, and the cumulative density is inverted to place `steps` sigmas between
sigma_max and sigma_min (then 0), like the other schedules. The final run's evaluations are the sampler's;
the pilot's cost is reported separately in `AdaptiveSchedule.pilot_evals`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .schedules import get_sigmas_exponential

__all__ = ["AdaptiveSchedule", "get_sigmas_adaptive", "density_to_sigmas"]


@dataclass(frozen=True)
class AdaptiveSchedule:
    """The schedule (steps+1 sigmas ending in 0), the pilot grid, its per-interval density and the pilot's cost."""

    sigmas: torch.Tensor
    pilot_sigmas: torch.Tensor
    density: torch.Tensor
    pilot_evals: int


def density_to_sigmas(pilot_sigmas: torch.Tensor, density: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` sigmas from pilot_sigmas[0] to pilot_sigmas[-1], equally spaced in the cumulative density over lambda, then 0."""
    lam = -pilot_sigmas.double().log()  # increasing
    mass = density.double() * (lam[1:] - lam[:-1])
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), mass.cumsum(0)])
    if steps == 1:
        return torch.tensor([float(pilot_sigmas[0]), 0.0])
    targets = torch.linspace(0, float(cumulative[-1]), steps, dtype=torch.float64)
    idx = torch.searchsorted(cumulative, targets, right=True).clamp(1, len(cumulative) - 1)
    lo, hi = cumulative[idx - 1], cumulative[idx]
    frac = torch.where(hi > lo, (targets - lo) / (hi - lo), torch.zeros_like(targets))
    lam_new = lam[idx - 1] + frac * (lam[idx] - lam[idx - 1])
    lam_new[0], lam_new[-1] = lam[0], lam[-1]
    sigmas = (-lam_new).exp().float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def get_sigmas_adaptive(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    pilot_steps: int = 12,
    extra_args: Optional[dict] = None,
    order: int = 2,
    floor: float = 0.1,
) -> AdaptiveSchedule:
    """Adaptive schedule from a pilot pass of `pilot_steps` evaluations (see the module docstring for the rule).

    model: `model(x, sigma, **extra_args) -> denoised` (a guider or Denoiser); x: the latent already noised
    to sigma_max (what the sampler will start from).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"adaptive schedule: steps must be an integer >= 1, got {steps!r}")
    if order not in (1, 2):
        raise ValueError(f"adaptive schedule: order must be 1 or 2, got {order!r}")
    if pilot_steps < order + 2:
        raise ValueError(f"adaptive schedule: pilot_steps must be >= {order + 2} for order {order}, got {pilot_steps}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"adaptive schedule: floor must be in [0, 1], got {floor}")
    extra_args = {} if extra_args is None else extra_args
    pilot = get_sigmas_exponential(pilot_steps, sigma_min, sigma_max)[:-1].to(x.device)  # pilot_steps points
    s_in = x.new_ones([x.shape[0]])
    preds = []
    old = None
    for i in range(pilot_steps):
        d = model(x, pilot[i] * s_in, **extra_args)
        preds.append(d.double())
        if i + 1 < pilot_steps:
            # DPM-Solver++(2M) step to the next pilot sigma (first order on the first step).
            h = math.log(float(pilot[i]) / float(pilot[i + 1]))
            blend = d if old is None else (1 + 1 / 2) * d - 0.5 * old  # equal steps: r = 1
            x = (pilot[i + 1] / pilot[i]) * x - math.expm1(-h) * blend
            old = d
    lam = -pilot.double().cpu().log()
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    first = torch.tensor([rms(preds[k + 1] - preds[k]) for k in range(pilot_steps - 1)], dtype=torch.float64) / (lam[1:] - lam[:-1])
    if order == 1:
        rate = first
    else:
        mid = (lam[1:] + lam[:-1]) / 2
        second = torch.tensor([rms((preds[k + 2] - preds[k + 1]) / float(lam[k + 2] - lam[k + 1]) - (preds[k + 1] - preds[k]) / float(lam[k + 1] - lam[k])) for k in range(pilot_steps - 2)], dtype=torch.float64)
        second = second / (mid[1:] - mid[:-1])  # at interior pilot points 1..K-2
        # Per interval: the mean of the estimates at its two ends (one end at the grid's boundary intervals).
        padded = torch.cat([second[:1], second, second[-1:]])
        rate = ((padded[:-1] + padded[1:]) / 2).sqrt()
    rate = rate.clamp_min(1e-12)
    density = (1 - floor) * rate / rate.mean() + floor
    sigmas = density_to_sigmas(pilot.cpu(), density, steps)
    return AdaptiveSchedule(sigmas=sigmas, pilot_sigmas=pilot.cpu(), density=density.float(), pilot_evals=pilot_steps)
