"""Checkpoint detection and loading: families, prediction markers, errors, separate VAE, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.diffusion.checkpoint import (
    CheckpointKeyError,
    UnknownCheckpointError,
    UnsafeCheckpointError,
    detect,
    load_checkpoint,
    load_vae,
    read_shapes,
)
from nodes.diffusion.random_checkpoint import write_random_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {name: write_random_checkpoint(d / f"{name}.safetensors", name, seed=i) for i, name in enumerate(["tiny", "tiny_refiner", "tiny_sd1"])}


def test_detects_families_from_shapes(files):
    base, refiner, sd1 = (detect(read_shapes(files[n])) for n in ("tiny", "tiny_refiner", "tiny_sd1"))
    assert (base.family, refiner.family, sd1.family) == ("sdxl", "sdxl_refiner", "sd1")
    assert (base.text_encoders, refiner.text_encoders, sd1.text_encoders) == ("sdxl", "sdxl_refiner", "sd1")
    assert base.prediction == refiner.prediction == sd1.prediction == "eps"
    assert base.unet.context_dim == 64 + 128 and base.unet.adm_in_channels == 128 + 6 * 256
    assert refiner.unet.transformer_depth == (0, 1, 1, 0)
    assert not sd1.unet.use_linear_in_transformer and sd1.unet.adm_in_channels is None
    assert base.scale_factor == pytest.approx(0.13025) and sd1.scale_factor == pytest.approx(0.18215)
    assert "SDXL" in base.description and "eps-prediction" in base.description


def test_loads_tiny_sdxl_with_text_encoders(files):
    ckpt = load_checkpoint(files["tiny"], dtype=torch.float32)
    assert ckpt.spec.family == "sdxl" and ckpt.unexpected == [] and ckpt.metadata["latentgraph.random_preset"] == "tiny"
    params = list(ckpt.unet.parameters()) + list(ckpt.vae.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and not p.requires_grad for p in params)
    raw = load_file(str(files["tiny"]))
    key = "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(ckpt.unet.state_dict()[key.removeprefix("model.diffusion_model.")], raw[key].float())
    assert type(ckpt.clip).__name__ == "SDXLClip"
    l_key = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(ckpt.clip.clip_l.state_dict()["encoder.layers.0.mlp.fc1.weight"], raw[l_key].float())


def test_compute_dtype_and_fp16_vae_upcast(files):
    ckpt = load_checkpoint(files["tiny_sd1"], dtype=torch.bfloat16, text_encoders=False)
    assert ckpt.unet.dtype == torch.bfloat16 and ckpt.vae.dtype == torch.bfloat16
    half = load_checkpoint(files["tiny_sd1"], dtype=torch.float16, text_encoders=False)
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32, "the SDXL-style VAE overflows in fp16"
    assert half.vae.scale_factor == pytest.approx(0.18215)


def test_prediction_markers(tmp_path):
    v = write_random_checkpoint(tmp_path / "v.safetensors", "tiny_sd1", prediction="v")
    edm = write_random_checkpoint(tmp_path / "edm.safetensors", "tiny_sd1", prediction="edm")
    assert detect(read_shapes(v)).prediction == "v"
    assert detect(read_shapes(edm)).prediction == "edm"
    shapes = read_shapes(v)
    shapes.pop("v_pred")
    shapes["edm_vpred.sigma_max"] = ()
    assert detect(shapes).prediction == "v" and "edm_vpred.sigma_max" in detect(shapes).markers


def test_unknown_file_lists_its_contents(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"backbone.layer1.weight": torch.zeros(2), "backbone.layer2.weight": torch.zeros(2), "head.fc.bias": torch.zeros(1)}, str(path))
    with pytest.raises(UnknownCheckpointError, match=r"3 tensors: backbone\.layer1\. \(1\).*head\.fc\. \(1\)"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_missing_tensor_is_named_and_unexpected_warned(tmp_path, files):
    sd = load_file(str(files["tiny_sd1"]))
    missing_key = "model.diffusion_model.middle_block.1.proj_out.bias"
    broken = {k: v for k, v in sd.items() if k != missing_key}
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointKeyError, match=r"missing 1 tensor\(s\): model\.diffusion_model\.middle_block\.1\.proj_out\.bias"):
        load_checkpoint(tmp_path / "broken.safetensors", dtype=torch.float32)
    extra = dict(sd, **{"some_extension.alpha": torch.ones(1), "model_ema.decay": torch.ones(()), "alphas_cumprod": torch.ones(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.warns(UserWarning, match="1 tensor\\(s\\) not used: some_extension.alpha"):
        ckpt = load_checkpoint(tmp_path / "extra.safetensors", dtype=torch.float32, text_encoders=False)
    assert ckpt.unexpected == ["some_extension.alpha"]


def test_pickle_only_with_weights_only(tmp_path, files):
    sd = load_file(str(files["tiny_sd1"]))
    torch.save({"state_dict": sd, "global_step": 5}, tmp_path / "plain.ckpt")
    ckpt = load_checkpoint(tmp_path / "plain.ckpt", dtype=torch.float32, text_encoders=False)
    assert ckpt.spec.family == "sd1"
    torch.save({"state_dict": sd, "callback": warnings.WarningMessage}, tmp_path / "evil.ckpt")  # needs a class to unpickle
    with pytest.raises(UnsafeCheckpointError, match="needs code to unpickle"):
        load_checkpoint(tmp_path / "evil.ckpt")


def test_separate_vae_replaces_the_builtin(tmp_path, files):
    donor = load_file(str(files["tiny"]))
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in donor.items() if k.startswith("first_stage_model.")}
    save_file(vae_only, str(tmp_path / "vae.safetensors"))
    vae = load_vae(tmp_path / "vae.safetensors")
    assert torch.equal(vae.state_dict()["decoder.conv_out.weight"], vae_only["decoder.conv_out.weight"].float())
    ckpt = load_checkpoint(files["tiny_refiner"], dtype=torch.float32, vae_path=tmp_path / "vae.safetensors", text_encoders=False)
    assert torch.equal(ckpt.vae.state_dict()["decoder.conv_out.weight"], vae_only["decoder.conv_out.weight"].float())
    with pytest.raises(UnknownCheckpointError, match="not an ldm VAE"):
        load_vae(_diffusers_like(tmp_path))


def _diffusers_like(tmp_path):
    path = tmp_path / "diffusers_vae.safetensors"
    save_file({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, str(path))
    return path


_RSS_SCRIPT = r"""
import json, resource, sys, torch
from nodes.diffusion.checkpoint import load_checkpoint
import nodes.diffusion.text_encoder  # imported before the baseline: only the load is measured
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ckpt = load_checkpoint(sys.argv[1], dtype=torch.float32)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
models = [ckpt.unet, ckpt.vae, *ckpt.clip.models.values()]
weights = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
print(json.dumps({"delta": (peak - before) * 1024, "weights": weights}))
"""


def test_peak_memory_is_one_copy_of_the_weights(files):
    """Loading fp16 -> fp32 holds the fp32 weights once, plus the file's mapped pages (half as many bytes).

    A naive load (initialised model + loaded state dict + converted copy) would need about 2.5x the
    weights; ours must stay under 1.7x.
    """
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(files["tiny"])], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["delta"] < 1.7 * r["weights"], f"peak RSS grew {r['delta'] / 1e6:.0f} MB for {r['weights'] / 1e6:.0f} MB of weights"
