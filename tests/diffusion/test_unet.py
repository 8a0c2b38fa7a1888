"""UNet: layout, shapes, architecture inference, and parity with diffusers' UNet2DConditionModel."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.unet import (
    SD1_UNET,
    SDXL_BASE_UNET,
    SDXL_REFINER_UNET,
    UNet,
    UNetConfig,
    UNetConfigError,
    timestep_embedding,
    unet_config_from_state_dict,
)
from tests.diffusion.conftest import TIME_EMBED, TINY_REFINER, TINY_SD1, TINY_SDXL, diffusers_unet_kwargs, randomize_

single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
diffusers = pytest.importorskip("diffusers")


def _meta(cfg: UNetConfig) -> UNet:
    with torch.device("meta"):
        return UNet(cfg)


@pytest.mark.parametrize(
    "cfg, params, tensors",
    [(SDXL_BASE_UNET, 2_567_463_684, 1680), (SDXL_REFINER_UNET, 2_259_526_660, 1220), (SD1_UNET, 859_520_964, 686)],
    ids=["sdxl_base", "sdxl_refiner", "sd1"],
)
def test_full_size_parameter_counts_and_inference(cfg, params, tensors):
    model = _meta(cfg)
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(sd) == tensors
    assert unet_config_from_state_dict(sd) == cfg


def test_sdxl_base_key_layout():
    sd = _meta(SDXL_BASE_UNET).state_dict()
    assert sd["time_embed.0.weight"].shape == (1280, 320)
    assert sd["label_emb.0.0.weight"].shape == (1280, 2816)
    assert sd["input_blocks.4.0.skip_connection.weight"].shape == (640, 320, 1, 1)
    assert sd["input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert sd["input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape == (640, 2048)
    assert sd["input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight"].shape == (5120, 640)
    assert sd["input_blocks.4.1.proj_in.weight"].shape == (640, 640)
    assert "input_blocks.7.1.transformer_blocks.9.norm3.weight" in sd
    assert "middle_block.1.transformer_blocks.9.attn1.to_out.0.bias" in sd
    assert "output_blocks.2.2.conv.weight" in sd and "output_blocks.5.2.conv.weight" in sd
    assert "output_blocks.6.1.norm.weight" not in sd  # level 0 has no attention
    assert sd["out.2.weight"].shape == (4, 320, 3, 3)
    skip_in = [sd[f"output_blocks.{i}.0.in_layers.2.weight"].shape[1] for i in range(9)]
    assert skip_in == [2560, 2560, 1920, 1920, 1280, 960, 960, 640, 640]
    refiner = _meta(SDXL_REFINER_UNET).state_dict()
    assert "output_blocks.2.1.conv.weight" in refiner and "output_blocks.8.2.conv.weight" in refiner
    assert refiner["label_emb.0.0.weight"].shape == (1536, 2560)


def test_inference_of_variant_depths():
    """SSD-1B / Vega-style models drop transformer blocks unevenly; inference keeps per-block depths."""
    cfg = UNetConfig(
        model_channels=32, channel_mult=(1, 2, 2), transformer_depth=(0, 2, 2), transformer_depth_middle=None,
        transformer_depth_input=(0, 0, 1, 2, 2, 1), transformer_depth_output=(1, 2, 2, 1, 1, 0, 0, 0, 0),
        context_dim=48, adm_in_channels=80,
    )
    sd = _meta(cfg).state_dict()
    assert not any(k.startswith("middle_block.1.") for k in sd)
    inferred = unet_config_from_state_dict(sd)
    assert inferred == cfg
    assert inferred.input_depths() == [0, 0, 1, 2, 2, 1]


def test_inference_of_sd1_heads_and_conv_projection():
    inferred = unet_config_from_state_dict({k: v.shape for k, v in _meta(SD1_UNET).state_dict().items()})
    assert inferred.num_heads == 8 and inferred.num_head_channels == -1
    assert not inferred.use_linear_in_transformer and inferred.adm_in_channels is None and inferred.context_dim == 768


def test_inference_rejects_broken_tensors():
    sd = dict(_meta(TINY_SDXL).state_dict())
    with pytest.raises(UNetConfigError, match="missing out.2.weight"):
        unet_config_from_state_dict({k: v for k, v in sd.items() if not k.startswith("out.")})


def test_timestep_embedding_is_cos_first():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]), atol=1e-6)


def test_forward_shapes_and_conditioning_effect():
    model = randomize_(UNet(TINY_SDXL)).eval()
    x = torch.randn(2, 4, 16, 16)
    ctx, y = torch.randn(2, 7, 48), torch.randn(2, 80)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 900]), ctx, y)
        assert out.shape == x.shape and torch.isfinite(out).all()
        other_text = model(x, torch.tensor([10, 900]), torch.randn(2, 7, 48), y)
        other_t = model(x, torch.tensor([500, 500]), ctx, y)
    scale = out.std()
    assert (out - other_text).abs().mean() > 0.01 * scale, "the text context must change the output"
    assert (out - other_t).abs().mean() > 0.01 * scale, "the timestep must change the output"


def test_forward_errors_are_clear():
    model = UNet(TINY_SDXL).eval()
    with pytest.raises(AssertionError, match="needs vector conditioning y of width 80"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.randn(1, 7, 48))
    with pytest.raises(AssertionError, match="multiple of 4"):
        model(torch.randn(1, 4, 18, 16), torch.tensor([1]), torch.randn(1, 7, 48), torch.randn(1, 80))


def _diffusers_twin(cfg: UNetConfig, ours: UNet):
    twin = diffusers.UNet2DConditionModel(**diffusers_unet_kwargs(cfg)).eval()
    ldm = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    converted = single_file_utils.convert_ldm_unet_checkpoint(ldm, twin.config)
    twin.load_state_dict(converted, strict=True)
    return twin


@pytest.mark.parametrize("cfg", [TINY_SDXL, TINY_REFINER], ids=["sdxl", "refiner"])
def test_parity_with_diffusers_sdxl_style(cfg):
    ours = randomize_(UNet(cfg), seed=1).eval()
    twin = _diffusers_twin(cfg, ours)
    B, pooled_dim = 2, 32
    n_scalars = (cfg.adm_in_channels - pooled_dim) // TIME_EMBED
    x, t = torch.randn(B, 4, 16, 16), torch.tensor([3.0, 721.0])
    ctx, pooled = torch.randn(B, 5, cfg.context_dim), torch.randn(B, pooled_dim)
    time_ids = torch.tensor([[64.0, 48, 0, 8, 64, 48, 0, 0, 0][:n_scalars], [32.0, 32, 4, 0, 32, 32, 0, 0, 0][:n_scalars]])
    # y as sgm builds it: pooled, then each scalar's sinusoidal embedding (cos first)
    y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), TIME_EMBED).reshape(B, -1)], dim=1)
    with torch.no_grad():
        ref = twin(x, t, ctx, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        out = ours(x, t, ctx, y)
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= 1e-4


def test_parity_with_diffusers_sd1_style():
    ours = randomize_(UNet(TINY_SD1), seed=2).eval()
    twin = _diffusers_twin(TINY_SD1, ours)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([999, 1]), torch.randn(2, 6, 32)
    with torch.no_grad():
        ref = twin(x, t, ctx).sample
        out = ours(x, t, ctx)
    assert (out - ref).abs().max().item() <= 1e-4
