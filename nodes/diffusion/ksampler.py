"""ComfyUI's sampling semantics as plain functions: KSampler, KSamplerAdvanced, SamplerCustom(Advanced).

`sample_with_guider` is the core (ComfyUI's CFGGuider.sample + KSAMPLER.sample): the latent is scaled into
model space (`process_in`, only if nonzero), noised to sigmas[0] (sqrt(1 + sigma^2) * noise at full
denoise), sampled with an inpainting wrapper when a noise mask is given (KSamplerX0Inpaint: outside the
mask, x is reset to latent + sigma * noise before and the prediction to the latent after each model
call), and scaled back (`process_out`). `ksampler` / `ksampler_advanced` add the step, denoise and
start/end handling of the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .guidance import CFGGuider, Cond
from .noise import prepare_noise
from .samplers import Sampler, get_sampler
from .schedules import calculate_sigmas

__all__ = [
    "LatentFormat",
    "SDXL_LATENT",
    "SD1_LATENT",
    "InpaintDenoiser",
    "ksampler",
    "ksampler_advanced",
    "ksampler_sigmas",
    "prepare_mask",
    "sample_custom",
    "sample_with_guider",
]


@dataclass(frozen=True)
class LatentFormat:
    """VAE latent <-> model latent: model = (vae - shift) * scale; shift may be a per-channel tensor."""

    scale_factor: float = 0.13025
    shift: Any = 0.0

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - _channels(self.shift, latent)) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + _channels(self.shift, latent)


def _channels(v: Any, like: torch.Tensor) -> Any:
    if isinstance(v, torch.Tensor):
        return v.to(like).reshape(1, -1, *([1] * (like.ndim - 2)))
    return v


SDXL_LATENT = LatentFormat(0.13025)
SD1_LATENT = LatentFormat(0.18215)


def prepare_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A [B,H,W] / [H,W] mask resized (bilinear) to the latent's H, W and repeated over channels and batch."""
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:])).float()
    mask = torch.nn.functional.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.repeat(1, shape[1], 1, 1)
    if mask.shape[0] < shape[0]:
        mask = mask.repeat((shape[0] + mask.shape[0] - 1) // mask.shape[0], 1, 1, 1)
    return mask[: shape[0]]


class InpaintDenoiser:
    """KSamplerX0Inpaint: keep the latent where mask = 0 by re-noising it to sigma before and pasting it after each call."""

    def __init__(self, model: Callable[..., torch.Tensor], latent: torch.Tensor, noise: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        self.model, self.latent, self.noise, self.mask = model, latent, noise, mask
        self.supports_post_cfg = getattr(model, "supports_post_cfg", False)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.mask is None:
            return self.model(x, sigma, **kwargs)
        keep = 1.0 - self.mask
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x = x * self.mask + (self.latent + s * self.noise) * keep
        return self.model(x, sigma, **kwargs) * self.mask + self.latent * keep


def sample_with_guider(
    guider: Callable[..., torch.Tensor],
    model_sampling: Any,
    noise: torch.Tensor,
    latent: torch.Tensor,
    sampler: Sampler,
    sigmas: torch.Tensor,
    latent_format: LatentFormat = SDXL_LATENT,
    noise_mask: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    callback: Optional[Callable[[dict], Any]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    info: Optional[dict] = None,
) -> torch.Tensor:
    """Sample a VAE-space latent along sigmas with a guider; returns the VAE-space result (ComfyUI's guider.sample)."""
    if sigmas.shape[-1] == 0:
        return latent
    latent = latent.float()
    noise = noise.to(latent)
    sigmas = sigmas.to(latent)
    model_latent = latent_format.process_in(latent) if torch.count_nonzero(latent) > 0 else latent
    mask = prepare_mask(noise_mask, latent.shape).to(latent) if noise_mask is not None else None
    inpaint_noise = noise
    if sampler.random_inpaint_noise:
        generator = torch.manual_seed((41 if seed is None else int(seed)) + 1)
        inpaint_noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise)
    model = InpaintDenoiser(guider, model_latent, inpaint_noise, mask)
    x = model_sampling.noise_scaling(sigmas[0], noise, model_latent, model_sampling.is_max_denoise(sigmas))
    out = sampler.sample(model, x, sigmas, callback=callback, seed=seed, should_stop=should_stop, info=info)
    out = model_sampling.inverse_noise_scaling(sigmas[-1], out)
    return latent_format.process_out(out.float())


def ksampler_sigmas(model_sampling: Any, sampler_name: str, scheduler: str, steps: int, denoise: Optional[float] = 1.0,
                    samplers: Optional[dict] = None) -> torch.Tensor:
    """KSampler's sigmas: dpm_2/uni_pc drop the penultimate of steps+1; denoise < 1 takes the tail of int(steps/denoise)."""
    discard = get_sampler(sampler_name, samplers).discard_penultimate_sigma

    def compute(n: int) -> torch.Tensor:
        sigmas = calculate_sigmas(model_sampling, scheduler, n + 1 if discard else n)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    if denoise is None or denoise > 0.9999:
        return compute(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    return compute(int(steps / denoise))[-(steps + 1):]


def _check(steps: int, who: str) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"{who}: steps must be an integer >= 1, got {steps!r}")


def ksampler(
    denoiser: Callable[..., torch.Tensor],
    model_sampling: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Sequence[Cond],
    negative: Sequence[Cond],
    latent: dict,
    denoise: float = 1.0,
    *,
    disable_noise: bool = False,
    start_step: Optional[int] = None,
    last_step: Optional[int] = None,
    force_full_denoise: bool = False,
    latent_format: LatentFormat = SDXL_LATENT,
    callback: Optional[Callable[[dict], Any]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    y_fn: Optional[Callable] = None,
    samplers: Optional[dict] = None,
) -> dict:
    """KSampler (ComfyUI's common_ksampler): returns a copy of the LATENT dict with new `samples`.

    `samplers` is the registry to look `sampler_name` up in (built-ins plus plugins'); default: built-ins.
    """
    _check(steps, "KSampler")
    samples = latent["samples"]
    if disable_noise:
        noise = torch.zeros(samples.shape, dtype=samples.dtype, device="cpu")
    else:
        noise = prepare_noise(samples, seed, latent.get("batch_index"))
    sampler = get_sampler(sampler_name, samplers)
    sigmas = ksampler_sigmas(model_sampling, sampler_name, scheduler, steps, denoise, samplers)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return dict(latent)  # nothing left to do: the input comes back unchanged
    guider = CFGGuider(denoiser, positive, negative, cfg, model_sampling, y_fn)
    out = sample_with_guider(guider, model_sampling, noise, samples, sampler, sigmas, latent_format, latent.get("noise_mask"), seed, callback, should_stop)
    result = dict(latent)
    result["samples"] = out
    return result


def ksampler_advanced(
    denoiser: Callable[..., torch.Tensor],
    model_sampling: Any,
    add_noise: bool,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Sequence[Cond],
    negative: Sequence[Cond],
    latent: dict,
    start_at_step: int = 0,
    end_at_step: int = 10000,
    return_with_leftover_noise: bool = False,
    **kwargs: Any,
) -> dict:
    """KSamplerAdvanced: steps [start_at_step, end_at_step) of a steps-long schedule; leftover noise kept on request."""
    return ksampler(
        denoiser, model_sampling, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, 1.0,
        disable_noise=not add_noise, start_step=start_at_step, last_step=end_at_step,
        force_full_denoise=not return_with_leftover_noise, **kwargs,
    )


def sample_custom(
    noise: Any,
    guider: Callable[..., torch.Tensor],
    model_sampling: Any,
    sampler: Sampler,
    sigmas: torch.Tensor,
    latent: dict,
    latent_format: LatentFormat = SDXL_LATENT,
    callback: Optional[Callable[[dict], Any]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> tuple[dict, dict]:
    """SamplerCustomAdvanced: (output, denoised_output) LATENT dicts; `noise` is a RandomNoise / DisableNoise."""
    samples = latent["samples"]
    last_x0: dict = {}

    def track(payload: dict) -> None:
        last_x0["x0"] = payload["denoised"]
        if callback is not None:
            callback(payload)

    out = sample_with_guider(guider, model_sampling, noise.generate_noise(latent), samples, sampler, sigmas, latent_format, latent.get("noise_mask"), getattr(noise, "seed", None), track, should_stop)
    output = dict(latent)
    output["samples"] = out
    denoised = dict(latent)
    denoised["samples"] = latent_format.process_out(last_x0["x0"].float()) if "x0" in last_x0 else out
    return output, denoised
