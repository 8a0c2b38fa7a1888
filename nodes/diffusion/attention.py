"""Attention helpers shared by the UNet and the VAE: multi-head SDPA over token sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["multihead_attention"]


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017) of (B, T, C) queries over (B, S, C) keys/values.

    The channels are split into `heads` groups of C // heads; the softmax scale is head_dim ** -0.5,
    as in ldm's CrossAttention. Runs through `F.scaled_dot_product_attention`, which picks a fused
    (flash / memory-efficient) kernel where the device has one, so no (T, S) score matrix is kept.
    """
    B, T, C = q.shape
    S = k.shape[1]
    assert C % heads == 0, f"attention width {C} is not divisible by {heads} heads"
    assert k.shape == (B, S, C) and v.shape == (B, S, C), f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} disagree"
    d = C // heads
    q = q.view(B, T, heads, d).transpose(1, 2)  # (B, heads, T, d)
    k = k.view(B, S, heads, d).transpose(1, 2)  # (B, heads, S, d)
    v = v.view(B, S, heads, d).transpose(1, 2)  # (B, heads, S, d)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d)
    return out.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
