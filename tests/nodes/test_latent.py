import json

import pytest
import safetensors.torch
import torch

from nodes._resample import bislerp
from nodes.latent import (EmptyLatentImage, LatentFromBatch, LatentUpscale, LatentUpscaleBy, RepeatLatentBatch,
                          SetLatentNoiseMask)
from nodes.latent_io import LoadLatent, SaveLatent


def test_empty_latent(call) -> None:
    (latent,) = call(EmptyLatentImage, width=64, height=96, batch_size=3)
    assert latent["samples"].shape == (3, 4, 12, 8) and torch.all(latent["samples"] == 0)
    assert EmptyLatentImage.inputs()["width"].default == 512


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"])
def test_latent_upscale_by_each_method(call, method: str) -> None:
    samples = torch.randn(2, 4, 8, 8)
    (out,) = call(LatentUpscaleBy, samples={"samples": samples, "noise_mask": torch.ones(1, 1, 8, 8)},
                  upscale_method=method, scale_by=1.5)
    assert out["samples"].shape == (2, 4, 12, 12)
    assert "noise_mask" not in out
    (same,) = call(LatentUpscaleBy, samples={"samples": samples}, upscale_method=method, scale_by=1.0)
    assert torch.allclose(same["samples"], samples, atol=1e-5)


def test_latent_upscale_to_size_keeps_aspect_with_zero(call) -> None:
    samples = torch.randn(1, 4, 8, 16)
    (out,) = call(LatentUpscale, samples={"samples": samples}, upscale_method="bilinear", width=256, height=0,
                  crop="disabled")
    assert out["samples"].shape == (1, 4, 16, 32)


def test_bislerp_keeps_vector_norms_between_unlike_neighbours() -> None:
    a = torch.tensor([1.0, 0.0, 0.0, 0.0])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0])
    x = torch.stack([a, b]).T.reshape(1, 4, 1, 2)  # two pixels side by side
    out = bislerp(x, 4, 1)
    norms = out[0].norm(dim=0)[0]
    assert torch.allclose(norms, torch.ones(4), atol=1e-5)  # bilinear would dip to ~0.79 in between
    mid = out[0, :, 0, 1]
    assert mid[0] > mid[1] > 0  # a quarter of the way from a to b
    # endpoints of a 2x upscale: sources at -0.25 (clamped) and 1.25 (clamped)
    assert torch.allclose(out[0, :, 0, 0], a) and torch.allclose(out[0, :, 0, 3], b)
    # parallel vectors interpolate their length linearly
    y = torch.stack([a, 3 * a]).T.reshape(1, 4, 1, 2)
    assert torch.allclose(bislerp(y, 4, 1)[0, 0, 0], torch.tensor([1.0, 1.5, 2.5, 3.0]))


def test_latent_from_batch_and_repeat(call) -> None:
    samples = torch.randn(4, 4, 2, 2)
    (part,) = call(LatentFromBatch, samples={"samples": samples}, batch_index=1, length=2)
    assert torch.equal(part["samples"], samples[1:3]) and part["batch_index"] == [1, 2]
    (clamped,) = call(LatentFromBatch, samples={"samples": samples}, batch_index=9, length=5)
    assert torch.equal(clamped["samples"], samples[3:4]) and clamped["batch_index"] == [3]
    (rep,) = call(RepeatLatentBatch, samples=part, amount=3)
    assert rep["samples"].shape == (6, 4, 2, 2) and torch.equal(rep["samples"][2:4], samples[1:3])
    assert rep["batch_index"] == [1, 2, 3, 4, 5, 6]


def test_set_latent_noise_mask(call) -> None:
    (out,) = call(SetLatentNoiseMask, samples={"samples": torch.zeros(1, 4, 2, 2)}, mask=torch.ones(1, 16, 16))
    assert out["noise_mask"].shape == (1, 1, 16, 16)


def test_save_and_load_latent_round_trip(call, folders) -> None:
    samples = torch.randn(2, 4, 3, 5)
    prompt = {"9": {"class_type": "SaveLatent", "inputs": {}}}
    res = call(SaveLatent, {"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": {"a": 1}}}},
               samples={"samples": samples}, filename_prefix="latents/test")
    (entry,) = res.ui["latents"]
    assert entry == {"filename": "test_00001_.latent", "subfolder": "latents", "type": "output"}
    path = folders["output_dir"] / "latents" / "test_00001_.latent"
    tensors = safetensors.torch.load_file(str(path))
    assert set(tensors) == {"latent_tensor", "latent_format_version_0"}
    with safetensors.safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["prompt"]) == prompt and json.loads(meta["workflow"]) == {"a": 1}
    (folders["input_dir"] / "test.latent").write_bytes(path.read_bytes())
    (loaded,) = call(LoadLatent, latent="test.latent")
    assert torch.equal(loaded["samples"], samples)
    # the first format had no marker and stored samples / 0.18215
    safetensors.torch.save_file({"latent_tensor": samples}, str(folders["input_dir"] / "old.latent"))
    (old,) = call(LoadLatent, latent="old.latent")
    assert torch.allclose(old["samples"], samples / 0.18215)


def test_load_latent_validation(env, folders) -> None:
    problems = list(LoadLatent.check_inputs({"latent": "none.latent"}, env))
    assert problems[0].input == "latent" and str(folders["input_dir"]) in problems[0].message
