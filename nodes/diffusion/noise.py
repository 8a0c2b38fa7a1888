"""Seeded noise: the initial latent noise (ComfyUI's `prepare_noise`) and the samplers' per-step noise.

Initial noise is `torch.randn` on the CPU after `torch.manual_seed(seed)`, whatever device samples,
so that a seed gives the same image everywhere. Per-step noise for ancestral samplers comes from a
CPU generator seeded with seed + 1; SDE samplers use a Brownian tree (torchsde) seeded with the seed,
so that their noise is consistent across step counts (Kidger et al. 2021, "Efficient and accurate
gradients for neural SDEs", Brownian interval).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

__all__ = [
    "BrownianTreeNoiseSampler",
    "DisableNoise",
    "NoiseSampler",
    "RandomNoise",
    "default_noise_sampler",
    "prepare_noise",
]

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Noise shaped like latent from torch.manual_seed(seed) on the CPU; with batch_index, the noise of those batch positions.

    ComfyUI draws the whole batch from one generator; with `batch_index` it draws one sample per index
    0..max(batch_index) in turn and keeps those named (so a latent cut from a batch keeps its noise).
    """
    generator = torch.manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    shape = tuple(latent.shape)
    if batch_index is None:
        return torch.randn(shape, dtype=latent.dtype, generator=generator, device="cpu")
    indices = [int(i) for i in batch_index]
    if not indices or min(indices) < 0:
        raise ValueError(f"prepare_noise: batch_index must be non-empty and >= 0, got {list(batch_index)}")
    drawn: dict[int, torch.Tensor] = {}
    wanted = set(indices)
    for i in range(max(indices) + 1):
        sample = torch.randn((1,) + shape[1:], dtype=latent.dtype, generator=generator, device="cpu")
        if i in wanted:
            drawn[i] = sample
    return torch.cat([drawn[i] for i in indices], dim=0)


class RandomNoise:
    """The NOISE of RandomNoise: `generate_noise(latent)` = prepare_noise with this seed."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def generate_noise(self, latent: dict | torch.Tensor) -> torch.Tensor:
        samples = latent["samples"] if isinstance(latent, dict) else latent
        batch_index = latent.get("batch_index") if isinstance(latent, dict) else None
        return prepare_noise(samples, self.seed, batch_index)


class DisableNoise:
    """The NOISE of DisableNoise: zeros (sample from the latent as it is)."""

    seed = 0

    def generate_noise(self, latent: dict | torch.Tensor) -> torch.Tensor:
        samples = latent["samples"] if isinstance(latent, dict) else latent
        return torch.zeros(samples.shape, dtype=samples.dtype, device="cpu")


def default_noise_sampler(x: torch.Tensor, seed: Optional[int] = None) -> NoiseSampler:
    """Fresh standard normal noise per call; seeded from seed + 1 on a generator on x's device (ComfyUI)."""
    if seed is None:
        return lambda sigma, sigma_next: torch.randn_like(x)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(int(seed) + 1)
    return lambda sigma, sigma_next: torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


class BrownianTreeNoiseSampler:
    """Noise from a Brownian tree over sigma: W(t1) - W(t0) normalized by sqrt(|t1 - t0|) (k-diffusion's construction).

    The tree lives on the CPU (as ComfyUI's default), so results do not depend on the device.
    A list of seeds gives one tree per batch item.
    """

    def __init__(self, x: torch.Tensor, sigma_min: Any, sigma_max: Any, seed: Optional[int | Sequence[int]] = None, transform: Callable[[torch.Tensor], torch.Tensor] = lambda s: s) -> None:
        import torchsde  # deferred: heavy import, only SDE samplers need it

        self.transform = transform
        t0 = transform(torch.as_tensor(sigma_min)).detach().cpu().float()
        t1 = transform(torch.as_tensor(sigma_max)).detach().cpu().float()
        self.sign = 1 if t0 < t1 else -1
        if self.sign < 0:
            t0, t1 = t1, t0
        w0 = torch.zeros(x.shape, dtype=x.dtype, device="cpu")
        if seed is None:
            seeds: list[int] = [int(torch.randint(0, 2**63 - 1, ()).item())]
            self.batched = False
        elif isinstance(seed, (list, tuple)):
            if len(seed) != x.shape[0]:
                raise ValueError(f"BrownianTreeNoiseSampler: {len(seed)} seeds for a batch of {x.shape[0]}")
            seeds, self.batched, w0 = [int(s) for s in seed], True, w0[0]
        else:
            seeds, self.batched = [int(seed)], False
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]
        self.t_lo, self.t_hi = float(t0), float(t1)
        self.device, self.dtype = x.device, x.dtype

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        t0 = self.transform(torch.as_tensor(sigma)).detach().cpu().float()
        t1 = self.transform(torch.as_tensor(sigma_next)).detach().cpu().float()
        sign = self.sign * (1 if t0 < t1 else -1)
        lo, hi = (t0, t1) if t0 < t1 else (t1, t0)
        # Queries at the ends may differ from the stored bounds by float rounding; keep them inside.
        lo, hi = lo.clamp(self.t_lo, self.t_hi), hi.clamp(self.t_lo, self.t_hi)
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        w = w if self.batched else w[0]
        return (w / (hi - lo).sqrt()).to(device=self.device, dtype=self.dtype)
