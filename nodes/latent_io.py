"""SaveLatent / LoadLatent in ComfyUI's `.latent` format.

A `.latent` file is a safetensors file holding `latent_tensor` (the samples) and an empty
`latent_format_version_0` tensor that marks the current format; its metadata holds the prompt and
the extra_pnginfo keys as JSON strings, as SaveImage's PNG chunks do. Files without the marker are
from ComfyUI's first format, whose samples were stored multiplied by 1/0.18215.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import safetensors.torch
import torch

from engine import Environment, In, Input, Node, NodeContext, NodeResult, Output, Problem
from engine.types import LATENT
from nodes import folders

__all__ = ["SaveLatent", "LoadLatent", "NODES"]

LATENT_EXTENSIONS = (".latent",)
_OLD_FORMAT_SCALE = 1.0 / 0.18215


class SaveLatent(Node):
    """Save latents to output/ as a `.latent` safetensors file (ComfyUI's format)."""

    category = "_for_testing"
    output_node = True
    outputs = ()

    samples: In[LATENT]
    filename_prefix: str = Input("latents/ComfyUI")

    def run(self, ctx: NodeContext) -> NodeResult:
        output_dir = folders.settings_dir(ctx.env.settings, "output_dir")
        full, stem, counter, subfolder = folders.save_path(output_dir, self.filename_prefix)
        metadata: dict[str, str] | None = None
        if not ctx.env.settings.get("disable_metadata"):
            metadata = {}
            if ctx.prompt:
                metadata["prompt"] = json.dumps(ctx.prompt)
            for key, value in (ctx.extra_data.get("extra_pnginfo") or {}).items():
                metadata[str(key)] = json.dumps(value)
        name = f"{stem}_{counter:05}_.latent"
        tensors = {
            "latent_tensor": self.samples["samples"].detach().cpu().contiguous(),
            "latent_format_version_0": torch.tensor([]),
        }
        safetensors.torch.save_file(tensors, str(full / name), metadata=metadata)
        return NodeResult(ui={"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


def _find(env: Environment, name: Any) -> Any:
    return folders.find_input(env.settings, name)


class LoadLatent(Node):
    """Load a `.latent` file from input/."""

    category = "_for_testing"
    outputs = (Output(LATENT),)

    latent: str = Input(choices=folders.input_choices(LATENT_EXTENSIONS))

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        try:
            _find(env, inputs.get("latent"))
        except (folders.UnsafePathError, FileNotFoundError, TypeError) as exc:
            return [Problem("latent", str(exc), inputs.get("latent"))]
        return []

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        try:
            return folders.file_sha256(_find(env, inputs.get("latent")))
        except (folders.UnsafePathError, FileNotFoundError, TypeError):
            return None

    def run(self, ctx: NodeContext) -> tuple[Any, ...]:
        path = _find(ctx.env, self.latent)
        tensors = safetensors.torch.load_file(str(path), device="cpu")
        if "latent_tensor" not in tensors:
            raise ValueError(f"node {ctx.node_id} (LoadLatent) input 'latent': {self.latent!r} has no "
                             f"'latent_tensor'; it is not a .latent file written by SaveLatent")
        scale = 1.0 if "latent_format_version_0" in tensors else _OLD_FORMAT_SCALE
        return ({"samples": tensors["latent_tensor"].float() * scale},)


NODES = (SaveLatent, LoadLatent)
