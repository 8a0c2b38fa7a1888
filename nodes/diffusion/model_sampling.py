"""Model sampling: how a network's noise level, input scaling and output map to k-diffusion's denoiser.

A k-diffusion sampler works on x = x0 + sigma * eps and calls `model(x, sigma) -> denoised` (an x0 estimate).
A UNet instead sees a scaled input and a timestep, and predicts eps, v or (EDM) a skip-connected x0.
`ModelSamplingDiscrete` (SD1/SDXL, DDPM betas) and `ModelSamplingEDM` (continuous sigmas, e.g. Playground
2.5) hold the conversions; `Denoiser` puts a UNet and one of them together.
Sources: Karras et al. 2022 (EDM, arXiv 2206.00364) table 1; ComfyUI `comfy/model_sampling.py` for the
timestep rounding and noise scaling conventions.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

__all__ = [
    "PREDICTION_TYPES",
    "ModelSamplingDiscrete",
    "ModelSamplingEDM",
    "Denoiser",
    "scaled_linear_betas",
]

PREDICTION_TYPES = ("eps", "v", "edm")


def _check_prediction(prediction: str, allowed: tuple[str, ...], who: str) -> str:
    if prediction not in allowed:
        raise ValueError(f"{who}: prediction type {prediction!r} is not supported; use one of {', '.join(allowed)}")
    return prediction


def _view(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sigma as [B, 1, 1, ...] (or a scalar) so it broadcasts against x."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


def scaled_linear_betas(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    """The "scaled_linear" DDPM betas of Stable Diffusion: linspace(sqrt(start), sqrt(end))**2, in float64."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2


class _ParameterizationMixin:
    """sigma_min / sigma_max, calculate_input, calculate_denoised and noise_scaling: shared by the discrete and EDM samplings."""

    prediction: str
    sigma_data: float
    sigmas: torch.Tensor  # (T,) ascending float32: the model's sigma table

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The UNet's input c_in * x = x / sqrt(sigma^2 + sigma_data^2)."""
        s = _view(sigma, x)
        return x / (s**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 from the network output: eps (x - sigma*eps), v, or EDM's c_skip*x + c_out*F."""
        s = _view(sigma, model_output)
        sd2 = self.sigma_data**2
        if self.prediction == "eps":
            return x - model_output * s
        if self.prediction == "v":
            return x * sd2 / (s**2 + sd2) - model_output * s * self.sigma_data / (s**2 + sd2) ** 0.5
        return x * sd2 / (s**2 + sd2) + model_output * s * self.sigma_data / (s**2 + sd2) ** 0.5

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False) -> torch.Tensor:
        """The sampler's start point: latent + sigma*noise, or latent + sqrt(1+sigma^2)*noise at full denoise (ComfyUI)."""
        s = _view(sigma, noise)
        scaled = noise * torch.sqrt(1.0 + s**2) if max_denoise else noise * s
        return scaled + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Undo noise_scaling's variance convention on the sampler's output (the identity for eps/v/EDM)."""
        return latent

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        """True when the first sigma is the model's sigma_max (ComfyUI: isclose rel 1e-5, or above it)."""
        sigma = float(sigmas[0])
        return math.isclose(float(self.sigma_max), sigma, rel_tol=1e-05) or sigma > float(self.sigma_max)


class ModelSamplingDiscrete(_ParameterizationMixin):
    """DDPM's discrete schedule (1000 steps of scaled_linear betas for SD1/SDXL) in sigma form.

    sigma_t = sqrt((1 - alphabar_t) / alphabar_t), computed in float64 and kept as float32 like ComfyUI,
    so that schedules read from it give ComfyUI's exact numbers.
    """

    def __init__(
        self,
        prediction: str = "eps",
        timesteps: int = 1000,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        betas: Optional[torch.Tensor] = None,
    ) -> None:
        self.prediction = _check_prediction(prediction, ("eps", "v"), "ModelSamplingDiscrete")
        self.sigma_data = 1.0
        betas = scaled_linear_betas(timesteps, linear_start, linear_end) if betas is None else betas.to(torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (T,) float64
        self.alphas_cumprod = alphas_cumprod
        sigmas64 = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = sigmas64.float()
        self.log_sigmas = sigmas64.log().float()

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.shape[0]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep nearest to sigma in log-sigma (ComfyUI rounding), as float."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log().reshape(-1)[None, :] - self.log_sigmas.to(sigma.device)[:, None]  # (T, N)
        return dists.abs().argmin(dim=0).reshape(sigma.shape).float()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating log-sigma linearly between training steps."""
        t = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, self.num_timesteps - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self.log_sigmas.to(t.device)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0 = start, 1 = end), as ConditioningSetTimestepRange."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1))))


class ModelSamplingEDM(_ParameterizationMixin):
    """Continuous log-uniform sigmas with EDM preconditioning (c_in, c_skip, c_out from sigma_data).

    Playground 2.5 uses prediction "edm", sigma_data 0.5, sigma_min 0.002, sigma_max 80; the network's
    timestep input is c_noise = ln(sigma) / 4 (Karras et al. 2022, table 1).
    """

    def __init__(self, prediction: str = "edm", sigma_min: float = 0.002, sigma_max: float = 120.0, sigma_data: float = 1.0) -> None:
        self.prediction = _check_prediction(prediction, PREDICTION_TYPES, "ModelSamplingEDM")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"ModelSamplingEDM: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_data = float(sigma_data)
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000, dtype=torch.float64).exp().float()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's c_noise = ln(sigma) / 4."""
        return 0.25 * torch.as_tensor(sigma, dtype=torch.float32).log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Inverse of timestep: exp(4 t)."""
        return (torch.as_tensor(timestep, dtype=torch.float32) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of sampling, log-linear between sigma_max (0) and sigma_min (1)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        lo, hi = math.log(float(self.sigma_min)), math.log(float(self.sigma_max))
        return math.exp((hi - lo) * (1.0 - percent) + lo)


class Denoiser:
    """A UNet plus model sampling as k-diffusion's `model(x, sigma, **extra_args) -> denoised`.

    The UNet is any callable `unet(x_in, timesteps, context, y=None)` returning eps / v / F per the
    model sampling's prediction type. Extra keyword arguments are passed through to it.
    """

    def __init__(self, unet: Callable[..., torch.Tensor], model_sampling: Any) -> None:
        self.unet = unet
        self.model_sampling = model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None, **kwargs: Any) -> torch.Tensor:
        ms = self.model_sampling
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        x_in = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma)
        out = self.unet(x_in, t, context, y=y, **kwargs)
        return ms.calculate_denoised(sigma, out.to(x.dtype), x)
