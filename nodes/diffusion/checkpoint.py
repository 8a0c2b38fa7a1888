"""Single-file checkpoints: detect what a file holds from tensor names and shapes, and load it.

Weights are read through `safetensors.safe_open` (memory-mapped), each tensor converted once to the
compute dtype and assigned straight into a module built on the `meta` device, so no second full copy
of the weights is ever alive. Pickle files (`.ckpt`, `.pt`, `.pth`) load only through
`torch.load(weights_only=True)`; a file that needs code to unpickle is refused.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ._loading import IGNORED_SUFFIXES, convert, load_on_meta
from .devices import pick_dtype
from .unet import UNet, UNetConfig, UNetConfigError, unet_config_from_state_dict
from .vae import SD1_SCALE_FACTOR, SDXL_SCALE_FACTOR, AutoencoderKL, VAEConfig, VAEConfigError, vae_config_from_state_dict

__all__ = [
    "ModelSpec",
    "Checkpoint",
    "LoadedCheckpoint",
    "CheckpointError",
    "UnknownCheckpointError",
    "UnsafeCheckpointError",
    "CheckpointKeyError",
    "detect",
    "load_checkpoint",
    "load_vae",
    "read_shapes",
    "UNET_PREFIX",
    "VAE_PREFIX",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Tensors that single-file checkpoints carry and nothing here uses: CLIP's position_ids buffer and
# logit_scale (IGNORED_SUFFIXES), EMA copies, and SD1's noise-schedule buffers (we compute the schedule).
_IGNORED_PREFIXES = ("model_ema.",)
_MARKERS = ("v_pred", "edm_mean", "edm_std", "edm_vpred.sigma_max", "edm_vpred.sigma_min", "ztsnr")

Family = Literal["sdxl", "sdxl_refiner", "sd1"]
Prediction = Literal["eps", "v", "edm"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded as asked."""


class UnknownCheckpointError(CheckpointError):
    """The file holds no model this loader recognises."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle file that needs arbitrary code to load."""


class CheckpointKeyError(CheckpointError):
    """Tensors missing from (or misshapen in) a part of the checkpoint."""


@dataclass(frozen=True)
class ModelSpec:
    family: Family  # "sdxl" (base and SDXL-family variants), "sdxl_refiner" or "sd1"
    prediction: Prediction  # what the UNet predicts: eps, v, or EDM (Playground 2.5 style, sigma_data 0.5)
    unet: UNetConfig
    vae: VAEConfig | None  # None when the file holds no VAE (pass vae_path)
    text_encoders: str | None  # the text side's kind ("sdxl", "sdxl_refiner", "sd1", "sd1_old") or None
    description: str
    markers: tuple[str, ...] = ()  # marker keys found (v_pred, edm_mean, edm_vpred.sigma_max, ztsnr, ...)

    @property
    def scale_factor(self) -> float:
        return SD1_SCALE_FACTOR if self.family == "sd1" else SDXL_SCALE_FACTOR


@dataclass
class Checkpoint:
    spec: ModelSpec
    unet: UNet
    vae: AutoencoderKL | None
    clip: Any  # the text side's wrapper (SDXLClip, SDXLRefinerClip, SD1Clip) or None
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__
    path: str = ""
    unexpected: list[str] = field(default_factory=list)  # tensors nobody used (also warned)
    sampling: dict[str, float] = field(default_factory=dict)  # marker values, e.g. edm_vpred sigma_max / sigma_min


LoadedCheckpoint = Checkpoint  # the name docs/architecture.md uses


# ---------------------------------------------------------------------------------------------
# reading tensors


class _Source(Mapping[str, torch.Tensor]):
    """Read-only tensors of one file by name, loaded on access; shapes without loading."""

    def __init__(self, path: Path):
        self.path = path
        self.metadata: dict[str, str] = {}
        self._handle: Any = None
        self._tensors: Mapping[str, torch.Tensor] = {}
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from exc
            self.metadata = dict(self._handle.metadata() or {})
            self._keys = list(self._handle.keys())
        elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
            self._tensors = _torch_load(path)
            self._keys = list(self._tensors)
        else:
            raise CheckpointError(f"{path}: unknown checkpoint extension {suffix!r}; expected .safetensors, .ckpt, .pt or .pth")

    def shape(self, key: str) -> tuple[int, ...]:
        if self._handle is not None:
            return tuple(self._handle.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._handle is not None:
            if key not in self._keys:
                raise KeyError(key)
            return self._handle.get_tensor(key)
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys if self._handle is None else key in set(self._keys)

    def close(self) -> None:
        self._handle = None
        self._tensors = {}


class _Converted(Mapping[str, torch.Tensor]):
    """A view of a source whose floating tensors arrive already in the compute dtype and device."""

    def __init__(self, source: _Source, dtype: torch.dtype, device: torch.device):
        self.source, self.dtype, self.device = source, dtype, device

    def __getitem__(self, key: str) -> torch.Tensor:
        return convert(self.source[key], self.dtype, self.device)

    def __iter__(self) -> Iterator[str]:
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: this pickle file needs code to unpickle ({str(exc).splitlines()[0]}). "
            "Only plain tensors are accepted (torch.load weights_only=True); convert the file to .safetensors "
            "with a tool you trust, or download the .safetensors version."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UnknownCheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a checkpoint file, without loading the weights of a .safetensors file."""
    source = _Source(Path(path))
    try:
        return {k: source.shape(k) for k in source}
    finally:
        source.close()


# ---------------------------------------------------------------------------------------------
# detection


def _prefix_summary(keys: list[str], limit: int = 12) -> str:
    counts: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        depth = 3 if parts[0] in ("conditioner", "cond_stage_model") else 2
        counts[".".join(parts[:depth]) + ("." if len(parts) > depth else "")] += 1
    shown = ", ".join(f"{p} ({n})" for p, n in counts.most_common(limit))
    more = f", and {len(counts) - limit} more prefixes" if len(counts) > limit else ""
    return f"{len(keys)} tensors: {shown}{more}"


def _text_kind(keys: list[str]) -> str | None:
    try:
        from .text_encoder import detect_text_encoders
    except ImportError:  # the text side is optional for UNet/VAE work
        return None
    return detect_text_encoders(keys)


def detect(shapes: Mapping[str, Any]) -> ModelSpec:
    """What a checkpoint holds, from its tensor names and shapes (values may be tensors or shapes)."""
    keys = list(shapes)
    unet_sd = {k[len(UNET_PREFIX) :]: shapes[k] for k in keys if k.startswith(UNET_PREFIX)}
    if not unet_sd:
        raise UnknownCheckpointError(
            f"no UNet found (no tensors under {UNET_PREFIX!r}); this file holds {_prefix_summary(keys)}. "
            "Load a full single-file SD1/SDXL checkpoint, or a VAE through load_vae()."
        )
    try:
        unet = unet_config_from_state_dict(unet_sd)
    except UNetConfigError as exc:
        raise UnknownCheckpointError(f"UNet under {UNET_PREFIX!r} is not a supported architecture: {exc}") from None
    text = _text_kind(keys)

    if unet.adm_in_channels is None:
        if unet.context_dim == 1024 or any(k.startswith("cond_stage_model.model.") for k in keys):
            raise UnknownCheckpointError("this looks like SD 2.x (OpenCLIP-H text encoder, 1024-wide context), which is not supported")
        family: Family = "sd1"
    elif text == "sdxl_refiner" or (text is None and unet.adm_in_channels - 5 * 256 == unet.context_dim):
        # refiner: y = [pooled, 5 x 256] and the context is bigG alone, so pooled width == context width
        family = "sdxl_refiner"
    else:
        family = "sdxl"

    markers = tuple(m for m in _MARKERS if m in shapes)
    prediction: Prediction = "eps"
    if "edm_mean" in markers or "edm_std" in markers:
        prediction = "edm"
    elif "v_pred" in markers or "edm_vpred.sigma_max" in markers:
        prediction = "v"

    vae_sd = {k[len(VAE_PREFIX) :]: shapes[k] for k in keys if k.startswith(VAE_PREFIX)}
    vae = None
    if vae_sd:
        try:
            vae = vae_config_from_state_dict(vae_sd, SD1_SCALE_FACTOR if family == "sd1" else SDXL_SCALE_FACTOR)
        except VAEConfigError as exc:
            raise UnknownCheckpointError(f"VAE under {VAE_PREFIX!r}: {exc}") from None

    params = sum(_numel(v) for v in unet_sd.values())
    names = {"sdxl": "SDXL", "sdxl_refiner": "SDXL refiner", "sd1": "SD 1.x"}
    variant = ""
    if family == "sdxl" and (unet.transformer_depth_input or unet.transformer_depth_output or unet.transformer_depth != (0, 2, 10)):
        variant = f" variant (transformer depths in {list(unet.input_depths())}, out {list(unet.output_depths())}, middle {unet.transformer_depth_middle})"
    description = (
        f"{names[family]}{variant}: UNet {params / 1e9:.2f}B parameters ({len(unet_sd)} tensors, "
        f"{unet.model_channels}x{list(unet.channel_mult)}), {prediction}-prediction, "
        f"text encoders {text or 'none'}, {'VAE' if vae else 'no VAE'}"
    )
    return ModelSpec(family, prediction, unet, vae, text, description, markers)


def _numel(value: Any) -> int:
    n = 1
    for d in tuple(value.shape) if hasattr(value, "shape") else tuple(value):
        n *= d
    return n


# ---------------------------------------------------------------------------------------------
# loading


def _load_part(model_cls: type[torch.nn.Module], config: Any, source: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
               prefix: str, dtype: torch.dtype, device: torch.device, where: str) -> torch.nn.Module:
    """The part under `prefix`, built on `meta` and checked by names and shapes before any tensor is read.

    Tensors under the prefix that the model has no place for are passed over (they are not read).
    """
    present = {k[len(prefix) :]: shape for k, shape in shapes.items() if k.startswith(prefix) and not k.endswith(IGNORED_SUFFIXES)}
    return load_on_meta(model_cls, config, present, lambda k: source[prefix + k], dtype, device, prefix=prefix,
                        fail=lambda message: CheckpointKeyError(f"{where}: {message}"), allow_unexpected=True)


def _unexpected(shapes: Mapping[str, Any], spec: ModelSpec, used_prefixes: list[str]) -> list[str]:
    out = []
    for k in shapes:
        if k.startswith(tuple(used_prefixes)) or k in _MARKERS or k.endswith(IGNORED_SUFFIXES) or k.startswith(_IGNORED_PREFIXES):
            continue
        if "." not in k:  # SD1 schedule buffers (betas, alphas_cumprod, ...): we compute the schedule
            continue
        out.append(k)
    return out


def _text_prefixes() -> list[str]:
    try:
        from .text_encoder import BIGG_PREFIXES, CLIP_L_PREFIXES  # type: ignore[attr-defined]
    except ImportError:
        return []
    return list(CLIP_L_PREFIXES.values()) + list(BIGG_PREFIXES.values())


def _vae_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # The SDXL VAE overflows in fp16 (sdxl.md section 1): decode in bf16 where it is fast, else fp32.
    if dtype != torch.float16:
        return dtype
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def load_checkpoint(
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    vae_path: str | os.PathLike[str] | None = None,
    *,
    text_encoders: bool = True,
    vae_dtype: torch.dtype | None = None,
) -> Checkpoint:
    """Load a single-file SD1 / SDXL checkpoint: detect, then build UNet, VAE and text encoders.

    dtype None picks the device's compute dtype (`devices.pick_dtype`). The VAE runs in `vae_dtype`
    (default: dtype, except fp16, which the SDXL VAE overflows in: then bf16 on CUDA, else fp32).
    `vae_path` replaces the built-in VAE with a separate file. Missing or misshapen tensors raise
    `CheckpointKeyError` naming them; tensors nothing uses are listed in `.unexpected` and warned.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; put it in models/checkpoints or pass the full path")
    device = torch.device(device)
    dtype = dtype or pick_dtype(device)
    source = _Source(path)
    try:
        shapes = {k: source.shape(k) for k in source}
        spec = detect(shapes)
        unet = _load_part(UNet, spec.unet, source, shapes, UNET_PREFIX, dtype, device, f"{path.name} UNet")
        vae = None
        vdtype = vae_dtype or _vae_dtype(dtype, device)
        if vae_path is not None:
            vae = load_vae(vae_path, vdtype, device, scale_factor=spec.scale_factor)
        elif spec.vae is not None:
            vae = _load_part(AutoencoderKL, spec.vae, source, shapes, VAE_PREFIX, vdtype, device, f"{path.name} VAE")
        clip = None
        if text_encoders and spec.text_encoders is not None:
            from .text_encoder import load_text_encoders

            clip = load_text_encoders(_Converted(source, dtype, device), dtype, device)
        sampling = {}
        for marker in ("edm_vpred.sigma_max", "edm_vpred.sigma_min", "edm_mean", "edm_std"):
            if marker in shapes and _numel(shapes[marker]) == 1:
                sampling[marker] = float(source[marker].float().item())
        unexpected = _unexpected(shapes, spec, [UNET_PREFIX, VAE_PREFIX, *_text_prefixes()])
        if unexpected:
            warnings.warn(f"{path.name}: {len(unexpected)} tensor(s) not used: {', '.join(unexpected[:20])}", stacklevel=2)
        return Checkpoint(spec, unet, vae, clip, dict(source.metadata), str(path), unexpected, sampling)  # type: ignore[arg-type]
    finally:
        source.close()


def load_vae(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    scale_factor: float = SDXL_SCALE_FACTOR,
) -> AutoencoderKL:
    """Load a standalone VAE file in ldm layout (bare `encoder.*` keys or under `first_stage_model.`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE file {path} does not exist; put it in models/vae or pass the full path")
    device = torch.device(device)
    source = _Source(path)
    try:
        shapes = {k: source.shape(k) for k in source}
        prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in shapes) else ""
        if prefix + "encoder.conv_in.weight" not in shapes:
            hint = " (it looks like diffusers layout: down_blocks/up_blocks; use the original single-file VAE)" if any(
                "down_blocks" in k for k in shapes) else ""
            raise UnknownCheckpointError(f"{path}: not an ldm VAE{hint}; it holds {_prefix_summary(list(shapes))}")
        sub = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
        config = vae_config_from_state_dict(sub, scale_factor)
        return _load_part(AutoencoderKL, config, source, shapes, prefix, dtype, device, f"{path.name} VAE")  # type: ignore[return-value]
    finally:
        source.close()
