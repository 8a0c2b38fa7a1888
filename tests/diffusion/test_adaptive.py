"""The adaptive schedule: shape and placement rules, and its measured advantage over `normal` on an analytic mixture."""

import math

import pytest
import torch

from nodes.diffusion.adaptive import density_to_sigmas, get_sigmas_adaptive
from nodes.diffusion.model_sampling import ModelSamplingDiscrete
from nodes.diffusion.samplers import get_sampler
from nodes.diffusion.schedules import calculate_sigmas, get_sigmas_karras

MS = ModelSamplingDiscrete()
SMIN, SMAX = float(MS.sigma_min), float(MS.sigma_max)


class Mixture:
    """Exact denoiser of an isotropic Gaussian mixture (means (K, D), stds (K,), equal weights)."""

    def __init__(self, seed=0, k=6, dim=64):
        g = torch.Generator().manual_seed(seed)
        self.means = torch.randn(k, dim, generator=g, dtype=torch.float64)
        self.stds = 0.05 + 0.3 * torch.rand(k, generator=g, dtype=torch.float64)

    def __call__(self, x, sigma, **_):
        flat = x.reshape(x.shape[0], -1).double()
        var = self.stds[None] ** 2 + sigma.double().reshape(-1, 1) ** 2  # (B, K)
        logits = -0.5 * torch.cdist(flat, self.means) ** 2 / var - 0.5 * flat.shape[1] * var.log()
        w = logits.softmax(1)
        s2, sig2 = (self.stds**2)[None, :, None], sigma.double().reshape(-1, 1, 1) ** 2
        per = (s2 * flat[:, None] + sig2 * self.means[None]) / (s2 + sig2)
        return (w[..., None] * per).sum(1).reshape(x.shape).to(x.dtype)


def test_density_to_sigmas_equidistributes():
    pilot = torch.tensor([10.0, 1.0, 0.1])
    # all the density in the first interval: every interior point lands there
    s = density_to_sigmas(pilot, torch.tensor([1.0, 0.0]), 5)
    assert s[0] == 10.0 and s[-2] == pytest.approx(0.1) and s[-1] == 0
    assert bool((s[1:4] >= 1.0 - 1e-6).all())
    # uniform density: log-uniform (exponential) spacing
    s = density_to_sigmas(pilot, torch.tensor([1.0, 1.0]), 5)
    assert torch.allclose(s[:-1].log(), torch.linspace(math.log(10), math.log(0.1), 5), atol=1e-5)


def test_schedule_shape_and_pilot_cost():
    model = Mixture()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * SMAX
    calls = []
    counted = lambda x, s, **k: calls.append(1) or model(x, s)  # noqa: E731
    sched = get_sigmas_adaptive(counted, x, 10, SMIN, SMAX, pilot_steps=12)
    assert len(calls) == sched.pilot_evals == 12
    s = sched.sigmas
    assert s.shape == (11,) and s[-1] == 0 and bool((s[:-1] > s[1:]).all())
    assert float(s[0]) == pytest.approx(SMAX, rel=1e-5) and float(s[-2]) == pytest.approx(SMIN, rel=1e-5)
    with pytest.raises(ValueError, match="pilot_steps must be >= 4 for order 2"):
        get_sigmas_adaptive(model, x, 10, SMIN, SMAX, pilot_steps=3)


def test_beats_normal_on_the_analytic_mixture():
    """At 12 evaluations of dpmpp_2m: RMS distance to a 200-step reference, adaptive < 0.6 x normal (measured 0.43; at 8 evaluations it is 1.7x worse, see bench)."""
    model = Mixture()
    x = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(torch.float32) * SMAX
    run = lambda sigmas: get_sampler("dpmpp_2m").sample(model, x.clone(), sigmas)  # noqa: E731
    ref = run(get_sigmas_karras(200, SMIN, SMAX))
    err = lambda out: float((out.double() - ref.double()).pow(2).mean().sqrt())  # noqa: E731
    normal = err(run(calculate_sigmas(MS, "normal", 12)))
    adaptive = err(run(get_sigmas_adaptive(model, x.clone(), 12, SMIN, SMAX).sigmas))
    assert adaptive < 0.6 * normal, (adaptive, normal)
