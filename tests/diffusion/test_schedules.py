"""Schedules: ComfyUI's numbers (sdxl.md section 3), k-diffusion parity, AYS tables, denoise and splits."""

import sys
from pathlib import Path

import pytest
import torch

from nodes.diffusion import schedules as S
from nodes.diffusion.model_sampling import ModelSamplingDiscrete

sys.path.insert(0, str(Path(__file__).parent))
from kdiff_oracle import load_sampling  # noqa: E402

MS = ModelSamplingDiscrete()
SMIN, SMAX = float(MS.sigma_min), float(MS.sigma_max)


def close(a, b, tol=1e-4):
    assert len(a) == len(b), (a, b)
    for x, y in zip(a, b):
        assert abs(x - y) <= tol, (a, b)


def test_reference_values_for_ten_steps():
    def sig(name):
        return S.calculate_sigmas(MS, name, 10).tolist()

    s = sig("simple")
    close(s[:3] + s[-2:], [14.6146, 8.3028, 5.0878, 0.3417, 0.0])
    s = sig("normal")
    close(s[:3] + s[-3:], [14.6146, 7.8399, 4.6092, 0.3687, 0.0292, 0.0])
    s = sig("sgm_uniform")
    close(s[:2] + s[-2:], [14.6146, 8.3072, 0.3437, 0.0])
    close(sig("karras"), [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292, 0.0])
    assert sig("ddim_uniform")[0] == pytest.approx(8.3907, abs=1e-4)
    assert S.calculate_sigmas(MS, "ddim_uniform", 10)[0] == MS.sigmas[901]
    s = sig("beta")
    close(s[:3] + s[-2:], [14.6146, 11.5428, 7.3718, 0.1991, 0.0])
    for name in S.SCHEDULER_NAMES:
        sigmas = S.calculate_sigmas(MS, name, 10)
        assert sigmas.shape == (11,) and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all()), name


def test_simple_is_every_kth_training_sigma():
    got = S.get_sigmas_simple(MS, 10)
    want = [MS.sigmas[-(1 + int(i * 100))] for i in range(10)]
    assert torch.equal(got[:-1], torch.stack(want))


def test_karras_and_exponential_equal_k_diffusion():
    K = load_sampling()
    for n in (1, 7, 20):
        assert torch.allclose(S.get_sigmas_karras(n, SMIN, SMAX), K.get_sigmas_karras(n, SMIN, SMAX), atol=1e-6)
        assert torch.allclose(S.get_sigmas_exponential(n, SMIN, SMAX), K.get_sigmas_exponential(n, SMIN, SMAX), atol=1e-6)
    assert torch.allclose(S.get_sigmas_karras(5, 0.1, 10.0, rho=3.0), K.get_sigmas_karras(5, 0.1, 10.0, rho=3.0), atol=1e-6)


def test_kl_optimal_and_linear_quadratic_formulas():
    import math

    s = S.calculate_sigmas(MS, "kl_optimal", 4).tolist()
    want = [math.tan(u * math.atan(SMIN) + (1 - u) * math.atan(SMAX)) for u in (0, 1 / 3, 2 / 3, 1)]
    close(s, want + [0.0], 1e-5)
    lq = S.calculate_sigmas(MS, "linear_quadratic", 4).tolist()
    # first half linear to 0.025 of sigma_max, then quadratic to 0
    close(lq, [SMAX, SMAX * (1 - 0.0125), SMAX * (1 - 0.025), SMAX * (1 - lq_mid()), 0.0], 1e-4)


def lq_mid():
    # i = 3 of 4 steps, linear_steps 2: quad_coef*(9) + lin_coef*3 + const
    diff = 2 - 0.025 * 4
    qc = diff / (2 * 4)
    lc = 0.025 / 2 - 2 * diff / 4
    return qc * 9 + lc * 3 + qc * 4


def test_ays_tables_and_interpolation():
    sdxl = S.get_sigmas_ays(10, "SDXL").tolist()
    close(sdxl, S.AYS_NOISE_LEVELS["SDXL"][:-1] + [0.0], 1e-6)
    close(S.get_sigmas_ays(10, "SD1").tolist(), S.AYS_NOISE_LEVELS["SD1"][:-1] + [0.0], 1e-6)
    # AYS SDXL entries are exactly the discrete sigmas at these timesteps (sdxl.md)
    assert torch.allclose(torch.tensor(S.AYS_NOISE_LEVELS["SDXL"]), MS.sigmas[[999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0]].double().float(), atol=1e-6)
    # 20 steps: every other point is a table entry; the ones between are geometric means
    s20 = S.get_sigmas_ays(20, "SDXL")
    table = S.AYS_NOISE_LEVELS["SDXL"]
    close(s20[0:20:2].tolist(), table[:10], 1e-5)
    assert float(s20[1]) == pytest.approx((table[0] * table[1]) ** 0.5, rel=1e-5)
    # denoise keeps the last round(steps*denoise)+1
    assert torch.equal(S.align_your_steps("SDXL", 10, 0.5), S.get_sigmas_ays(10)[-6:])
    with pytest.raises(ValueError, match="model_type 'SD3' unknown"):
        S.get_sigmas_ays(10, "SD3")


def test_basic_scheduler_denoise_and_errors():
    full = S.calculate_sigmas(MS, "karras", 40)
    assert torch.equal(S.basic_scheduler(MS, "karras", 20, denoise=0.5), full[-21:])
    assert torch.equal(S.basic_scheduler(MS, "karras", 20, denoise=0.3), S.calculate_sigmas(MS, "karras", 66)[-21:])
    assert S.basic_scheduler(MS, "karras", 20, denoise=0.0).numel() == 0
    with pytest.raises(S.UnknownSchedulerError, match="unknown scheduler 'fancy'; choose one of: simple"):
        S.calculate_sigmas(MS, "fancy", 10)
    with pytest.raises(ValueError, match="scheduler 'karras': steps must be an integer >= 1, got 0"):
        S.calculate_sigmas(MS, "karras", 0)


def test_split_sigmas_share_the_split_point():
    sigmas = S.calculate_sigmas(MS, "normal", 10)
    high, low = S.split_sigmas(sigmas, 4)
    assert torch.equal(high, sigmas[:5]) and torch.equal(low, sigmas[4:])
    high, low = S.split_sigmas_denoise(sigmas, 0.3)  # last 3 steps
    assert torch.equal(low, sigmas[-4:]) and torch.equal(high, sigmas[:8]) and high[-1] == low[0]
