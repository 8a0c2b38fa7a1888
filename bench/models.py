"""Full-size SDXL model benchmark: load, UNet forward and VAE decode at 512x512, per dtype.

    python -m bench.models [--device auto|cpu|cuda] [--dtypes fp32,bf16] [--runs 3] [--keep PATH]

Writes a full-size random SDXL base checkpoint (fp16, ~7 GB) with `random_checkpoint`, loads it
through `load_checkpoint` (the real loading path), and for each dtype reports: load time and peak
RSS, the UNet forward (batch 2, 64x64 latent, 77 tokens) and a VAE decode (one 512x512 image) in
seconds (median of --runs after a warm-up) and TFLOP/s from the FLOP counts of sdxl.md section 6,
against a plain 4096x4096 matmul of the same dtype measured in the same run (the ceiling). The
decoded images of each dtype are compared with fp32's by PSNR. Each dtype runs in a child process
so its peak RSS is its own. The checkpoint is deleted afterwards unless --keep names it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

UNET_TFLOP = 1.59 * 2  # SDXL base UNet forward at 512^2, batch 2 (sdxl.md section 6)
VAE_TFLOP = 2.52  # VAE decode of one 512^2 image
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, runs: int, slow_s: float) -> tuple[float, int]:
    """Median seconds of `runs` calls after one warm-up; a single timed call when the warm-up exceeds slow_s."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - t0
    n = 1 if warm > slow_s else runs
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB (1e6 KiB ~ 1.02 GB)


def child(path: str, dtype_name: str, device_name: str, runs: int, out_dir: str, compile_models: bool = False) -> dict:
    from nodes.diffusion.checkpoint import load_checkpoint
    from nodes.diffusion.devices import cpu_has_fast_bf16, pick_device

    device = pick_device(device_name)
    dtype = DTYPES[dtype_name]
    result: dict = {"dtype": dtype_name, "device": str(device)}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16():
        a = torch.randn(256, 256, dtype=dtype)
        t0 = time.perf_counter()
        a @ a
        result["skipped"] = (f"this CPU has neither AMX nor AVX-512 BF16: a 256^3 bf16 matmul took "
                             f"{time.perf_counter() - t0:.3f} s ({2 * 256**3 / (time.perf_counter() - t0) / 1e9:.2f} GFLOP/s)")
        return result

    with torch.inference_mode():
        n = 4096
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        mm_s, _ = _time(lambda: a @ b, device, runs, slow_s=30)
        result["matmul_tflops"] = 2 * n**3 / mm_s / 1e12
        del a, b

        rss0 = _peak_rss_gb()
        t0 = time.perf_counter()
        ckpt = load_checkpoint(path, dtype=dtype, device=device, vae_dtype=dtype)
        _sync(device)
        result["load_s"] = time.perf_counter() - t0
        result["load_peak_rss_gb"] = _peak_rss_gb()
        result["rss_before_load_gb"] = rss0
        result["weights_gb"] = sum(p.numel() * p.element_size() for m in (ckpt.unet, ckpt.vae) for p in m.parameters()) / 1e9
        result["text_encoders"] = type(ckpt.clip).__name__ if ckpt.clip is not None else None
        if ckpt.clip is not None:
            result["weights_gb"] += sum(p.numel() * p.element_size() for m in ckpt.clip.models.values() for p in m.parameters()) / 1e9
        unet, vae = ckpt.unet, ckpt.vae
        del ckpt  # the text encoders are not benchmarked here
        decode = vae.decode
        if compile_models:  # fewer kernel launches: matters on a GPU at this small size
            unet, decode = torch.compile(unet), torch.compile(vae.decode)
            result["compiled"] = True

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 64, 64, generator=gen).to(device, dtype)
        ctx = torch.randn(2, 77, 2048, generator=gen).to(device, dtype)
        y = torch.randn(2, 2816, generator=gen).to(device, dtype)
        t = torch.tensor([500.0, 500.0], device=device)
        unet_s, unet_n = _time(lambda: unet(x, t, ctx, y), device, runs, slow_s=90)
        result.update(unet_s=unet_s, unet_runs=unet_n, unet_tflops=UNET_TFLOP / unet_s)
        del unet

        latent = torch.randn(1, 4, 64, 64, generator=gen).to(device, dtype)
        decoded: list[torch.Tensor] = []
        vae_s, vae_n = _time(lambda: decoded.append(decode(latent)), device, runs, slow_s=90)
        result.update(vae_s=vae_s, vae_runs=vae_n, vae_tflops=VAE_TFLOP / vae_s)
        torch.save(decoded[-1].float().cpu(), os.path.join(out_dir, f"decoded_{dtype_name}.pt"))
        result["peak_rss_gb"] = _peak_rss_gb()
    return result


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # peak-to-peak 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the ~7 GB checkpoint")
    parser.add_argument("--keep", default=None, help="reuse / keep the checkpoint at this path")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and the decoder")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "DTYPE", "OUTDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        path, dtype_name, out_dir = args.child
        print("RESULT " + json.dumps(child(path, dtype_name, args.device, args.runs, out_dir, args.compile)), flush=True)
        return 0

    from nodes.diffusion.random_checkpoint import write_random_checkpoint

    path = Path(args.keep) if args.keep else Path(args.dir) / "latentgraph_bench_sdxl_base.safetensors"
    free_gb = shutil.disk_usage(path.parent if path.parent.exists() else args.dir).free / 1e9
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, free disk at {path.parent}: {free_gb:.0f} GB")
    if not path.exists():
        if free_gb < 10:
            print(f"need ~7 GB free at {path.parent}, have {free_gb:.1f} GB; pass --dir")
            return 1
        t0 = time.perf_counter()
        write_random_checkpoint(path, "sdxl_base", seed=0, dtype=torch.float16)
        print(f"wrote {path.name}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
    results = []
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            for name in args.dtypes.split(","):
                cmd = [sys.executable, "-m", "bench.models", "--device", args.device, "--runs", str(args.runs), *(["--compile"] if args.compile else []), "--child", str(path), name, out_dir]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(f"{name}: child failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
                    continue
                r = json.loads(line[len("RESULT ") :])
                results.append(r)
                _print(r)
            ref = Path(out_dir) / "decoded_fp32.pt"
            for r in results:
                img = Path(out_dir) / f"decoded_{r['dtype']}.pt"
                if r["dtype"] != "fp32" and ref.exists() and img.exists():
                    r["psnr_vs_fp32_db"] = _psnr(torch.load(img), torch.load(ref))
                    print(f"{r['dtype']}: decoded image PSNR vs fp32 = {r['psnr_vs_fp32_db']:.1f} dB (target >= 35)")
        finally:
            if not args.keep:
                path.unlink(missing_ok=True)
    by = {r["dtype"]: r for r in results if "unet_s" in r}
    if "fp32" in by and "bf16" in by:
        print(f"bf16 vs fp32 speed-up: UNet {by['fp32']['unet_s'] / by['bf16']['unet_s']:.2f}x, "
              f"VAE {by['fp32']['vae_s'] / by['bf16']['vae_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _print(r: dict) -> None:
    if "skipped" in r:
        print(f"{r['dtype']} on {r['device']}: skipped: {r['skipped']}")
        return
    ceiling = r["matmul_tflops"]
    print(f"{r['dtype']} on {r.get('device_name', r['device'])}{' (torch.compile)' if r.get('compiled') else ''}:")
    print(f"  matmul 4096^2 ceiling      {ceiling:8.3f} TFLOP/s")
    print(f"  load_checkpoint            {r['load_s']:8.1f} s, peak RSS {r['load_peak_rss_gb']:.1f} GB "
          f"(before load {r['rss_before_load_gb']:.1f} GB; weights in memory {r['weights_gb']:.1f} GB; text: {r['text_encoders']})")
    print(f"  UNet fwd 512^2 batch 2     {r['unet_s']:8.3f} s (median of {r['unet_runs']}), {r['unet_tflops']:.3f} TFLOP/s = "
          f"{100 * r['unet_tflops'] / ceiling:.0f}% of matmul (target >= 60% for bf16)")
    print(f"  VAE decode 512^2           {r['vae_s']:8.3f} s (median of {r['vae_runs']}), {r['vae_tflops']:.3f} TFLOP/s = "
          f"{100 * r['vae_tflops'] / ceiling:.0f}% of matmul")
    print(f"  peak RSS                   {r['peak_rss_gb']:8.1f} GB")


if __name__ == "__main__":
    sys.exit(main())
