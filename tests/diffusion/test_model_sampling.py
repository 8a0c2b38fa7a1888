"""ModelSamplingDiscrete / EDM and the Denoiser wrapper: SDXL's sigma table, timestep rounding, parameterizations."""

import math

import pytest
import torch

from nodes.diffusion.model_sampling import Denoiser, ModelSamplingDiscrete, ModelSamplingEDM


def test_sdxl_sigma_table_matches_reference_values():
    ms = ModelSamplingDiscrete()
    assert ms.sigmas.shape == (1000,)
    assert float(ms.sigma_min) == pytest.approx(0.0291672, abs=1e-6)
    assert float(ms.sigma_max) == pytest.approx(14.614641, abs=1e-5)
    assert float(ms.sigmas[499]) == pytest.approx(1.61289, abs=1e-5)
    # float64 schedule: alphabar from the scaled-linear betas
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    assert torch.allclose(ms.sigmas.double(), ((1 - abar) / abar).sqrt(), rtol=1e-7)


def test_timestep_is_nearest_in_log_sigma_and_sigma_interpolates():
    ms = ModelSamplingDiscrete()
    assert ms.timestep(ms.sigmas[[0, 10, 999]]).tolist() == [0.0, 10.0, 999.0]
    # between sigma_10 and sigma_11, nearer in log space to 11
    s = torch.exp(0.3 * ms.log_sigmas[10] + 0.7 * ms.log_sigmas[11])
    assert float(ms.timestep(s)) == 11.0
    # sigma(t) interpolates log sigma linearly
    assert float(ms.sigma(torch.tensor(10.25))) == pytest.approx(math.exp(0.75 * float(ms.log_sigmas[10]) + 0.25 * float(ms.log_sigmas[11])), rel=1e-6)
    assert float(ms.sigma(torch.tensor(2000.0))) == pytest.approx(float(ms.sigma_max))


def test_eps_and_v_parameterizations():
    x, out, sigma = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor([2.0, 0.5])
    eps = ModelSamplingDiscrete("eps")
    assert torch.allclose(eps.calculate_input(sigma, x), x / (sigma**2 + 1).sqrt().view(2, 1, 1, 1))
    assert torch.allclose(eps.calculate_denoised(sigma, out, x), x - out * sigma.view(2, 1, 1, 1))
    v = ModelSamplingDiscrete("v")
    s = sigma.view(2, 1, 1, 1)
    assert torch.allclose(v.calculate_denoised(sigma, out, x), x / (s**2 + 1) - out * s / (s**2 + 1).sqrt())
    with pytest.raises(ValueError, match="prediction type 'x0' is not supported"):
        ModelSamplingDiscrete("x0")


def test_noise_scaling_full_and_partial_denoise():
    ms = ModelSamplingDiscrete()
    noise, latent = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    sig = torch.tensor(3.0)
    assert torch.allclose(ms.noise_scaling(sig, noise, latent, max_denoise=False), latent + 3.0)
    assert torch.allclose(ms.noise_scaling(sig, noise, latent, max_denoise=True), latent + math.sqrt(10.0))
    assert torch.equal(ms.inverse_noise_scaling(sig, latent), latent)
    assert ms.is_max_denoise(torch.tensor([float(ms.sigma_max), 1.0]))
    assert not ms.is_max_denoise(torch.tensor([5.0, 1.0]))


def test_edm_playground_preconditioning():
    ms = ModelSamplingEDM("edm", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    x, out, sigma = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.tensor([1.5])
    c_skip = 0.25 / (1.5**2 + 0.25)
    c_out = 1.5 * 0.5 / math.sqrt(1.5**2 + 0.25)
    assert torch.allclose(ms.calculate_denoised(sigma, out, x), c_skip * x + c_out * out, atol=1e-6)
    assert torch.allclose(ms.calculate_input(sigma, x), x / math.sqrt(1.5**2 + 0.25))
    assert float(ms.timestep(torch.tensor(1.5))) == pytest.approx(0.25 * math.log(1.5))
    assert float(ms.sigma_max) == pytest.approx(80.0, rel=1e-5) and float(ms.sigma_min) == pytest.approx(0.002, rel=1e-5)
    assert ms.percent_to_sigma(0.5) == pytest.approx(math.sqrt(0.002 * 80.0), rel=1e-6)


def test_denoiser_wraps_an_eps_unet():
    ms = ModelSamplingDiscrete()
    seen = {}

    def unet(x_in, t, context, y=None):
        seen.update(x_in=x_in, t=t, context=context, y=y)
        return torch.full_like(x_in, 0.1)

    den = Denoiser(unet, ms)
    x = torch.randn(2, 4, 4, 4)
    sigma = ms.sigmas[[500, 500]]
    ctx, y = torch.zeros(2, 77, 8), torch.zeros(2, 16)
    out = den(x, sigma, context=ctx, y=y)
    assert seen["t"].tolist() == [500.0, 500.0]
    assert torch.allclose(seen["x_in"], x / (sigma[0] ** 2 + 1).sqrt())
    assert seen["context"] is ctx and seen["y"] is y
    assert torch.allclose(out, x - 0.1 * sigma[0], atol=1e-6)


def test_percent_to_sigma_discrete():
    ms = ModelSamplingDiscrete()
    assert ms.percent_to_sigma(0.0) > 1e8 and ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(float(ms.sigma(torch.tensor(499.5))), rel=1e-6)
