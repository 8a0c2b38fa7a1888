"""SDXL / refiner / SD1 text encoding, the SDXL vector conditioning and loading from checkpoints."""

import re

import pytest
import torch

from nodes.diffusion.clip import TINY_CLIP_BIGG_CONFIG, TINY_CLIP_L_CONFIG, CLIPTextModel, OpenCLIPTextModel
from nodes.diffusion.prompt import EmbeddingLibrary
from nodes.diffusion.text_encoder import (
    SD1Clip,
    SDXLClip,
    SDXLRefinerClip,
    TextEncoderLoadError,
    detect_text_encoders,
    load_text_encoders,
    refiner_adm,
    sdxl_adm,
    text_encoder_keys,
)
from nodes.diffusion.tokenizer import BOS_ID, EOS_ID, get_tokenizer
from tests.diffusion.text_fixtures import G_PREFIX, L_PREFIX, hf_bigg, hf_clip_l, random_bigg, random_clip_l


CAT = 2368


def _ids(words: list[int], pad: int) -> torch.Tensor:
    return torch.tensor([[BOS_ID, *words, EOS_ID] + [pad] * (75 - len(words))])


@pytest.fixture
def sdxl():
    return SDXLClip(random_clip_l(), random_bigg())


def test_sdxl_context_and_pooled(sdxl):
    context, pooled = sdxl.encode("a photo of a cat")
    words = [320, 1125, 539, 320, CAT]
    with torch.no_grad():
        l_out = sdxl.clip_l(_ids(words, EOS_ID))  # CLIP-L: EOS padding, penultimate layer
        g_out = sdxl.clip_g(_ids(words, 0))  # bigG: zero padding, penultimate layer
    assert context.shape == (1, 77, 32 + 48) and pooled.shape == (1, 48)
    assert context.dtype == torch.float32
    torch.testing.assert_close(context, torch.cat([l_out.hidden, g_out.hidden], dim=-1), atol=0, rtol=0)
    torch.testing.assert_close(pooled, g_out.pooled, atol=0, rtol=0)


def test_sdxl_matches_transformers_end_to_end(sdxl):
    """Our whole SDXL text path against transformers models loaded through diffusers' converters."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    hf_l, hf_g = hf_clip_l(sdxl.clip_l), hf_bigg(sdxl.clip_g)
    text = "a photo of a cat, best quality"
    ids = get_tokenizer().encode(text, add_special_tokens=True)
    l_ids = torch.tensor([ids + [EOS_ID] * (77 - len(ids))])
    g_ids = torch.tensor([ids + [0] * (77 - len(ids))])
    with torch.no_grad():
        ref_l = hf_l(input_ids=l_ids, output_hidden_states=True)
        ref_g = hf_g(input_ids=g_ids, output_hidden_states=True)
    context, pooled = sdxl.encode(text)
    expected = torch.cat([ref_l.hidden_states[-2], ref_g.hidden_states[-2]], dim=-1)
    assert (context - expected).abs().max() <= 1e-4
    assert (pooled - ref_g.text_embeds).abs().max() <= 1e-4


def test_pad_tokens_per_encoder(sdxl):
    tokens = sdxl.tokenize("a cat")
    assert [t for t, _ in tokens["l"][0]][3:] == [EOS_ID] + [EOS_ID] * 73
    assert [t for t, _ in tokens["g"][0]][3:] == [EOS_ID] + [0] * 73


def test_long_prompt_gives_154_tokens_pooled_from_chunk_0(sdxl):
    text = "a photo of a cat, " * 20  # 120 tokens: two chunks
    tokens = sdxl.tokenize(text)
    assert len(tokens["l"]) == len(tokens["g"]) == 2
    context, pooled = sdxl.encode(text)
    assert context.shape == (1, 154, 80) and pooled.shape == (1, 48)
    chunk0 = torch.tensor([[t for t, _ in tokens["g"][0]]])
    chunk1_l = torch.tensor([[t for t, _ in tokens["l"][1]]])
    with torch.no_grad():
        g0 = sdxl.clip_g(chunk0)
        l1 = sdxl.clip_l(chunk1_l)
    torch.testing.assert_close(pooled, g0.pooled, atol=0, rtol=0)
    torch.testing.assert_close(context[:, :77, 32:], g0.hidden, atol=0, rtol=0)
    torch.testing.assert_close(context[:, 77:, :32], l1.hidden, atol=0, rtol=0)  # chunks encoded separately


def test_prompt_weights_interpolate_towards_empty(sdxl):
    weighted, pooled_w = sdxl.encode("a (cat:1.5)")
    plain, pooled = sdxl.encode("a cat")
    empty_l = sdxl.clip_l(_ids([], EOS_ID)).hidden
    empty_g = sdxl.clip_g(_ids([], 0)).hidden
    empty = torch.cat([empty_l, empty_g], dim=-1).detach()
    expected = plain.clone()
    expected[:, 2] = (plain[:, 2] - empty[:, 2]) * 1.5 + empty[:, 2]
    torch.testing.assert_close(weighted, expected, atol=1e-6, rtol=0)
    assert torch.equal(weighted[:, :2], plain[:, :2]) and torch.equal(weighted[:, 3:], plain[:, 3:])
    torch.testing.assert_close(pooled_w, pooled, atol=0, rtol=0)  # weights do not touch the pooled output


def test_encode_sdxl_pads_the_shorter_list_with_empty_chunks(sdxl):
    long = "a photo of a cat, " * 20
    context, pooled = sdxl.encode_sdxl(text_g=long, text_l="a dog")
    assert context.shape == (1, 154, 80)
    empty, _ = sdxl.encode("")
    short, _ = sdxl.encode("a dog")
    full, full_pooled = sdxl.encode(long)
    torch.testing.assert_close(context[:, :77, :32], short[:, :, :32], atol=0, rtol=0)
    torch.testing.assert_close(context[:, 77:, :32], empty[:, :, :32], atol=0, rtol=0)
    torch.testing.assert_close(context[:, :, 32:], full[:, :, 32:], atol=0, rtol=0)
    torch.testing.assert_close(pooled, full_pooled, atol=0, rtol=0)
    context2, _ = sdxl.encode_sdxl(text_g="a dog", text_l=long)
    torch.testing.assert_close(context2[:, 77:, 32:], empty[:, :, 32:], atol=0, rtol=0)


def test_clip_skip_clone(sdxl):
    ids_l, ids_g = _ids([CAT], EOS_ID), _ids([CAT], 0)
    skipped = sdxl.with_clip_skip(-1)
    assert sdxl.clip_skip is None and skipped.clip_skip == -1 and skipped.clip_l is sdxl.clip_l
    context, _ = skipped.encode("cat")
    with torch.no_grad():
        last_l = sdxl.clip_l(ids_l, layer_idx=-1).hidden
        last_g = sdxl.clip_g(ids_g, layer_idx=-1).hidden
        deep_g = sdxl.clip_g(ids_g, layer_idx=-4).hidden
        final_l = sdxl.clip_l(ids_l, layer_idx=None).last
    torch.testing.assert_close(context, torch.cat([last_l, last_g], -1), atol=0, rtol=0)  # no final LN (SDXL)
    default, _ = sdxl.encode("cat")
    torch.testing.assert_close(default, sdxl.encode("cat", clip_skip=-2)[0], atol=0, rtol=0)
    # ComfyUI: a layer beyond the model (CLIP-L has 3) falls back to the final-LN output
    deep, _ = sdxl.encode("cat", clip_skip=-4)
    torch.testing.assert_close(deep, torch.cat([final_l, deep_g], -1), atol=0, rtol=0)
    with pytest.raises(ValueError, match="clip_skip must be a negative layer index"):
        sdxl.with_clip_skip(0)


def test_refiner_clip():
    g = random_bigg()
    refiner = SDXLRefinerClip(g)
    context, pooled = refiner.encode("a (cat:1.2)")
    assert context.shape == (1, 77, 48) and pooled.shape == (1, 48)
    plain, plain_pooled = refiner.encode("a cat")
    with torch.no_grad():
        ref = g(_ids([320, CAT], 0))
    torch.testing.assert_close(plain, ref.hidden, atol=0, rtol=0)
    torch.testing.assert_close(plain_pooled, ref.pooled, atol=0, rtol=0)
    assert not torch.equal(context[:, 2], plain[:, 2])


def test_sd1_clip_last_layer_and_clip_skip_with_final_norm():
    l = random_clip_l()
    sd1 = SD1Clip(l)
    ids = _ids([CAT], EOS_ID)
    with torch.no_grad():
        out = l(ids, layer_idx=-2)
    context, _ = sd1.encode("cat")
    torch.testing.assert_close(context, out.last, atol=0, rtol=0)  # SD1: last layer after the final LN
    skipped, _ = sd1.with_clip_skip(-2).encode("cat")
    torch.testing.assert_close(skipped, l.final_norm(out.hidden).detach(), atol=0, rtol=0)


def test_textual_inversion_vector_equal_to_a_token_reproduces_the_token(sdxl):
    with torch.no_grad():
        cat_l = sdxl.clip_l.embed_tokens(torch.tensor([CAT]))[0]
        cat_g = sdxl.clip_g.embed_tokens(torch.tensor([CAT]))[0]
    lib = EmbeddingLibrary(mapping={"kitty": {"clip_l": cat_l[None], "clip_g": cat_g[None]}})
    with_embedding = SDXLClip(sdxl.clip_l, sdxl.clip_g, embeddings=lib)
    a, pa = with_embedding.encode("a embedding:kitty")
    b, pb = sdxl.encode("a cat")
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(pa, pb, atol=0, rtol=0)


def test_sdxl_adm_matches_diffusers_timestep_embedding():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    pooled = torch.randn(2, 1280)
    y = sdxl_adm(pooled, width=1152, height=896, crop_w=16, crop_h=32, target_width=1024, target_height=768)
    assert y.shape == (2, 2816)
    time_ids = torch.tensor([896.0, 1152.0, 32.0, 16.0, 768.0, 1024.0])  # h, w, crop top, crop left, target h, w
    ref = embeddings.get_timestep_embedding(time_ids, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    expected = torch.cat([pooled, ref.reshape(1, -1).expand(2, -1)], dim=-1)
    assert (y - expected).abs().max() <= 1e-6
    assert torch.equal(y[:, :1280], pooled)
    assert y[0, 1280] == pytest.approx(torch.cos(torch.tensor(896.0)).item(), abs=1e-6)  # cos first, freq 1
    # defaults: target = size, crop 0
    torch.testing.assert_close(sdxl_adm(pooled, 1024, 1024), sdxl_adm(pooled, 1024, 1024, 0, 0, 1024, 1024))


def test_refiner_adm_matches_diffusers_timestep_embedding():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    pooled = torch.randn(1, 1280)
    y = refiner_adm(pooled, width=1024, height=768, crop_w=0, crop_h=8, aesthetic_score=2.5)
    assert y.shape == (1, 2560)
    ref = embeddings.get_timestep_embedding(torch.tensor([768.0, 1024.0, 8.0, 0.0, 2.5]), 256,
                                            flip_sin_to_cos=True, downscale_freq_shift=0)
    assert (y - torch.cat([pooled, ref.reshape(1, -1)], dim=-1)).abs().max() <= 1e-6


# -- loading ---------------------------------------------------------------------------------------


def _checkpoint(kind: str, dtype=torch.float32) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}
    l = CLIPTextModel(TINY_CLIP_L_CONFIG)
    g = OpenCLIPTextModel(TINY_CLIP_BIGG_CONFIG)
    if kind == "sdxl":
        sd.update({L_PREFIX + k: v.to(dtype) for k, v in l.state_dict().items()})
        sd[L_PREFIX + "embeddings.position_ids"] = torch.arange(77)[None]
        sd.update({G_PREFIX + k: v.to(dtype) for k, v in g.state_dict().items()})
        sd[G_PREFIX + "logit_scale"] = torch.tensor(4.6)
    elif kind == "sdxl_refiner":
        sd.update({"conditioner.embedders.0.model." + k: v.to(dtype) for k, v in g.state_dict().items()})
        sd["conditioner.embedders.0.model.logit_scale"] = torch.tensor(4.6)
    else:
        sd.update({"cond_stage_model.transformer.text_model." + k: v.to(dtype) for k, v in l.state_dict().items()})
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77.0)[None]
    return sd


@pytest.mark.parametrize("kind, cls", [("sdxl", SDXLClip), ("sdxl_refiner", SDXLRefinerClip), ("sd1", SD1Clip)])
def test_load_text_encoders_builds_the_right_wrapper(kind, cls):
    sd = _checkpoint(kind)
    assert detect_text_encoders(sd) == kind
    clip = load_text_encoders(sd, torch.float32, "cpu")
    assert type(clip) is cls
    for name, model in clip.models.items():
        prefix = {"l": L_PREFIX if kind == "sdxl" else "cond_stage_model.transformer.text_model.",
                  "g": G_PREFIX if kind == "sdxl" else "conditioner.embedders.0.model."}[name]
        for key, value in model.state_dict().items():
            assert torch.equal(value, sd[prefix + key]), key
        # same dtype and device: the parameter is the checkpoint's tensor, not a copy
        token_key = prefix + ("embeddings.token_embedding.weight" if name == "l" else "token_embedding.weight")
        assert model.token_embedding_weight.data_ptr() == sd[token_key].data_ptr()
        assert not any(p.requires_grad for p in model.parameters())
    context, pooled = clip.encode("a cat")
    width = {"sdxl": 64 + 128, "sdxl_refiner": 128, "sd1": 64}[kind]
    assert context.shape == (1, 77, width) and pooled.shape[0] == 1


def test_load_converts_dtype_once():
    sd = _checkpoint("sdxl", torch.float16)
    clip = load_text_encoders(sd, torch.float32, "cpu")
    assert clip.clip_g.token_embedding_weight.dtype == torch.float32
    assert torch.equal(clip.clip_g.token_embedding_weight, sd[G_PREFIX + "token_embedding.weight"].float())


def test_text_encoder_keys_and_ignored_keys():
    sd = _checkpoint("sdxl")
    keys = text_encoder_keys(sd)
    assert set(keys) == {"l", "g"}
    assert keys["l"]["final_layer_norm.weight"] == L_PREFIX + "final_layer_norm.weight"
    assert "embeddings.position_ids" not in keys["l"] and "logit_scale" not in keys["g"]
    assert keys["g"]["transformer.resblocks.2.attn.in_proj_weight"] == G_PREFIX + "transformer.resblocks.2.attn.in_proj_weight"
    assert detect_text_encoders(["model.diffusion_model.out.2.weight"]) is None
    assert load_text_encoders({"model.diffusion_model.out.2.weight": torch.zeros(1)}) is None


def test_missing_and_misshapen_keys_are_named():
    sd = _checkpoint("sdxl")
    del sd[G_PREFIX + "transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(TextEncoderLoadError, match=re.escape(f"missing 1 tensor(s): {G_PREFIX}transformer.resblocks.1.mlp.c_fc.bias")):
        load_text_encoders(sd)
    sd = _checkpoint("sdxl")
    sd[L_PREFIX + "final_layer_norm.bias"] = torch.zeros(3)
    with pytest.raises(TextEncoderLoadError, match=re.escape(f"wrong shape: {L_PREFIX}final_layer_norm.bias (3,) (expected (64,))")):
        load_text_encoders(sd)
    sd = _checkpoint("sdxl")
    sd[G_PREFIX + "surprise"] = torch.zeros(1)
    with pytest.raises(TextEncoderLoadError, match=re.escape(f"unexpected 1 tensor(s): {G_PREFIX}surprise")):
        load_text_encoders(sd)
    sd = _checkpoint("sdxl")
    del sd[G_PREFIX + "token_embedding.weight"]
    message = f"text encoder at {G_PREFIX}: not a CLIP text model in open_clip layout: missing token_embedding.weight"
    with pytest.raises(TextEncoderLoadError, match=re.escape(message)):
        load_text_encoders(sd)
