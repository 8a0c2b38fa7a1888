"""CLIP-L and OpenCLIP bigG text models: parity with transformers through diffusers' own converters."""

import pytest
import torch

from nodes.diffusion.clip import (
    CLIP_BIGG_CONFIG,
    CLIP_L_CONFIG,
    TINY_CLIP_BIGG_CONFIG,
    TINY_CLIP_L_CONFIG,
    CLIPTextModel,
    OpenCLIPTextModel,
    config_from_state_dict,
)
from tests.diffusion.text_fixtures import (
    G_PREFIX,
    L_PREFIX,
    hf_bigg,
    hf_clip_l,
    hf_config,
    random_bigg,
    random_clip_l,
    strip_text_model,
)


transformers = pytest.importorskip("transformers")
single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")


# BOS, words, EOS, then padding: EOS padding (CLIP-L style) in row 0, zero padding (bigG style) in row 1
TOKENS = torch.tensor(
    [
        [49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 9,
        [49406, 2368, 267, 1929, 12, 9, 49407] + [0] * 9,
    ]
)


def test_clip_l_matches_transformers():
    ours = random_clip_l()
    hf = hf_clip_l(ours)
    with torch.no_grad():
        ref = hf(input_ids=TOKENS, output_hidden_states=True)
        out = ours(TOKENS, layer_idx=-2)
        for layer in range(1, ours.config.layers + 1):
            hidden = ours(TOKENS, layer_idx=-layer).hidden
            # hidden_states[0] is the embedding output, [n] the output of block n (before the final LN)
            expected = ref.hidden_states[ours.config.layers + 1 - layer]
            torch.testing.assert_close(hidden, expected, atol=1e-4, rtol=0)
    assert out.hidden.shape == (2, 16, 32)
    torch.testing.assert_close(out.hidden, ref.hidden_states[-2], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.last, ref.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pooled, ref.pooler_output, atol=1e-4, rtol=0)  # unprojected: CLIP-L has none
    # the EOS position is found with either padding
    torch.testing.assert_close(out.pooled[0], out.last[0, 6], atol=0, rtol=0)
    torch.testing.assert_close(out.pooled[1], out.last[1, 6], atol=0, rtol=0)


def test_bigg_matches_transformers_with_projection():
    ours = random_bigg()
    hf = hf_bigg(ours)
    with torch.no_grad():
        ref = hf(input_ids=TOKENS, output_hidden_states=True)
        out = ours(TOKENS)  # penultimate by default
        last = ours(TOKENS, layer_idx=None)
    torch.testing.assert_close(out.hidden, ref.hidden_states[-2], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.last, ref.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pooled, ref.text_embeds, atol=1e-4, rtol=0)
    assert out.pooled.shape == (2, 48)
    torch.testing.assert_close(last.hidden, last.last, atol=0, rtol=0)  # None: the final-LN output
    torch.testing.assert_close(out.pooled, out.last[[0, 1], [6, 6]] @ ours.text_projection, atol=1e-6, rtol=0)


def test_layer_idx_bounds():
    model = random_clip_l()
    with pytest.raises(AssertionError, match=r"layer_idx must be in -3\.\.-1"):
        model(TOKENS, layer_idx=-4)
    with pytest.raises(AssertionError, match=r"layer_idx must be in -3\.\.-1"):
        model(TOKENS, layer_idx=0)
    with pytest.raises(AssertionError, match="at most 77 tokens"):
        model(torch.zeros(1, 78, dtype=torch.long))


def test_token_embeds_replace_lookup():
    model = random_bigg()
    with torch.no_grad():
        embeds = model.embed_tokens(TOKENS)
        a = model(TOKENS)
        b = model(TOKENS, token_embeds=embeds)
        embeds[0, 2] += 1.0
        c = model(TOKENS, token_embeds=embeds)
    torch.testing.assert_close(a.hidden, b.hidden, atol=0, rtol=0)
    assert not torch.allclose(a.hidden[0, 2:], c.hidden[0, 2:])
    torch.testing.assert_close(a.hidden[0, :2], c.hidden[0, :2], atol=0, rtol=0)  # causal: earlier positions unchanged
    torch.testing.assert_close(a.hidden[1], c.hidden[1], atol=0, rtol=0)


@pytest.mark.parametrize("which", ["clip_l", "bigg"])
def test_full_size_key_sets_convert_one_to_one(which):
    with torch.device("meta"):
        if which == "clip_l":
            ours = CLIPTextModel(CLIP_L_CONFIG)
            hf = transformers.CLIPTextModel(hf_config(CLIP_L_CONFIG))
            sd = {L_PREFIX + k: v for k, v in ours.state_dict().items()}
            converted = strip_text_model(single_file_utils.convert_ldm_clip_checkpoint(sd), hf)
        else:
            ours = OpenCLIPTextModel(CLIP_BIGG_CONFIG)
            hf = transformers.CLIPTextModelWithProjection(hf_config(CLIP_BIGG_CONFIG))
            sd = {G_PREFIX + k: v for k, v in ours.state_dict().items()}
            converted = single_file_utils.convert_open_clip_checkpoint(hf, sd, prefix=G_PREFIX)
    expected = hf.state_dict()
    assert sorted(set(expected) - set(converted)) == []  # missing
    assert sorted(set(converted) - set(expected)) == []  # unexpected
    assert [k for k in expected if expected[k].shape != converted[k].shape] == []
    assert len(ours.state_dict()) == (196 if which == "clip_l" else 389)
    params = sum(p.numel() for p in ours.parameters())
    assert params == (123_060_480 if which == "clip_l" else 694_659_840)  # sdxl.md section 6


def test_config_from_state_dict():
    with torch.device("meta"):
        assert config_from_state_dict(CLIPTextModel(CLIP_L_CONFIG).state_dict(), "hf") == CLIP_L_CONFIG
        assert config_from_state_dict(OpenCLIPTextModel(CLIP_BIGG_CONFIG).state_dict(), "open_clip") == CLIP_BIGG_CONFIG
        assert config_from_state_dict(CLIPTextModel(TINY_CLIP_L_CONFIG).state_dict(), "hf") == TINY_CLIP_L_CONFIG
        tiny_g = OpenCLIPTextModel(TINY_CLIP_BIGG_CONFIG).state_dict()
    assert config_from_state_dict(tiny_g, "open_clip") == TINY_CLIP_BIGG_CONFIG
    with pytest.raises(KeyError, match="not a CLIP text model in hf layout: missing embeddings.token_embedding.weight"):
        config_from_state_dict(tiny_g, "hf")
    with pytest.raises(ValueError, match="layout must be"):
        config_from_state_dict(tiny_g, "sgm")


def test_state_dict_layout_names():
    l_keys = set(CLIPTextModel(TINY_CLIP_L_CONFIG).state_dict())
    g_keys = set(OpenCLIPTextModel(TINY_CLIP_BIGG_CONFIG).state_dict())
    assert {
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.2.mlp.fc2.bias",
        "final_layer_norm.weight",
    } <= l_keys
    assert {
        "token_embedding.weight",
        "positional_embedding",
        "transformer.resblocks.0.attn.in_proj_weight",
        "transformer.resblocks.0.attn.in_proj_bias",
        "transformer.resblocks.2.attn.out_proj.weight",
        "transformer.resblocks.1.mlp.c_fc.weight",
        "transformer.resblocks.1.mlp.c_proj.bias",
        "ln_final.weight",
        "text_projection",
    } <= g_keys
