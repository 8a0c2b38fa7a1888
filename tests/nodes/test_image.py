import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.validate import validate_prompt
from nodes.image import ImageBatch, ImageInvert, ImageScale, ImageScaleBy
from nodes.image_io import LoadImage, LoadImageMask, PreviewImage, SaveImage


def _rgba(path: Path, w: int = 16, h: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(path)
    return pixels


def test_load_image_gives_rgb_and_mask_from_alpha(call, folders) -> None:
    pixels = _rgba(folders["input_dir"] / "a.png")
    image, mask = call(LoadImage, image="a.png")
    assert image.shape == (1, 8, 16, 3) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.from_numpy(pixels[..., :3] / 255.0).float())
    assert mask.shape == (1, 8, 16)
    assert torch.allclose(mask[0], 1.0 - torch.from_numpy(pixels[..., 3] / 255.0).float())


def test_load_image_without_alpha_has_zero_mask(call, folders) -> None:
    Image.new("RGB", (12, 10), (255, 0, 0)).save(folders["input_dir"] / "red.jpg")
    image, mask = call(LoadImage, image="red.jpg")
    assert image.shape == (1, 10, 12, 3) and torch.all(mask == 0) and mask.shape == (1, 10, 12)
    assert image[0, 5, 5, 0] > 0.95 and image[0, 5, 5, 1] < 0.05


def test_load_image_mask_channels(call, folders) -> None:
    pixels = _rgba(folders["input_dir"] / "a.png")
    (alpha,) = call(LoadImageMask, image="a.png", channel="alpha")
    (green,) = call(LoadImageMask, image="a.png", channel="green")
    assert torch.allclose(alpha[0], 1 - torch.from_numpy(pixels[..., 3] / 255.0).float())
    assert torch.allclose(green[0], torch.from_numpy(pixels[..., 1] / 255.0).float())


def test_load_image_validation_and_fingerprint(env, host, folders) -> None:
    _rgba(folders["input_dir"] / "a.png")
    problems = list(LoadImage.check_inputs({"image": "nope.png"}, env))
    assert problems and problems[0].input == "image" and "not found in" in problems[0].message
    assert list(LoadImage.check_inputs({"image": "a.png"}, env)) == []
    assert list(LoadImage.check_inputs({"image": "../x.png"}, env))[0].message.startswith("file name")
    first = LoadImage.fingerprint({"image": "a.png"}, env)
    _rgba(folders["input_dir"] / "a.png", w=4)
    assert LoadImage.fingerprint({"image": "a.png"}, env) != first
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    result = validate_prompt(prompt, host.nodes, env)
    assert not result.ok and result.node_errors["1"]["errors"][0]["extra_info"]["input_name"] == "image"


def test_image_scale_modes_and_aspect(call) -> None:
    img = torch.rand(2, 8, 16, 3)
    for method in ("nearest-exact", "bilinear", "area", "bicubic", "lanczos"):
        (out,) = call(ImageScale, image=img, upscale_method=method, width=32, height=0, crop="disabled")
        assert out.shape == (2, 16, 32, 3), method
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    (crop,) = call(ImageScale, image=img, upscale_method="nearest-exact", width=8, height=8, crop="center")
    assert torch.equal(crop, img[:, :, 4:12, :])
    (by,) = call(ImageScaleBy, image=img, upscale_method="bilinear", scale_by=0.5)
    assert by.shape == (2, 4, 8, 3)


def test_invert_and_batch(call) -> None:
    a, b = torch.rand(1, 8, 8, 3), torch.rand(2, 4, 4, 3)
    (inv,) = call(ImageInvert, image=a)
    assert torch.allclose(inv, 1 - a)
    (batch,) = call(ImageBatch, image1=a, image2=b)
    assert batch.shape == (3, 8, 8, 3) and torch.equal(batch[0], a[0])


def test_save_image_names_files_and_embeds_metadata(call, folders) -> None:
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sub/run_%batch_num%"}}}
    extra = {"extra_pnginfo": {"workflow": {"nodes": [], "links": []}, "note": "hi"}}
    images = torch.rand(2, 8, 12, 3)
    result = call(SaveImage, {"prompt": prompt, "extra_data": extra}, images=images, filename_prefix="sub/run_%batch_num%")
    files = result.ui["images"]
    assert files == [{"filename": "run_0_00001_.png", "subfolder": "sub", "type": "output"},
                     {"filename": "run_1_00002_.png", "subfolder": "sub", "type": "output"}]
    png = Image.open(folders["output_dir"] / "sub" / "run_1_00002_.png")
    assert json.loads(png.text["prompt"]) == prompt
    assert json.loads(png.text["workflow"]) == {"nodes": [], "links": []}
    assert json.loads(png.text["note"]) == "hi"
    saved = np.asarray(png.convert("RGB"), dtype=np.float32) / 255
    assert np.abs(saved - images[1].numpy()).max() <= 0.5 / 255 + 1e-6
    again = call(SaveImage, images=images[:1], filename_prefix="sub/run_%batch_num%").ui["images"]
    assert again[0]["filename"] == "run_0_00003_.png"  # never overwrites an earlier batch
    third = call(SaveImage, images=images[:1], filename_prefix="ComfyUI").ui["images"]
    fourth = call(SaveImage, images=images[:1], filename_prefix="ComfyUI").ui["images"]
    assert (third[0]["filename"], fourth[0]["filename"]) == ("ComfyUI_00001_.png", "ComfyUI_00002_.png")


def test_save_image_refuses_prefix_outside_output(call) -> None:
    with pytest.raises(ValueError, match="outside"):
        call(SaveImage, images=torch.rand(1, 4, 4, 3), filename_prefix="../../evil")


def test_preview_image_goes_to_temp(call, folders) -> None:
    result = call(PreviewImage, images=torch.rand(1, 4, 4, 3))
    (entry,) = result.ui["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert (folders["temp_dir"] / entry["filename"]).is_file()
