"""LoRA (Hu et al. 2021, arXiv 2106.09685): kohya / PEFT files, mapped onto our modules, patched in place.

A LoRA adds ΔW = strength · (up @ down) · alpha / rank to a weight. Our modules keep the
checkpoint's names, so kohya's `lora_unet_<ldm path with _>` keys map straight onto the UNet, and
`lora_te1_` / `lora_te2_` (Hugging Face names) onto CLIP-L and, through the q/k/v row slices of the
fused `in_proj_weight`, onto bigG's open_clip layout. `LoraPatcher` applies a stack of patches to one
module and keeps the original tensors, so that `unpatch()` restores them bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "Lora",
    "LoraMatch",
    "LoraPatch",
    "LoraPatcher",
    "LoraWeight",
    "load_lora",
    "lora_key_map",
    "match_lora",
]

# (suffix of the down matrix, suffix of the up matrix) per naming convention
_PAIRS = {
    "lora_down.weight": "lora_up.weight",  # kohya sd-scripts
    "lora_A.weight": "lora_B.weight",  # PEFT / diffusers
    "lora.down.weight": "lora.up.weight",  # older diffusers attention processors
}
_ALPHA_SUFFIX = "alpha"
_SUFFIXES = [(s, "down") for s in _PAIRS] + [(s, "up") for s in _PAIRS.values()] + [(_ALPHA_SUFFIX, "alpha")]


@dataclass(frozen=True, eq=False)
class LoraWeight:
    """One low-rank update of one parameter (or of a block of its rows)."""

    param: str  # parameter name inside the target module, e.g. "transformer.resblocks.0.attn.in_proj_weight"
    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: float | None  # scale = alpha / rank; None means 1
    rows: tuple[int, int] | None = None  # [start, stop) rows of the parameter (bigG's fused q/k/v)
    key: str = ""  # the LoRA file's base key, for messages

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """ΔW in float32 with the target's `shape` (of the row block when `rows` is set), at strength 1."""
        down, up = self.down.float(), self.up.float()
        rank = down.shape[0]
        assert up.shape[1] == rank, f"LoRA {self.key}: up {tuple(up.shape)} does not match down {tuple(down.shape)} (rank {rank})"
        scale = 1.0 if self.alpha is None else self.alpha / rank
        d = up.flatten(1) @ down.flatten(1)  # (out, in * kh * kw): a conv LoRA is a linear map of patches
        if d.numel() != shape.numel():
            raise ValueError(f"LoRA {self.key}: update of {d.shape[0]}x{d.shape[1]} does not fit {self.param} {tuple(shape)}")
        return d.reshape(shape) * scale


@dataclass(frozen=True, eq=False)
class LoraPatch:
    """A stack entry: the updates of one LoRA for one module, at one strength."""

    weights: tuple[LoraWeight, ...]
    strength: float = 1.0
    name: str = ""


class LoraPatcher:
    """Applies a stack of LoraPatch to one module in place; unpatch() restores the original tensors exactly.

    One patcher belongs to each module (`LoraPatcher.of(module)`), so wrappers that share a module
    (clones with different LoRAs) take turns: `apply(patches)` first restores whatever another
    stack left and then applies its own.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.applied: tuple[LoraPatch, ...] = ()
        self._backup: dict[str, torch.Tensor] = {}  # parameter name -> original tensor (on the CPU)

    @classmethod
    def of(cls, module: nn.Module) -> LoraPatcher:
        patcher = module.__dict__.get("_lora_patcher")
        if patcher is None:
            patcher = cls(module)
            module.__dict__["_lora_patcher"] = patcher  # plain attribute: not a submodule, not in state_dict
        return patcher

    def apply(self, patches: Sequence[LoraPatch]) -> None:
        """Make the module's weights base + the sum of `patches` (strength-0 patches are skipped)."""
        patches = tuple(p for p in patches if p.strength != 0)
        if len(patches) == len(self.applied) and all(a is b for a, b in zip(patches, self.applied)):
            return
        self.unpatch()
        by_param: dict[str, list[tuple[LoraWeight, float]]] = {}
        for patch in patches:
            for w in patch.weights:
                by_param.setdefault(w.param, []).append((w, patch.strength))
        try:
            with torch.no_grad():
                for name, updates in by_param.items():
                    param = self.module.get_parameter(name)
                    # sum in float32 and round once, as ComfyUI does; copy=True: .float() of an fp32
                    # parameter would be the parameter itself
                    merged = param.detach().to(torch.float32, copy=True)
                    for w, strength in updates:
                        target = merged if w.rows is None else merged[w.rows[0] : w.rows[1]]
                        target += strength * w.delta(target.shape).to(merged.device)
                    self._backup[name] = param.detach().to("cpu", copy=True)
                    param.copy_(merged.to(param.dtype))
        except Exception:
            self.unpatch()  # never leave the module half patched
            raise
        self.applied = patches

    def unpatch(self) -> None:
        """Restore every patched parameter to its original tensor."""
        with torch.no_grad():
            for name, original in self._backup.items():
                self.module.get_parameter(name).copy_(original)
        self._backup.clear()
        self.applied = ()


# ---------------------------------------------------------------------------------------------
# reading files


@dataclass
class Lora:
    """A LoRA file grouped by base key: {base: {"down": T, "up": T, "alpha": T}}; `other` holds keys of no pair."""

    groups: dict[str, dict[str, torch.Tensor]]
    other: list[str] = field(default_factory=list)
    name: str = ""
    keys: dict[str, list[str]] = field(default_factory=dict)  # base -> the file's own key names


def load_lora(source: str | Path | Mapping[str, torch.Tensor], name: str = "") -> Lora:
    """Read a LoRA safetensors file (or an already loaded state dict) and group its tensors by base key."""
    if isinstance(source, (str, Path)):
        from safetensors.torch import load_file

        name = name or Path(source).stem
        sd = load_file(str(source), device="cpu")
    else:
        sd = dict(source)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[str, list[str]] = {}
    other = []
    for key, tensor in sd.items():
        for suffix, part in _SUFFIXES:
            if key.endswith("." + suffix):
                base = key[: -len(suffix) - 1]
                groups.setdefault(base, {})[part] = tensor
                keys.setdefault(base, []).append(key)
                break
        else:
            other.append(key)  # LoHa / LoKr / DoRA scales / Tucker mids / full diffs: not supported
    return Lora(groups, sorted(other), name, keys)


# ---------------------------------------------------------------------------------------------
# mapping LoRA keys onto our modules


@dataclass(frozen=True)
class _Target:
    module: str  # "unet", "clip_l" or "clip_g"
    param: str
    rows: tuple[int, int] | None = None


_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.weight$")
_RESNET_NAMES = {"in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.3": "conv2",
                 "skip_connection": "conv_shortcut", "in_layers.0": "norm1", "out_layers.0": "norm2"}


def _diffusers_unet_prefixes(unet: nn.Module) -> dict[str, str]:
    """ldm block prefix -> diffusers block prefix, from the UNet's level count and res blocks per level."""
    cfg: Any = unet.config
    n, levels = int(cfg.num_res_blocks), len(cfg.channel_mult)
    m = {
        "input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
        "out.0": "conv_norm_out", "out.2": "conv_out",
        "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
        "middle_block.2": "mid_block.resnets.1",
    }
    for i in range(levels):
        for j in range(n):
            m[f"input_blocks.{1 + i * (n + 1) + j}.0"] = f"down_blocks.{i}.resnets.{j}"
            m[f"input_blocks.{1 + i * (n + 1) + j}.1"] = f"down_blocks.{i}.attentions.{j}"
        if i < levels - 1:
            m[f"input_blocks.{(i + 1) * (n + 1)}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
        for j in range(n + 1):
            m[f"output_blocks.{i * (n + 1) + j}.0"] = f"up_blocks.{i}.resnets.{j}"
            m[f"output_blocks.{i * (n + 1) + j}.1"] = f"up_blocks.{i}.attentions.{j}"
        if i < levels - 1:  # the upsampler follows the attention when the level has one
            m[f"output_blocks.{i * (n + 1) + n}.1.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
            m[f"output_blocks.{i * (n + 1) + n}.2.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
    return m


def _diffusers_unet_name(ldm_base: str, prefixes: dict[str, str]) -> str | None:
    """`input_blocks.4.0.in_layers.2` -> `down_blocks.1.resnets.0.conv1` (None when no block matches)."""
    parts = ldm_base.split(".")
    for cut in range(len(parts), 0, -1):
        head, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        if head in prefixes:
            new = prefixes[head]
            if ".resnets." in new and rest:
                rest = _RESNET_NAMES.get(rest, rest)
            return new + ("." + rest if rest else "")
    return None


def lora_key_map(
    unet: nn.Module | None = None, clip_l: nn.Module | None = None, clip_g: nn.Module | None = None
) -> dict[str, _Target]:
    """Every LoRA base key we understand -> the parameter it updates, for the modules given."""
    targets: dict[str, _Target] = {}
    if unet is not None:
        prefixes = _diffusers_unet_prefixes(unet) if hasattr(unet, "config") and hasattr(unet.config, "num_res_blocks") else {}
        for name, p in unet.named_parameters():
            if name.endswith(".weight") and p.dim() >= 2:
                base = name[: -len(".weight")]
                targets["lora_unet_" + base.replace(".", "_")] = _Target("unet", name)  # kohya SDXL: ldm names
                targets["diffusion_model." + base] = _Target("unet", name)  # ComfyUI's own saves
                diffusers = _diffusers_unet_name(base, prefixes)
                if diffusers is not None:
                    targets["lora_unet_" + diffusers.replace(".", "_")] = _Target("unet", name)  # kohya SD1
                    targets["unet." + diffusers] = _Target("unet", name)  # diffusers / PEFT
    if clip_l is not None:
        kohya = ["lora_te1_text_model_"] + (["lora_te_text_model_"] if clip_g is None else [])
        peft = ["text_encoder.text_model.", "text_encoders.clip_l.transformer.text_model."]
        for name, p in clip_l.named_parameters():
            if _HF_LAYER.match(name) and p.dim() == 2:  # the linear layers (LayerNorm gains are 1-D)
                base = name[: -len(".weight")]
                for prefix in kohya:
                    targets[prefix + base.replace(".", "_")] = _Target("clip_l", name)
                for prefix in peft:
                    targets[prefix + base] = _Target("clip_l", name)
    if clip_g is not None:
        g_config: Any = clip_g.config
        width: int = g_config.width
        kohya = ["lora_te2_text_model_"] + (["lora_te_text_model_"] if clip_l is None else [])
        peft = ["text_encoder_2.text_model.", "text_encoders.clip_g.transformer.text_model."]
        for i in range(g_config.layers):
            block = f"transformer.resblocks.{i}."
            hf_to_ours = {
                "self_attn.q_proj": (block + "attn.in_proj_weight", (0, width)),
                "self_attn.k_proj": (block + "attn.in_proj_weight", (width, 2 * width)),
                "self_attn.v_proj": (block + "attn.in_proj_weight", (2 * width, 3 * width)),
                "self_attn.out_proj": (block + "attn.out_proj.weight", None),
                "mlp.fc1": (block + "mlp.c_fc.weight", None),
                "mlp.fc2": (block + "mlp.c_proj.weight", None),
            }
            for hf_name, (param, rows) in hf_to_ours.items():
                hf_base = f"encoder.layers.{i}.{hf_name}"
                for prefix in kohya:
                    targets[prefix + hf_base.replace(".", "_")] = _Target("clip_g", param, rows)
                for prefix in peft:
                    targets[prefix + hf_base] = _Target("clip_g", param, rows)
    return targets


@dataclass
class LoraMatch:
    """A LoRA's updates per module ("unet", "clip_l", "clip_g") and the file's keys that were not used.

    `unknown`: keys no module parameter matches, or of a kind not supported (LoHa, LoKr, DoRA, Tucker
    mid); `mismatched`: "key: reason" for updates whose shape does not fit the parameter they name.
    """

    weights: dict[str, tuple[LoraWeight, ...]]
    unknown: list[str]
    name: str = ""
    mismatched: list[str] = field(default_factory=list)

    def patch(self, module: str, strength: float) -> LoraPatch:
        return LoraPatch(self.weights.get(module, ()), strength, self.name)


def match_lora(
    lora: Lora, *, unet: nn.Module | None = None, clip_l: nn.Module | None = None, clip_g: nn.Module | None = None
) -> LoraMatch:
    """Map a LoRA's keys onto the given modules; keys that map nowhere are listed by name in `unknown`."""
    modules = {"unet": unet, "clip_l": clip_l, "clip_g": clip_g}
    targets = lora_key_map(unet, clip_l, clip_g)
    weights: dict[str, list[LoraWeight]] = {}
    unknown = list(lora.other)
    mismatched = []
    for base, parts in sorted(lora.groups.items()):
        target = targets.get(base)
        group_keys = sorted(lora.keys.get(base, [f"{base}.{part}" for part in parts]))
        # a pair with extra tensors (DoRA's dora_scale, a Tucker lora_mid) is not a plain LoRA: applying
        # only up @ down would be wrong, so the whole group is left out
        extras = [k for k in lora.other if k.startswith(base + ".")]
        if target is None or "down" not in parts or "up" not in parts or extras:
            unknown += group_keys
            continue
        module = modules[target.module]
        assert module is not None
        shape = module.get_parameter(target.param).shape
        rows = shape[0] if target.rows is None else target.rows[1] - target.rows[0]
        down, up = parts["down"], parts["up"]
        if up.shape[0] != rows or down[0].numel() != shape[1:].numel():  # (out, in * kh * kw) must match
            where = f" rows {target.rows[0]}:{target.rows[1]}" if target.rows else ""
            mismatched.append(f"{base}: update {up.shape[0]}x{down[0].numel()} does not fit {target.param} {tuple(shape)}{where}")
            continue
        alpha = float(parts["alpha"]) if "alpha" in parts else None
        weights.setdefault(target.module, []).append(LoraWeight(target.param, down, up, alpha, target.rows, base))
    return LoraMatch({m: tuple(ws) for m, ws in weights.items()}, sorted(unknown), lora.name, mismatched)
