"""Exponential-integrator and multistep samplers: DPM-Solver++ (2S, SDE, 2M, 2M SDE, 3M SDE), iPNDM, DEIS,
RES multistep, gradient estimation, and the CFG++ variants.

k-diffusion's signature throughout; lambda = -log(sigma) is the half log-SNR of a variance-exploding model,
h = lambda_next - lambda the step. The CFG++ samplers (Chung et al. 2024, arXiv 2406.08070) need the
unconditional prediction, which they read through the guider's post-CFG hook (`samplers_util.uncond_tap`).
"""

from __future__ import annotations

import math

import torch

from .samplers_util import brownian_or, get_ancestral_step, noise_or, phi1, report, to_d, uncond_tap

__all__ = [
    "sample_deis",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_cfg_pp",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2m_sde_heun",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler_ancestral_cfg_pp",
    "sample_euler_cfg_pp",
    "sample_gradient_estimation",
    "sample_ipndm",
    "sample_ipndm_v",
    "sample_res_multistep",
    "deis_coefficients",
]


def _lam(sigma):
    return sigma.log().neg()


def _dpmpp_step(x, denoised, lam, lam_next):
    """DPM-Solver++ first-order step from lam to lam_next, the data prediction held fixed (DDIM; Lu et al. 2022, arXiv 2211.01095)."""
    return (lam - lam_next).exp() * x - (lam - lam_next).expm1() * denoised


def _sde_step(x, denoised, sigma, sigma_next, h, eta):
    """DPM-Solver++ first-order SDE step (Lu et al. 2022, sec. 5): x scaled by (sigma_next / sigma) e^(-eta h), D by 1 - e^(-(1 + eta) h)."""
    h_eta = h * (eta + 1)
    return sigma_next / sigma * (-h * eta).exp() * x - (-h_eta).expm1() * denoised


def _sde_noise(noise_sampler, sigma, sigma_next, h, eta, s_noise):
    """The SDE step's exact noise term: sigma_next * sqrt(1 - e^(-2 eta h)) of fresh noise."""
    return noise_sampler(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022, arXiv 2211.01095, Alg. 1 single-step, r = 1/2) to sigma_down, plus noise."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_or(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            lam, lam_next = _lam(sigmas[i]), _lam(torch.as_tensor(sigma_down))
            lam_mid = lam + (lam_next - lam) / 2
            x_mid = _dpmpp_step(x, denoised, lam, lam_mid)
            denoised_mid = model(x_mid, lam_mid.neg().exp() * s_in, **extra_args)
            x = _dpmpp_step(x, denoised_mid, lam, lam_next)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, r=0.5):
    """Stochastic DPM-Solver++ (2-stage, k-diffusion): ancestral noise at the intermediate point and the step end (Brownian tree)."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = brownian_or(noise_sampler, x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam, lam_next = _lam(sigmas[i]), _lam(sigmas[i + 1])
        h = lam_next - lam
        sigma_mid = (lam + h * r).neg().exp()
        # Stage 1: ancestral step to the intermediate sigma.
        sd, su = get_ancestral_step(sigmas[i], sigma_mid, eta)
        x_2 = _dpmpp_step(x, denoised, lam, _lam(torch.as_tensor(sd)))
        x_2 = x_2 + noise_sampler(sigmas[i], sigma_mid) * s_noise * su
        denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
        # Stage 2: the full step with the r-weighted blend of both predictions.
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        fac = 1 / (2 * r)
        blend = (1 - fac) * denoised + fac * denoised_2
        x = _dpmpp_step(x, blend, lam, _lam(torch.as_tensor(sd)))
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2); first and last steps first order."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        lam, lam_next = _lam(sigmas[i]), _lam(sigmas[i + 1])
        h = lam_next - lam
        if old_denoised is None or sigmas[i + 1] == 0:
            blend = denoised
        else:
            r = (lam - _lam(sigmas[i - 1])) / h
            blend = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * blend
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (k-diffusion; Lu et al. 2022 sec. 5 with the SDE's exact noise term); 'midpoint' or 'heun' correction."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"sampler 'dpmpp_2m_sde': solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = brownian_or(noise_sampler, x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            h_eta = h * (eta + 1)
            x = _sde_step(x, denoised, sigmas[i], sigmas[i + 1], h, eta)
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x - 0.5 * (-h_eta).expm1() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + _sde_noise(noise_sampler, sigmas[i], sigmas[i + 1], h, eta, s_noise)
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2M) SDE with the Heun-type correction."""
    return sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type="heun")


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(3M) SDE (k-diffusion): third-order multistep with phi_2, phi_3 corrections and exact SDE noise."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = brownian_or(noise_sampler, x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    d_1, d_2 = None, None  # the last two denoised predictions
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
            h_eta = h * (eta + 1)
            x = _sde_step(x, denoised, sigmas[i], sigmas[i + 1], h, eta)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                slope_0 = (denoised - d_1) / r0
                slope_1 = (d_1 - d_2) / r1
                first = slope_0 + (slope_0 - slope_1) * r0 / (r0 + r1)
                second = (slope_0 - slope_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * first - phi_3 * second
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if eta > 0 and s_noise > 0:
                x = x + _sde_noise(noise_sampler, sigmas[i], sigmas[i + 1], h, eta, s_noise)
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023, DEIS paper, arXiv 2204.13902): fixed Adams-Bashforth weights up to 4th order in sigma."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    weights = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    history: list[torch.Tensor] = []  # newest last
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        order = min(max_order, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        else:
            slopes = [d] + history[::-1][: order - 1]
            x_next = x + (sigmas[i + 1] - sigmas[i]) * sum(w * s for w, s in zip(weights[order], slopes))
        history = (history + [d])[-(max_order - 1):] if max_order > 1 else []
        x = x_next
    return x


def _ipndm_v_weights(h: list, order: int) -> list:
    """Variable-step Adams-Bashforth weights of iPNDM-v for steps h = [h_n, h_n-1, h_n-2, h_n-3] (zju-pi/diff-sampler)."""
    h0 = h[0]
    if order == 1:
        return [1.0]
    h1 = h[1]
    if order == 2:
        return [(2 + h0 / h1) / 2, -(h0 / h1) / 2]
    h2 = h[2]
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [(2 + h0 / h1) / 2 + t1, -(h0 / h1) / 2 - (1 + h1 / h2) * t1, t1 * h1 / h2]
    h3 = h[3]
    t2 = ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2))) * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [
        (2 + h0 / h1) / 2 + t1 + t2,
        -(h0 / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2,
        t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2,
        -t2 * q * h1 / h2,
    ]


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with variable-step Adams-Bashforth weights (Zhou et al. 2024, diff-sampler's iPNDM-v)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        order = min(max_order, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        else:
            steps = [sigmas[i + 1 - k] - sigmas[i - k] for k in range(order)]  # h_n, h_n-1, ... (negative)
            weights = _ipndm_v_weights(steps, order)
            slopes = [d] + history[::-1][: order - 1]
            x_next = x + (sigmas[i + 1] - sigmas[i]) * sum(w * s for w, s in zip(weights, slopes))
        history = (history + [d])[-(max_order - 1):] if max_order > 1 else []
        x = x_next
    return x


def _edm_to_vp_time(sigmas: torch.Tensor, eps_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: float = 80.0):
    """Map sigmas to the VP-SDE time t of a linear-beta schedule fitted to (sigma_min, sigma_max) (diff-sampler's edm2t)."""
    s = sigmas.detach().cpu().double()
    beta_d = 2 * (math.log(sigma_min**2 + 1) / eps_s - math.log(sigma_max**2 + 1)) / (eps_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * (s**2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_coefficients(sigmas: torch.Tensor, max_order: int = 3, n: int = 10000) -> list[list[float]]:
    """DEIS "tAB" coefficients (Zhang & Chen 2023, arXiv 2204.13902, eq. 15): integrals of dsigma/dt times Lagrange bases in VP time.

    As ComfyUI (via diff-sampler), each integral is a sum over n equally spaced nodes (endpoints included)
    times (t_next - t)/n, so that the numbers agree with ComfyUI's.
    """
    t, b0, b1 = _edm_to_vp_time(sigmas)
    coeffs: list[list[float]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), n, dtype=torch.float64)
        dtau = (t[i + 1] - t[i]) / n
        # alphabar(t) = exp(-t^2 (b1 - b0)/2 - t b0); dsigma/dt = -(dlog alphabar/dt) / (2 sqrt(alphabar (1 - alphabar))).
        alpha = torch.exp(-0.5 * taus**2 * (b1 - b0) - taus * b0)
        dlog_alpha = -taus * (b1 - b0) - b0
        integrand = -0.5 * dlog_alpha / torch.sqrt(alpha * (1 - alpha))
        prev = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - prev[k]) / (prev[j] - prev[k])
            row.append(float(torch.sum(integrand * basis) * dtau))
        coeffs.append(row)
    return coeffs


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3):
    """DEIS multistep (Zhang & Chen 2023, arXiv 2204.13902): polynomial extrapolation of eps in VP time, integrated exactly in sigma."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    coeffs = deis_coefficients(sigmas, max_order)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        order = min(max_order, i + 1)
        if sigmas[i + 1] <= 0:
            order = 1
        if order == 1:
            x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            slopes = [d] + history[::-1][: order - 1]
            x_next = x + sum(c * s for c, s in zip(coeffs[i], slopes))
        history = (history + [d])[-(max_order - 1):] if max_order > 1 else []
        x = x_next
    return x


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None, eta=0.0, cfg_pp=False):
    """RES second-order multistep (Zhang et al. 2023, arXiv 2308.02157, eq. 7 with phi_1, phi_2); first step Euler."""
    tap = uncond_tap()
    extra_args = tap.install(model, extra_args) if cfg_pp else ({} if extra_args is None else extra_args)
    noise_sampler = noise_or(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, old_sigma_down = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        guide = tap.get(denoised) if cfg_pp else denoised
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        sigma_down = torch.as_tensor(sigma_down)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], guide) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            lam, lam_old, lam_next, lam_prev = _lam(sigmas[i]), _lam(old_sigma_down), _lam(sigma_down), _lam(sigmas[i - 1])
            h = lam_next - lam
            c2 = (lam_prev - lam_old) / h
            p1 = phi1(-h)
            p2 = (p1 - 1.0) / (-h)
            b1 = torch.nan_to_num(p1 - p2 / c2, nan=0.0)
            b2 = torch.nan_to_num(p2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - guide)
            x = (-h).exp() * x + h * (b1 * guide + b2 * old_denoised)
        if sigmas[i + 1] > 0 and eta:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = guide, sigma_down
    return x


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0, cfg_pp=False):
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and improving diffusion models from an optimization perspective"): d <- gamma d + (1-gamma) d_prev."""
    tap = uncond_tap()
    extra_args = tap.install(model, extra_args) if cfg_pp else ({} if extra_args is None else extra_args)
    s_in = x.new_ones([x.shape[0]])
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], tap.get(denoised) if cfg_pp else denoised)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """CFG++ ancestral Euler (Chung et al. 2024, arXiv 2406.08070, Alg. 2): renoise with the unconditional prediction."""
    tap = uncond_tap()
    extra_args = tap.install(model, extra_args)
    noise_sampler = noise_or(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        d = to_d(x, sigmas[i], tap.get(denoised))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + d * sigma_down
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """CFG++ Euler (Chung et al. 2024, Alg. 1): x' = D_cfg + sigma' * (x - D_uncond) / sigma."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """CFG++ DPM-Solver++(2M) (Chung et al. 2024): the 2M step renoised with the unconditional prediction."""
    tap = uncond_tap()
    extra_args = tap.install(model, extra_args)
    s_in = x.new_ones([x.shape[0]])
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        uncond = tap.get(denoised)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = _lam(sigmas[i + 1]) - _lam(sigmas[i])
        decay = torch.exp(-h)
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -decay * uncond
        else:
            r = (_lam(sigmas[i]) - _lam(sigmas[i - 1])) / h
            mix = -decay * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + decay * x
        old_uncond = uncond
    return x
