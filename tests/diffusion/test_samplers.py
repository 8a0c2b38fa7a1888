"""Samplers: parity with k-diffusion's sampling.py, convergence on the exact Gaussian ODE, moments, registry behaviour."""

import math
import sys
from pathlib import Path

import pytest
import torch

from nodes.diffusion.model_sampling import Denoiser, ModelSamplingEDM
from nodes.diffusion.noise import BrownianTreeNoiseSampler
from nodes.diffusion.samplers import SAMPLERS, SamplingInterrupted, UnknownSamplerError, get_sampler
from nodes.diffusion.samplers_multistep import deis_coefficients
from nodes.diffusion.schedules import get_sigmas_karras

sys.path.insert(0, str(Path(__file__).parent))
from kdiff_oracle import load_sampling  # noqa: E402

K = load_sampling()
SMIN, SMAX = 0.0291675, 14.614642


class Gaussian:
    """Exact denoiser of data N(mu, s^2) per element: D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def __init__(self, mu, s):
        self.mu, self.s = mu, s

    def __call__(self, x, sigma, **_):
        sig2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (self.s**2 * x + sig2 * self.mu) / (self.s**2 + sig2)

    def exact(self, x_start, sigma_start, sigma_end):
        """The probability-flow ODE solution from sigma_start to sigma_end."""
        return self.mu + (x_start - self.mu) * math.sqrt(self.s**2 + sigma_end**2) / math.sqrt(self.s**2 + sigma_start**2)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 4, 3, padding=1)
        self.t = torch.nn.Linear(1, 16)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, x, t, context=None, y=None):
        return self.b(torch.tanh(self.a(x) + self.t(t[:, None].float())[:, :, None, None]))


def conv_model():
    return Denoiser(TinyNet().eval(), ModelSamplingEDM("eps", SMIN, SMAX, sigma_data=1.0))


def gauss_model():
    g = torch.Generator().manual_seed(3)
    return Gaussian(torch.randn(1, 4, 6, 6, generator=g) * 0.5, 0.4)


def start(seed=5, shape=(2, 4, 6, 6)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * SMAX


def stateless_noise(shape):
    """Noise that depends only on the step (sigma, sigma_next), so two samplers get identical noise whatever their call order."""

    def sample(sigma, sigma_next):
        seed = int(float(sigma) * 1e5) * 7919 + int(float(sigma_next) * 1e5)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    return sample


SIGMAS = get_sigmas_karras(12, SMIN, SMAX)


def assert_close(ours, theirs, tol=1e-5):
    """Equal within tol, relative to the output's scale when that exceeds 1 (float32 rounding of large values)."""
    err = float((ours - theirs).abs().max())
    assert err <= tol * max(1.0, float(theirs.abs().max())), err
MODELS = [pytest.param(conv_model, id="conv"), pytest.param(gauss_model, id="gaussian")]

DETERMINISTIC = ["euler", "heun", "dpm_2", "dpmpp_2m"]
STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"]


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_equal_k_diffusion(make, name):
    model, x = make(), start()
    ours = SAMPLERS[name].fn(model, x, SIGMAS)
    theirs = getattr(K, f"sample_{name}")(model, x, SIGMAS, disable=True)
    assert_close(ours, theirs)


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_equal_k_diffusion_with_same_noise(make, name):
    model, x = make(), start()
    ns = stateless_noise(x.shape)
    ours = SAMPLERS[name].fn(model, x, SIGMAS, noise_sampler=ns)
    theirs = getattr(K, f"sample_{name}")(model, x, SIGMAS, disable=True, noise_sampler=ns)
    assert_close(ours, theirs)


def test_2m_sde_heun_and_brownian_tree_equal_k_diffusion():
    model, x = gauss_model(), start()
    ns = BrownianTreeNoiseSampler(x, SMIN, SMAX, seed=42)
    ours = SAMPLERS["dpmpp_2m_sde_heun"].fn(model, x, SIGMAS, noise_sampler=ns)
    theirs = K.sample_dpmpp_2m_sde(model, x, SIGMAS, disable=True, noise_sampler=ns, solver_type="heun")
    assert_close(ours, theirs)
    # Our Brownian tree gives the same increments as k-diffusion's for the same seed.
    kd = K.BrownianTreeNoiseSampler(x, torch.tensor(SMIN), torch.tensor(SMAX), seed=42)
    assert torch.allclose(ns(torch.tensor(3.0), torch.tensor(1.0)), kd(torch.tensor(3.0), torch.tensor(1.0)), atol=1e-5)


@pytest.mark.parametrize("make", MODELS)
def test_lms_equal_k_diffusion_until_the_final_denoise(make):
    # ComfyUI's lms returns D at the last step; k-diffusion integrates to 0. Both agree up to sigma_min.
    model, x = make(), start()
    ours = SAMPLERS["lms"].fn(model, x, SIGMAS)
    theirs = K.sample_lms(model, x, SIGMAS[:-1], disable=True)
    assert_close(ours, model(theirs, SIGMAS[-2].expand(2)))


@pytest.mark.parametrize("make", MODELS)
def test_dpm_fast_and_adaptive_equal_k_diffusion(make):
    model, x = make(), start()
    ours = SAMPLERS["dpm_fast"].fn(model, x, SIGMAS)
    theirs = K.sample_dpm_fast(model, x, SIGMAS[-2], SIGMAS[0], len(SIGMAS) - 1, disable=True)
    assert_close(ours, theirs)
    info = {}
    ours = SAMPLERS["dpm_adaptive"].fn(model, x, SIGMAS, info=info)
    theirs, kinfo = K.sample_dpm_adaptive(model, x, SIGMAS[-2], SIGMAS[0], disable=True, return_info=True)
    assert_close(ours, theirs)
    assert info == kinfo and info["nfe"] == 3 * info["steps"] > 0


def test_dpm_adaptive_reports_evaluations_through_the_registry():
    model, x = gauss_model(), start()
    info, seen = {}, []
    get_sampler("dpm_adaptive").sample(model, x, SIGMAS, info=info, callback=seen.append, rtol=0.01, atol=0.001)
    assert info["nfe"] == 3 * info["steps"] and info["n_accept"] + info["n_reject"] == info["steps"]
    assert seen[-1]["nfe"] == info["nfe"]
    loose = {}
    get_sampler("dpm_adaptive").sample(model, x, SIGMAS, info=loose, rtol=0.2, atol=0.03)
    assert loose["nfe"] < info["nfe"]  # looser tolerance, fewer evaluations


def _order_error(name, n, **opts):
    model = gauss_model()
    x = start(shape=(1, 4, 6, 6))
    sigmas = get_sigmas_karras(n, SMIN, SMAX)[:-1]  # end at sigma_min so the exact solution is known
    out = SAMPLERS[name].fn(model, x, sigmas, **opts)
    return float((out - model.exact(x, SMAX, SMIN)).abs().max())


@pytest.mark.parametrize("name,min_ratio", [
    ("euler", 1.6), ("heun", 3.0), ("heunpp2", 1.6), ("ipndm", 3.0), ("ipndm_v", 2.0), ("deis", 3.0),
    ("res_multistep", 3.0), ("gradient_estimation", 1.4), ("uni_pc", 3.0), ("uni_pc_bh2", 3.0), ("dpmpp_2m", 3.0), ("lms", 3.0),
])
def test_convergence_on_exact_gaussian_ode(name, min_ratio):
    """Doubling the steps shrinks the error by ~2^order (measured: first-order-like methods ~2, the rest >= 3).

    heunpp2's slope weights sigma_k / (3 sigma_0) vanish at low noise, so it converges at first order;
    iPNDM-v's fourth-order weights are not Adams-Bashforth's at equal steps, and it converges at ~2.4.
    """
    coarse, fine = _order_error(name, 12), _order_error(name, 24)
    assert fine < 0.1 and coarse / fine >= min_ratio, (coarse, fine)


def test_heunpp2_step_rederived():
    """One Heun++ step with three slopes (re-derived): x + dt * ((1 - w1 - w2) d0 + w1 d1 + w2 d2), w_k = sigma_k / (3 sigma_0)."""
    model, x = gauss_model(), start()
    sig = torch.tensor([4.0, 2.0, 1.0, 0.5])
    s_in = torch.ones(2)
    d0 = (x - model(x, sig[0] * s_in)) / sig[0]
    x1 = x + d0 * (sig[1] - sig[0])
    d1 = (x1 - model(x1, sig[1] * s_in)) / sig[1]
    x2 = x1 + d1 * (sig[2] - sig[1])
    d2 = (x2 - model(x2, sig[2] * s_in)) / sig[2]
    w1, w2 = 2.0 / 12.0, 1.0 / 12.0
    want = x + ((1 - w1 - w2) * d0 + w1 * d1 + w2 * d2) * (sig[1] - sig[0])
    seen = []
    SAMPLERS["heunpp2"].fn(model, x, sig, callback=seen.append)
    got_after_first = seen[1]["x"]
    assert_close(got_after_first, want)


def test_ipndm_v_equals_ipndm_on_uniform_steps():
    model, x = gauss_model(), start()
    sigmas = torch.linspace(SMAX, SMIN, 9)
    a = SAMPLERS["ipndm_v"].fn(model, x, sigmas, max_order=3)
    assert_close(a, SAMPLERS["ipndm"].fn(model, x, sigmas, max_order=3), 1e-4)


def test_first_order_variants_reduce_to_euler():
    model, x = conv_model(), start()
    euler = SAMPLERS["euler"].fn(model, x, SIGMAS[:-1])
    for name in ("ipndm", "deis"):
        assert torch.allclose(SAMPLERS[name].fn(model, x, SIGMAS[:-1], max_order=1), euler, atol=1e-5), name
    # CFG++ without guidance (uncond == cond) is the plain sampler.
    assert torch.allclose(SAMPLERS["euler_cfg_pp"].fn(model, x, SIGMAS), SAMPLERS["euler"].fn(model, x, SIGMAS), atol=1e-5)
    assert torch.allclose(SAMPLERS["dpmpp_2m_cfg_pp"].fn(model, x, SIGMAS), SAMPLERS["dpmpp_2m"].fn(model, x, SIGMAS), atol=1e-5)
    assert torch.equal(SAMPLERS["ddim"].fn(model, x, SIGMAS), SAMPLERS["euler"].fn(model, x, SIGMAS))


def test_deis_coefficients_integrate_dsigma():
    # The Lagrange bases sum to 1, so each step's coefficients sum to sigma_next - sigma.
    sigmas = get_sigmas_karras(10, SMIN, SMAX)
    for i, row in enumerate(deis_coefficients(sigmas, 3)[:-1]):
        if row:
            assert sum(row) == pytest.approx(float(sigmas[i + 1] - sigmas[i]), rel=2e-3)


def test_exponential_integrators_exact_for_constant_prediction():
    mu = torch.full((1, 4, 6, 6), 0.3)

    def const(x, sigma, **_):
        return mu.expand_as(x)

    x = start(shape=(1, 4, 6, 6))
    sigmas = get_sigmas_karras(8, SMIN, SMAX)[:-1]
    exact = mu + (x - mu) * SMIN / SMAX
    for name in ("dpmpp_2m", "res_multistep", "uni_pc", "uni_pc_bh2", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        opts = {"eta": 0.0} if "sde" in name else {}
        assert torch.allclose(SAMPLERS[name].fn(const, x, sigmas, **opts), exact, atol=1e-4), name


MOMENT_SAMPLERS = [n for n in SAMPLERS if n not in ("dpm_fast", "dpm_adaptive")]


@pytest.mark.parametrize("name", MOMENT_SAMPLERS + ["dpm_fast", "dpm_adaptive"])
def test_gaussian_moments(name):
    """20k samples of N(0.5, 0.3^2) from the exact denoiser, 100 karras steps: mean within 0.01, std within 3%.

    lcm needs a consistency function (the ODE's endpoint map), not the posterior mean, so it gets that.
    """
    mu, s = 0.5, 0.3
    model = Gaussian(mu, s)
    if name == "lcm":
        model = lambda x, sigma, **_: mu + (x - mu) * s / (s**2 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()  # noqa: E731
    g = torch.Generator().manual_seed(11)
    x = mu + torch.randn(20000, 1, 1, 1, generator=g) * math.sqrt(s**2 + SMAX**2)
    sigmas = get_sigmas_karras(100, SMIN, SMAX)
    out = get_sampler(name).sample(model, x, sigmas, seed=7)
    if name in ("dpm_fast", "dpm_adaptive"):
        out = model(out, torch.tensor([SMIN]))  # these stop at sigma_min
    assert abs(float(out.mean()) - mu) < 0.01, float(out.mean())
    # First-order ancestral samplers converge weakly at order 1: measured 3.8% off at 100 steps.
    std_tol = 0.05 if name in ("euler_ancestral", "euler_ancestral_cfg_pp", "ddpm") else 0.03
    assert abs(float(out.std()) / s - 1) < std_tol, float(out.std())


def test_registry_progress_interrupt_and_nfe():
    model, x = gauss_model(), start()
    seen = []
    info = {}
    get_sampler("heun").sample(model, x, SIGMAS, callback=seen.append, info=info)
    assert [p["i"] for p in seen] == list(range(12))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert info["nfe"] == 2 * 12 - 1
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(SamplingInterrupted, match="sampler 'euler' interrupted at step 3"):
        get_sampler("euler").sample(model, x, SIGMAS, should_stop=stop)
    with pytest.raises(UnknownSamplerError, match="unknown sampler 'eulr'; choose one of: euler"):
        get_sampler("eulr")
    with pytest.raises(TypeError, match="sampler 'euler' has no option"):
        get_sampler("euler").sample(model, x, SIGMAS, eta=0.5)


def test_seeded_noise_is_reproducible():
    model, x = gauss_model(), start()
    for name in ("euler_ancestral", "dpmpp_2m_sde"):
        a = get_sampler(name).sample(model, x, SIGMAS, seed=1)
        b = get_sampler(name).sample(model, x, SIGMAS, seed=1)
        c = get_sampler(name).sample(model, x, SIGMAS, seed=2)
        assert torch.equal(a, b) and not torch.allclose(a, c), name
