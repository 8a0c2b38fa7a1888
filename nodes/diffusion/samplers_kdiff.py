"""Samplers in sigma space: Euler, Heun, DPM-2, LMS, DPM-Solver fast/adaptive, DDPM and LCM.

All share k-diffusion's signature `(model, x, sigmas, extra_args=None, callback=None, disable=None,
**options)`, where `model(x, sigma, **extra_args)` returns the denoised x0 estimate, and call
`callback({'x','i','sigma','sigma_hat','denoised'})` once per step. Where ComfyUI's version differs from
k-diffusion's (e.g. a last step that returns the denoised prediction), ComfyUI's behaviour is kept.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from .samplers_util import get_ancestral_step, noise_or, report, to_d

__all__ = [
    "sample_ddpm",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_heunpp2",
    "sample_lcm",
    "sample_lms",
]


def _churn(x: torch.Tensor, sigmas: torch.Tensor, i: int, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras et al. (2022) Algorithm 2 lines 4-6: raise sigma by gamma and add the matching noise."""
    sigma = sigmas[i]
    if s_churn <= 0 or not (s_tmin <= sigma <= s_tmax):
        return x, sigma
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1)
    sigma_hat = sigma * (gamma + 1)
    return x + torch.randn_like(x) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5, sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler steps of the probability-flow ODE, Karras et al. (2022) Algorithm 2 without the Heun correction."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with Euler steps: Euler to sigma_down, then sigma_up of fresh noise (Ho et al. 2020 in ODE form)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_or(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method, Karras et al. (2022) Algorithm 2 (Euler on the last step to sigma = 0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_pred = x + d * dt
            d_pred = to_d(x_pred, sigmas[i + 1], model(x_pred, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_pred) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun++ (Carzit, sd-webui-samplers-scheduler): slopes at sigma_i, sigma_i+1, sigma_i+2 averaged with weights sigma_k / (3 sigma_0)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_1 = x + d * dt
        d_1 = to_d(x_1, sigmas[i + 1], model(x_1, sigmas[i + 1] * s_in, **extra_args))
        if sigmas[i + 2] == s_end:
            # Two slopes: weight sigma_i+1 / (2 sigma_0) on the predicted one.
            w_1 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w_1) + d_1 * w_1) * dt
            continue
        x_2 = x_1 + d_1 * (sigmas[i + 2] - sigmas[i + 1])
        d_2 = to_d(x_2, sigmas[i + 2], model(x_2, sigmas[i + 2] * s_in, **extra_args))
        w_1, w_2 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w_1 - w_2) * d + w_1 * d_1 + w_2 * d_2) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 in sigma form (Lu et al. 2022 with Karras et al. 2022 Alg. 2): midpoint at the geometric mean sigma."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_mid = x + d * (sigma_mid - sigma_hat)
            d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_mid * s_in, **extra_args))
            x = x + d_mid * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral DPM-Solver-2: the midpoint step to sigma_down, then sigma_up of fresh noise."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_or(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(torch.as_tensor(sigma_down).log(), 0.5).exp()
            x_mid = x + d * (sigma_mid - sigmas[i])
            d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_mid * s_in, **extra_args))
            x = x + d_mid * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lagrange_integral(nodes: list[float], j: int, a: float, b: float) -> float:
    """Integral over [a, b] of the j-th Lagrange basis polynomial on `nodes` (Gauss-Legendre, exact for its degree)."""
    import numpy as np

    points, weights = np.polynomial.legendre.leggauss(max(2, len(nodes)))
    tau = (b - a) / 2 * points + (a + b) / 2
    basis = np.ones_like(tau)
    for k, node in enumerate(nodes):
        if k != j:
            basis *= (tau - node) / (nodes[j] - node)
    return float((b - a) / 2 * np.sum(weights * basis))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth over variable sigma steps, up to `order` past slopes); last step returns D (ComfyUI)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    nodes = [float(s) for s in sigmas]
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        slopes = (slopes + [to_d(x, sigmas[i], denoised)])[-order:]
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur = len(slopes)
        past = [nodes[i - k] for k in range(cur)]  # newest first
        for j in range(cur):
            x = x + _lagrange_integral(past, j, nodes[i], nodes[i + 1]) * slopes[-1 - j]
    return x


class _DPMSolver:
    """DPM-Solver-1/2/3 single steps in t = -log(sigma) with eps = (x - D)/sigma (Lu et al. 2022, arXiv 2206.00927, Alg. 1-2)."""

    def __init__(self, model: Callable, extra_args: dict, on_eval: Optional[Callable[[], None]] = None) -> None:
        self.model, self.extra_args, self.on_eval = model, extra_args, on_eval

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log().neg()

    def eps(self, cache: dict, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = self.sigma(t)
            cache[key] = (x - self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)) / sigma
            if self.on_eval is not None:
                self.on_eval()
        return cache[key]

    def ancestral(self, t, t_next, t_end, eta):
        """(t_down, sigma_up): an ancestral step from t to t_next goes deterministically to t_down, then adds sigma_up of noise."""
        if not eta:
            return t_next, 0.0
        sd, _ = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, self.t(sd))
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5

    def step1(self, x, t, t_next, cache):
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * (t_next - t).expm1() * eps

    def step2(self, x, t, t_next, cache, r1=0.5):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_1 - eps)

    def step3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_1 = self.eps(cache, "eps_r1", u1, s1)
        phi2_s2 = (r2 * h).expm1() / (r2 * h) - 1
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * eps - self.sigma(s2) * (r2 / r1) * phi2_s2 * (eps_1 - eps)
        eps_2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_2 - eps)


def _ends(sigmas: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_min, sigma_max) as ComfyUI passes them: the last sigma, or the one before a final 0."""
    sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
    if sigma_min <= 0 or sigmas[0] <= 0:
        raise ValueError(f"sampler {who!r}: sigmas must be positive except a final 0, got {sigmas.tolist()}")
    return sigma_min, sigmas[0]


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2022, sec. 3.4): len(sigmas)-1 evaluations, uniform in log sigma, orders 3,..,3 then 2/1.

    Only sigma_min and sigma_max of the schedule are used; the result stays at sigma_min (ComfyUI).
    """
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_or(noise_sampler, x)
    sigma_min, sigma_max = _ends(sigmas, "dpm_fast")
    nfe = len(sigmas) - 1
    solver = _DPMSolver(model, extra_args)
    t_start, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        report(callback, x, i, solver.sigma(t), solver.sigma(t), x - solver.sigma(t) * eps)
        step = {1: solver.step1, 2: solver.step2, 3: solver.step3}[order]
        x = step(x, t, t_next_, cache)
        if eta:
            x = x + su * s_noise * noise_sampler(solver.sigma(t), solver.sigma(t_next))
    return x


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None, info=None):
    """DPM-Solver-12/23 with embedded error control and a PID step-size controller (Lu et al. 2022, sec. 4; Söderlind 2003).

    The step count is the controller's, not the schedule's: pass a dict as `info` to get
    {'steps', 'nfe', 'n_accept', 'n_reject'}; the callback also carries them (plus 'error', 'h').
    """
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError(f"sampler 'dpm_adaptive': order must be 2 or 3, got {order}")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_or(noise_sampler, x)
    sigma_min, sigma_max = _ends(sigmas, "dpm_adaptive")
    solver = _DPMSolver(model, extra_args)
    s, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    stats = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0} if info is None else info
    stats.update(steps=0, nfe=0, n_accept=0, n_reject=0)
    # PID controller on the inverse error (b1, b2, b3 per order; order 1.5 for the SDE variant).
    k = 1.5 if eta else order
    b1, b2, b3 = (pcoeff + icoeff + dcoeff) / k, -(pcoeff + 2 * dcoeff) / k, dcoeff / k
    h, inv_errs = abs(h_init), []
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    x_prev = x
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + h)
        t_, su = solver.ancestral(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low, x_high = solver.step1(x, s, t_, cache), solver.step2(x, s, t_, cache)
        else:
            x_low, x_high = solver.step2(x, s, t_, cache, r1=1 / 3), solver.step3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        inv = 1 / (float(error) + 1e-8)
        if not inv_errs:
            inv_errs = [inv, inv, inv]
        inv_errs[0] = inv
        factor = 1 + math.atan(inv_errs[0] ** b1 * inv_errs[1] ** b2 * inv_errs[2] ** b3 - 1)
        accept = factor >= accept_safety
        if accept:
            inv_errs[2], inv_errs[1] = inv_errs[1], inv_errs[0]
        h *= factor
        if accept:
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(solver.sigma(s), solver.sigma(t)) if eta else x_high
            s = t
            stats["n_accept"] += 1
        else:
            stats["n_reject"] += 1
        stats["nfe"] += order
        stats["steps"] += 1
        if callback is not None:
            callback({"x": x, "i": stats["steps"] - 1, "sigma": solver.sigma(s), "sigma_hat": solver.sigma(s), "denoised": denoised, "error": error, "h": h, **stats})
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Ancestral DDPM steps (Ho et al. 2020, eq. 11 posterior mean plus posterior noise) taken in the variance-preserving frame."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_or(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        eps = (x - denoised) / sigma
        abar, abar_next = 1 / (sigma**2 + 1), 1 / (sigma_next**2 + 1)
        alpha = abar / abar_next
        x_vp = x / torch.sqrt(1.0 + sigma**2)
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - abar).sqrt())
        if sigma_next > 0:
            x = x + ((1 - alpha) * (1.0 - abar_next) / (1.0 - abar)).sqrt() * noise_sampler(sigma, sigma_next)
            x = x * torch.sqrt(1.0 + sigma_next**2)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, s_noise=1.0):
    """Latent Consistency Model sampling (Luo et al. 2023, arXiv 2310.04378, Alg. 1): jump to D, re-noise to the next sigma."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_or(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * s_noise * noise_sampler(sigmas[i], sigmas[i + 1])
    return x
