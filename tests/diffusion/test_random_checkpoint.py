"""Random checkpoints: file format, reproducibility, realistic activations, diffusers-convertible key sets."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from nodes.diffusion.checkpoint import load_checkpoint
from nodes.diffusion.random_checkpoint import PRESETS, main, meta_modules, write_random_checkpoint

single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "tiny", seed=0)


def _expected_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for prefix, m in meta_modules(PRESETS[preset]) for k, v in m.state_dict().items()}


def test_file_holds_every_tensor_with_its_shape(tiny_path):
    with safe_open(str(tiny_path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        meta = f.metadata()
        t = f.get_tensor("model.diffusion_model.input_blocks.0.0.weight")
    assert shapes == _expected_shapes("tiny")
    assert meta["latentgraph.random_preset"] == "tiny" and meta["latentgraph.seed"] == "0"
    assert t.dtype == torch.float16
    fan_in = t[0].numel()
    assert 0.7 < t.float().std().item() * fan_in**0.5 < 1.3, "weights are scaled 1/sqrt(fan_in)"


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_path):
    again = write_random_checkpoint(tmp_path / "again.safetensors", "tiny", seed=0)
    other = write_random_checkpoint(tmp_path / "other.safetensors", "tiny", seed=1)
    assert again.read_bytes() == tiny_path.read_bytes()
    assert other.read_bytes() != tiny_path.read_bytes()


def test_activations_stay_realistic_and_text_matters(tiny_path):
    ckpt = load_checkpoint(tiny_path, dtype=torch.float32, text_encoders=False)
    cfg = ckpt.spec.unet
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=gen)
    ctx_a, ctx_b = torch.randn(2, 1, 77, cfg.context_dim, generator=gen)
    y = torch.randn(1, cfg.adm_in_channels, generator=gen)
    with torch.no_grad():
        a = ckpt.unet(x, torch.tensor([500]), ctx_a, y)
        b = ckpt.unet(x, torch.tensor([500]), ctx_b, y)
        img = ckpt.vae.decode(a)
    assert 0.1 < a.std().item() < 10, f"UNet output std {a.std().item():.3f} out of a realistic range"
    assert (a - b).abs().mean() > 0.05 * a.std(), "the text context must visibly change the prediction"
    assert 0.05 < img.std().item() < 2 and torch.isfinite(img).all()


def test_prediction_markers(tmp_path):
    v = write_random_checkpoint(tmp_path / "v.safetensors", "tiny_sd1", prediction="v")
    with safe_open(str(v), framework="pt") as f:
        assert "v_pred" in f.keys()
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        write_random_checkpoint(tmp_path / "x.safetensors", "huge")


def test_cli_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert main([str(out), "--preset", "tiny_refiner", "--seed", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_checkpoint(out, dtype=torch.float32, text_encoders=False).spec.family == "sdxl_refiner"


# -- full-size key sets through diffusers' single-file converters (shapes only, meta tensors) -------

def _meta_state(preset: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for prefix, m in meta_modules(PRESETS[preset]) for k, v in m.state_dict().items()}


def _compare(converted: dict, model: torch.nn.Module, ignore=("position_ids",)):
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(ignore)}
    got = {k: tuple(v.shape) for k, v in converted.items() if not k.endswith(ignore)}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    assert (missing, unexpected, wrong) == ([], [], []), f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong {wrong[:5]}"
    return len(expected)


SDXL_DIFFUSERS = dict(
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, projection_class_embeddings_input_dim=2816,
)
REFINER_DIFFUSERS = dict(
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(384, 768, 1536, 1536), transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24),
    cross_attention_dim=1280, projection_class_embeddings_input_dim=2560,
)


@pytest.mark.parametrize("preset, unet_kwargs", [("sdxl_base", SDXL_DIFFUSERS), ("sdxl_refiner", REFINER_DIFFUSERS)])
def test_full_size_keys_convert_with_diffusers(preset, unet_kwargs):
    sd = _meta_state(preset)
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(
            sample_size=128, layers_per_block=2, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, **unet_kwargs)
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024)
        bigg = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280, hidden_act="gelu"))
    assert _compare(single_file_utils.convert_ldm_unet_checkpoint(sd, unet.config), unet) == (1680 if preset == "sdxl_base" else 1220)
    assert _compare(single_file_utils.convert_ldm_vae_checkpoint(sd, vae.config), vae) == 248
    g_prefix = "conditioner.embedders.1.model." if preset == "sdxl_base" else "conditioner.embedders.0.model."
    _compare(single_file_utils.convert_open_clip_checkpoint(bigg, sd, prefix=g_prefix), bigg)
    if preset == "sdxl_base":
        with torch.device("meta"):
            clip_l = transformers.CLIPTextModel(transformers.CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"))
        converted = single_file_utils.convert_ldm_clip_checkpoint(sd)
        # transformers >= 5.6 flattened CLIPTextModel: its keys have no text_model. prefix (sdxl.md 4, pitfall 1)
        flat = {k.removeprefix("text_model."): v for k, v in converted.items()}
        target = {k.removeprefix("text_model."): v for k, v in clip_l.state_dict().items()}
        missing = sorted(set(target) - set(flat) - {"embeddings.position_ids"})
        unexpected = sorted(set(flat) - set(target))
        wrong = [k for k in target if k in flat and tuple(flat[k].shape) != tuple(target[k].shape)]
        assert (missing, unexpected, wrong) == ([], [], [])
        assert len(flat) == 196
