"""UniPC: unified predictor-corrector multistep solver (Zhao et al. 2023, arXiv 2302.04867), data prediction, B(h) variants bh1/bh2.

Run as ComfyUI runs it: in the variance-preserving frame x_vp = x / sqrt(1 + sigma^2), with order
min(3, steps - 1), lower orders for the last steps, no corrector on the last step, and a final sigma of 0
replaced by 0.001 (the output stays at sigma 0.001). The marginal alpha, std and lambda are computed with
ComfyUI's float formulas (`SigmaConvert`), which matters at sigma = 0.001, so that images agree with ComfyUI's.
"""

from __future__ import annotations

import torch

from .samplers_util import report

__all__ = ["sample_uni_pc", "sample_uni_pc_bh2"]


def _log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / (sigma * sigma + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR log(alpha/std) (= -log sigma up to float rounding)."""
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _bh_update(data_fn, x, hist_d, hist_s, sigma_t, order, variant, use_corrector):
    """One UniPC step of the given order from hist_s[-1] to sigma_t (UniP predictor, then UniC corrector when asked)."""
    sigma_p, d_0 = hist_s[-1], hist_d[-1]
    lam_p, lam_t = _lambda(sigma_p), _lambda(sigma_t)
    h = lam_t - lam_p
    rks, diffs = [], []
    for k in range(1, order):
        rk = (_lambda(hist_s[-(k + 1)]) - lam_p) / h
        rks.append(rk)
        diffs.append((hist_d[-(k + 1)] - d_0) / rk)
    rks = torch.stack(rks + [torch.ones_like(h)])
    hh = -h  # data prediction integrates towards decreasing noise
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, rhs = [], []
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r, b = torch.stack(rows), torch.stack(rhs)
    alpha_t = _alpha(sigma_t)
    x_base = (_std(sigma_t) / _std(sigma_p)) * x - alpha_t * h_phi_1 * d_0
    pred = 0
    if diffs:
        rhos_p = torch.tensor([0.5], dtype=b.dtype) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1])
        pred = sum(rho * diff for rho, diff in zip(rhos_p, diffs))
    x_t = x_base - alpha_t * b_h * pred
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5], dtype=b.dtype) if order == 1 else torch.linalg.solve(big_r, b)
    d_t = data_fn(x_t, sigma_t)
    corr = sum(rho * diff for rho, diff in zip(rhos_c[:-1], diffs)) if diffs else 0
    return x_base - alpha_t * b_h * (corr + rhos_c[-1] * (d_t - d_0)), d_t


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1"):
    """UniPC multistep, data prediction, order up to 3 (Zhao et al. 2023, Alg. 2-3); variant 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"sampler 'uni_pc': variant must be 'bh1' or 'bh2', got {variant!r}")
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    ts = sigmas.clone()
    if ts[-1] < 0.001:
        ts[-1] = 0.001
    steps = len(ts) - 1
    order = min(3, steps - 1)
    state = {"i": 0}

    def data_fn(x_vp, sigma):
        x_k = x_vp / _alpha(sigma)
        denoised = model(x_k, sigma * s_in, **extra_args)
        report(callback, x_k, state["i"], sigma, sigma, denoised)
        state["i"] += 1
        return denoised

    x = x / torch.sqrt(1.0 + ts[0] ** 2)
    hist_d, hist_s = [data_fn(x, ts[0])], [ts[0]]
    if steps == 1:
        # ComfyUI would not move at all with one step; take the first-order (DPM-Solver++ 1) step instead.
        x, _ = _bh_update(data_fn, x, hist_d, hist_s, ts[1], 1, variant, use_corrector=False)
        return x / _alpha(ts[-1])
    for step_index in range(1, steps):
        if step_index < order:
            # Warm-up: lower-order steps, each with its corrector evaluation.
            x, d = _bh_update(data_fn, x, hist_d, hist_s, ts[step_index], step_index, variant, use_corrector=True)
            hist_d, hist_s = hist_d + [d], hist_s + [ts[step_index]]
            continue
        last = step_index + (1 if step_index == steps - 1 else 0)
        for step in range(step_index, last + 1):
            step_order = min(order, steps + 1 - step)
            x, d = _bh_update(data_fn, x, hist_d, hist_s, ts[step], step_order, variant, use_corrector=step != steps)
            hist_s = (hist_s + [ts[step]])[-order:]
            if step < steps:
                hist_d = (hist_d + [d])[-order:]
    return x / _alpha(ts[-1])


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC with B(h) = e^h - 1 (the bh2 variant, better for guided sampling per the paper)."""
    return sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant="bh2")
