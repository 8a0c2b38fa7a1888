"""Sample the embedded demo model the way the KSampler node does, and draw a grid of prompts and pictures.

`generate` is the whole text-to-image path on our own pieces: SDXLClip encodes the prompts (context +
pooled), `sdxl_adm` adds the size/crop conditioning, a CFGGuider guides a Denoiser over the UNet with
the negative prompt "", `ksampler` samples from seeded CPU noise, and the VAE decodes.

CLI: `python -m nodes.diffusion.demo_grid OUT.png [--checkpoint PATH] [--steps 10] [--cfg 5] [--seed 0]`
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .checkpoint import Checkpoint, load_checkpoint
from .guidance import Cond
from .ksampler import SDXL_LATENT, ksampler
from .model_sampling import Denoiser, ModelSamplingDiscrete
from .text_encoder import sdxl_adm

__all__ = ["DEMO_PATH", "GRID_PROMPTS", "load_demo", "generate", "draw_grid", "main"]

DEMO_PATH = Path(__file__).parent / "data" / "latentgraph_demo.safetensors"

GRID_PROMPTS = (
    "a large red circle in the center, white background",
    "a large yellow square in the center, black background",
    "a large green triangle in the center, gray background",
    "a large cyan circle, blue background",
    "a large blue square, yellow background",
    "a large purple triangle, white background",
    "a small red square on the left, white background",
    "a small blue circle on the right, white background",
    "a small yellow triangle at the top, purple background",
    "a small green circle at the bottom, black background",
    "a large cyan square on the left, red to black gradient background",
    "a small purple circle on the right, white to green gradient background",
)


def load_demo(path: str | Path = DEMO_PATH) -> Checkpoint:
    """The demo checkpoint through the ordinary loader (the same path CheckpointLoaderSimple takes)."""
    return load_checkpoint(path)


@torch.inference_mode()
def generate(
    checkpoint: Checkpoint,
    prompts: list[str],
    seed: int = 0,
    *,
    steps: int = 10,
    cfg: float = 5.0,
    sampler: str = "dpmpp_2m",
    scheduler: str = "karras",
    size: int = 128,
    negative: str = "",
) -> np.ndarray:
    """One picture per prompt, (B, size, size, 3) uint8; the batch's noise comes from `seed` (KSampler's)."""
    clip, unet, vae = checkpoint.clip, checkpoint.unet, checkpoint.vae
    assert clip is not None and vae is not None, "the checkpoint needs its text encoders and VAE"
    contexts, ys = [], []
    for prompt in prompts:
        context, pooled = clip.encode(prompt)  # (1, 77, C), (1, P)
        contexts.append(context)
        ys.append(sdxl_adm(pooled, size, size))
    positive = [Cond(context=torch.cat(contexts), y=torch.cat(ys))]
    neg_context, neg_pooled = clip.encode(negative)
    negative_cond = [Cond(context=neg_context, y=sdxl_adm(neg_pooled, size, size))]
    model_sampling = ModelSamplingDiscrete(checkpoint.spec.prediction)
    denoiser = Denoiser(unet, model_sampling)
    down = vae.config.downscale
    latent = {"samples": torch.zeros(len(prompts), vae.config.embed_dim, size // down, size // down)}
    out = ksampler(denoiser, model_sampling, seed, steps, cfg, sampler, scheduler, positive, negative_cond, latent,
                   latent_format=SDXL_LATENT)
    pixels = vae.decode(out["samples"].to(vae.dtype)).float()  # (B, 3, H, W) in -1..1
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def draw_grid(prompts: list[str], images: list[np.ndarray], columns: int = 4, cell: int = 192) -> Image.Image:
    """Each prompt above its pictures (one row of seeds per prompt cell), `columns` cells per row."""
    seeds = images[0].shape[0]
    pic = cell - 16
    text_h = 44
    cell_w = seeds * (pic + 4) + 12
    rows = (len(prompts) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell_w, rows * (pic + text_h + 12)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (prompt, batch) in enumerate(zip(prompts, images)):
        x0, y0 = (k % columns) * cell_w + 6, (k // columns) * (pic + text_h + 12) + 4
        for i, line in enumerate(_wrap(prompt, cell_w // 6 - 2)[:3]):
            draw.text((x0, y0 + 12 * i), line, fill=(0, 0, 0))
        for s in range(seeds):
            img = Image.fromarray(batch[s]).resize((pic, pic), Image.NEAREST if pic % batch.shape[1] == 0 else Image.BICUBIC)
            grid.paste(img, (x0 + s * (pic + 4), y0 + text_h))
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.diffusion.demo_grid", description="Draw a grid of demo-model pictures.")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--checkpoint", default=str(DEMO_PATH))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=2, help="pictures per prompt (seeds seed, seed+1, ...)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = load_demo(args.checkpoint)
    prompts = list(GRID_PROMPTS)
    t0 = time.time()
    per_seed = [generate(checkpoint, prompts, args.seed + s, steps=args.steps, cfg=args.cfg) for s in range(args.seeds)]
    images = [np.stack([per_seed[s][k] for s in range(args.seeds)]) for k in range(len(prompts))]  # per prompt (S, H, W, 3)
    draw_grid(prompts, images).save(args.out)
    n = len(prompts) * args.seeds
    print(f"wrote {args.out}: {n} pictures at 128x128, {args.steps} steps, cfg {args.cfg}, in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
