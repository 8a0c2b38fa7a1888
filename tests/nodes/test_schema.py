"""The node library's schema matches ComfyUI's names, inputs, defaults and ranges."""

import pytest

from nodes.plugin import node_classes

EXPECTED = {
    # node: {input: (default, min, max)}  (None = not checked)
    "KSampler": {"seed": (0, 0, 0xFFFFFFFFFFFFFFFF), "steps": (20, 1, 10000), "cfg": (8.0, 0.0, 100.0),
                 "sampler_name": ("euler", None, None), "denoise": (1.0, 0.0, 1.0)},
    "KSamplerAdvanced": {"add_noise": ("enable", None, None), "start_at_step": (0, 0, 10000),
                         "end_at_step": (10000, 0, 10000), "return_with_leftover_noise": ("disable", None, None)},
    "EmptyLatentImage": {"width": (512, 16, 16384), "height": (512, 16, 16384), "batch_size": (1, 1, 4096)},
    "LatentUpscaleBy": {"upscale_method": ("nearest-exact", None, None), "scale_by": (1.5, 0.01, 8.0)},
    "LoraLoader": {"strength_model": (1.0, -100.0, 100.0), "strength_clip": (1.0, -100.0, 100.0)},
    "CLIPSetLastLayer": {"stop_at_clip_layer": (-1, -24, -1)},
    "CLIPTextEncodeSDXL": {"width": (1024, 0, 16384), "crop_w": (0, 0, 16384), "target_height": (1024, 0, 16384)},
    "CLIPTextEncodeSDXLRefiner": {"ascore": (6.0, 0.0, 1000.0), "width": (1024, 0, 16384)},
    "VAEDecodeTiled": {"tile_size": (512, 64, 4096), "overlap": (64, 0, 4096), "temporal_size": (64, 8, 4096)},
    "VAEEncodeForInpaint": {"grow_mask_by": (6, 0, 64)},
    "KarrasScheduler": {"sigma_max": (14.614642, 0.0, 5000.0), "sigma_min": (0.0291675, 0.0, 5000.0), "rho": (7.0, 0.0, 100.0)},
    "AlignYourStepsScheduler": {"model_type": ("SD1", None, None), "steps": (10, 1, 10000)},
    "SplitSigmasDenoise": {"denoise": (1.0, 0.0, 1.0)},
    "ConditioningSetArea": {"width": (64, 64, 16384), "strength": (1.0, 0.0, 10.0)},
    "SaveImage": {"filename_prefix": ("ComfyUI", None, None)},
    "SaveLatent": {"filename_prefix": ("latents/ComfyUI", None, None)},
    "ImageScale": {"width": (512, 0, 16384), "crop": ("disabled", None, None)},
}
OUTPUTS = {
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "LoadImage": ["IMAGE", "MASK"],
    "SamplerCustom": ["LATENT", "LATENT"], "SplitSigmas": ["SIGMAS", "SIGMAS"], "LoraLoader": ["MODEL", "CLIP"],
    "SaveImage": [], "RandomNoise": ["NOISE"], "CFGGuider": ["GUIDER"], "KSamplerSelect": ["SAMPLER"],
}
REQUIRED = [
    "CheckpointLoaderSimple", "VAELoader", "LoraLoader", "LoraLoaderModelOnly", "CLIPSetLastLayer", "CLIPTextEncode",
    "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "ConditioningZeroOut", "ConditioningCombine",
    "ConditioningConcat", "ConditioningSetTimestepRange", "ConditioningSetArea", "EmptyLatentImage", "LatentUpscale",
    "LatentUpscaleBy", "LatentFromBatch", "RepeatLatentBatch", "SetLatentNoiseMask", "SaveLatent", "LoadLatent",
    "KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "KSamplerSelect", "BasicScheduler",
    "KarrasScheduler", "ExponentialScheduler", "AlignYourStepsScheduler", "SplitSigmas", "SplitSigmasDenoise",
    "RandomNoise", "DisableNoise", "CFGGuider", "BasicGuider", "AdaptiveScheduler", "Refine", "VAEDecode",
    "VAEEncode", "VAEDecodeTiled", "VAEEncodeTiled", "VAEEncodeForInpaint", "LoadImage", "LoadImageMask",
    "ImageScale", "ImageScaleBy", "ImageInvert", "ImageBatch", "SaveImage", "PreviewImage", "PrimitiveInt",
    "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
]


def test_every_issue_node_is_registered(host) -> None:
    assert sorted(REQUIRED) == sorted(host.nodes.by_plugin("core"))
    assert [c.node_type for c in node_classes()] == host.nodes.by_plugin("core")


@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_defaults_and_ranges_match_comfyui(host, env, node: str) -> None:
    info = host.nodes[node].object_info(env)
    inputs = {**info["input"]["required"], **info["input"]["optional"]}
    for name, (default, low, high) in EXPECTED[node].items():
        opts = inputs[name][1]
        assert opts["default"] == default, (node, name)
        if low is not None:
            assert (opts["min"], opts["max"]) == (low, high), (node, name)


def test_outputs_and_sampler_lists(host, env) -> None:
    for node, outputs in OUTPUTS.items():
        assert host.nodes[node].object_info(env)["output"] == outputs, node
    ks = host.nodes["KSampler"].object_info(env)["input"]["required"]
    assert ks["sampler_name"][0][:3] == ["euler", "euler_cfg_pp", "euler_ancestral"]
    assert {"dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "ddim"} <= set(ks["sampler_name"][0])
    assert ks["scheduler"][0] == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                                  "linear_quadratic", "kl_optimal"]
    assert ks["seed"][1]["control_after_generate"] is True
    assert host.nodes["LoadImage"].object_info(env)["input"]["required"]["image"][1]["image_upload"] is True
    assert host.nodes["SaveImage"].object_info(env)["output_node"] is True
    assert host.nodes["CLIPTextEncode"].object_info(env)["input"]["required"]["text"][1]["multiline"] is True
