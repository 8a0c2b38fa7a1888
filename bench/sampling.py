"""Sampling benchmarks: the sampler loop's own overhead, and the adaptive schedule's error table.

Run: `python -m bench.sampling [--quick]`. Figures are medians; ratios are against a baseline measured in
the same run (a model that does nothing for the overhead; the `normal` schedule for the error table).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from nodes.diffusion.adaptive import get_sigmas_adaptive
from nodes.diffusion.model_sampling import Denoiser, ModelSamplingDiscrete, ModelSamplingEDM
from nodes.diffusion.samplers import get_sampler
from nodes.diffusion.schedules import calculate_sigmas, get_sigmas_ays, get_sigmas_karras

__all__ = ["GaussianMixtureDenoiser", "TinyEpsNet", "error_table", "loop_overhead", "main"]


class GaussianMixtureDenoiser:
    """The exact denoiser E[x0 | x] of an isotropic Gaussian mixture: sum_k w_k(x) (s_k^2 x + sigma^2 mu_k) / (s_k^2 + sigma^2)."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor) -> None:
        self.means, self.stds, self.log_w = means.double(), stds.double(), weights.double().log()  # (K, D), (K,), (K,)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        shape, b = x.shape, x.shape[0]
        flat = x.reshape(b, -1).double()  # (B, D)
        var = self.stds[None, :] ** 2 + sigma.double().reshape(-1, 1) ** 2  # (B, K)
        dist2 = torch.cdist(flat, self.means) ** 2  # (B, K)
        logits = self.log_w[None] - 0.5 * dist2 / var - 0.5 * flat.shape[1] * var.log()
        w = logits.softmax(dim=1)  # (B, K)
        s2 = (self.stds[None, :] ** 2)[..., None]  # (1, K, 1)
        sig2 = (sigma.double().reshape(-1, 1, 1)) ** 2
        per = (s2 * flat[:, None, :] + sig2 * self.means[None]) / (s2 + sig2)  # (B, K, D)
        return (w[..., None] * per).sum(1).reshape(shape).to(x.dtype)


def gaussian_mixture(dim: int = 64, components: int = 6, seed: int = 0) -> GaussianMixtureDenoiser:
    """A fixed, well-separated mixture on the scale of SDXL latents."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g) * 1.0
    stds = 0.05 + 0.3 * torch.rand(components, generator=g)
    weights = torch.rand(components, generator=g) + 0.5
    return GaussianMixtureDenoiser(means, stds, weights / weights.sum())


class TinyEpsNet(torch.nn.Module):
    """A tiny random UNet-like eps network (conv, timestep embedding, skip) for benchmarks and tests."""

    def __init__(self, channels: int = 4, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.mid = torch.nn.Conv2d(width, width, 3, padding=1)
        self.out = torch.nn.Conv2d(2 * width, channels, 3, padding=1)
        self.temb = torch.nn.Linear(16, width)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(p[0].numel() if p.ndim > 1 else 16)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000) * torch.arange(8, dtype=torch.float32) / 8)
        args = timesteps.float()[:, None] * freqs[None]
        emb = self.temb(torch.cat([args.cos(), args.sin()], dim=1))[:, :, None, None]  # (B, width, 1, 1)
        h = torch.nn.functional.silu(self.inp(x) + emb)
        m = torch.nn.functional.silu(self.mid(h))
        if context is not None:
            m = m + context.mean(dim=(1, 2))[:, None, None, None]
        return self.out(torch.cat([h, m], dim=1))


def _run(model, x, sigmas, sampler="dpmpp_2m"):
    return get_sampler(sampler).sample(model, x.clone(), sigmas)


@torch.no_grad()
def error_table(model, x, ms, evals=(5, 8, 12, 16, 24), sampler="dpmpp_2m", pilot_steps=12, order=2):
    """RMS distance to a 200-step karras reference, per schedule and evaluation budget; plus dpm_adaptive's (nfe, error)."""
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    ref = _run(model, x, get_sigmas_karras(200, smin, smax), sampler)
    rms = lambda a: float((a.double() - ref.double()).pow(2).mean().sqrt())  # noqa: E731
    rows: dict[str, list[float]] = {"karras": [], "normal": [], "ays": [], "adaptive": []}
    adaptive = get_sigmas_adaptive(model, x, 8, smin, smax, pilot_steps=pilot_steps, order=order)  # pilot once
    from nodes.diffusion.adaptive import density_to_sigmas

    for n in evals:
        rows["karras"].append(rms(_run(model, x, get_sigmas_karras(n, smin, smax), sampler)))
        rows["normal"].append(rms(_run(model, x, calculate_sigmas(ms, "normal", n), sampler)))
        rows["ays"].append(rms(_run(model, x, get_sigmas_ays(n, "SDXL"), sampler)))
        rows["adaptive"].append(rms(_run(model, x, density_to_sigmas(adaptive.pilot_sigmas, adaptive.density, n), sampler)))
    adaptive_runs = []
    for rtol in (0.2, 0.05, 0.01):
        info: dict = {}
        out = get_sampler("dpm_adaptive").sample(model, x.clone(), get_sigmas_karras(10, smin, smax), info=info, rtol=rtol, atol=rtol / 6)
        # dpm_adaptive stops at sigma_min: finish with the same final denoise the others take.
        out = model(out, torch.full((x.shape[0],), smin))
        adaptive_runs.append((rtol, info["nfe"] + 1, rms(out)))
    return rows, adaptive_runs, adaptive.pilot_evals


def loop_overhead(steps: int = 50, repeats: int = 7, sampler: str = "euler") -> dict:
    """Per-step time of the sampler loop with a no-op model, and with a fixed matmul workload, in microseconds."""
    x = torch.randn(1, 4, 32, 32)
    weight = torch.randn(256, 256)
    feats = torch.randn(256, 256)

    def noop(x, sigma, **_):
        return x * 0.5

    def work(x, sigma, **_):
        for _ in range(4):
            torch.mm(feats, weight)
        return x * 0.5

    sigmas = get_sigmas_karras(steps, 0.03, 14.6)
    s = get_sampler(sampler)

    def timed(model):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            s.sample(model, x, sigmas)
            times.append((time.perf_counter() - t0) / steps * 1e6)
        return statistics.median(times)

    t0 = time.perf_counter()
    for _ in range(steps * 3):
        work(x, None)
    model_only = (time.perf_counter() - t0) / (steps * 3) * 1e6
    return {"noop_us": timed(noop), "work_us": timed(work), "model_us": model_only}


def _print_table(title, rows, evals, adaptive_runs, pilot):
    print(f"\n{title}: RMS distance to a 200-step reference (dpmpp_2m), by model evaluations; adaptive pilot = {pilot} evals extra")
    print(f"{'schedule':>10} " + " ".join(f"{n:>9d}" for n in evals))
    for name, vals in rows.items():
        print(f"{name:>10} " + " ".join(f"{v:9.2e}" for v in vals))
    ratio = [a / b for a, b in zip(rows["adaptive"], rows["normal"])]
    print(f"{'adapt/norm':>10} " + " ".join(f"{r:9.2f}" for r in ratio))
    print("dpm_adaptive (rtol, evaluations incl. final denoise, error): " + ", ".join(f"({r}, {n}, {e:.2e})" for r, n, e in adaptive_runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.manual_seed(0)
    ms = ModelSamplingDiscrete()
    evals = (5, 8, 12, 16, 24)

    gmm = gaussian_mixture()
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1)).reshape(256, 1, 8, 8) * float(ms.sigma_max)
    rows, runs, pilot = error_table(gmm, x, ms, evals)
    _print_table("(a) analytic Gaussian mixture (64-d, 6 components, 256 samples)", rows, evals, runs, pilot)

    # Continuous timestep input (c_noise = ln(sigma)/4) keeps the ODE smooth, so the reference converges.
    net = Denoiser(TinyEpsNet().eval(), ModelSamplingEDM("eps", float(ms.sigma_min), float(ms.sigma_max), sigma_data=1.0))
    x = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(2)) * float(ms.sigma_max)
    rows, runs, pilot = error_table(net, x, ms, evals)
    _print_table("(b) tiny random conv eps-net (4x4x16x16)", rows, evals, runs, pilot)

    repeats = 3 if args.quick else 7
    for name in ("euler", "dpmpp_2m", "dpmpp_2m_sde"):
        o = loop_overhead(repeats=repeats, sampler=name)
        overhead = o["noop_us"]
        print(f"\nloop overhead [{name}]: no-op model {overhead:.1f} us/step; with a matmul workload {o['work_us']:.1f} us/step "
              f"(workload alone {o['model_us']:.1f} us); overhead / workload = {overhead / o['model_us']:.3f}")


if __name__ == "__main__":
    main()
