"""Tiny random checkpoints and LoRAs for node and workflow tests, written once and reused.

Files go to pytest's cache folder under a name that changes when the model code changes, so a test
session writes them only the first time (a few seconds of CPU) and reuses them afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

__all__ = ["TINY", "tiny_model_files", "install_models", "write_tiny_lora", "write_input_images"]

# file name -> (preset, seed)
TINY = {
    "tiny_sdxl.safetensors": ("tiny", 0),
    "tiny_refiner.safetensors": ("tiny_refiner", 1),
}
_SOURCES = ("random_checkpoint.py", "unet.py", "vae.py", "clip.py", "checkpoint.py")


def _code_hash() -> str:
    folder = Path(__file__).resolve().parents[2] / "nodes" / "diffusion"
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def tiny_model_files(cache_root: Path) -> Path:
    """A folder with the TINY checkpoints and `tiny_lora.safetensors`, written if missing."""
    from nodes.diffusion.random_checkpoint import write_random_checkpoint

    folder = cache_root / f"tiny-models-{_code_hash()}"
    for stale in cache_root.glob("tiny-models-*"):  # written by an older version of the model code
        if stale != folder:
            shutil.rmtree(stale, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[tuple[str, int], Path] = {}
    for name, (preset, seed) in TINY.items():
        path = folder / name
        if not path.exists():
            if (preset, seed) in written:
                _link(written[(preset, seed)], path)
            else:
                partial = folder / f".{name}.partial"
                write_random_checkpoint(partial, preset, seed)
                os.replace(partial, path)
        written.setdefault((preset, seed), path)
    lora = folder / "tiny_lora.safetensors"
    if not lora.exists():
        write_tiny_lora(folder / "tiny_sdxl.safetensors", lora)
    return folder


def install_models(source: Path, models_dir: Path) -> None:
    """Link the tiny files and the shipped demo model into a ComfyUI-style models folder."""
    for sub in ("checkpoints", "loras", "vae", "embeddings"):
        (models_dir / sub).mkdir(parents=True, exist_ok=True)
    for name in TINY:
        _link(source / name, models_dir / "checkpoints" / name)
    from nodes.plugin import DEFAULT_CHECKPOINT, SHIPPED_CHECKPOINT  # the embedded demo, as users get it

    _link(SHIPPED_CHECKPOINT, models_dir / "checkpoints" / DEFAULT_CHECKPOINT)
    _link(source / "tiny_lora.safetensors", models_dir / "loras" / "tiny_lora.safetensors")


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_tiny_lora(checkpoint: Path, target: Path, rank: int = 4, seed: int = 0) -> Path:
    """A kohya-style LoRA for the tiny SDXL model: every UNet attention projection and CLIP q/k/v."""
    from nodes.diffusion.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(base: str, weight: torch.Tensor) -> None:
        out_f, in_f = weight.shape[0], weight.shape[1]
        tensors[f"{base}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * 0.5
        tensors[f"{base}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen) * 0.5
        tensors[f"{base}.alpha"] = torch.tensor(float(rank))

    for name, p in ckpt.unet.named_parameters():
        if any(k in name for k in ("attn1.to_q", "attn2.to_k", "attn2.to_v")) and name.endswith(".weight"):
            add("lora_unet_" + name[: -len(".weight")].replace(".", "_"), p)
    for name, p in ckpt.clip.clip_l.named_parameters():
        if "self_attn.q_proj.weight" in name:
            add("lora_te1_text_model_" + name[: -len(".weight")].replace(".", "_"), p)
    save_file(tensors, str(target))
    return target


def write_input_images(input_dir: Path) -> None:
    """example.png (RGB) and inpaint_example.png (RGBA with a transparent square to repaint)."""
    input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(input_dir / "example.png")
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    rgba[16:48, 16:48, 3] = 0
    rgba[..., :3] = (rgba[..., :3] + rng.integers(0, 8, rgba[..., :3].shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(input_dir / "inpaint_example.png")
