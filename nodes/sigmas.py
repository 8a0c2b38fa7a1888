"""Noise schedule nodes (SIGMAS): named schedulers, closed forms, Align Your Steps, splitting.

The schedule math is in nodes/diffusion/schedules.py; these nodes only pick and forward.
"""

from __future__ import annotations

from typing import Any

from engine import In, Input, Node, NodeContext, Output
from engine.types import MODEL, SIGMAS
from nodes.diffusion import schedules

__all__ = [
    "BasicScheduler",
    "KarrasScheduler",
    "ExponentialScheduler",
    "AlignYourStepsScheduler",
    "SplitSigmas",
    "SplitSigmasDenoise",
    "scheduler_choices",
    "NODES",
]


def scheduler_choices(env: Any) -> list[str]:
    """Registered schedulers (the built-ins plus plugins'), in registration order."""
    registered = env.services.get("schedulers") if env is not None else None
    return list(registered) if registered else list(schedules.SCHEDULER_NAMES)


def schedulers_of(ctx: NodeContext) -> dict[str, Any]:
    return ctx.env.services.get("schedulers") or schedules.SCHEDULERS


class BasicScheduler(Node):
    """A named schedule for the model; denoise < 1 keeps only the last part of a longer schedule."""

    category = "sampling/custom_sampling/schedulers"
    outputs = (Output(SIGMAS),)

    model: In[MODEL]
    scheduler: str = Input("simple", choices=scheduler_choices)
    steps: int = Input(20, ge=1, le=10000)
    denoise: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        sampling = self.model.model_sampling
        return (schedules.basic_scheduler(sampling, self.scheduler, self.steps, self.denoise, schedulers_of(ctx)),)


class KarrasScheduler(Node):
    """Karras et al. 2022 schedule: sigmas evenly spaced in sigma^(1/rho)."""

    category = "sampling/custom_sampling/schedulers"
    outputs = (Output(SIGMAS),)

    steps: int = Input(20, ge=1, le=10000)
    sigma_max: float = Input(14.614642, ge=0.0, le=5000.0, step=0.01, round=False)
    sigma_min: float = Input(0.0291675, ge=0.0, le=5000.0, step=0.01, round=False)
    rho: float = Input(7.0, ge=0.0, le=100.0, step=0.01, round=False)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (schedules.get_sigmas_karras(self.steps, self.sigma_min, self.sigma_max, self.rho),)


class ExponentialScheduler(Node):
    """Sigmas evenly spaced in log(sigma)."""

    category = "sampling/custom_sampling/schedulers"
    outputs = (Output(SIGMAS),)

    steps: int = Input(20, ge=1, le=10000)
    sigma_max: float = Input(14.614642, ge=0.0, le=5000.0, step=0.01, round=False)
    sigma_min: float = Input(0.0291675, ge=0.0, le=5000.0, step=0.01, round=False)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (schedules.get_sigmas_exponential(self.steps, self.sigma_min, self.sigma_max),)


class AlignYourStepsScheduler(Node):
    """NVIDIA's Align Your Steps schedule (Sabour et al. 2024) for SD1, SDXL or SVD."""

    category = "sampling/custom_sampling/schedulers"
    outputs = (Output(SIGMAS),)

    model_type: str = Input("SD1", choices=("SD1", "SDXL", "SVD"))
    steps: int = Input(10, ge=1, le=10000)
    denoise: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (schedules.align_your_steps(self.model_type, self.steps, self.denoise),)


class SplitSigmas(Node):
    """Split a schedule at a step: high = up to it, low = from it (both hold that sigma)."""

    category = "sampling/custom_sampling/sigmas"
    outputs = (Output(SIGMAS, "high_sigmas"), Output(SIGMAS, "low_sigmas"))

    sigmas: In[SIGMAS]
    step: int = Input(0, ge=0, le=10000)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return schedules.split_sigmas(self.sigmas, self.step)


class SplitSigmasDenoise(Node):
    """Split a schedule so that the low part is the last `denoise` fraction of the steps."""

    category = "sampling/custom_sampling/sigmas"
    outputs = (Output(SIGMAS, "high_sigmas"), Output(SIGMAS, "low_sigmas"))

    sigmas: In[SIGMAS]
    denoise: float = Input(1.0, ge=0.0, le=1.0, step=0.01)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return schedules.split_sigmas_denoise(self.sigmas, self.denoise)


NODES = (BasicScheduler, KarrasScheduler, ExponentialScheduler, AlignYourStepsScheduler, SplitSigmas,
         SplitSigmasDenoise)
