"""Custom sampling: NOISE, GUIDER and SAMPLER sockets, SamplerCustom(Advanced), the adaptive schedule."""

from __future__ import annotations

from typing import Any

import torch

from engine import In, Input, Node, NodeContext, Output
from engine.types import CONDITIONING, GUIDER, LATENT, MODEL, NOISE, SAMPLER, SIGMAS
from nodes._sampling import GuiderSpec, Progress, interrupted, sampler_choices, sampler_named, sampling
from nodes.diffusion import ksampler as ks
from nodes.diffusion.adaptive import get_sigmas_adaptive
from nodes.diffusion.noise import DisableNoise as _DisableNoise
from nodes.diffusion.noise import RandomNoise as _RandomNoise
from nodes.diffusion.samplers import SamplingInterrupted

__all__ = ["SamplerCustom", "SamplerCustomAdvanced", "KSamplerSelect", "RandomNoise", "DisableNoise",
           "CFGGuider", "BasicGuider", "AdaptiveScheduler", "NODES"]

MAX_SEED = 0xFFFFFFFFFFFFFFFF


class _SeededDisableNoise(_DisableNoise):
    """No initial noise, with a seed kept for the per-step noise of ancestral samplers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed


def _sample(ctx: NodeContext, noise: Any, guider: GuiderSpec, sampler: Any, sigmas: torch.Tensor,
            latent: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    model = guider.model
    who = f"node {ctx.node_id} ({ctx.node_type})"
    try:
        with sampling(model) as denoiser:
            return ks.sample_custom(
                noise, guider.build(denoiser, latent["samples"].shape, who), model.model_sampling, sampler, sigmas,
                latent, model.latent_format, Progress(ctx, model, len(sigmas) - 1), lambda: ctx.interrupted,
            )
    except SamplingInterrupted as exc:
        raise interrupted(ctx, exc) from exc


class SamplerCustom(Node):
    """Sample with a model, cfg, prompts, a SAMPLER and SIGMAS; also returns the last x0 estimate."""

    category = "sampling/custom_sampling"
    outputs = (Output(LATENT, "output"), Output(LATENT, "denoised_output"))

    model: In[MODEL]
    add_noise: bool = Input(True)
    noise_seed: int = Input(0, ge=0, le=MAX_SEED, control_after_generate=True)
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    positive: In[CONDITIONING]
    negative: In[CONDITIONING]
    sampler: In[SAMPLER]
    sigmas: In[SIGMAS]
    latent_image: In[LATENT]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        noise = _RandomNoise(self.noise_seed) if self.add_noise else _SeededDisableNoise(self.noise_seed)
        guider = GuiderSpec(self.model, self.positive, self.negative, self.cfg)
        return _sample(ctx, noise, guider, self.sampler, self.sigmas, self.latent_image)


class SamplerCustomAdvanced(Node):
    """Sample with a NOISE source, a GUIDER, a SAMPLER and SIGMAS; also returns the last x0 estimate."""

    category = "sampling/custom_sampling"
    outputs = (Output(LATENT, "output"), Output(LATENT, "denoised_output"))

    noise: In[NOISE]
    guider: In[GUIDER]
    sampler: In[SAMPLER]
    sigmas: In[SIGMAS]
    latent_image: In[LATENT]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return _sample(ctx, self.noise, self.guider, self.sampler, self.sigmas, self.latent_image)


class KSamplerSelect(Node):
    """A sampler by name."""

    category = "sampling/custom_sampling/samplers"
    outputs = (Output(SAMPLER),)

    sampler_name: str = Input("euler", choices=sampler_choices)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (sampler_named(ctx, self.sampler_name),)


class RandomNoise(Node):
    """Seeded initial noise (torch.randn on the CPU, as ComfyUI)."""

    category = "sampling/custom_sampling/noise"
    outputs = (Output(NOISE),)

    noise_seed: int = Input(0, ge=0, le=MAX_SEED, control_after_generate=True)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (_RandomNoise(self.noise_seed),)


class DisableNoise(Node):
    """No initial noise: sample from the latent as it is."""

    category = "sampling/custom_sampling/noise"
    outputs = (Output(NOISE),)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (_DisableNoise(),)


class CFGGuider(Node):
    """Classifier-free guidance between a positive and a negative prompt."""

    category = "sampling/custom_sampling/guiders"
    outputs = (Output(GUIDER),)

    model: In[MODEL]
    positive: In[CONDITIONING]
    negative: In[CONDITIONING]
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (GuiderSpec(self.model, self.positive, self.negative, self.cfg),)


class BasicGuider(Node):
    """The conditioned prediction only: no negative prompt, no guidance scale."""

    category = "sampling/custom_sampling/guiders"
    outputs = (Output(GUIDER),)

    model: In[MODEL]
    conditioning: In[CONDITIONING]

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (GuiderSpec(self.model, self.conditioning, None, 1.0),)


class AdaptiveScheduler(Node):
    """A schedule fitted to this model, prompt and latent: steps go where the prediction changes most.

    A short pilot pass (pilot_steps model evaluations) measures how fast the denoised estimate changes
    along the noise levels; the schedule then gives each step an equal share of that change (see
    nodes/diffusion/adaptive.py). Use its SIGMAS with SamplerCustomAdvanced and the same guider/noise.
    """

    category = "sampling/custom_sampling/schedulers"
    outputs = (Output(SIGMAS),)

    guider: In[GUIDER]
    noise: In[NOISE]
    latent_image: In[LATENT]
    steps: int = Input(20, ge=1, le=10000)
    pilot_steps: int = Input(12, ge=4, le=200, tooltip="Model evaluations spent measuring the trajectory.")
    order: int = Input(2, ge=1, le=2, tooltip="Order of the sampler the schedule is made for (2 for dpmpp_2m).")
    floor: float = Input(0.1, ge=0.0, le=1.0, step=0.01, tooltip="Share of evenly spread steps, so no region is skipped.")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        model = self.guider.model
        ms = model.model_sampling
        samples = self.latent_image["samples"].float()
        who = f"node {ctx.node_id} (AdaptiveScheduler)"
        with sampling(model) as denoiser:
            guider = self.guider.build(denoiser, samples.shape, who)
            start = model.latent_format.process_in(samples) if torch.count_nonzero(samples) > 0 else samples
            noise = self.noise.generate_noise(self.latent_image).to(start)
            x = ms.noise_scaling(ms.sigma_max, noise, start, max_denoise=True)
            schedule = get_sigmas_adaptive(guider, x, self.steps, float(ms.sigma_min), float(ms.sigma_max),
                                           pilot_steps=self.pilot_steps, order=self.order, floor=self.floor)
        return (schedule.sigmas,)


NODES = (SamplerCustom, SamplerCustomAdvanced, KSamplerSelect, RandomNoise, DisableNoise, CFGGuider, BasicGuider,
         AdaptiveScheduler)
