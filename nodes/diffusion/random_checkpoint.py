"""Random-weight single-file checkpoints in the original sgm/ldm layout, tiny or full size.

The models are built on the `meta` device (no memory), and the file is written as a stream: the
safetensors header first (names, dtypes, shapes, offsets are known from the meta tensors), then each
tensor is generated, written and dropped, so a 7 GB SDXL base needs one tensor's memory at a time.
Weights are scaled so activations keep a realistic range through every block (std 1/sqrt(fan_in),
norms near 1, no zeroed output projections) and the text context visibly changes the UNet output.

CLI: `python -m nodes.diffusion.random_checkpoint OUT.safetensors --preset tiny [--seed 0] [--dtype fp16]`
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import UNET_PREFIX, VAE_PREFIX
from .clip import CLIP_BIGG_CONFIG, CLIP_L_CONFIG, TINY_CLIP_BIGG_CONFIG, TINY_CLIP_L_CONFIG, CLIPTextConfig, CLIPTextModel, OpenCLIPTextModel
from .unet import SDXL_BASE_UNET, SDXL_REFINER_UNET, UNet, UNetConfig
from .vae import SD1_VAE, SDXL_VAE, AutoencoderKL, VAEConfig

__all__ = ["RandomModel", "PRESETS", "write_random_checkpoint", "main"]

_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


@dataclass(frozen=True)
class RandomModel:
    """What a random checkpoint holds: UNet and VAE configs and the text encoders under their prefixes."""

    unet: UNetConfig
    vae: VAEConfig
    clip_l: dict[str, CLIPTextConfig] = field(default_factory=dict)  # prefix -> HF-layout CLIP-L config
    clip_g: dict[str, CLIPTextConfig] = field(default_factory=dict)  # prefix -> open_clip-layout bigG config
    description: str = ""


_TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)  # 8x compression like the real one, few FLOPs
_L, _G = TINY_CLIP_L_CONFIG, TINY_CLIP_BIGG_CONFIG
_SDXL_L, _SDXL_G, _REFINER_G = "conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model.", "conditioner.embedders.0.model."
_SD1_L = "cond_stage_model.transformer.text_model."

PRESETS: dict[str, RandomModel] = {
    "tiny": RandomModel(
        unet=UNetConfig(
            model_channels=32, channel_mult=(1, 2, 4), transformer_depth=(0, 1, 2), transformer_depth_middle=1,
            context_dim=_L.width + _G.width, adm_in_channels=_G.projection_dim + 6 * 256,  # type: ignore[operator]
        ),
        vae=_TINY_VAE,
        clip_l={_SDXL_L: _L},
        clip_g={_SDXL_G: _G},
        description="tiny SDXL-architecture model (random weights)",
    ),
    "tiny_refiner": RandomModel(
        unet=UNetConfig(
            model_channels=32, channel_mult=(1, 2, 4, 4), transformer_depth=(0, 1, 1, 0), transformer_depth_middle=1,
            context_dim=_G.width, adm_in_channels=_G.projection_dim + 5 * 256,  # type: ignore[operator]
        ),
        vae=_TINY_VAE,
        clip_g={_REFINER_G: _G},
        description="tiny SDXL-refiner-architecture model (random weights)",
    ),
    "tiny_sd1": RandomModel(
        unet=UNetConfig(
            model_channels=32, channel_mult=(1, 2, 4, 4), transformer_depth=(1, 1, 1, 0), transformer_depth_middle=1,
            context_dim=_L.width, adm_in_channels=None, use_linear_in_transformer=False,
        ),
        vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, scale_factor=SD1_VAE.scale_factor),
        clip_l={_SD1_L: _L},
        description="tiny SD1-architecture model (random weights)",
    ),
    "sdxl_base": RandomModel(SDXL_BASE_UNET, SDXL_VAE, {_SDXL_L: CLIP_L_CONFIG}, {_SDXL_G: CLIP_BIGG_CONFIG}, "full-size SDXL base (random weights)"),
    "sdxl_refiner": RandomModel(SDXL_REFINER_UNET, SDXL_VAE, {}, {_REFINER_G: CLIP_BIGG_CONFIG}, "full-size SDXL refiner (random weights)"),
}


def meta_modules(model: RandomModel) -> list[tuple[str, nn.Module]]:
    """(prefix, module on the meta device) for each part, in file order."""
    with torch.device("meta"):
        parts: list[tuple[str, nn.Module]] = [(UNET_PREFIX, UNet(model.unet)), (VAE_PREFIX, AutoencoderKL(model.vae))]
        parts += [(prefix, CLIPTextModel(cfg)) for prefix, cfg in model.clip_l.items()]
        parts += [(prefix, OpenCLIPTextModel(cfg)) for prefix, cfg in model.clip_g.items()]
    return parts


def _norm_params(module: nn.Module) -> set[str]:
    names = set()
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.GroupNorm, nn.LayerNorm)):
            names.update(f"{name}.{p}" for p, _ in sub.named_parameters(recurse=False))
    return names


def _random_tensor(name: str, shape: tuple[int, ...], is_norm: bool, gen: torch.Generator) -> torch.Tensor:
    """One tensor, float32, scaled so that activations stay near unit variance through the network."""
    t = torch.randn(shape, generator=gen)
    if is_norm:  # affine of Group/LayerNorm: near identity
        return (1.0 + 0.1 * t) if name.endswith("weight") else 0.1 * t
    if "embedding" in name:  # token / position embeddings
        return 0.5 * t
    if len(shape) == 1:  # biases
        return 0.02 * t
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    if name.endswith("text_projection"):  # open_clip stores P [width, dim], used as x @ P: fan-in is dim 0
        fan_in = shape[0]
    std = fan_in**-0.5
    if name.startswith(VAE_PREFIX + "decoder.conv_out"):
        std *= 0.5  # keep decoded pixels mostly inside -1..1
    return std * t


def write_random_checkpoint(
    path: str | os.PathLike[str],
    preset_or_config: str | RandomModel = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    *,
    prediction: str = "eps",
) -> Path:
    """Write a random checkpoint (preset name or RandomModel) as .safetensors; returns the path.

    prediction "v" adds ComfyUI's empty `v_pred` marker, "edm" Playground-style `edm_mean`/`edm_std`.
    Each tensor is drawn from its own generator (seed, index), so files are reproducible.
    """
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(f"unknown preset {preset_or_config!r}; choose one of {', '.join(PRESETS)}")
        model = PRESETS[preset_or_config]
        preset = preset_or_config
    else:
        model, preset = preset_or_config, "custom"
    if dtype not in _ST_DTYPES:
        raise ValueError(f"dtype {dtype} not supported; use float16, bfloat16 or float32")

    entries: list[tuple[str, tuple[int, ...], bool]] = []  # (name, shape, is_norm)
    for prefix, module in meta_modules(model):
        norms = _norm_params(module)
        entries += [(prefix + k, tuple(v.shape), k in norms) for k, v in module.state_dict().items()]
    extras: dict[str, torch.Tensor] = {}
    if prediction == "v":
        extras["v_pred"] = torch.zeros(0)
    elif prediction == "edm":
        extras["edm_mean"] = torch.tensor([0.5, -0.2, 0.1, 0.3]).reshape(1, 4, 1, 1)
        extras["edm_std"] = torch.tensor([0.9, 1.1, 1.0, 0.95]).reshape(1, 4, 1, 1)
    elif prediction != "eps":
        raise ValueError(f"prediction must be eps, v or edm, got {prediction!r}")

    elt = torch.finfo(dtype).bits // 8
    header: dict[str, object] = {}
    offset = 0
    for name, shape, _ in entries:
        n = elt
        for d in shape:
            n *= d
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    for name, t in extras.items():
        n = t.numel() * elt
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"latentgraph.random_preset": preset, "latentgraph.seed": str(seed), "description": model.description}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for i, (name, shape, is_norm) in enumerate(entries):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            t = _random_tensor(name, shape, is_norm, gen).to(dtype).contiguous()
            f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            del t
        for t in extras.values():
            f.write(t.to(dtype).contiguous().view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.diffusion.random_checkpoint", description="Write a random-weight SD checkpoint.")
    parser.add_argument("out", help="output .safetensors path")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--prediction", default="eps", choices=["eps", "v", "edm"])
    args = parser.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    out = write_random_checkpoint(args.out, args.preset, args.seed, dtype, prediction=args.prediction)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, preset {args.preset})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
