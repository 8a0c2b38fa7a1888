"""LoRA: key mapping (kohya / PEFT), exact deltas on a tiny UNet and the text encoders, unpatch, stacking."""

import copy
import re

import pytest
import torch
from safetensors.torch import save_file

from nodes.diffusion.lora import LoraPatch, LoraPatcher, LoraWeight, load_lora, lora_key_map, match_lora
from nodes.diffusion.random_checkpoint import PRESETS
from nodes.diffusion.text_encoder import SDXLClip
from nodes.diffusion.unet import UNet
from tests.diffusion.text_fixtures import random_bigg, random_clip_l


RANK = 4
BLOCK = "input_blocks.4.1.transformer_blocks.0"
UNET_TARGETS = {
    # kohya base key -> (our parameter, whether the LoRA is a conv LoRA)
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (BLOCK + ".attn1.to_q.weight", False),
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (BLOCK + ".attn2.to_k.weight", False),
    "lora_unet_input_blocks_4_1_proj_in": ("input_blocks.4.1.proj_in.weight", False),
    "lora_unet_input_blocks_0_0": ("input_blocks.0.0.weight", True),  # 3x3 conv
    "lora_unet_input_blocks_4_0_skip_connection": ("input_blocks.4.0.skip_connection.weight", True),  # 1x1 conv
}


def _pair(out_features, in_shape, g, conv=False, alpha=None):
    """A random LoRA pair: down (r, in[, kh, kw]) and up (out, r[, 1, 1])."""
    down = torch.randn(RANK, *in_shape, generator=g) * 0.1
    up = torch.randn(out_features, RANK, *((1, 1) if conv else ()), generator=g) * 0.1
    return down, up, alpha


def _manual_delta(down, up, alpha, shape):
    """ΔW written out independently: up @ down, reshaped; conv LoRAs contract the rank axis of 4-D tensors."""
    if down.dim() == 4:
        d = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    else:
        d = up @ down
    return d.reshape(shape) * (alpha / down.shape[0] if alpha is not None else 1.0)


def _unet_lora(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd, expected = {}, {}
    params = dict(unet.named_parameters())
    for i, (key, (param, conv)) in enumerate(UNET_TARGETS.items()):
        w = params[param]
        down, up, alpha = _pair(w.shape[0], w.shape[1:] if conv else (w.shape[1],), g, conv, alpha=2.0 if i % 2 else None)
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
        if alpha is not None:
            sd[key + ".alpha"] = torch.tensor(alpha)
        expected[param] = _manual_delta(down, up, alpha, w.shape)
    return sd, expected


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(PRESETS["tiny"].unet).eval()


def _unet_inputs(unet):
    g = torch.Generator().manual_seed(3)
    cfg = unet.config
    return (torch.randn(1, 4, 8, 8, generator=g), torch.tensor([400.0]), torch.randn(1, 77, cfg.context_dim, generator=g),
            torch.randn(1, cfg.adm_in_channels, generator=g))


def test_unet_lora_exact_delta_and_bit_exact_unpatch(unet):
    sd, expected = _unet_lora(unet)
    match = match_lora(load_lora(sd), unet=unet)
    assert match.unknown == [] and len(match.weights["unet"]) == len(UNET_TARGETS)
    base_state = {k: v.clone() for k, v in unet.state_dict().items()}
    manual = copy.deepcopy(unet)
    with torch.no_grad():
        for param, delta in expected.items():
            manual.get_parameter(param).add_(0.7 * delta)
        base_out = unet(*_unet_inputs(unet))
        ref_out = manual(*_unet_inputs(unet))

    patcher = LoraPatcher.of(unet)
    patcher.apply([match.patch("unet", 0.7)])
    try:
        for param, delta in expected.items():
            torch.testing.assert_close(unet.get_parameter(param), base_state[param] + 0.7 * delta, atol=1e-6, rtol=0)
        with torch.no_grad():
            out = unet(*_unet_inputs(unet))
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
        assert (out - base_out).abs().max() > 1e-3  # the LoRA does change the output
    finally:
        patcher.unpatch()
    for k, v in unet.state_dict().items():
        assert torch.equal(v, base_state[k]), k


def test_strength_zero_is_a_no_op(unet):
    sd, _ = _unet_lora(unet)
    match = match_lora(load_lora(sd), unet=unet)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    patcher = LoraPatcher.of(unet)
    patcher.apply([match.patch("unet", 0.0)])
    assert patcher.applied == ()
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_stacked_loras_add_and_unpatch(unet):
    sd1, d1 = _unet_lora(unet, seed=1)
    sd2, d2 = _unet_lora(unet, seed=2)
    m1, m2 = match_lora(load_lora(sd1), unet=unet), match_lora(load_lora(sd2), unet=unet)
    param = "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    base = unet.get_parameter(param).detach().clone()
    patcher = LoraPatcher.of(unet)
    first, second = m1.patch("unet", 1.0), m2.patch("unet", -0.5)
    patcher.apply([first, second])
    torch.testing.assert_close(unet.get_parameter(param), base + d1[param] - 0.5 * d2[param], atol=1e-6, rtol=0)
    patcher.apply([first, second])  # the same stack again: nothing re-applied
    torch.testing.assert_close(unet.get_parameter(param), base + d1[param] - 0.5 * d2[param], atol=1e-6, rtol=0)
    patcher.apply([second])  # a different stack: back to base first, then only the second
    torch.testing.assert_close(unet.get_parameter(param), base - 0.5 * d2[param], atol=1e-6, rtol=0)
    patcher.unpatch()
    assert torch.equal(unet.get_parameter(param), base)


def _te_lora(clip_l, clip_g, g):
    """kohya te1 (CLIP-L) and te2 (bigG, HF names) keys; expected deltas per (module, param, rows)."""
    sd, expected = {}, {}
    wl, wg = clip_l.config.width, clip_g.config.width
    te1 = {"self_attn_q_proj": ("encoder.layers.0.self_attn.q_proj.weight", wl, wl),
           "mlp_fc1": ("encoder.layers.1.mlp.fc1.weight", clip_l.config.mlp_width, wl)}
    for name, (param, out_f, in_f) in te1.items():
        down, up, alpha = _pair(out_f, (in_f,), g, alpha=1.0)
        key = f"lora_te1_text_model_encoder_layers_{param.split('.')[2]}_{name}"
        sd.update({key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(alpha)})
        expected[("clip_l", param, None)] = _manual_delta(down, up, alpha, (out_f, in_f))
    te2 = {"self_attn_q_proj": ("attn.in_proj_weight", (0, wg), wg),
           "self_attn_k_proj": ("attn.in_proj_weight", (wg, 2 * wg), wg),
           "self_attn_v_proj": ("attn.in_proj_weight", (2 * wg, 3 * wg), wg),
           "self_attn_out_proj": ("attn.out_proj.weight", None, wg),
           "mlp_fc2": ("mlp.c_proj.weight", None, wg)}
    for name, (param, rows, out_f) in te2.items():
        in_f = clip_g.config.mlp_width if name == "mlp_fc2" else wg
        down, up, alpha = _pair(out_f, (in_f,), g, alpha=8.0)
        key = f"lora_te2_text_model_encoder_layers_1_{name}"
        sd.update({key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(alpha)})
        expected[("clip_g", f"transformer.resblocks.1.{param}", rows)] = _manual_delta(down, up, alpha, (out_f, in_f))
    return sd, expected


def _apply_manual(model, module_name, expected, strength):
    with torch.no_grad():
        for (module, param, rows), delta in expected.items():
            if module != module_name:
                continue
            w = model.get_parameter(param)
            (w if rows is None else w[rows[0] : rows[1]]).add_(strength * delta)


def test_text_encoder_loras_match_manual_weights_and_strengths_are_independent(unet):
    g = torch.Generator().manual_seed(5)
    clip = SDXLClip(random_clip_l(), random_bigg())
    te_sd, te_expected = _te_lora(clip.clip_l, clip.clip_g, g)
    unet_sd, unet_expected = _unet_lora(unet)
    match = match_lora(load_lora({**te_sd, **unet_sd}), unet=unet, clip_l=clip.clip_l, clip_g=clip.clip_g)
    assert match.unknown == []
    assert sorted(match.weights) == ["clip_g", "clip_l", "unet"]

    manual_l, manual_g = copy.deepcopy(clip.clip_l), copy.deepcopy(clip.clip_g)
    _apply_manual(manual_l, "clip_l", te_expected, 0.25)
    _apply_manual(manual_g, "clip_g", te_expected, 0.25)
    expected_ctx, expected_pooled = SDXLClip(manual_l, manual_g).encode("a photo of a cat")
    base_ctx, base_pooled = clip.encode("a photo of a cat")

    patched = clip.with_lora(match, 0.25)  # strength_clip 0.25 ...
    unet_patcher = LoraPatcher.of(unet)
    unet_patcher.apply([match.patch("unet", 1.0)])  # ... strength_model 1.0
    try:
        ctx, pooled = patched.encode("a photo of a cat")
        torch.testing.assert_close(ctx, expected_ctx, atol=1e-5, rtol=0)
        torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=0)
        assert (ctx - base_ctx).abs().max() > 1e-3
        param = "input_blocks.4.1.proj_in.weight"  # the UNet at its own strength, 1.0
        expected_w = unet_patcher._backup[param] + unet_expected[param]
        torch.testing.assert_close(unet.get_parameter(param), expected_w, atol=1e-6, rtol=0)
        # q/k/v land in their own thirds of bigG's fused in_proj_weight
        w = patched.clip_g.get_parameter("transformer.resblocks.1.attn.in_proj_weight")
        base_w = LoraPatcher.of(clip.clip_g)._backup["transformer.resblocks.1.attn.in_proj_weight"]
        for (module, p, rows), delta in te_expected.items():
            if p.endswith("in_proj_weight"):
                torch.testing.assert_close(w[rows[0] : rows[1]], base_w[rows[0] : rows[1]] + 0.25 * delta, atol=1e-6, rtol=0)
        # the clone without the LoRA shares the weights but encodes with the base ones
        again_ctx, _ = clip.encode("a photo of a cat")
        assert torch.equal(again_ctx, base_ctx)
        ctx2, _ = patched.encode("a photo of a cat")
        assert torch.equal(ctx2, ctx)
    finally:
        unet_patcher.unpatch()
        patched.unpatch()
    assert torch.equal(clip.encode("a photo of a cat")[0], base_ctx)


def test_peft_names_and_files(tmp_path):
    g = torch.Generator().manual_seed(7)
    l, bigg = random_clip_l(), random_bigg()
    wl, wg = l.config.width, bigg.config.width
    down_l, up_l, _ = _pair(wl, (wl,), g)
    down_g, up_g, _ = _pair(wg, (wg,), g)
    sd = {
        "text_encoder.text_model.encoder.layers.2.self_attn.v_proj.lora_A.weight": down_l,
        "text_encoder.text_model.encoder.layers.2.self_attn.v_proj.lora_B.weight": up_l,
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight": down_g,
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight": up_g,
    }
    save_file(sd, str(tmp_path / "peft.safetensors"))
    lora = load_lora(tmp_path / "peft.safetensors")
    assert lora.name == "peft"
    match = match_lora(lora, clip_l=l, clip_g=bigg)
    assert match.unknown == []
    (wl_,), (wg_,) = match.weights["clip_l"], match.weights["clip_g"]
    assert wl_.param == "encoder.layers.2.self_attn.v_proj.weight" and wl_.rows is None and wl_.alpha is None
    assert wg_.param == "transformer.resblocks.0.attn.in_proj_weight" and wg_.rows == (wg, 2 * wg)
    torch.testing.assert_close(wg_.delta(torch.Size((wg, wg))), up_g @ down_g, atol=0, rtol=0)


def test_unknown_keys_are_reported_by_name(unet):
    sd, _ = _unet_lora(unet)
    sd["lora_unet_no_such_block.lora_down.weight"] = torch.zeros(RANK, 8)
    sd["lora_unet_no_such_block.lora_up.weight"] = torch.zeros(8, RANK)
    sd["lora_unet_input_blocks_4_1_proj_out.hada_w1_a"] = torch.zeros(2, 2)  # LoHa: not supported
    sd["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(RANK, 8)  # no CLIP given
    dora = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    sd[dora + ".dora_scale"] = torch.ones(1, 8)  # DoRA: not a plain LoRA, so the whole pair is left out
    match = match_lora(load_lora(sd), unet=unet)
    assert match.unknown == [
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        "lora_unet_input_blocks_4_1_proj_out.hada_w1_a",
        dora + ".dora_scale",
        dora + ".lora_down.weight",
        dora + ".lora_up.weight",
        "lora_unet_no_such_block.lora_down.weight",
        "lora_unet_no_such_block.lora_up.weight",
    ]
    assert len(match.weights["unet"]) == len(UNET_TARGETS) - 1 and match.mismatched == []


def test_shape_mismatch_is_reported_and_a_failing_stack_rolls_back(unet):
    sd = {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(RANK, 3),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(5, RANK),
    }
    match = match_lora(load_lora(sd), unet=unet)
    w = unet.get_parameter("input_blocks.4.1.proj_in.weight")
    assert match.weights == {} and match.unknown == []
    assert match.mismatched == [
        f"lora_unet_input_blocks_4_1_proj_in: update 5x3 does not fit input_blocks.4.1.proj_in.weight {tuple(w.shape)}"
    ]
    # a LoraWeight that does not fit (built by hand) fails the whole stack, and nothing stays patched
    good = match_lora(load_lora(_unet_lora(unet)[0]), unet=unet)
    base_state = {k: v.clone() for k, v in unet.state_dict().items()}
    bad = LoraPatch((LoraWeight("input_blocks.4.1.proj_in.weight", torch.zeros(RANK, 3), torch.zeros(5, RANK), None,
                                key="handmade"),))
    message = "LoRA handmade: update of 5x3 does not fit input_blocks.4.1.proj_in.weight"
    with pytest.raises(ValueError, match=re.escape(message)):
        LoraPatcher.of(unet).apply([good.patch("unet", 1.0), bad])
    assert LoraPatcher.of(unet).applied == ()
    assert all(torch.equal(v, base_state[k]) for k, v in unet.state_dict().items())


def test_key_map_covers_every_text_encoder_linear():
    l, bigg = random_clip_l(), random_bigg()
    targets = lora_key_map(clip_l=l, clip_g=bigg)
    te1 = {k for k in targets if k.startswith("lora_te1_")}
    te2 = {k for k in targets if k.startswith("lora_te2_")}
    assert len(te1) == l.config.layers * 6 and len(te2) == bigg.config.layers * 6  # q, k, v, out, fc1, fc2
    assert targets["lora_te2_text_model_encoder_layers_3_mlp_fc1"].param == "transformer.resblocks.3.mlp.c_fc.weight"
    # SD1 (CLIP-L alone) uses lora_te_; the refiner (bigG alone) maps lora_te_ onto bigG
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in lora_key_map(clip_l=l)
    assert lora_key_map(clip_g=bigg)["lora_te_text_model_encoder_layers_0_self_attn_q_proj"].module == "clip_g"
    assert isinstance(LoraPatch((), 1.0), LoraPatch)


@pytest.mark.parametrize("preset", ["tiny", "tiny_sd1", "tiny_refiner"])
def test_diffusers_unet_names_match_diffusers_converter(preset):
    """Our ldm -> diffusers block names agree with diffusers' own convert_ldm_unet_checkpoint on every tensor."""
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    with torch.device("meta"):
        model = UNet(PRESETS[preset].unet)
    names = list(model.state_dict())
    # tag each tensor with its index, convert, and read back where each one went
    sd = {"model.diffusion_model." + k: torch.full((1,), float(i)) for i, k in enumerate(names)}
    config = {"layers_per_block": model.config.num_res_blocks, "class_embed_type": None, "num_class_embeds": None,
              "addition_embed_type": "text_time" if model.config.adm_in_channels else None}
    converted = single_file_utils.convert_ldm_unet_checkpoint(sd, config)
    where = {int(v.item()): k for k, v in converted.items()}
    targets = lora_key_map(unet=model)
    checked = 0
    for i, name in enumerate(names):
        if name.endswith(".weight") and model.get_parameter(name).dim() >= 2:
            diffusers_base = where[i][: -len(".weight")]
            assert targets["unet." + diffusers_base].param == name
            assert targets["lora_unet_" + diffusers_base.replace(".", "_")].param == name
            checked += 1
    assert checked > 50


def test_sd1_kohya_lora_with_diffusers_names():
    torch.manual_seed(0)
    model = UNet(PRESETS["tiny_sd1"].unet).eval()
    w = model.get_parameter("input_blocks.1.1.proj_in.weight")  # SD1: a 1x1 conv; kohya trains it as a linear
    g = torch.Generator().manual_seed(1)
    down, up, _ = _pair(w.shape[0], (w.shape[1],), g)
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    match = match_lora(load_lora({key + ".lora_down.weight": down, key + ".lora_up.weight": up}), unet=model)
    assert match.unknown == []
    base = w.detach().clone()
    LoraPatcher.of(model).apply([match.patch("unet", 1.0)])
    torch.testing.assert_close(model.get_parameter("input_blocks.1.1.proj_in.weight"),
                               base + (up @ down).reshape(w.shape), atol=1e-6, rtol=0)
    LoraPatcher.of(model).unpatch()
    assert torch.equal(model.get_parameter("input_blocks.1.1.proj_in.weight"), base)
