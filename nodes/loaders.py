"""Loaders: checkpoints, VAEs and LoRAs from the models folder (ComfyUI's layout), and CLIP skip.

Files load through the shared model cache (once per file, mtime, dtype and device). LoRA nodes return
patched clones: see nodes/models.py for why the cached base weights never change.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from engine import Environment, In, Input, Node, NodeContext, Output, Problem
from engine.types import CLIP, MODEL, VAE
from nodes import folders
from nodes.diffusion.checkpoint import load_checkpoint, load_vae
from nodes.diffusion.lora import LoraMatch, load_lora, match_lora
from nodes.models import ModelHandle, VAEHandle, cached_load, file_fingerprint, model_sampling_for

__all__ = ["CheckpointLoaderSimple", "VAELoader", "LoraLoader", "LoraLoaderModelOnly", "CLIPSetLastLayer", "NODES"]

log = logging.getLogger(__name__)


class _FileInput:
    """check_inputs / fingerprint for a node whose `input_name` names a file of model kind `kind`."""

    def __init__(self, kind: str, input_name: str) -> None:
        self.kind, self.input_name = kind, input_name

    def path(self, env: Environment, name: Any) -> Path | None:
        return folders.find_model(env.settings, self.kind, name) if isinstance(name, str) else None

    def problems(self, inputs: Mapping[str, Any], env: Environment) -> list[Problem]:
        name = inputs.get(self.input_name)
        if self.path(env, name) is None:
            return [Problem(self.input_name, folders.missing_model_message(env.settings, self.kind, name), name)]
        return []

    def fingerprint(self, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return file_fingerprint(self.path(env, inputs.get(self.input_name)))

    def require(self, ctx: NodeContext, name: str) -> Path:
        path = self.path(ctx.env, name)
        if path is None:
            raise FileNotFoundError(f"node {ctx.node_id} ({ctx.node_type}) input '{self.input_name}': "
                                    f"{folders.missing_model_message(ctx.env.settings, self.kind, name)}")
        return path


_CKPT = _FileInput("checkpoints", "ckpt_name")
_VAE = _FileInput("vae", "vae_name")
_LORA = _FileInput("loras", "lora_name")


def _load_checkpoint(path: Path, dtype: Any, device: Any) -> Any:
    return load_checkpoint(path, dtype, device)


class CheckpointLoaderSimple(Node):
    """Load a checkpoint (.safetensors): its diffusion model, text encoders and VAE."""

    category = "loaders"
    outputs = (
        Output(MODEL, "MODEL", "The model used for denoising latents."),
        Output(CLIP, "CLIP", "The CLIP model used for encoding text prompts."),
        Output(VAE, "VAE", "The VAE model used for encoding and decoding images to and from latent space."),
    )

    ckpt_name: str = Input(choices=folders.model_choices("checkpoints"), tooltip="The name of the checkpoint (model) to load.")

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        return _CKPT.problems(inputs, env)

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return _CKPT.fingerprint(inputs, env)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        ckpt = cached_load(ctx.env, _CKPT.require(ctx, self.ckpt_name), _load_checkpoint)
        model = ModelHandle(ckpt.unet, model_sampling_for(ckpt.spec.prediction, ckpt.sampling), ckpt.spec.family,
                            self.ckpt_name)
        clip = ckpt.clip.clone() if ckpt.clip is not None else None
        vae = VAEHandle(ckpt.vae, self.ckpt_name) if ckpt.vae is not None else None
        return (model, clip, vae)


class VAELoader(Node):
    """Load a VAE file from models/vae."""

    category = "loaders"
    outputs = (Output(VAE),)

    vae_name: str = Input(choices=folders.model_choices("vae"))

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        return _VAE.problems(inputs, env)

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return _VAE.fingerprint(inputs, env)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        vae = cached_load(ctx.env, _VAE.require(ctx, self.vae_name), lambda p, dt, dev: load_vae(p, dt, dev), "vae")
        return (VAEHandle(vae, self.vae_name),)


def _lora_match(ctx: NodeContext, name: str, unet: Any, clip: Any) -> LoraMatch:
    """The LoRA file (cached) matched onto the given modules; unmatched keys are reported once."""
    lora = cached_load(ctx.env, _LORA.require(ctx, name), lambda p, dt, dev: load_lora(p), "lora")
    kwargs: dict[str, Any] = {"unet": unet}
    if clip is not None:
        for branch, module in clip.models.items():
            kwargs[f"clip_{branch}"] = module
    match = match_lora(lora, **kwargs)
    if not match.weights:
        raise ValueError(f"node {ctx.node_id} ({ctx.node_type}) input 'lora_name': {name!r} has no keys this model "
                         f"understands (first unknown: {', '.join(match.unknown[:5])}); is it a LoRA for another "
                         f"model family?")
    if match.unknown:
        log.warning("node %s (%s): %d LoRA key(s) of %s not applied: %s", ctx.node_id, ctx.node_type,
                    len(match.unknown), name, ", ".join(match.unknown[:10]))
    return match


class LoraLoader(Node):
    """Apply a LoRA to the model and the text encoders (as patched clones; the base stays unpatched)."""

    category = "loaders"
    outputs = (Output(MODEL, "MODEL", "The modified diffusion model."), Output(CLIP, "CLIP", "The modified CLIP model."))

    model: In[MODEL]
    clip: In[CLIP]
    lora_name: str = Input(choices=folders.model_choices("loras"), tooltip="The name of the LoRA.")
    strength_model: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)
    strength_clip: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        return _LORA.problems(inputs, env)

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return _LORA.fingerprint(inputs, env)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        if self.strength_model == 0 and self.strength_clip == 0:
            return (self.model, self.clip)
        match = _lora_match(ctx, self.lora_name, self.model.unet, self.clip)
        model = self.model.with_lora(match.patch("unet", self.strength_model))
        return (model, self.clip.with_lora(match, self.strength_clip))


class LoraLoaderModelOnly(Node):
    """Apply a LoRA to the model only."""

    category = "loaders"
    outputs = (Output(MODEL),)

    model: In[MODEL]
    lora_name: str = Input(choices=folders.model_choices("loras"))
    strength_model: float = Input(1.0, ge=-100.0, le=100.0, step=0.01)

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        return _LORA.problems(inputs, env)

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        return _LORA.fingerprint(inputs, env)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        if self.strength_model == 0:
            return (self.model,)
        match = _lora_match(ctx, self.lora_name, self.model.unet, None)
        return (self.model.with_lora(match.patch("unet", self.strength_model)),)


class CLIPSetLastLayer(Node):
    """Stop the text encoders at an earlier layer (-1 = last, -2 = penultimate, ...): "clip skip"."""

    category = "conditioning"
    outputs = (Output(CLIP),)

    clip: In[CLIP]
    stop_at_clip_layer: int = Input(-1, ge=-24, le=-1, step=1)

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        return (self.clip.with_clip_skip(self.stop_at_clip_layer),)


NODES = (CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly, CLIPSetLastLayer)
