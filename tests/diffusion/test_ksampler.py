"""KSampler / KSamplerAdvanced semantics: noise, latent scaling, denoise, start/end, leftover noise, inpainting, hand-off."""

import math

import torch

from nodes.diffusion.guidance import CFGGuider, Cond
from nodes.diffusion.ksampler import SDXL_LATENT, ksampler, ksampler_advanced, ksampler_sigmas, sample_custom
from nodes.diffusion.model_sampling import Denoiser, ModelSamplingDiscrete
from nodes.diffusion.noise import DisableNoise, RandomNoise, prepare_noise
from nodes.diffusion.samplers import get_sampler
from nodes.diffusion.schedules import calculate_sigmas

MS = ModelSamplingDiscrete()


def unet(x, t, context, y=None):
    return 0.3 * torch.tanh(x) + context.mean() + 0.0001 * t.reshape(-1, 1, 1, 1)


DEN = Denoiser(unet, MS)
POS = [Cond(torch.full((1, 77, 8), 0.2))]
NEG = [Cond(torch.full((1, 77, 8), -0.1))]


def latent(value=0.0):
    return {"samples": torch.full((2, 4, 8, 8), value)}


def test_full_denoise_matches_manual_pipeline():
    out = ksampler(DEN, MS, 42, 6, 5.0, "euler", "karras", POS, NEG, latent())["samples"]
    noise = prepare_noise(torch.zeros(2, 4, 8, 8), 42)
    sigmas = calculate_sigmas(MS, "karras", 6)
    x = noise * math.sqrt(1 + float(sigmas[0]) ** 2)  # full denoise: sqrt(1 + sigma^2); empty latent not scaled
    want = get_sampler("euler").sample(CFGGuider(DEN, POS, NEG, 5.0, MS), x, sigmas) / 0.13025
    assert torch.allclose(out, want, atol=1e-5)


def test_partial_denoise_scales_a_nonzero_latent():
    lat = latent(2.0)
    out = ksampler(DEN, MS, 3, 4, 5.0, "euler", "normal", POS, NEG, lat, denoise=0.5)["samples"]
    sigmas = calculate_sigmas(MS, "normal", 8)[-5:]
    x = lat["samples"] * 0.13025 + prepare_noise(lat["samples"], 3) * sigmas[0]
    want = get_sampler("euler").sample(CFGGuider(DEN, POS, NEG, 5.0, MS), x, sigmas) / 0.13025
    assert torch.allclose(out, want, atol=1e-5)


def test_penultimate_sigma_discard_and_denoise_tail():
    full = calculate_sigmas(MS, "normal", 11)
    assert torch.equal(ksampler_sigmas(MS, "dpm_2", "normal", 10), torch.cat([full[:-2], full[-1:]]))
    assert torch.equal(ksampler_sigmas(MS, "uni_pc_bh2", "karras", 10)[-2:], calculate_sigmas(MS, "karras", 11)[[-3, -1]])
    assert torch.equal(ksampler_sigmas(MS, "euler", "karras", 10, denoise=0.4), calculate_sigmas(MS, "karras", 25)[-11:])
    assert ksampler_sigmas(MS, "euler", "karras", 10, denoise=0.0).numel() == 0


def test_start_at_or_after_steps_returns_input():
    lat = latent(1.5)
    out = ksampler_advanced(DEN, MS, True, 1, 10, 5.0, "euler", "karras", POS, NEG, lat, start_at_step=10)
    assert out["samples"] is lat["samples"]


def test_base_refiner_handoff_equals_uninterrupted_run():
    for name in ("euler", "heun", "dpm_2"):
        whole = ksampler_advanced(DEN, MS, True, 7, 10, 5.0, name, "karras", POS, NEG, latent())
        base = ksampler_advanced(DEN, MS, True, 7, 10, 5.0, name, "karras", POS, NEG, latent(), 0, 6, return_with_leftover_noise=True)
        refined = ksampler_advanced(DEN, MS, False, 7, 10, 5.0, name, "karras", POS, NEG, base, 6, 10000)
        assert torch.allclose(whole["samples"], refined["samples"], atol=1e-4), name
        # without leftover noise the base run ends fully denoised (last sigma forced to 0)
        clean = ksampler_advanced(DEN, MS, True, 7, 10, 5.0, name, "karras", POS, NEG, latent(), 0, 6)
        assert not torch.allclose(clean["samples"], base["samples"], atol=1e-2)


def test_add_noise_disabled_uses_zero_noise():
    lat = latent(1.0)
    out = ksampler_advanced(DEN, MS, False, 1, 8, 5.0, "euler", "karras", POS, NEG, lat, 4, 10000)["samples"]
    sigmas = calculate_sigmas(MS, "karras", 8)[4:]
    want = get_sampler("euler").sample(CFGGuider(DEN, POS, NEG, 5.0, MS), lat["samples"] * 0.13025, sigmas) / 0.13025
    assert torch.allclose(out, want, atol=1e-5)


def test_noise_mask_keeps_the_unmasked_latent():
    lat = latent(1.0)
    lat["samples"] = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1.0
    lat["noise_mask"] = mask
    for name in ("euler", "dpmpp_2m", "ddim"):
        out = ksampler(DEN, MS, 9, 6, 5.0, name, "karras", POS, NEG, lat)["samples"]
        assert torch.allclose(out[..., :4], lat["samples"][..., :4], atol=1e-5), name
        assert not torch.allclose(out[..., 4:], lat["samples"][..., 4:], atol=1e-2), name


def test_prepare_noise_batch_index_and_noise_objects():
    lat = torch.zeros(3, 4, 2, 2)
    full = prepare_noise(lat, 5)
    torch.manual_seed(5)
    assert torch.equal(full, torch.randn(3, 4, 2, 2))
    picked = prepare_noise(torch.zeros(2, 4, 2, 2), 5, batch_index=[2, 0])
    assert torch.equal(picked, torch.stack([full[2], full[0]]))
    assert torch.equal(RandomNoise(5).generate_noise({"samples": lat}), full)
    assert torch.equal(DisableNoise().generate_noise({"samples": lat}), torch.zeros_like(lat))


def test_sample_custom_outputs_and_interrupt():
    from nodes.diffusion.samplers import SamplingInterrupted

    guider = CFGGuider(DEN, POS, NEG, 5.0, MS)
    sigmas = calculate_sigmas(MS, "karras", 5)
    out, denoised = sample_custom(RandomNoise(42), guider, MS, get_sampler("euler"), sigmas, latent())
    ref = ksampler(DEN, MS, 42, 5, 5.0, "euler", "karras", POS, NEG, latent())
    assert torch.allclose(out["samples"], ref["samples"], atol=1e-5)
    assert denoised["samples"].shape == out["samples"].shape
    try:
        ksampler(DEN, MS, 42, 5, 5.0, "euler", "karras", POS, NEG, latent(), should_stop=lambda: True)
    except SamplingInterrupted as e:
        assert "interrupted at step 0" in str(e)
    else:
        raise AssertionError("expected SamplingInterrupted")
    assert SDXL_LATENT.process_out(SDXL_LATENT.process_in(torch.ones(1))).item() == 1.0
