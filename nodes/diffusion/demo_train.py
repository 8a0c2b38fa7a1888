"""Train the embedded demo model: a tiny SDXL-architecture checkpoint on the procedural shapes set.

Phases (each resumable from the state file): `render` the data set (demo_data), train the `vae`
(L1 + L2 + a small KL, on random crops), `encode` every image to its posterior mean and normalise
the latents exactly into SDXL's scale (see `normalize_vae`), then train the `unet` together with the
two text encoders from scratch (eps-prediction on SDXL's discrete schedule with offset noise and a
loss weight that favours high noise, 10% empty captions for classifier-free guidance, EMA weights,
and a caption read-out loss that keeps the encoders from blurring words the UNet has not learned to
use yet), fine-tune the VAE's `decoder` alone on whole pictures (the encoder, and so every latent the
UNet learned on, stays as it was; how SD's ft-MSE VAE was made), and `export` a single-file SDXL
checkpoint in the original layout. Everything random is drawn from
generators keyed by (seed, phase, step), so a run is reproducible and a resumed run draws what the
uninterrupted one would have.

CLI: `python -m nodes.diffusion.demo_train [--out nodes/diffusion/data/latentgraph_demo.safetensors]
[--work DIR] [--device auto|cpu|cuda] [--threads N]` plus one flag per `Recipe` field (`--unet-steps N`, `--offset-noise X`, ...).
The recipe and its figures are in docs/demo_model.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import UNET_PREFIX, VAE_PREFIX
from .clip import CLIPTextConfig, CLIPTextModel, OpenCLIPTextModel
from .demo_data import CAPTION_GROUPS, caption, caption_labels, render_with_mask, sample_scene, scene_rng
from .devices import cpu_has_fast_bf16
from .model_sampling import ModelSamplingDiscrete
from .text_encoder import BIGG_PREFIXES, CLIP_L_PREFIXES, SDXLClip, sdxl_adm
from .unet import UNet, UNetConfig
from .vae import SDXL_SCALE_FACTOR, AutoencoderKL, VAEConfig

__all__ = [
    "DEMO_VAE",
    "model_configs",
    "DEMO_PATH",
    "Recipe",
    "Trainer",
    "normalize_vae",
    "main",
]

DEMO_PATH = Path(__file__).parent / "data" / "latentgraph_demo.safetensors"

# Text encoders: the real 49,408-token vocabulary and 77 positions, `text_width` wide (one head),
# three blocks, so the penultimate hidden state SDXL conditions on has passed two of them.
# UNet: SDXL's layout at 1/10 width or so: no attention at level 0, linear projections, 64-wide heads,
# context = CLIP-L + bigG widths (the 2048 concat), y = pooled + 6 x 256 size/crop embeddings (2816-style).
# VAE: 8x compression to 4 channels like SDXL's, with 32..64 channels instead of 128..512.
DEMO_VAE = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)


def model_configs(recipe: "Recipe") -> tuple[CLIPTextConfig, CLIPTextConfig, UNetConfig, VAEConfig]:
    """(CLIP-L, bigG, UNet, VAE) configurations of the recipe's model."""
    w = recipe.text_width
    clip_l = CLIPTextConfig(width=w, layers=3, heads=1, mlp_width=4 * w)
    clip_g = CLIPTextConfig(width=w, layers=3, heads=1, mlp_width=4 * w, activation="gelu", projection_dim=w)
    unet = UNetConfig(
        model_channels=recipe.unet_channels, channel_mult=(1, 2, 2), num_res_blocks=1, transformer_depth=tuple(recipe.transformer_depth),
        transformer_depth_middle=1, num_head_channels=64, context_dim=2 * w, adm_in_channels=w + 6 * 256,
    )
    return clip_l, clip_g, unet, DEMO_VAE


PHASES = ("render", "vae", "encode", "unet", "decoder", "export")
# Rough relative cost of one step of each phase (measured on CPU), for the "total left" estimate.
_STEP_COST = {"vae": 1.0, "encode": 0.25, "unet": 1.0, "decoder": 0.8}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; stored in the state file and the checkpoint."""

    seed: int = 0
    image_size: int = 128  # training and default sampling resolution (latent 16 x 16)
    images: int = 2048  # rendered scenes; the VAE trains on crops of them, the UNet on their latents
    vae_steps: int = 550  # the first vae_crop_steps on crops, the rest on whole pictures
    vae_crop_steps: int = 400
    vae_batch: int = 8  # crops per step; whole pictures come vae_batch // 2 at a time
    vae_crop: int = 64  # crops learn fast; the whole-picture steps then fit GroupNorm statistics and the mid attention to 128px
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    anchor_weight: float = 1.0  # pull latent channels 0-2 towards the 8x8-averaged RGB: the encoder learns in minutes, not hours
    mask_anchor_weight: float = 0.0  # pull latent channel 3 towards the 8x8-averaged shape mask: "a shape is here", whatever its colour
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    caption_dropout: float = 0.1  # share of empty captions, what CFG's negative "" is trained on
    ema: float = 0.999
    text_width: int = 32  # both text encoders' width (and bigG's projection)
    unet_channels: int = 32  # model_channels; levels are 1x, 2x, 2x of it
    transformer_depth: tuple[int, int, int] = (0, 1, 1)  # SpatialTransformer blocks per level (SDXL: 0, 2, 10)
    caption_drop: tuple[float, ...] = (0.25, 0.2, 0.3)  # how often size, position, background (, colour, shape) are left out
    offset_noise: float = 0.3  # std of a per-channel constant added to the training noise
    pyramid_noise: float = 0.0  # discount of the multi-resolution noise (0: none)
    pyramid_from: int = 1  # its finest level: 1/2**pyramid_from of the latent's size
    white_noise_steps: int = 0  # UNet steps on white noise before the pyramid and offset noise start
    loss_weight: str = "v"  # eps | min_snr (min(SNR, gamma) / SNR) | v (min(1 + 1/SNR, gamma): favours high noise)
    snr_gamma: float = 20.0
    text_aux_weight: float = 0.1  # weight of a caption-parsing loss on the text encoders' context (see Trainer.text_head)
    decoder_steps: int = 800  # last, the VAE's decoder alone on whole pictures: sharper pictures, the same latents
    decoder_lr: float = 1e-3


# ---------------------------------------------------------------------------------------------
# small pieces


def _generator(seed: int, phase: str, step: int, stream: int = 0) -> torch.Generator:
    """The generator of one step's draws (stream 0: the batch, 1: noise), independent of any history."""
    key = (((seed * 1_000_003 + PHASES.index(phase)) * 1_000_033 + stream) * 10_000_019 + step) % (2**63 - 1)
    return torch.Generator().manual_seed(key)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p))))


def training_noise(shape: tuple[int, ...], g: torch.Generator, pyramid: float = 0.0, offset: float = 0.0,
                   pyramid_from: int = 1) -> torch.Tensor:
    """The eps a training step adds: white noise, plus (pyramid > 0) the same at 1/2, 1/4, ... resolution
    upsampled and weighted pyramid**k, renormalised to unit std, plus (offset > 0) a per-channel constant.

    Both put more of the noise into low frequencies than white noise has, so the model cannot read a
    picture's layout and overall colour off the faint low-frequency signal that SDXL's schedule leaves
    at its noisiest steps; it has to take them from the text.
    """
    noise = torch.randn(shape, generator=g)
    B, C, H, W = shape
    if pyramid > 0:
        k = pyramid_from
        while min(H, W) >> k >= 1:
            low = torch.randn((B, C, max(1, H >> k), max(1, W >> k)), generator=g)
            noise = noise + F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False) * pyramid**k
            k += 1
        noise = noise / noise.std(dim=(1, 2, 3), keepdim=True)
    if offset > 0:
        noise = noise + offset * torch.randn((B, C, 1, 1), generator=g)
    return noise


def loss_weights(alpha_bar: torch.Tensor, kind: str, gamma: float) -> torch.Tensor:
    """Per-sample weights of the eps MSE at cumulative alphas `alpha_bar` (B,)."""
    snr = alpha_bar / (1 - alpha_bar)
    if kind == "eps":
        return torch.ones_like(snr)
    if kind == "min_snr":  # Hang et al. 2023: caps the weight of the easy, low-noise steps
        return snr.clamp(max=gamma) / snr
    if kind == "v":  # the v-prediction loss's weight, capped: more of the signal from the noisy steps that fix layout
        return (1 + 1 / snr).clamp(max=gamma)
    raise ValueError(f"loss_weight must be eps, min_snr or v, got {kind!r}")


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: not biases, norms, or embeddings (unused vocabulary rows must stay put)."""
    decay, keep = [], []
    for module in modules:
        for name, p in module.named_parameters():
            embedding = "embedding" in name
            (decay if p.ndim >= 2 and not embedding else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def _zero_init(unet: UNet) -> None:
    """ldm's zero_module: each residual branch's last layer starts at zero, so the UNet starts as identity paths."""
    for name, module in unet.named_modules():
        if name.endswith("out_layers.3") or name.endswith("proj_out") or name == "out.2":
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


def _init_text(model: nn.Module) -> None:
    """CLIP's initialisation of the embeddings (token std 0.02, positions 0.01)."""
    for name, p in model.named_parameters():
        if name.endswith("token_embedding.weight"):
            nn.init.normal_(p, std=0.02)
        elif "position" in name:
            nn.init.normal_(p, std=0.01)


@torch.no_grad()
def normalize_vae(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor, scale_factor: float = SDXL_SCALE_FACTOR) -> None:
    """Fold z' = c (z - mean), c = 1 / (scale_factor * std) per channel, into quant_conv / post_quant_conv.

    Exact: encode now returns z' (its log-variance shifted by 2 ln c), decode(z') equals the old
    decode(z). Afterwards scale_factor * latent has zero mean and unit std per channel, which is what
    SDXL's fixed 0.13025 assumes, so the checkpoint needs no scale of its own.
    """
    c = 1.0 / (scale_factor * std.double())  # (C,)
    m = mean.double()
    q, p = vae.quant_conv, vae.post_quant_conv
    E = p.in_channels
    wq, bq = q.weight.double(), q.bias.double()  # (2E, 2Z, 1, 1), (2E,)
    wq[:E] *= c[:, None, None, None]
    bq[:E] = c * (bq[:E] - m)
    bq[E:] += 2.0 * torch.log(c)
    wp, bp = p.weight.double(), p.bias.double()  # (Z, E, 1, 1), (Z,)
    bp = bp + wp[:, :, 0, 0] @ m
    wp = wp / c[None, :, None, None]
    q.weight.copy_(wq)
    q.bias.copy_(bq)
    p.weight.copy_(wp)
    p.bias.copy_(bp)


# ---------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """One training run: holds the models, runs the phases in order, saves and resumes its state."""

    def __init__(self, recipe: Recipe, work: Path, device: torch.device, log=print, workers: int = 1):
        self.recipe, self.work, self.device, self.log, self.workers = recipe, work, device, log, workers
        self.state_path = work / "demo_train_state.pt"
        self.bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
        torch.manual_seed(recipe.seed)
        clip_l_config, clip_g_config, unet_config, vae_config = model_configs(recipe)
        self.vae = AutoencoderKL(vae_config)
        with torch.no_grad():  # posterior std 0.05 at the start: unit noise would drown the young encoder's means
            self.vae.quant_conv.bias[vae_config.embed_dim :].fill_(-6.0)
        self.vae.to(device)
        self.clip_l = CLIPTextModel(clip_l_config)
        self.clip_g = OpenCLIPTextModel(clip_g_config)
        _init_text(self.clip_l)
        _init_text(self.clip_g)
        self.clip_l.to(device)
        self.clip_g.to(device)
        self.unet = UNet(unet_config)
        _zero_init(self.unet)
        self.unet.to(device)
        self.phase, self.step = "render", 0
        self.images: torch.Tensor | None = None  # (N, 3, H, W) uint8
        self.masks: torch.Tensor | None = None  # (N, 1, H, W) uint8: the shape's coverage
        self.scenes: list = []
        self.latents: torch.Tensor | None = None  # (N, 4, h, w) float32, model space (x scale_factor)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
        self.dec_opt = torch.optim.AdamW(self._decoder_params(), lr=recipe.decoder_lr, weight_decay=0.0)
        trained = [self.unet, self.clip_l, self.clip_g]
        self.opt = torch.optim.AdamW(_param_groups(trained, recipe.weight_decay), lr=recipe.unet_lr, betas=(0.9, 0.99),
                                     fused=device.type == "cuda")
        self.ema = [p.detach().clone() for m in trained for p in m.parameters()]
        # A linear read-out of what the caption says (size, colour, shape, position, background) from the
        # token-averaged context, trained with the text encoders and thrown away at export. Trained from
        # scratch by the denoising loss alone, the encoders leave words the UNet does not use yet all but
        # equal ("on the left" and "on the right" give contexts 3% apart, colours 70%), and the UNet never
        # gets a signal to start using them. SDXL's encoders come pretrained (CLIP) for the same reason.
        torch.manual_seed(recipe.seed + 1)
        self.text_head = nn.Linear(2 * recipe.text_width, sum(len(v) + 1 for v in CAPTION_GROUPS.values())).to(device)
        self.opt.add_param_group({"params": list(self.text_head.parameters()), "weight_decay": 0.0})
        self.history: dict[str, list[tuple[int, float]]] = {"vae": [], "unet": [], "decoder": []}
        self.elapsed = 0.0  # seconds of training done so far, over all sessions
        self.clip = SDXLClip(self.clip_l, self.clip_g)
        self._tokens: dict[str, tuple[list[int], list[int]]] = {}
        self._export_to: Path | None = None
        self._export_every = 0.0

    # -- state ------------------------------------------------------------------------------------

    def save(self) -> None:
        state = {
            "recipe": dataclasses.asdict(self.recipe),
            "phase": self.phase,
            "step": self.step,
            "vae": self.vae.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "dec_opt": self.dec_opt.state_dict(),
            "text_head": self.text_head.state_dict(),
            "unet": self.unet.state_dict(),
            "clip_l": self.clip_l.state_dict(),
            "clip_g": self.clip_g.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema,
            "latents": self.latents,
            "history": self.history,
            "elapsed": self.elapsed,
        }
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".part")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)

    def load(self) -> bool:
        """Resume from the state file if there is one; refuses a file made with another recipe."""
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        if state["recipe"] != dataclasses.asdict(self.recipe):
            raise SystemExit(
                f"{self.state_path} was made with another recipe ({state['recipe']}); pass the same options, "
                "or delete the file (or pick another --work folder) to start over"
            )
        self.vae.load_state_dict(state["vae"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.dec_opt.load_state_dict(state["dec_opt"])
        self.text_head.load_state_dict(state["text_head"])
        self.unet.load_state_dict(state["unet"])
        self.clip_l.load_state_dict(state["clip_l"])
        self.clip_g.load_state_dict(state["clip_g"])
        self.opt.load_state_dict(state["opt"])
        self.ema = [t.to(self.device) for t in state["ema"]]
        self.latents = state["latents"]
        self.history = {k: [tuple(x) for x in v] for k, v in state["history"].items()}
        self.elapsed = float(state["elapsed"])
        self.phase, self.step = state["phase"], int(state["step"])
        self.log(f"resumed {self.state_path}: phase {self.phase}, step {self.step}, {_fmt(self.elapsed)} trained")
        return True

    # -- progress ---------------------------------------------------------------------------------

    def _steps(self, phase: str) -> int:
        r = self.recipe
        return {"vae": r.vae_steps, "encode": math.ceil(r.images / 64), "unet": r.unet_steps, "decoder": r.decoder_steps}.get(phase, 0)

    def _report(self, phase: str, step: int, loss: float, per_step: float) -> None:
        left = (self._steps(phase) - step) * per_step
        later = PHASES[PHASES.index(phase) + 1 :]
        total = left + sum(self._steps(p) * _STEP_COST.get(p, 0.0) / _STEP_COST[phase] * per_step for p in later)
        self.log(f"[{phase}] step {step}/{self._steps(phase)}  loss {loss:.4f}  {per_step:.3f} s/step  "
                 f"phase left {_fmt(left)}  total left ~{_fmt(total)}")

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- phases -----------------------------------------------------------------------------------

    def run(self, checkpoint_every: float = 120.0, export_to: Path | None = None, export_every: float = 0.0) -> None:
        """Run the phases left; with `export_every` > 0, also write the checkpoint that often while the UNet trains."""
        self._export_to, self._export_every = export_to, export_every
        self.load()
        self.render_images()  # cheap and deterministic: redone on every resume instead of stored
        if self.phase == "render":
            self.phase, self.step = "vae", 0
        if self.phase == "vae":
            self.train_vae(checkpoint_every)
            self.phase, self.step = "encode", 0
        if self.phase == "encode":
            self.encode_latents()
            self.phase, self.step = "unet", 0
            self.save()
        if self.phase == "unet":
            self.train_unet(checkpoint_every)
            self.phase, self.step = "decoder", 0
            self.save()
        if self.phase == "decoder":
            if self.images is None:  # resumed after the encode phase: draw the pictures again
                self.render_images()
            self.train_decoder(checkpoint_every)
            self.phase, self.step = "export", 0
            self.save()

    def render_images(self) -> None:
        r = self.recipe
        t0 = time.time()
        self.scenes = [sample_scene(scene_rng(r.seed, i)) for i in range(r.images)]
        if self.phase in ("render", "vae", "encode", "decoder"):
            if self.workers > 1:
                with multiprocessing.get_context("spawn").Pool(self.workers) as pool:
                    drawn = pool.starmap(render_with_mask, [(s, r.image_size) for s in self.scenes], chunksize=64)
            else:
                drawn = [render_with_mask(s, r.image_size) for s in self.scenes]
            self.images = torch.from_numpy(np.stack([p for p, _ in drawn])).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
            self.masks = torch.from_numpy(np.stack([m for _, m in drawn]))[:, None].contiguous()  # (N, 1, H, W) uint8
            self.log(f"[render] {r.images} scenes at {r.image_size}px in {time.time() - t0:.1f} s")

    def _vae_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pictures (B, 3, crop, crop), shape masks (B, 1, crop, crop)), both in -1..1."""
        r = self.recipe
        assert self.images is not None and self.masks is not None
        g = _generator(r.seed, "vae", step)
        crop, batch = (r.vae_crop, r.vae_batch) if step < r.vae_crop_steps else (r.image_size, max(1, r.vae_batch // 2))
        idx = torch.randint(0, r.images, (batch,), generator=g)
        top = torch.randint(0, r.image_size - crop + 1, (batch,), generator=g)
        left = torch.randint(0, r.image_size - crop + 1, (batch,), generator=g)
        windows = list(zip(idx.tolist(), top.tolist(), left.tolist()))
        crops = torch.stack([self.images[i, :, t : t + crop, lft : lft + crop] for i, t, lft in windows])
        masks = torch.stack([self.masks[i, :, t : t + crop, lft : lft + crop] for i, t, lft in windows])
        return crops.to(self.device).float() / 127.5 - 1.0, masks.to(self.device).float() / 127.5 - 1.0

    def train_vae(self, checkpoint_every: float) -> None:
        r = self.recipe
        self.vae.train()
        last_save = time.time()
        t_phase, done, running = time.time(), 0, None
        while self.step < r.vae_steps:
            t0 = time.time()
            for group in self.vae_opt.param_groups:
                group["lr"] = _lr(self.step, r.vae_steps, r.vae_lr, r.warmup)
            x, mask = self._vae_batch(self.step)
            g = _generator(r.seed, "vae", self.step, stream=1)
            with self._autocast():
                mean, logvar = self.vae.encode_moments(x)
                noise = torch.randn(mean.shape, generator=g).to(self.device)
                z = mean + torch.exp(0.5 * logvar) * noise
                recon = self.vae.decode(z).float()
            mean, logvar = mean.float(), logvar.float()
            rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
            anchor = F.mse_loss(mean[:, :3], F.avg_pool2d(x, DEMO_VAE.downscale))
            objectness = F.mse_loss(mean[:, 3:], F.avg_pool2d(mask, DEMO_VAE.downscale))
            loss = rec + r.kl_weight * kl + r.anchor_weight * anchor + r.mask_anchor_weight * objectness
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
            self.vae_opt.step()
            self.step += 1
            done += 1
            self.elapsed += time.time() - t0
            running = rec.item() if running is None else 0.98 * running + 0.02 * rec.item()
            if self.step % 50 == 0 or self.step == r.vae_steps:
                self.history["vae"].append((self.step, running))
                self._report("vae", self.step, running, (time.time() - t_phase) / done)
            if time.time() - last_save > checkpoint_every:
                self.save()
                last_save = time.time()
        self.vae.eval()
        self.save()

    @torch.no_grad()
    def encode_latents(self) -> None:
        r = self.recipe
        assert self.images is not None
        self.vae.eval()
        t0 = time.time()
        chunks = []
        for i in range(0, r.images, 64):
            x = self.images[i : i + 64].to(self.device).float() / 127.5 - 1.0
            chunks.append(self.vae.encode(x).float().cpu())
        z = torch.cat(chunks)  # (N, 4, h, w) unscaled
        mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
        normalize_vae(self.vae, mean, std)
        self.latents = ((z - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()  # = scale_factor * z'
        self.log(f"[encode] {r.images} latents {tuple(z.shape[1:])} in {time.time() - t0:.1f} s; raw mean {mean.tolist()}, "
                 f"std {std.tolist()} folded into quant_conv so that {SDXL_SCALE_FACTOR} x latent has unit std")
        self.masks = None

    def _decoder_params(self) -> list[nn.Parameter]:
        return [p for name, p in self.vae.named_parameters() if name.startswith(("decoder.", "post_quant_conv."))]

    def train_decoder(self, checkpoint_every: float) -> None:
        """Whole pictures from their stored latents (the encoder's posterior means): L1 + L2, decoder only."""
        r = self.recipe
        assert self.images is not None and self.latents is not None
        self.vae.decoder.train()
        last_save = time.time()
        t_phase, done, running = time.time(), 0, None
        params = self._decoder_params()
        while self.step < r.decoder_steps:
            t0 = time.time()
            for group in self.dec_opt.param_groups:
                group["lr"] = _lr(self.step, r.decoder_steps, r.decoder_lr, min(r.warmup, r.decoder_steps // 10))
            idx = torch.randint(0, r.images, (max(1, r.vae_batch // 2),), generator=_generator(r.seed, "decoder", self.step))
            x = self.images[idx].to(self.device).float() / 127.5 - 1.0
            z = self.latents[idx].to(self.device) / SDXL_SCALE_FACTOR  # what encode() returns for these pictures
            with self._autocast():
                recon = self.vae.decode(z).float()
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
            self.dec_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.dec_opt.step()
            self.step += 1
            done += 1
            self.elapsed += time.time() - t0
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            if self.step % 50 == 0 or self.step == r.decoder_steps:
                self.history["decoder"].append((self.step, running))
                self._report("decoder", self.step, running, (time.time() - t_phase) / done)
            if time.time() - last_save > checkpoint_every:
                self.save()
                last_save = time.time()
        self.vae.eval()

    def _ids(self, text: str) -> tuple[list[int], list[int]]:
        if text not in self._tokens:
            tokens = self.clip.tokenize(text)
            self._tokens[text] = ([t for t, _ in tokens["l"][0]], [t for t, _ in tokens["g"][0]])
        return self._tokens[text]

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, 77, 64), y (B, adm)) with gradients, as SDXLClip + sdxl_adm compute them."""
        ids = [self._ids(c) for c in captions]
        l_ids = torch.tensor([a for a, _ in ids], device=self.device)
        g_ids = torch.tensor([b for _, b in ids], device=self.device)
        l_out = self.clip_l(l_ids, layer_idx=-2)
        g_out = self.clip_g(g_ids, layer_idx=-2)
        context = torch.cat([l_out.hidden, g_out.hidden], dim=-1)
        size = self.recipe.image_size
        return context, sdxl_adm(g_out.pooled.float(), size, size)

    def caption_loss(self, context: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Cross-entropy of `text_head` reading each group of `caption_labels` off the mean context (B, 77, C)."""
        logits = self.text_head(context.float().mean(dim=1))  # (B, classes of all groups)
        labels = torch.tensor([caption_labels(c) for c in captions], device=logits.device)  # (B, groups)
        loss, start = logits.new_zeros(()), 0
        for g, values in enumerate(CAPTION_GROUPS.values()):
            loss = loss + F.cross_entropy(logits[:, start : start + len(values) + 1], labels[:, g])
            start += len(values) + 1
        return loss / len(CAPTION_GROUPS)

    def _unet_batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        r = self.recipe
        assert self.latents is not None
        g = _generator(r.seed, "unet", step)
        idx = torch.randint(0, r.images, (r.unet_batch,), generator=g).tolist()
        captions = []
        for k, i in enumerate(idx):
            rng = scene_rng(r.seed, step * r.unet_batch + k, stream=1)
            text = caption(self.scenes[i], rng, drop=r.caption_drop)
            captions.append("" if rng.random() < r.caption_dropout else text)
        return self.latents[idx].to(self.device), captions

    def train_unet(self, checkpoint_every: float) -> None:
        r = self.recipe
        ms = ModelSamplingDiscrete()
        alphas = ms.alphas_cumprod.float().to(self.device)
        trained = [self.unet, self.clip_l, self.clip_g]
        params = [p for m in trained for p in m.parameters()]
        for m in trained:
            m.train()
        last_save = last_export = time.time()
        t_phase, done, running = time.time(), 0, None
        while self.step < r.unet_steps:
            t0 = time.time()
            for group in self.opt.param_groups:
                group["lr"] = _lr(self.step, r.unet_steps, r.unet_lr, r.warmup)
            x0, captions = self._unet_batch(self.step)
            g = _generator(r.seed, "unet", self.step, stream=1)
            t = torch.randint(0, ms.num_timesteps, (x0.shape[0],), generator=g)
            shaped = self.step >= r.white_noise_steps  # the first white_noise_steps train on plain white noise
            noise = training_noise(tuple(x0.shape), g, r.pyramid_noise if shaped else 0.0, r.offset_noise if shaped else 0.0,
                                   r.pyramid_from).to(self.device)
            a = alphas[t.to(self.device)].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # = (x0 + sigma eps) / sqrt(sigma^2 + 1), the UNet's input
            with self._autocast():
                context, y = self.encode_text(captions)
                eps = self.unet(xt, t.to(self.device).float(), context, y=y)
            per_sample = (eps.float() - noise).pow(2).mean(dim=(1, 2, 3))  # (B,)
            w = loss_weights(a.view(-1), r.loss_weight, r.snr_gamma)
            loss = (w * per_sample).sum() / w.sum()
            if r.text_aux_weight > 0:
                loss = loss + r.text_aux_weight * self.caption_loss(context, captions)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.opt.step()
            decay = min(r.ema, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in params], 1.0 - decay)
            self.step += 1
            done += 1
            self.elapsed += time.time() - t0
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if self.step % 50 == 0 or self.step == r.unet_steps:
                self.history["unet"].append((self.step, running))
                self._report("unet", self.step, running, (time.time() - t_phase) / done)
            if time.time() - last_save > checkpoint_every:
                self.save()
                last_save = time.time()
            if self._export_to is not None and self._export_every > 0 and time.time() - last_export > self._export_every:
                self.export(self._export_to)
                last_export = time.time()
        for m in trained:
            m.eval()

    # -- export -----------------------------------------------------------------------------------

    def state_dict_sdxl(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """The single-file SDXL layout: UNet and text encoders from the EMA weights, the normalised VAE."""
        trained = [self.unet, self.clip_l, self.clip_g]
        ema = iter(self.ema)
        weights = [{name: next(ema) for name, _ in m.named_parameters()} for m in trained]
        out: dict[str, torch.Tensor] = {}
        for (prefix, module), w in zip(
            [(UNET_PREFIX, self.unet), (CLIP_L_PREFIXES["sdxl"], self.clip_l), (BIGG_PREFIXES["sdxl"], self.clip_g)], weights
        ):
            for name, t in module.state_dict().items():
                out[prefix + name] = w.get(name, t)
        for name, t in self.vae.state_dict().items():
            out[VAE_PREFIX + name] = t
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()}

    def export(self, path: Path) -> Path:
        from safetensors.torch import save_file

        metadata = {
            "description": "latentgraph demo: tiny SDXL-architecture model trained on procedural coloured shapes",
            "latentgraph.demo_recipe": json.dumps(dataclasses.asdict(self.recipe)),
            "latentgraph.demo_losses": json.dumps({k: v[-1][1] if v else None for k, v in self.history.items()}),
            "latentgraph.demo_train_seconds": f"{self.elapsed:.0f}",
            "latentgraph.demo_device": self.device.type + (" bf16" if self.bf16 else " fp32"),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        save_file(self.state_dict_sdxl(), str(tmp), metadata=metadata)
        os.replace(tmp, path)
        return path


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog="python -m nodes.diffusion.demo_train", description="Train the embedded demo model (docs/demo_model.md).")
    parser.add_argument("--out", default=str(DEMO_PATH), help="checkpoint to write (default: the shipped one)")
    parser.add_argument("--work", default="demo_train", help="folder of the resumable state file (default ./demo_train)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="processes that render the data set (default 1)")
    for field in dataclasses.fields(Recipe):  # every recipe field is a flag: --unet-steps, --caption-drop, ...
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs="+", default=list(default))
        elif field.name == "loss_weight":
            parser.add_argument(flag, choices=("eps", "min_snr", "v"), default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between state saves")
    parser.add_argument("--export-every", type=float, default=0.0, help="also write --out this often (seconds) while the UNet trains")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(**{f.name: (tuple(v) if isinstance(v, list) else v)
                       for f in dataclasses.fields(Recipe) for v in [getattr(args, f.name)]})
    device = _device(args.device)
    trainer = Trainer(recipe, Path(args.work), device, log=lambda m: print(m, flush=True), workers=args.workers)
    trainer.log(f"training the demo model on {device} ({'bf16 autocast' if trainer.bf16 else 'fp32'}), recipe {recipe}")
    trainer.run(args.checkpoint_every, Path(args.out), args.export_every)
    out = trainer.export(Path(args.out))
    losses = {k: round(v[-1][1], 4) for k, v in trainer.history.items() if v}
    trainer.log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {_fmt(trainer.elapsed)} of training; final losses {losses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
