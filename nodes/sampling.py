"""KSampler, KSamplerAdvanced and Refine: sampling with ComfyUI's semantics (nodes/diffusion/ksampler.py)."""

from __future__ import annotations

from typing import Any

from engine import In, Input, Node, NodeContext, Output
from engine.types import CONDITIONING, LATENT, MODEL, SIGMAS
from nodes._sampling import GuiderSpec, Progress, interrupted, sampler_choices, sampler_named, sampling, to_conds
from nodes.diffusion import ksampler as ks
from nodes.diffusion.noise import DisableNoise
from nodes.diffusion.samplers import SamplingInterrupted
from nodes.sigmas import scheduler_choices

__all__ = ["KSampler", "KSamplerAdvanced", "Refine", "NODES"]

MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _run_ksampler(node: Node, ctx: NodeContext, total: int, **kwargs: Any) -> dict[str, Any]:
    model = node.model  # type: ignore[attr-defined]
    latent = node.latent_image  # type: ignore[attr-defined]
    who = f"node {ctx.node_id} ({ctx.node_type})"
    shape = latent["samples"].shape
    positive = to_conds(node.positive, model, shape, False, who)  # type: ignore[attr-defined]
    negative = to_conds(node.negative, model, shape, True, who)  # type: ignore[attr-defined]
    try:
        with sampling(model) as denoiser:
            return ks.ksampler(
                denoiser, model.model_sampling, positive=positive, negative=negative, latent=latent,
                latent_format=model.latent_format, callback=Progress(ctx, model, total),
                should_stop=lambda: ctx.interrupted, samplers=ctx.env.services.get("samplers") or None, **kwargs,
            )
    except SamplingInterrupted as exc:
        raise interrupted(ctx, exc) from exc


class KSampler(Node):
    """Denoise a latent with a model, prompts, a sampler and a schedule."""

    category = "sampling"
    outputs = (Output(LATENT),)

    model: In[MODEL]
    seed: int = Input(0, ge=0, le=MAX_SEED, control_after_generate=True,
                      tooltip="The random seed used for creating the noise.")
    steps: int = Input(20, ge=1, le=10000, tooltip="The number of steps used in the denoising process.")
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale: higher follows the prompt more closely.")
    sampler_name: str = Input("euler", choices=sampler_choices)
    scheduler: str = Input("simple", choices=scheduler_choices)
    positive: In[CONDITIONING]
    negative: In[CONDITIONING]
    latent_image: In[LATENT]
    denoise: float = Input(1.0, ge=0.0, le=1.0, step=0.01,
                           tooltip="How much of the latent to replace: 1.0 for text-to-image, lower for image-to-image.")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (_run_ksampler(self, ctx, self.steps, seed=self.seed, steps=self.steps, cfg=self.cfg,
                              sampler_name=self.sampler_name, scheduler=self.scheduler, denoise=self.denoise),)


class KSamplerAdvanced(Node):
    """KSampler over part of a schedule: start and end steps, optional noise, optional leftover noise."""

    category = "sampling"
    outputs = (Output(LATENT),)

    model: In[MODEL]
    add_noise: str = Input("enable", choices=("enable", "disable"))
    noise_seed: int = Input(0, ge=0, le=MAX_SEED, control_after_generate=True)
    steps: int = Input(20, ge=1, le=10000)
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    sampler_name: str = Input("euler", choices=sampler_choices)
    scheduler: str = Input("simple", choices=scheduler_choices)
    positive: In[CONDITIONING]
    negative: In[CONDITIONING]
    latent_image: In[LATENT]
    start_at_step: int = Input(0, ge=0, le=10000)
    end_at_step: int = Input(10000, ge=0, le=10000)
    return_with_leftover_noise: str = Input("disable", choices=("disable", "enable"))

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        total = max(1, min(self.end_at_step, self.steps) - self.start_at_step)
        return (_run_ksampler(
            self, ctx, total, seed=self.noise_seed, steps=self.steps, cfg=self.cfg, sampler_name=self.sampler_name,
            scheduler=self.scheduler, denoise=1.0, disable_noise=self.add_noise == "disable",
            start_step=self.start_at_step, last_step=self.end_at_step,
            force_full_denoise=self.return_with_leftover_noise == "disable",
        ),)


class _LeftoverNoise(DisableNoise):
    """No new noise (the latent still holds the base pass's), but a seed for ancestral samplers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed


class Refine(Node):
    """The refiner stage as one node: finish a latent that still holds noise along the rest of a schedule.

    Give it the base pass's output with leftover noise (KSamplerAdvanced return_with_leftover_noise, or
    SamplerCustomAdvanced's output on high sigmas), the refiner model and its conditioning, and the
    low sigmas of the same schedule (SplitSigmas). No noise is added.
    """

    category = "sampling"
    outputs = (Output(LATENT),)

    model: In[MODEL]
    positive: In[CONDITIONING]
    negative: In[CONDITIONING]
    latent_image: In[LATENT]
    sigmas: In[SIGMAS]
    cfg: float = Input(8.0, ge=0.0, le=100.0, step=0.1, round=0.01)
    sampler_name: str = Input("euler", choices=sampler_choices)
    noise_seed: int = Input(0, ge=0, le=MAX_SEED, control_after_generate=True,
                            tooltip="Seeds the per-step noise of ancestral and SDE samplers.")

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        guider = GuiderSpec(self.model, self.positive, self.negative, self.cfg)
        shape = self.latent_image["samples"].shape
        who = f"node {ctx.node_id} (Refine)"
        try:
            with sampling(self.model) as denoiser:
                output, _ = ks.sample_custom(
                    _LeftoverNoise(self.noise_seed), guider.build(denoiser, shape, who), self.model.model_sampling,
                    sampler_named(ctx, self.sampler_name), self.sigmas, self.latent_image,
                    self.model.latent_format, Progress(ctx, self.model, len(self.sigmas) - 1),
                    lambda: ctx.interrupted,
                )
        except SamplingInterrupted as exc:
            raise interrupted(ctx, exc) from exc
        return (output,)


NODES = (KSampler, KSamplerAdvanced, Refine)
