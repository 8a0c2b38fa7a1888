"""VAE: layout, inference, parity with diffusers' AutoencoderKL, tiled encode / decode without seams."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.vae import SDXL_VAE, AutoencoderKL, VAEConfig, VAEConfigError, _tile_starts, vae_config_from_state_dict
from tests.diffusion.conftest import TINY_VAE, diffusers_vae_kwargs, randomize_

single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return randomize_(AutoencoderKL(TINY_VAE), seed=3).eval()


def test_full_size_layout_and_inference():
    with torch.device("meta"):
        model = AutoencoderKL(SDXL_VAE)
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 83_653_863 and len(sd) == 248
    assert sd["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert sd["encoder.conv_out.weight"].shape == (8, 512, 3, 3)
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1) and sd["post_quant_conv.weight"].shape == (4, 4, 1, 1)
    assert sd["decoder.up.3.block.2.conv1.weight"].shape == (512, 512, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in sd and "decoder.up.1.upsample.conv.weight" in sd
    assert "encoder.down.3.downsample.conv.weight" not in sd and "encoder.down.2.downsample.conv.weight" in sd
    assert vae_config_from_state_dict(sd) == SDXL_VAE
    assert model.scale_factor == pytest.approx(0.13025)


def test_inference_of_level_attention_and_errors():
    cfg = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,))
    with torch.device("meta"):
        sd = AutoencoderKL(cfg).state_dict()
    assert "decoder.up.1.attn.1.proj_out.weight" in sd
    assert vae_config_from_state_dict(sd) == cfg
    with pytest.raises(VAEConfigError, match="missing quant_conv.weight"):
        vae_config_from_state_dict({k: v for k, v in sd.items() if not k.startswith("quant_conv")})


def test_parity_with_diffusers(tiny_vae):
    twin = diffusers.AutoencoderKL(**diffusers_vae_kwargs(TINY_VAE)).eval()
    ldm = {"first_stage_model." + k: v for k, v in tiny_vae.state_dict().items()}
    twin.load_state_dict(single_file_utils.convert_ldm_vae_checkpoint(ldm, twin.config), strict=True)
    pixels = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        ref_mean = twin.encode(pixels).latent_dist.mean
        mean = tiny_vae.encode(pixels)
        assert mean.shape == (2, 4, 8, 6)
        assert (mean - ref_mean).abs().max().item() <= 1e-4
        z = torch.randn(2, 4, 8, 6)
        ref = twin.decode(z).sample
        out = tiny_vae.decode(z)
    assert out.shape == (2, 3, 64, 48) and ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= 1e-4


def test_encode_sample_uses_generator(tiny_vae):
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean = tiny_vae.encode(pixels)
        a = tiny_vae.encode(pixels, generator=torch.Generator().manual_seed(1))
        b = tiny_vae.encode(pixels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, mean)


def test_tile_starts_cover_with_overlap():
    assert _tile_starts(10, 16, 4) == [0]
    for size, tile, overlap in [(32, 16, 4), (40, 16, 6), (100, 24, 8)]:
        starts = _tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def _column_energy(img: torch.Tensor) -> torch.Tensor:
    """Mean squared horizontal gradient per column boundary: a seam shows as a spike."""
    return (img[..., :, 1:] - img[..., :, :-1]).pow(2).mean(dim=(0, 1, 2))


def test_tiled_decode_is_close_and_seamless(tiny_vae):
    noise = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        full = tiny_vae.decode(noise)
        one_tile = tiny_vae.decode_tiled(noise, tile=32)
        tiled = tiny_vae.decode_tiled(noise, tile=16, overlap=8)  # tiles at 0, 8, 16 latent units
    assert (one_tile - full).abs().max().item() <= 1e-5, "a single tile must equal the untiled decode"
    # Tolerance: each tile normalises with its own GroupNorm statistics and sees less context (as in
    # ComfyUI), so tiled != untiled; on this random VAE the mean abs error stays under 20% of the mean
    # |pixel| (0.16 measured on white noise); trained VAEs on natural images differ far less.
    rel = (tiled - full).abs().mean() / full.abs().mean()
    assert rel < 0.2, f"tiled decode differs from untiled by {rel:.3f} (relative mean abs)"

    # Seams: a smooth latent, like real ones (detail comes from the decoder), so a seam would stand out.
    z = torch.nn.functional.interpolate(torch.randn(1, 4, 8, 8), size=(32, 32), mode="bilinear")
    with torch.no_grad():
        full = tiny_vae.decode(z)
        tiled = tiny_vae.decode_tiled(z, tile=16, overlap=8)
        hard = tiny_vae.decode_tiled(z, tile=16, overlap=0)  # abutting tiles, no blending: a seam at 128
    # Seams: gradient energy where tiles meet (pixel 128 for the hard cut; the blend spans 64..192)
    # compared with the median column.
    e_tiled, e_hard, e_full = _column_energy(tiled), _column_energy(hard), _column_energy(full)
    border = [63, 64, 127, 128, 191, 192]
    ratio_tiled = e_tiled[border].max() / e_tiled.median()
    ratio_hard = e_hard[127] / e_hard.median()
    ratio_full = e_full[border].max() / e_full.median()
    assert ratio_hard > 4, f"the seam detector should see the hard cut (ratio {ratio_hard:.2f})"
    assert ratio_tiled < max(1.5, 1.2 * ratio_full), f"blended tiles show a seam (ratio {ratio_tiled:.2f})"


def test_tiled_encode_matches_single_tile_and_blends(tiny_vae):
    pixels = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16) * 2 - 1, size=(256, 256), mode="bilinear")
    with torch.no_grad():
        full = tiny_vae.encode(pixels)
        one = tiny_vae.encode_tiled(pixels, tile=32)
        tiled = tiny_vae.encode_tiled(pixels, tile=16, overlap=8)
    assert tiled.shape == full.shape == (1, 4, 32, 32)
    assert (one - full).abs().max().item() <= 1e-5
    rel = (tiled - full).abs().mean() / full.abs().mean()
    # same cause and tolerance reasoning as for decode; 0.28 measured on this random encoder
    assert rel < 0.35, f"tiled encode differs by {rel:.3f} (relative mean abs)"


def test_tile_size_follows_memory_bound(tiny_vae):
    big = tiny_vae.tile_for_memory(128, 128, memory_bytes=1 << 40)
    assert big == (128, 0), "a latent that fits is decoded whole"
    small_tile, small_overlap = tiny_vae.tile_for_memory(128, 128, memory_bytes=64 << 20)
    smaller_tile, _ = tiny_vae.tile_for_memory(128, 128, memory_bytes=16 << 20)
    assert 16 <= smaller_tile < small_tile < 128 and small_overlap == small_tile // 4
    assert tiny_vae.activation_bytes(small_tile, small_tile) <= 64 << 20
    z = torch.randn(1, 4, 24, 24)
    with torch.no_grad():
        out = tiny_vae.decode_tiled(z, memory_bytes=tiny_vae.activation_bytes(16, 16))
    assert out.shape == (1, 3, 192, 192) and torch.isfinite(out).all()


def test_tiled_argument_errors(tiny_vae):
    with pytest.raises(ValueError, match="2 \\* overlap <= tile"):
        tiny_vae.decode_tiled(torch.randn(1, 4, 16, 16), tile=8, overlap=6)
