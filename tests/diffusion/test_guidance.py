"""Guidance: batched CFG equals separate forwards, cfg=1 runs cond only, timestep ranges, areas, token tiling, CFG++."""

import pytest
import torch

from nodes.diffusion.guidance import BasicGuider, CFGGuider, Cond, concat_conditioning, set_timestep_range
from nodes.diffusion.model_sampling import Denoiser, ModelSamplingDiscrete
from nodes.diffusion.samplers import get_sampler
from nodes.diffusion.schedules import get_sigmas_karras

MS = ModelSamplingDiscrete()


class RecordingUNet:
    """eps depends on x, t, the context's token mean and y; records every batch it sees."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context, y=None):
        self.calls.append((x.shape[0], None if context is None else context.shape[1]))
        c = context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        out = 0.1 * x + c + 0.001 * t.reshape(-1, 1, 1, 1)
        if y is not None:
            out = out + y.mean(dim=1).reshape(-1, 1, 1, 1)
        return out


def conds(seed, tokens=77, b=2):
    g = torch.Generator().manual_seed(seed)
    return [Cond(torch.randn(b, tokens, 8, generator=g), y=torch.randn(b, 5, generator=g))]


def test_batched_cfg_equals_two_separate_forwards():
    unet = RecordingUNet()
    den = Denoiser(unet, MS)
    pos, neg = conds(1), conds(2)
    x, sigma = torch.randn(2, 4, 8, 8), torch.full((2,), 3.0)
    out = CFGGuider(den, pos, neg, 7.5)(x, sigma)
    assert unet.calls == [(4, 77)]  # one forward, batch 2B
    d_c = den(x, sigma, context=pos[0].context, y=pos[0].y)
    d_u = den(x, sigma, context=neg[0].context, y=neg[0].y)
    assert torch.allclose(out, d_u + 7.5 * (d_c - d_u), atol=1e-5)


def test_cfg_one_calls_the_model_once_with_cond_only():
    unet = RecordingUNet()
    den = Denoiser(unet, MS)
    pos, neg = conds(1), conds(2)
    guider = CFGGuider(den, pos, neg, 1.0)
    x = torch.randn(2, 4, 8, 8)
    get_sampler("euler").sample(guider, x, get_sigmas_karras(5, 0.03, 14.6))
    assert unet.calls == [(2, 77)] * 5
    # CFG++ needs the uncond prediction, so it runs both even at cfg = 1.
    unet.calls.clear()
    get_sampler("euler_cfg_pp").sample(guider, x, get_sigmas_karras(5, 0.03, 14.6))
    assert unet.calls == [(4, 77)] * 5
    assert BasicGuider(den, pos)(x, torch.full((2,), 2.0)).shape == x.shape


def test_different_token_lengths_tile_or_run_separately():
    unet = RecordingUNet()
    den = Denoiser(unet, MS)
    x, sigma = torch.randn(2, 4, 8, 8), torch.full((2,), 3.0)
    pos, neg = conds(1, tokens=154), conds(2, tokens=77)
    out = CFGGuider(den, pos, neg, 5.0)(x, sigma)
    assert unet.calls == [(4, 154)]  # 77 tiled to 154: exact for attention
    d_u = den(x, sigma, context=neg[0].context, y=neg[0].y)
    d_c = den(x, sigma, context=pos[0].context, y=pos[0].y)
    assert torch.allclose(out, d_u + 5.0 * (d_c - d_u), atol=1e-5)
    unet.calls.clear()
    CFGGuider(den, conds(1, tokens=77 * 5), conds(2, tokens=77), 5.0)(x, sigma)  # 5x > 4x: separate
    assert sorted(unet.calls) == [(2, 77), (2, 385)]


def test_timestep_range_switches_conditioning_by_sigma():
    unet = RecordingUNet()
    den = Denoiser(unet, MS)
    a, b = conds(1), conds(2)
    early, late = set_timestep_range(a, 0.0, 0.5), set_timestep_range(b, 0.5, 1.0)
    guider = BasicGuider(den, early + late, MS)
    split = MS.percent_to_sigma(0.5)
    x = torch.randn(2, 4, 8, 8)
    hi, lo = torch.full((2,), split * 1.5), torch.full((2,), split / 1.5)
    assert torch.allclose(guider(x, hi), den(x, hi, context=a[0].context, y=a[0].y), atol=1e-6)
    assert torch.allclose(guider(x, lo), den(x, lo, context=b[0].context, y=b[0].y), atol=1e-6)
    with pytest.raises(ValueError, match="need 0 <= start <= end <= 1"):
        set_timestep_range(a, 0.7, 0.2)


def test_combined_entries_average_by_strength_and_area():
    unet = RecordingUNet()
    den = Denoiser(unet, MS)
    x, sigma = torch.randn(1, 4, 16, 16), torch.full((1,), 3.0)
    a, b = conds(1, b=1)[0], conds(2, b=1)[0]
    b2 = Cond(b.context, y=b.y, strength=3.0)
    out = BasicGuider(den, [a, b2])(x, sigma)
    d_a, d_b = den(x, sigma, context=a.context, y=a.y), den(x, sigma, context=b.context, y=b.y)
    assert torch.allclose(out, (d_a + 3 * d_b) / 4, atol=1e-5)
    # An area entry only affects its region (plus the feathered edge blend inside it).
    boxed = Cond(b.context, y=b.y, area=(8, 8, 0, 0))
    out = BasicGuider(den, [a, boxed])(x, sigma)
    assert torch.allclose(out[..., 8:, :], d_a[..., 8:, :], atol=1e-5)
    assert torch.allclose(out[..., :8, 8:], d_a[..., :8, 8:], atol=1e-5)
    # at the region's top-left corner (image border, no feather) both weigh 1
    assert torch.allclose(out[..., 0, 0], ((d_a + d_b) / 2)[..., 0, 0], atol=1e-5)


def test_concat_and_post_cfg_hook():
    a, b = conds(1), conds(2, tokens=10)
    joined = concat_conditioning(a, b)
    assert joined[0].context.shape == (2, 87, 8)
    seen = {}
    den = Denoiser(RecordingUNet(), MS)
    guider = CFGGuider(den, conds(1), conds(2), 4.0, post_cfg_functions=[lambda args: seen.update(args) or args["denoised"] * 0 + 1])
    out = guider(torch.randn(2, 4, 8, 8), torch.full((2,), 2.0))
    assert torch.equal(out, torch.ones_like(out))
    assert set(seen) >= {"denoised", "cond_denoised", "uncond_denoised", "sigma", "input", "cond_scale"}


def test_euler_cfg_pp_rederived():
    """CFG++ Euler: x' = D_cfg + sigma' (x - D_uncond) / sigma."""
    den = Denoiser(RecordingUNet(), MS)
    pos, neg = conds(1), conds(2)
    guider = CFGGuider(den, pos, neg, 3.0)
    x = torch.randn(2, 4, 8, 8)
    sigmas = torch.tensor([5.0, 2.0, 0.0])
    got = get_sampler("euler_cfg_pp").fn(guider, x, sigmas[:2])
    s = torch.full((2,), 5.0)
    d_u = den(x, s, context=neg[0].context, y=neg[0].y)
    d_c = den(x, s, context=pos[0].context, y=pos[0].y)
    want = d_u + 3.0 * (d_c - d_u) + 2.0 * (x - d_u) / 5.0
    assert torch.allclose(got, want, atol=1e-5)
