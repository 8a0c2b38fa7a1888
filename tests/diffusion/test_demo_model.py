"""The shipped demo model: an ordinary SDXL single-file checkpoint whose pictures follow the prompt.

Pictures are sampled as the KSampler node does (SDXLClip -> Cond with sdxl_adm -> CFGGuider over a
Denoiser -> ksampler from seeded CPU noise -> VAE decode) and measured with demo_data's colour and
centre-of-mass analysis. The trainer's own pieces (exact latent normalisation, resumable runs) are
checked on a miniature recipe.
"""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nodes.diffusion.checkpoint import UNET_PREFIX, VAE_PREFIX, detect, load_checkpoint, read_shapes
from nodes.diffusion.demo_data import COLOURS, NEUTRALS, SHAPES, dominant_colour, render, sample_scene, scene_rng, shape_centre
from nodes.diffusion.demo_grid import DEMO_PATH, generate
from nodes.diffusion.demo_train import Recipe, Trainer, loss_weights, normalize_vae, training_noise
from nodes.diffusion.vae import SDXL_SCALE_FACTOR, AutoencoderKL, VAEConfig

SEEDS = range(5)  # a handful of seeds per case; 80% means at least 4 of 5
STEPS, CFG = 10, 5.0
L_PREFIX = "conditioner.embedders.0.transformer.text_model."
G_PREFIX = "conditioner.embedders.1.model."


def _colour_prompt(colour: str, seed: int) -> str:
    return f"a large {colour} {SHAPES[seed % 3]} in the center, {list(NEUTRALS)[seed % 3]} background"


def _side_prompts(seed: int) -> list[tuple[str, str]]:
    """(side, prompt): two colours per side and seed, so that 5 seeds give 10 pictures per side."""
    colours = list(COLOURS)
    out = []
    for k, side in enumerate(("left", "right", "left", "right")):
        colour = colours[(seed * 2 + k // 2 + k) % len(colours)]
        out.append((side, f"a small {colour} {SHAPES[(seed + k) % 3]} on the {side}, white background"))
    return out


@pytest.fixture(scope="module")
def demo():
    assert DEMO_PATH.is_file(), f"{DEMO_PATH} is missing: run python -m nodes.diffusion.demo_train"
    return load_checkpoint(DEMO_PATH, dtype=torch.float32)


@pytest.fixture(scope="module")
def pictures(demo):
    """{seed: {prompt: (128, 128, 3) uint8}}: one batched KSampler run per seed for all the prompts."""
    out = {}
    for seed in SEEDS:
        prompts = [_colour_prompt(c, seed) for c in COLOURS] + [p for _, p in _side_prompts(seed)]
        images = generate(demo, prompts, seed, steps=STEPS, cfg=CFG)
        out[seed] = dict(zip(prompts, images))
    return out


def test_shipped_file_is_a_small_sdxl_base_checkpoint():
    shapes = read_shapes(DEMO_PATH)
    assert DEMO_PATH.stat().st_size < 20e6
    spec = detect(shapes)
    assert spec.family == "sdxl" and spec.prediction == "eps" and spec.text_encoders == "sdxl"
    assert spec.vae is not None and spec.vae.downscale == 8 and spec.vae.embed_dim == 4
    assert spec.scale_factor == SDXL_SCALE_FACTOR
    # both text encoders use CLIP's full BPE vocabulary, and y = bigG pooled + 6 x 256 size/crop embeddings
    assert shapes[L_PREFIX + "embeddings.token_embedding.weight"][0] == 49408
    assert shapes[G_PREFIX + "token_embedding.weight"][0] == 49408
    pooled = shapes[G_PREFIX + "text_projection"][1]
    assert spec.unet.adm_in_channels == pooled + 6 * 256
    assert spec.unet.context_dim == shapes[L_PREFIX + "final_layer_norm.weight"][0] + shapes[G_PREFIX + "ln_final.weight"][0]
    assert any(k.startswith(UNET_PREFIX) for k in shapes) and any(k.startswith(VAE_PREFIX) for k in shapes)


def test_loads_like_any_checkpoint_and_its_latents_have_sdxl_scale(demo):
    assert demo.unexpected == [] and demo.clip is not None and demo.vae is not None
    scenes = [sample_scene(scene_rng(123, i)) for i in range(16)]  # a seed the training set does not use
    pixels = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode():
        latent = demo.vae.encode(pixels)
        recon = demo.vae.decode(latent).clamp(-1, 1)
    model_space = latent * SDXL_SCALE_FACTOR
    assert model_space.shape == (16, 4, 16, 16)
    assert model_space.mean().abs() < 0.25 and 0.75 < model_space.std() < 1.3
    assert (recon - pixels).abs().mean() < 0.15  # shipped VAE: 0.12 (6% of the range; soft edges, slightly dull colours)


@pytest.mark.parametrize("colour", COLOURS)
def test_the_named_colour_dominates(pictures, colour):
    found = [dominant_colour(pictures[s][_colour_prompt(colour, s)]) for s in SEEDS]
    rate = sum(f == colour for f in found) / len(found)
    assert rate >= 0.8, f"{colour}: dominant colours {found} ({rate:.0%} right)"


@pytest.mark.parametrize("side", ["left", "right"])
def test_left_and_right_move_the_shape(pictures, side):
    centres = [shape_centre(pictures[s][p]) for s in SEEDS for sd, p in _side_prompts(s) if sd == side]
    on_side = [c is not None and (c[0] < 0.5 if side == "left" else c[0] > 0.5) for c in centres]
    rate = sum(on_side) / len(on_side)
    assert rate >= 0.8, f"{side}: centres x {[None if c is None else round(c[0], 2) for c in centres]} ({rate:.0%} right)"


def test_sampling_is_deterministic_per_seed(demo):
    a = generate(demo, ["a small red circle on the left"], 11, steps=3)
    b = generate(demo, ["a small red circle on the left"], 11, steps=3)
    c = generate(demo, ["a small red circle on the left"], 12, steps=3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- the trainer's pieces --------------------------------------------------------------------------


def test_normalize_vae_is_exact_and_gives_unit_scaled_latents():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)).double()
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        before = vae.decode(z)
        mean_logvar = vae.encode_moments(x)[1]
        mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
        normalize_vae(vae, mean, std)
        z2 = vae.encode(x)
        scaled = z2 * SDXL_SCALE_FACTOR
        assert torch.allclose(scaled.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-9)
        assert torch.allclose(scaled.std(dim=(0, 2, 3)), torch.ones(4, dtype=torch.float64), atol=1e-9)
        assert torch.allclose(vae.decode(z2), before, atol=1e-10)
        c = 1 / (SDXL_SCALE_FACTOR * std)
        assert torch.allclose(vae.encode_moments(x)[1], mean_logvar + 2 * torch.log(c)[None, :, None, None], atol=1e-9)


def test_training_noise_is_white_unless_asked_and_keeps_unit_scale():
    shape = (64, 4, 16, 16)
    white = training_noise(shape, torch.Generator().manual_seed(3))
    assert torch.equal(white, torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    pyramid = training_noise(shape, torch.Generator().manual_seed(3), pyramid=0.8)
    assert torch.allclose(pyramid.std(dim=(1, 2, 3)), torch.ones(64), atol=1e-5)
    # more of it sits in low frequencies: the 4x4 block means vary far more than white noise's (std 1/4)
    blocks = lambda n: F.avg_pool2d(n, 4).std().item()  # noqa: E731
    assert blocks(white) == pytest.approx(0.25, rel=0.1) and blocks(pyramid) > 2 * blocks(white)
    offset = training_noise(shape, torch.Generator().manual_seed(3), offset=0.5)
    shift = (offset - white).flatten(2)  # the same white draws first, then one constant per sample and channel
    assert torch.allclose(shift, shift[..., :1].expand_as(shift), atol=1e-6) and 0.3 < shift[..., 0].std() < 0.7


def test_loss_weights():
    alpha_bar = torch.tensor([0.999, 0.5, 0.01])  # SNR 999, 1, 1/99
    assert torch.equal(loss_weights(alpha_bar, "eps", 5.0), torch.ones(3))
    assert torch.allclose(loss_weights(alpha_bar, "min_snr", 5.0), torch.tensor([5 / 999, 1.0, 1.0]), rtol=1e-4)
    assert torch.allclose(loss_weights(alpha_bar, "v", 20.0), torch.tensor([1 + 1 / 999, 2.0, 20.0]), rtol=1e-4)
    with pytest.raises(ValueError, match="eps, min_snr or v"):
        loss_weights(alpha_bar, "x0", 5.0)


def test_caption_loss_reads_every_group_off_the_mean_context(tmp_path):
    from nodes.diffusion.demo_data import CAPTION_GROUPS

    trainer = Trainer(dataclasses.replace(_mini(), text_aux_weight=0.1), tmp_path, torch.device("cpu"), log=lambda m: None)
    sizes = [len(v) + 1 for v in CAPTION_GROUPS.values()]
    assert trainer.text_head.out_features == sum(sizes) and trainer.text_head.in_features == 64
    captions = ["a small red circle on the left, white background", ""]
    context = torch.randn(2, 77, 64)
    with torch.no_grad():
        trainer.text_head.weight.zero_()
        trainer.text_head.bias.zero_()  # uniform logits: each group's cross-entropy is log(its classes)
    expected = sum(np.log(n) for n in sizes) / len(sizes)
    assert trainer.caption_loss(context, captions).item() == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():  # a head that reads the right answers off a context built to hold them
        trainer.text_head.weight.copy_(torch.eye(sum(sizes), 64) * 50)
    labels = [(0, 0, 0, 0, 0), tuple(n - 1 for n in sizes)]
    offsets = np.cumsum([0] + sizes[:-1])
    context = torch.zeros(2, 77, 64)
    for b, lab in enumerate(labels):
        for g, c in enumerate(lab):
            context[b, :, offsets[g] + c] = 1.0
    assert trainer.caption_loss(context, captions).item() < 1e-6


def _mini() -> Recipe:
    """Two VAE steps (one on crops, one on whole pictures), four UNet steps and two decoder steps on eight pictures."""
    return Recipe(images=8, vae_steps=2, vae_crop_steps=1, vae_batch=2, unet_steps=4, unet_batch=2, warmup=2, decoder_steps=2)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    torch.set_num_threads(1)
    whole = Trainer(_mini(), tmp_path / "whole", torch.device("cpu"), log=lambda m: None)
    whole.run()
    expected = whole.state_dict_sdxl(torch.float32)

    broken = Trainer(_mini(), tmp_path / "broken", torch.device("cpu"), log=lambda m: None)
    real_batch = broken._unet_batch

    def stop_at_two(step):
        if step == 2:
            raise KeyboardInterrupt  # as a user's ^C in the middle of UNet training
        return real_batch(step)

    broken._unet_batch = stop_at_two
    with pytest.raises(KeyboardInterrupt):
        broken.run(checkpoint_every=0.0)  # save after every step
    resumed = Trainer(_mini(), tmp_path / "broken", torch.device("cpu"), log=lambda m: None)
    resumed.run()
    assert resumed.phase == "export"
    got = resumed.state_dict_sdxl(torch.float32)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k
    # the decoder phase changed the decoder and nothing the UNet depends on
    no_decoder = Trainer(dataclasses.replace(_mini(), decoder_steps=0), tmp_path / "no_decoder", torch.device("cpu"), log=lambda m: None)
    no_decoder.run()
    before = no_decoder.state_dict_sdxl(torch.float32)
    changed = {k for k in expected if not torch.equal(expected[k], before[k])}
    assert changed and all(k.startswith((VAE_PREFIX + "decoder.", VAE_PREFIX + "post_quant_conv.")) for k in changed)
    assert torch.equal(resumed.latents, no_decoder.latents)
    # and a changed recipe is refused rather than silently mixed
    other = Trainer(dataclasses.replace(_mini(), unet_steps=5), tmp_path / "broken", torch.device("cpu"), log=lambda m: None)
    with pytest.raises(SystemExit, match="another recipe"):
        other.run()
