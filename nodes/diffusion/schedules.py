"""Noise schedules: n steps -> n+1 decreasing sigmas ending in 0, with ComfyUI's names and numbers.

Two kinds, as in ComfyUI: schedules that read the model's discrete sigma table (simple, normal,
sgm_uniform, ddim_uniform, beta) and closed forms between sigma_min and sigma_max (karras, exponential,
kl_optimal, linear_quadratic, Align Your Steps). `SCHEDULERS` maps ComfyUI's scheduler names to
`fn(model_sampling, steps)`; `basic_scheduler` adds BasicScheduler's denoise rule; `split_sigmas` and
`split_sigmas_denoise` are SplitSigmas / SplitSigmasDenoise.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "AYS_NOISE_LEVELS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "UnknownSchedulerError",
    "align_your_steps",
    "basic_scheduler",
    "calculate_sigmas",
    "get_sigmas_ays",
    "get_sigmas_beta",
    "get_sigmas_ddim_uniform",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_kl_optimal",
    "get_sigmas_linear_quadratic",
    "get_sigmas_normal",
    "get_sigmas_sgm_uniform",
    "get_sigmas_simple",
    "loglinear_interp",
    "split_sigmas",
    "split_sigmas_denoise",
]


class UnknownSchedulerError(KeyError):
    """A scheduler name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _check_steps(n: int, who: str) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"scheduler {who!r}: steps must be an integer >= 1, got {n!r}")
    return int(n)


# -- closed forms between sigma_min and sigma_max ------------------------------------------------------

def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: Any = "cpu") -> torch.Tensor:
    """Karras et al. (2022) eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    n = _check_steps(n, "karras")
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho).to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device: Any = "cpu") -> torch.Tensor:
    """Sigmas evenly spaced in log sigma (k-diffusion's exponential schedule)."""
    n = _check_steps(n, "exponential")
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()).to(device)


def get_sigmas_kl_optimal(n: int, sigma_min: float, sigma_max: float, device: Any = "cpu") -> torch.Tensor:
    """KL-optimal schedule of Sabour et al. (2024, arXiv 2404.14507): evenly spaced in arctan(sigma)."""
    n = _check_steps(n, "kl_optimal")
    idx = torch.arange(n, dtype=torch.float32)
    u = idx / (n - 1) if n > 1 else idx
    sigmas = (u * math.atan(sigma_min) + (1 - u) * math.atan(sigma_max)).tan()
    return _append_zero(sigmas).to(device)


def get_sigmas_linear_quadratic(n: int, sigma_max: float, threshold_noise: float = 0.025, linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's linear-quadratic schedule (genmo/models): 1 - s, s linear to threshold_noise for n/2 steps, then quadratic to 1."""
    n = _check_steps(n, "linear_quadratic")
    if n == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = n // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * n
        quad_steps = n - linear_steps
        quad_coef = diff / (linear_steps * quad_steps**2)
        lin_coef = threshold_noise / linear_steps - 2 * diff / (quad_steps**2)
        const = quad_coef * linear_steps**2
        quadratic = [quad_coef * i**2 + lin_coef * i + const for i in range(linear_steps, n)]
        schedule = [1.0 - s for s in linear + quadratic + [1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * float(sigma_max)


# -- schedules over the model's discrete sigma table ---------------------------------------------------

def get_sigmas_simple(model_sampling: Any, n: int) -> torch.Tensor:
    """ComfyUI "simple": every (T/n)-th training sigma from the top, sigma[-(1 + floor(i*T/n))]."""
    n = _check_steps(n, "simple")
    table = model_sampling.sigmas
    stride = len(table) / n
    return _append_zero(torch.stack([table[-(1 + int(i * stride))] for i in range(n)]).float())


def get_sigmas_ddim_uniform(model_sampling: Any, n: int) -> torch.Tensor:
    """DDIM's uniform timesteps: sigma at t = 1 + k*floor(T/n), reversed (so it starts below sigma_max)."""
    n = _check_steps(n, "ddim_uniform")
    table = model_sampling.sigmas
    stride = max(len(table) // n, 1)
    picked = [table[t] for t in range(1, len(table), stride)]
    return _append_zero(torch.stack(picked[::-1]).float())


def _normal(model_sampling: Any, n: int, sgm: bool) -> torch.Tensor:
    start = float(model_sampling.timestep(model_sampling.sigma_max))
    end = float(model_sampling.timestep(model_sampling.sigma_min))
    append_zero = True
    if sgm:
        ts = torch.linspace(start, end, n + 1)[:-1]
    else:
        if math.isclose(float(model_sampling.sigma(torch.tensor(end))), 0.0, abs_tol=1e-5):
            # A model whose last sigma is already 0 ends on it instead of appending another.
            n, append_zero = n + 1, False
        ts = torch.linspace(start, end, n)
    sigmas = torch.stack([model_sampling.sigma(t) for t in ts]).float()
    return _append_zero(sigmas) if append_zero else sigmas


def get_sigmas_normal(model_sampling: Any, n: int) -> torch.Tensor:
    """ComfyUI "normal": timesteps linspace(t(sigma_max), t(sigma_min), n) mapped through sigma(t)."""
    return _normal(model_sampling, _check_steps(n, "normal"), sgm=False)


def get_sigmas_sgm_uniform(model_sampling: Any, n: int) -> torch.Tensor:
    """SGM's uniform discretization: linspace over n+1 timesteps, the last dropped, then 0."""
    return _normal(model_sampling, _check_steps(n, "sgm_uniform"), sgm=True)


def get_sigmas_beta(model_sampling: Any, n: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Beta schedule of Lee et al. (2024, arXiv 2407.12173): timesteps at Beta(alpha, beta) quantiles; repeats dropped."""
    from scipy import stats  # deferred: scipy.stats is slow to import

    n = _check_steps(n, "beta")
    table = model_sampling.sigmas
    total = len(table) - 1
    ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), alpha, beta) * total)
    picked, last = [], -1.0
    for t in ts:
        if t != last:
            picked.append(table[int(t)])
        last = t
    return _append_zero(torch.stack(picked).float())


# -- Align Your Steps ---------------------------------------------------------------------------------

# NVIDIA's published 10-step tables (Sabour et al. 2024, arXiv 2404.14507), as ComfyUI's AlignYourStepsScheduler.
AYS_NOISE_LEVELS: dict[str, list[float]] = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def loglinear_interp(values: list[float] | np.ndarray, num: int) -> np.ndarray:
    """Resample a decreasing list to num points, interpolating log(value) linearly in the index."""
    ys = np.log(np.asarray(values, dtype=np.float64)[::-1])
    new = np.interp(np.linspace(0, 1, num), np.linspace(0, 1, len(ys)), ys)
    return np.exp(new)[::-1].copy()


def get_sigmas_ays(n: int, model_type: str = "SDXL") -> torch.Tensor:
    """Align Your Steps (Sabour et al. 2024): NVIDIA's optimized table, log-linearly resampled to n steps, last set to 0."""
    n = _check_steps(n, "align_your_steps")
    if model_type not in AYS_NOISE_LEVELS:
        raise ValueError(f"align_your_steps: model_type {model_type!r} unknown; use one of {', '.join(AYS_NOISE_LEVELS)}")
    levels = np.asarray(AYS_NOISE_LEVELS[model_type], dtype=np.float64)
    if n + 1 != len(levels):
        levels = loglinear_interp(levels, n + 1)
    levels[-1] = 0.0
    return torch.tensor(levels, dtype=torch.float32)


def align_your_steps(model_type: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """AlignYourStepsScheduler: the n-step table, keeping the last round(steps*denoise)+1 sigmas when denoise < 1."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0)
        total = round(steps * denoise)
    return get_sigmas_ays(steps, model_type)[-(total + 1):]


# -- registry -----------------------------------------------------------------------------------------

def _from_range(fn: Callable[..., torch.Tensor]) -> Callable[[Any, int], torch.Tensor]:
    def scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
        return fn(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))

    scheduler.__doc__ = fn.__doc__
    return scheduler


def _linear_quadratic(model_sampling: Any, steps: int) -> torch.Tensor:
    return get_sigmas_linear_quadratic(steps, float(model_sampling.sigma_max))


# ComfyUI's SCHEDULER_HANDLERS order: the first is KSampler's default.
SCHEDULERS: dict[str, Callable[[Any, int], torch.Tensor]] = {
    "simple": get_sigmas_simple,
    "sgm_uniform": get_sigmas_sgm_uniform,
    "karras": _from_range(get_sigmas_karras),
    "exponential": _from_range(get_sigmas_exponential),
    "ddim_uniform": get_sigmas_ddim_uniform,
    "beta": get_sigmas_beta,
    "normal": get_sigmas_normal,
    "linear_quadratic": _linear_quadratic,
    "kl_optimal": _from_range(get_sigmas_kl_optimal),
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)


def calculate_sigmas(model_sampling: Any, scheduler: str, steps: int, schedulers: dict | None = None) -> torch.Tensor:
    """The n+1 sigmas of a named scheduler (ComfyUI `calculate_sigmas`); `schedulers` overrides the registry."""
    registry = SCHEDULERS if schedulers is None else schedulers
    if scheduler not in registry:
        raise UnknownSchedulerError(f"unknown scheduler {scheduler!r}; choose one of: {', '.join(registry)}")
    return registry[scheduler](model_sampling, steps).float()


def basic_scheduler(model_sampling: Any, scheduler: str, steps: int, denoise: float = 1.0, schedulers: dict | None = None) -> torch.Tensor:
    """BasicScheduler: for denoise < 1 compute int(steps/denoise) steps and keep the last steps+1 sigmas."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0)
        total = int(steps / denoise)
    return calculate_sigmas(model_sampling, scheduler, total, schedulers)[-(steps + 1):]


def split_sigmas(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SplitSigmas: (sigmas[:step+1], sigmas[step:]); both halves hold the split sigma."""
    if step < 0:
        raise ValueError(f"split_sigmas: step must be >= 0, got {step}")
    return sigmas[: step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SplitSigmasDenoise: the low half is the last round(steps*denoise) steps; both halves share the split sigma."""
    steps = max(sigmas.shape[-1] - 1, 0)
    low_steps = round(steps * denoise)
    return split_sigmas(sigmas, steps - low_steps)
