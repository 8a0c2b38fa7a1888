"""Tiny model configurations for the UNet / VAE / checkpoint tests, and their diffusers twins."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.unet import UNetConfig
from nodes.diffusion.vae import VAEConfig

# SDXL-architecture: no attention at level 0, linear proj, text_time vector y (pooled 32 + 6 x 8).
TINY_SDXL = UNetConfig(
    model_channels=32, channel_mult=(1, 2, 2), transformer_depth=(0, 1, 2), transformer_depth_middle=2,
    num_head_channels=16, context_dim=48, adm_in_channels=32 + 6 * 8,
)
# Refiner-style: four levels, attention only at the middle two, y = pooled + 5 x 8 ("2560-style").
TINY_REFINER = UNetConfig(
    model_channels=32, channel_mult=(1, 2, 2, 2), transformer_depth=(0, 1, 1, 0), transformer_depth_middle=1,
    num_head_channels=16, context_dim=32, adm_in_channels=32 + 5 * 8,
)
# SD1-style: attention at the top levels, conv proj_in / proj_out, fixed head count, no y.
TINY_SD1 = UNetConfig(
    model_channels=32, channel_mult=(1, 2, 2), transformer_depth=(1, 1, 0), transformer_depth_middle=1,
    num_head_channels=-1, num_heads=2, context_dim=32, adm_in_channels=None, use_linear_in_transformer=False,
)
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
TIME_EMBED = 8  # per-scalar width of the size/crop embedding in the tiny y (SDXL: 256)


@pytest.fixture(autouse=True)
def _seed():
    """Seed torch's global generator, so each test's random tensors are the same on every run."""
    torch.manual_seed(0)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with scaled noise (ldm zero-inits output convs, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0  # norm scales near 1, biases near 0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
    return module


def diffusers_unet_kwargs(cfg: UNetConfig) -> dict:
    """Keyword arguments for diffusers' UNet2DConditionModel with the same architecture (sdxl.md 4a)."""
    levels = len(cfg.channel_mult)
    attn = [d > 0 for d in cfg.transformer_depth]
    heads = [cfg.heads(cfg.model_channels * m)[0] for m in cfg.channel_mult]
    kwargs = dict(
        sample_size=32,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=tuple(cfg.model_channels * m for m in cfg.channel_mult),
        layers_per_block=cfg.num_res_blocks,
        # diffusers' quirk: attention_head_dim holds the number of heads per level
        attention_head_dim=tuple(heads),
        transformer_layers_per_block=tuple(max(d, 1) if i < levels - 1 else (cfg.transformer_depth_middle or 1)
                                           for i, d in enumerate(cfg.transformer_depth)),
        cross_attention_dim=cfg.context_dim,
        use_linear_projection=cfg.use_linear_in_transformer,
        norm_num_groups=cfg.norm_groups,
    )
    if cfg.adm_in_channels is not None:
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
                      projection_class_embeddings_input_dim=cfg.adm_in_channels)
    return kwargs


def diffusers_vae_kwargs(cfg: VAEConfig) -> dict:
    levels = len(cfg.ch_mult)
    return dict(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=64,
    )
