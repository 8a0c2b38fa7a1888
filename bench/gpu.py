"""GPU check: a full-size SDXL sampling step and VAE decode in fp16 and bf16 against fp32 on CUDA.

Writes a random full-size SDXL base checkpoint (real single-file layout), loads it through
`load_checkpoint` once per dtype, and for each: times one CFG Euler step at 1024x1024 (UNet batch 2)
and a VAE decode, and compares the outputs with the fp32 run (relative L2 error, max abs diff, PSNR).
fp32 runs with TF32 off (the strict baseline) and again with TF32 on.

    python -m bench.gpu [--preset sdxl_base] [--size 1024] [--device cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nodes.diffusion.checkpoint import load_checkpoint
from nodes.diffusion.guidance import CFGGuider, Cond
from nodes.diffusion.model_sampling import Denoiser, ModelSamplingDiscrete
from nodes.diffusion.random_checkpoint import write_random_checkpoint
from nodes.diffusion.schedules import calculate_sigmas

# UNet FLOPs per image forward and VAE decode FLOPs (reference/sdxl.md section 6), in TFLOP.
UNET_TFLOP = {512: 1.59, 768: 3.64, 1024: 6.76}
VAE_TFLOP = {512: 2.52, 1024: 10.47}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Any, device: torch.device, warmup: int, repeat: int) -> tuple[float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _compare(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    a, ref = a.double(), ref.double()
    diff = a - ref
    rel = (diff.norm() / ref.norm().clamp_min(1e-30)).item()
    return {"rel_l2": rel, "max_abs": diff.abs().max().item(), "finite": bool(torch.isfinite(a).all())}


def _psnr(img: torch.Tensor, ref: torch.Tensor) -> float:
    a = ((img.double().clamp(-1, 1) + 1) / 2)
    b = ((ref.double().clamp(-1, 1) + 1) / 2)
    mse = ((a - b) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def run(preset: str, size: int, device: torch.device, warmup: int, repeat: int, workdir: Path) -> dict[str, Any]:
    path = workdir / f"{preset}.safetensors"
    t0 = time.perf_counter()
    write_random_checkpoint(path, preset, seed=0)
    write_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    lat = size // 8
    ms = ModelSamplingDiscrete()
    sigmas = calculate_sigmas(ms, "karras", 20)
    sigma, sigma_next = sigmas[5].item(), sigmas[6].item()  # a mid-schedule step
    x = (torch.randn(1, 4, lat, lat, generator=gen) * sigma).to(device)
    latent = torch.randn(1, 4, lat, lat, generator=gen).to(device) / 0.13025 * 0.13025  # unit-variance latent
    rows: dict[str, dict[str, Any]] = {}
    reference: dict[str, torch.Tensor] = {}
    variants = [("fp32", torch.float32, False), ("fp32+tf32", torch.float32, True), ("bf16", torch.bfloat16, False),
                ("fp16", torch.float16, False)]
    for name, dtype, tf32 in variants:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        ckpt = load_checkpoint(path, dtype=dtype, device=device, text_encoders=False, vae_dtype=dtype)
        load_s = time.perf_counter() - t0
        cfgs = ckpt.unet.config
        ctx_gen = torch.Generator().manual_seed(1)
        pos = Cond(context=torch.randn(1, 77, cfgs.context_dim, generator=ctx_gen).to(device, dtype),
                   y=torch.randn(1, cfgs.adm_in_channels, generator=ctx_gen).to(device, dtype))
        neg = Cond(context=torch.randn(1, 77, cfgs.context_dim, generator=ctx_gen).to(device, dtype),
                   y=torch.randn(1, cfgs.adm_in_channels, generator=ctx_gen).to(device, dtype))
        guider = CFGGuider(Denoiser(ckpt.unet, ms), [pos], [neg], cfg=7.0, model_sampling=ms)
        s = torch.full((1,), sigma, device=device)

        def step() -> torch.Tensor:
            with torch.inference_mode():
                xs = x.to(dtype)
                denoised = guider(xs, s)
                d = (xs - denoised) / sigma
                return xs + d * (sigma_next - sigma)  # one Euler step

        def decode() -> torch.Tensor:
            with torch.inference_mode():
                return ckpt.vae.decode(latent.to(dtype) / ckpt.vae.scale_factor)

        step_s, x_next = _median_time(step, device, warmup, repeat)
        dec_s, image = _median_time(decode, device, max(1, warmup // 2), max(2, repeat // 2))
        x_next, image = x_next.float().cpu(), image.float().cpu()
        row: dict[str, Any] = {
            "load_s": load_s, "step_s": step_s, "decode_s": dec_s,
            "unet_tflops": 2 * UNET_TFLOP.get(size, float("nan")) / step_s,
            "vae_tflops": VAE_TFLOP.get(size, float("nan")) / dec_s,
        }
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if name == "fp32":
            reference = {"x": x_next, "image": image}
        else:
            row["step_vs_fp32"] = _compare(x_next, reference["x"])
            row["decode_vs_fp32"] = _compare(image, reference["image"])
            row["psnr_vs_fp32_db"] = _psnr(image, reference["image"])
            row["speedup_vs_fp32"] = rows["fp32"]["step_s"] / step_s
        rows[name] = row
        del ckpt, guider, pos, neg
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    path.unlink(missing_ok=True)
    return {"preset": preset, "size": size, "device": str(device), "write_s": write_s,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "rows": rows}


def _print(result: dict[str, Any]) -> None:
    print(f"{result['preset']} at {result['size']}x{result['size']} on {result['device_name']} (torch {result['torch']}); "
          f"random checkpoint written in {result['write_s']:.1f} s")
    print(f"{'variant':<10} {'load s':>7} {'step s':>8} {'x fp32':>7} {'UNet TF/s':>9} {'decode s':>9} {'VAE TF/s':>8} "
          f"{'step relL2':>10} {'step maxabs':>11} {'img PSNR dB':>11}")
    for name, r in result["rows"].items():
        cmp = r.get("step_vs_fp32", {})
        print(f"{name:<10} {r['load_s']:7.2f} {r['step_s']:8.4f} {r.get('speedup_vs_fp32', 1.0):7.2f} {r['unet_tflops']:9.1f} "
              f"{r['decode_s']:9.4f} {r['vae_tflops']:8.1f} {cmp.get('rel_l2', 0.0):10.2e} {cmp.get('max_abs', 0.0):11.2e} "
              f"{r.get('psnr_vs_fp32_db', math.inf):11.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sdxl_base")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lg-gpu-"))
    result = run(args.preset, args.size, torch.device(args.device), args.warmup, args.repeat, workdir)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
