"""Loaders, text encoding, sampling and VAE nodes on tiny random checkpoints."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from engine.validate import validate_prompt
from nodes.conditioning import ConditioningZeroOut
from nodes.custom_sampling import (AdaptiveScheduler, BasicGuider, CFGGuider, DisableNoise, KSamplerSelect,
                                   RandomNoise, SamplerCustom, SamplerCustomAdvanced)
from nodes.latent import EmptyLatentImage, SetLatentNoiseMask
from nodes.loaders import CheckpointLoaderSimple, CLIPSetLastLayer, LoraLoader, LoraLoaderModelOnly, VAELoader
from nodes.models import model_cache
from nodes.sampling import KSampler, KSamplerAdvanced, Refine
from nodes.sigmas import BasicScheduler, SplitSigmas
from nodes.text import CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner
from nodes.vae_nodes import VAEDecode, VAEDecodeTiled, VAEEncode, VAEEncodeForInpaint, VAEEncodeTiled


@pytest.fixture
def sdxl(call, models):
    return call(CheckpointLoaderSimple, ckpt_name="tiny_sdxl.safetensors")


@pytest.fixture
def prompts(call, sdxl):
    _, clip, _ = sdxl
    (pos,) = call(CLIPTextEncode, text="a red cube", clip=clip)
    (neg,) = call(CLIPTextEncode, text="blurry", clip=clip)
    return pos, neg


def _latent(call, size: int = 64, batch: int = 1):
    return call(EmptyLatentImage, width=size, height=size, batch_size=batch)[0]


def _ksample(call, sdxl, prompts, latent, **kw):
    args = dict(seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    args.update(kw)
    model = kw.pop("model", sdxl[0])
    args.pop("model", None)
    return call(KSampler, model=model, positive=prompts[0], negative=prompts[1], latent_image=latent, **args)[0]


def test_checkpoint_loads_once_across_prompts(call, env, models) -> None:
    model, clip, vae = call(CheckpointLoaderSimple, ckpt_name="tiny_sdxl.safetensors")
    again, _, _ = call(CheckpointLoaderSimple, ckpt_name="tiny_sdxl.safetensors")
    assert again.unet is model.unet  # the same cached modules
    stats = model_cache(env).stats
    assert (stats.misses, stats.hits) == (1, 1)
    assert model.family == "sdxl" and model.model_sampling.prediction == "eps"
    assert type(clip).__name__ == "SDXLClip" and vae.vae.scale_factor == pytest.approx(0.13025)
    refiner, rclip, _ = call(CheckpointLoaderSimple, ckpt_name="tiny_refiner.safetensors")
    assert refiner.family == "sdxl_refiner" and type(rclip).__name__ == "SDXLRefinerClip"
    assert model_cache(env).stats.misses == 2


def test_model_files_are_listed_and_missing_ones_explained(env, host, models) -> None:
    info = CheckpointLoaderSimple.object_info(env)
    assert info["input"]["required"]["ckpt_name"][0] == [
        "latentgraph_demo.safetensors", "tiny_refiner.safetensors", "tiny_sdxl.safetensors"]
    assert LoraLoader.object_info(env)["input"]["required"]["lora_name"][0] == ["tiny_lora.safetensors"]
    (problem,) = CheckpointLoaderSimple.check_inputs({"ckpt_name": "sd_xl_base_1.0.safetensors"}, env)
    assert problem.input == "ckpt_name"
    assert f"not found in {models / 'checkpoints'}" in problem.message and "--models-dir" in problem.message
    assert list(CheckpointLoaderSimple.check_inputs({"ckpt_name": "tiny_sdxl.safetensors"}, env)) == []
    (escape,) = CheckpointLoaderSimple.check_inputs({"ckpt_name": "../../etc/passwd"}, env)
    assert "outside" in escape.message
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
              "2": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
              "3": {"class_type": "EmptyLatentImage", "inputs": {}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    result = validate_prompt(prompt, host.nodes, env)
    assert not result.ok
    (error,) = result.node_errors["1"]["errors"]
    assert error["extra_info"]["input_name"] == "ckpt_name" and "missing.safetensors" in error["details"]


def test_checkpoint_fingerprint_follows_the_file(env, models) -> None:
    path = models / "checkpoints" / "tiny_sdxl.safetensors"
    before = CheckpointLoaderSimple.fingerprint({"ckpt_name": "tiny_sdxl.safetensors"}, env)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        assert CheckpointLoaderSimple.fingerprint({"ckpt_name": "tiny_sdxl.safetensors"}, env) != before
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_text_encoders_give_comfyui_conditioning(call, sdxl) -> None:
    _, clip, _ = sdxl
    (cond,) = call(CLIPTextEncode, text="a cat", clip=clip)
    ((context, options),) = cond
    assert context.shape == (1, 77, 64 + 128) and options["pooled_output"].shape == (1, 128)
    (sdxl_cond,) = call(CLIPTextEncodeSDXL, clip=clip, width=1024, height=768, crop_w=8, crop_h=16, target_width=512,
                        target_height=512, text_g="a cat", text_l="a cat")
    assert torch.allclose(sdxl_cond[0][0], context, atol=1e-5)
    assert {k: v for k, v in sdxl_cond[0][1].items() if k != "pooled_output"} == {
        "width": 1024, "height": 768, "crop_w": 8, "crop_h": 16, "target_width": 512, "target_height": 512}
    (skip1,) = call(CLIPTextEncode, text="a cat", clip=call(CLIPSetLastLayer, clip=clip, stop_at_clip_layer=-1)[0])
    (skip2,) = call(CLIPTextEncode, text="a cat", clip=call(CLIPSetLastLayer, clip=clip, stop_at_clip_layer=-2)[0])
    assert torch.equal(skip2[0][0], context)  # SDXL's default is already the penultimate layer
    assert not torch.allclose(skip1[0][0], context)


def test_refiner_text_encoder(call, models) -> None:
    _, rclip, _ = call(CheckpointLoaderSimple, ckpt_name="tiny_refiner.safetensors")
    (cond,) = call(CLIPTextEncodeSDXLRefiner, ascore=2.5, width=512, height=512, text="a cat", clip=rclip)
    context, options = cond[0]
    assert context.shape == (1, 77, 128)
    assert (options["aesthetic_score"], options["width"], options["height"]) == (2.5, 512, 512)


def test_ksampler_is_deterministic_per_seed(call, sdxl, prompts) -> None:
    latent = _latent(call)
    a = _ksample(call, sdxl, prompts, latent, seed=1)
    b = _ksample(call, sdxl, prompts, latent, seed=1)
    c = _ksample(call, sdxl, prompts, latent, seed=2)
    assert a["samples"].shape == (1, 4, 8, 8)
    assert torch.equal(a["samples"], b["samples"]) and not torch.allclose(a["samples"], c["samples"])
    unchanged = _ksample(call, sdxl, prompts, latent, denoise=0.0)
    assert torch.equal(unchanged["samples"], latent["samples"])


def test_progress_reports_every_step_with_latent_previews(call, sdxl, prompts, env) -> None:
    env.settings["preview"] = "auto"
    seen = []
    ctx = {"on_progress": lambda node, value, maximum, preview: seen.append((value, maximum, preview))}
    call(KSampler, ctx, model=sdxl[0], seed=3, steps=3, cfg=4.0, sampler_name="euler", scheduler="karras",
         positive=prompts[0], negative=prompts[1], latent_image=_latent(call), denoise=1.0)
    assert [(v, m) for v, m, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(p is not None and p.size == (8, 8) for _, _, p in seen)
    env.settings["preview"] = "none"
    seen.clear()
    call(KSampler, ctx, model=sdxl[0], seed=3, steps=2, cfg=4.0, sampler_name="euler", scheduler="karras",
         positive=prompts[0], negative=prompts[1], latent_image=_latent(call), denoise=1.0)
    assert [p for _, _, p in seen] == [None, None]


def test_interrupt_stops_sampling(call, sdxl, prompts) -> None:
    from engine import Interrupted

    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted, match="interrupted"):
        call(KSampler, {"is_interrupted": stop.is_set}, model=sdxl[0], seed=3, steps=3, cfg=4.0, sampler_name="euler",
             scheduler="karras", positive=prompts[0], negative=prompts[1], latent_image=_latent(call), denoise=1.0)


def test_lora_patches_a_clone_and_never_the_cached_base(call, sdxl, prompts, env) -> None:
    model, clip, _ = sdxl
    base_weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    base_clip = {k: v.clone() for k, v in clip.clip_l.state_dict().items()}
    latent = _latent(call)
    plain = _ksample(call, sdxl, prompts, latent)
    lora_model, lora_clip = call(LoraLoader, model=model, clip=clip, lora_name="tiny_lora.safetensors",
                                 strength_model=1.0, strength_clip=1.0)
    assert lora_model.unet is model.unet and len(lora_model.patches) == 1 and model.patches == ()
    patched = _ksample(call, sdxl, prompts, latent, model=lora_model)
    assert not torch.allclose(plain["samples"], patched["samples"])
    assert all(torch.equal(v, base_weights[k]) for k, v in model.unet.state_dict().items())
    (lora_cond,) = call(CLIPTextEncode, text="a red cube", clip=lora_clip)
    assert not torch.allclose(lora_cond[0][0], prompts[0][0][0])
    assert all(torch.equal(v, base_clip[k]) for k, v in clip.clip_l.state_dict().items())
    again = _ksample(call, sdxl, prompts, latent)  # the base model still gives the base result
    assert torch.equal(again["samples"], plain["samples"])
    assert model_cache(env).stats.misses == 2  # the checkpoint and the LoRA file, each loaded once
    (model_only,) = call(LoraLoaderModelOnly, model=model, lora_name="tiny_lora.safetensors", strength_model=1.0)
    assert torch.equal(_ksample(call, sdxl, prompts, latent, model=model_only)["samples"], patched["samples"])
    off = call(LoraLoader, model=model, clip=clip, lora_name="tiny_lora.safetensors", strength_model=0.0,
               strength_clip=0.0)
    assert off[0] is model and off[1] is clip


def test_ksampler_advanced_handoff_and_refine_node_agree(call, sdxl, prompts, models) -> None:
    refiner, rclip, _ = call(CheckpointLoaderSimple, ckpt_name="tiny_refiner.safetensors")
    (rpos,) = call(CLIPTextEncodeSDXLRefiner, ascore=6.0, width=64, height=64, text="a red cube", clip=rclip)
    (rneg,) = call(CLIPTextEncodeSDXLRefiner, ascore=2.5, width=64, height=64, text="blurry", clip=rclip)
    common = dict(noise_seed=5, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal")
    (base,) = call(KSamplerAdvanced, model=sdxl[0], positive=prompts[0], negative=prompts[1],
                   latent_image=_latent(call), add_noise="enable", start_at_step=0, end_at_step=3,
                   return_with_leftover_noise="enable", **common)
    (refined,) = call(KSamplerAdvanced, model=refiner, positive=rpos, negative=rneg, latent_image=base,
                      add_noise="disable", start_at_step=3, end_at_step=10000, return_with_leftover_noise="disable",
                      **common)
    (sigmas,) = call(BasicScheduler, model=refiner, scheduler="normal", steps=4, denoise=1.0)
    _, low = call(SplitSigmas, sigmas=sigmas, step=3)
    (by_node,) = call(Refine, model=refiner, positive=rpos, negative=rneg, latent_image=base, sigmas=low, cfg=5.0,
                      sampler_name="euler", noise_seed=5)
    assert torch.allclose(by_node["samples"], refined["samples"], atol=1e-5)
    assert not torch.allclose(refined["samples"], base["samples"])


def test_custom_sampling_matches_ksampler(call, sdxl, prompts) -> None:
    latent = _latent(call)
    expected = _ksample(call, sdxl, prompts, latent, seed=9, steps=3, scheduler="karras")
    (sigmas,) = call(BasicScheduler, model=sdxl[0], scheduler="karras", steps=3, denoise=1.0)
    (sampler,) = call(KSamplerSelect, sampler_name="euler")
    out, denoised = call(SamplerCustom, model=sdxl[0], add_noise=True, noise_seed=9, cfg=5.0, positive=prompts[0],
                         negative=prompts[1], sampler=sampler, sigmas=sigmas, latent_image=latent)
    assert torch.allclose(out["samples"], expected["samples"], atol=1e-5)
    assert torch.allclose(denoised["samples"], out["samples"], atol=1e-4)  # the last step lands on x0
    (noise,) = call(RandomNoise, noise_seed=9)
    (guider,) = call(CFGGuider, model=sdxl[0], positive=prompts[0], negative=prompts[1], cfg=5.0)
    adv, _ = call(SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=latent)
    assert torch.allclose(adv["samples"], expected["samples"], atol=1e-5)
    (basic,) = call(BasicGuider, model=sdxl[0], conditioning=prompts[0])
    (off,) = call(DisableNoise)
    still, _ = call(SamplerCustomAdvanced, noise=off, guider=basic, sampler=sampler, sigmas=sigmas[2:], latent_image=adv)
    assert still["samples"].shape == (1, 4, 8, 8)


def test_adaptive_scheduler_gives_a_valid_schedule(call, sdxl, prompts) -> None:
    (guider,) = call(CFGGuider, model=sdxl[0], positive=prompts[0], negative=prompts[1], cfg=5.0)
    (noise,) = call(RandomNoise, noise_seed=1)
    (sigmas,) = call(AdaptiveScheduler, guider=guider, noise=noise, latent_image=_latent(call), steps=5, pilot_steps=6,
                     order=2, floor=0.1)
    assert sigmas.shape == (6,) and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(float(sdxl[0].model_sampling.sigma_max), rel=1e-4)
    assert bool((sigmas[:-1] > sigmas[1:]).all())


def test_noise_mask_keeps_the_unmasked_latent(call, sdxl, prompts) -> None:
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # repaint the right half only
    (masked,) = call(SetLatentNoiseMask, samples=latent, mask=mask)
    out = _ksample(call, sdxl, prompts, masked, steps=3)
    assert torch.allclose(out["samples"][..., :3], latent["samples"][..., :3], atol=1e-4)
    assert not torch.allclose(out["samples"][..., 5:], latent["samples"][..., 5:], atol=1e-2)


def test_zero_out_negative_samples(call, sdxl, prompts) -> None:
    (zero,) = call(ConditioningZeroOut, conditioning=prompts[1])
    out = _ksample(call, sdxl, (prompts[0], zero), _latent(call))
    assert torch.isfinite(out["samples"]).all()


def test_vae_nodes(call, sdxl, models) -> None:
    vae = sdxl[2]
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    (image,) = call(VAEDecode, samples=latent, vae=vae)
    assert image.shape == (1, 64, 64, 3) and 0 <= float(image.min()) and float(image.max()) <= 1
    (tiled,) = call(VAEDecodeTiled, samples=latent, vae=vae, tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8)
    assert torch.allclose(tiled, image, atol=1e-5)  # one tile covers it all
    (small_tiles,) = call(VAEDecodeTiled, samples={"samples": torch.randn(1, 4, 16, 16)}, vae=vae, tile_size=64,
                          overlap=32, temporal_size=64, temporal_overlap=8)
    assert small_tiles.shape == (1, 128, 128, 3)
    pixels = torch.rand(2, 70, 67, 4)  # not multiples of 8, with alpha: cropped to 64x64, alpha dropped
    (encoded,) = call(VAEEncode, pixels=pixels, vae=vae)
    assert encoded["samples"].shape == (2, 4, 8, 8)
    (enc_tiled,) = call(VAEEncodeTiled, pixels=pixels, vae=vae, tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8)
    assert torch.allclose(enc_tiled["samples"], encoded["samples"], atol=1e-4)


def test_vae_encode_for_inpaint_masks_and_grows(call, sdxl) -> None:
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(1, 64, 64)
    mask[:, 24:40, 24:40] = 1.0
    (latent,) = call(VAEEncodeForInpaint, pixels=pixels, vae=sdxl[2], mask=mask, grow_mask_by=6)
    noise_mask = latent["noise_mask"]
    assert latent["samples"].shape == (1, 4, 8, 8) and noise_mask.shape == (1, 1, 64, 64)
    assert noise_mask[0, 0, 22:43, 22:43].min() == 1 and noise_mask[0, 0, :21].max() == 0  # grown by 6
    greyed = pixels.clone()
    greyed[:, 24:40, 24:40] = 0.5
    (expected,) = call(VAEEncode, pixels=greyed, vae=sdxl[2])
    assert torch.allclose(latent["samples"], expected["samples"], atol=1e-5)
    (ungrown,) = call(VAEEncodeForInpaint, pixels=pixels, vae=sdxl[2], mask=mask, grow_mask_by=0)
    assert torch.equal(ungrown["noise_mask"][0, 0], mask[0])


def test_precision_setting_picks_the_dtype_and_the_cache_key(call, env, models) -> None:
    env.settings["precision"] = "bf16"
    model, clip, vae = call(CheckpointLoaderSimple, ckpt_name="tiny_sdxl.safetensors")
    assert model.dtype == torch.bfloat16 and clip.clip_g.token_embedding_weight.dtype == torch.bfloat16
    env.settings["precision"] = "fp32"
    model32, _, _ = call(CheckpointLoaderSimple, ckpt_name="tiny_sdxl.safetensors")
    assert model32.dtype == torch.float32 and model32.unet is not model.unet
    assert model_cache(env).stats.misses == 2
    env.settings["precision"] = "fp8"
    with pytest.raises(ValueError, match="precision 'fp8'"):
        call(CheckpointLoaderSimple, ckpt_name="tiny_sdxl.safetensors")


def test_vae_loader_reads_a_vae_from_models_vae(call, models, sdxl) -> None:
    from safetensors.torch import save_file

    state = {f"first_stage_model.{k}": v.contiguous() for k, v in sdxl[2].vae.state_dict().items()}
    save_file(state, str(models / "vae" / "tiny_vae.safetensors"))
    (vae,) = call(VAELoader, vae_name="tiny_vae.safetensors")
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    assert torch.allclose(call(VAEDecode, samples=latent, vae=vae)[0], call(VAEDecode, samples=latent, vae=sdxl[2])[0])


def test_area_and_timestep_range_conditioning_sample(call, sdxl, prompts) -> None:
    from nodes.conditioning import ConditioningCombine, ConditioningSetArea, ConditioningSetTimestepRange

    (left,) = call(ConditioningSetArea, conditioning=prompts[0], width=64, height=64, x=0, y=0, strength=1.0)
    (late,) = call(ConditioningSetTimestepRange, conditioning=prompts[1], start=0.5, end=1.0)
    (both,) = call(ConditioningCombine, conditioning_1=left, conditioning_2=late)
    base = _ksample(call, sdxl, prompts, _latent(call, 128))
    out = _ksample(call, sdxl, (both, prompts[1]), _latent(call, 128))
    assert out["samples"].shape == (1, 4, 16, 16) and torch.isfinite(out["samples"]).all()
    assert not torch.allclose(out["samples"], base["samples"])


def test_ksampler_uses_a_sampler_registered_by_a_plugin(call, sdxl, prompts, env) -> None:
    from nodes.diffusion.samplers import SAMPLERS

    calls = []

    def half_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        calls.append(len(sigmas))
        return SAMPLERS["euler"](model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    env.services["samplers"] = {**env.services["samplers"], "plugin_euler": half_euler}
    latent = _latent(call)
    ours = _ksample(call, sdxl, prompts, latent, sampler_name="plugin_euler")
    builtin = _ksample(call, sdxl, prompts, latent, sampler_name="euler")
    assert calls == [3]  # 2 steps -> 3 sigmas, through the plugin's function
    assert torch.equal(ours["samples"], builtin["samples"])


def test_free_service_empties_the_model_cache(call, env, models) -> None:
    import nodes.plugin

    env.settings["default_model"] = False
    nodes.plugin.startup(env)
    call(CheckpointLoaderSimple, ckpt_name="tiny_sdxl.safetensors")
    assert len(model_cache(env)) > 0
    env.services["free"](unload_models=True, free_memory=False)
    assert len(model_cache(env)) == 0
