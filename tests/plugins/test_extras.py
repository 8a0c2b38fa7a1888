"""The first-party plugin latentgraph-extras, reached only through its installed entry point."""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from engine.plugins import PluginHost
from engine.testing import WorkflowRunError
from tests.diffusion.kdiff_oracle import load_sampling

EXTRAS_NODES = ["ImageGaussianBlur", "ImageSharpen", "ImageColorAdjust", "ExtractPalette", "PaletteFromColors",
                "RenderPalette", "ApplyPalette", "PolyexponentialScheduler", "VPScheduler"]


@pytest.fixture
def extras(load_entry_point: Any, plugin_host: Any) -> Any:
    """The plugin host with latentgraph-extras loaded from its entry point."""
    record = load_entry_point("extras")
    assert record.status == "ok"
    return plugin_host


@pytest.fixture
def core_and_extras(load_entry_point: Any, plugin_host: Any) -> Any:
    load_entry_point("core")
    load_entry_point("extras")
    return plugin_host


def node(host: Any, name: str) -> Any:
    cls = host.nodes.get(name)
    assert cls is not None, name
    return cls


def test_installed_distribution_declares_the_entry_point() -> None:
    (entry,) = importlib.metadata.entry_points(group="latentgraph", name="extras")
    assert entry.value == "latentgraph_extras"
    assert entry.dist is not None and entry.dist.name == "latentgraph-extras" and entry.dist.version == "0.1.0"


def test_plugin_host_loads_it_with_everything_it_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGRAPH_LOAD_PLUGINS", "extras")
    monkeypatch.delenv("LATENTGRAPH_DISABLE_PLUGINS", raising=False)
    host = PluginHost().load()
    (record,) = host.records
    assert (record.name, record.version, record.source, record.status, record.error) == (
        "extras", "0.1.0", "entry point", "ok", None)
    assert record.nodes == EXTRAS_NODES
    assert record.hooks == ["register_nodes", "register_samplers", "register_schedulers", "register_types",
                            "register_web_extensions"]
    assert host.types.owner("PALETTE") == "extras" and host.types.get("PALETTE").color == "#e57373"
    assert list(host.samplers) == ["ralston"] and list(host.schedulers) == ["vp"]
    folder = host.web_extensions["extras"]
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".js") == ["palette.js"]
    assert all(host.nodes.owner(n) == "extras" for n in EXTRAS_NODES)


def test_schema_of_the_nodes(extras: Any) -> None:
    info = extras.nodes.object_info(extras.environment())
    blur = info["ImageGaussianBlur"]
    assert blur["category"] == "image/filters" and blur["output"] == ["IMAGE"]
    assert blur["input"]["required"]["radius"] == ["INT", {"default": 3, "min": 0, "max": 64,
                                                            "tooltip": "kernel half-width in pixels"}]
    assert info["ApplyPalette"]["input"]["required"]["palette"] == ["PALETTE"]
    assert info["ExtractPalette"]["output"] == ["PALETTE"]
    assert info["ExtractPalette"]["python_module"] == "extras"  # the plugin that owns it


# ---- filters --------------------------------------------------------------------------------------


def images(shape: tuple[int, ...] = (2, 9, 11, 3), seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("radius", "sigma"), [(1, 0.7), (3, 1.5), (5, 4.0)])
def test_gaussian_blur_equals_scipy(extras: Any, run_node: Any, radius: int, sigma: float) -> None:
    x = images()
    (out,) = run_node(node(extras, "ImageGaussianBlur"), image=x, radius=radius, sigma=sigma).values
    assert out.shape == x.shape and out.dtype == torch.float32
    # scipy's "mirror" is torch's "reflect" (d c b | a b c d); radius sets the kernel's half-width
    expected = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, sigma, sigma, 0), mode="mirror",
                                       radius=(0, radius, radius, 0))
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)


def test_gaussian_blur_keeps_flat_images_and_radius_zero_is_identity(extras: Any, run_node: Any) -> None:
    flat = torch.full((1, 5, 5, 3), 0.25)
    (out,) = run_node(node(extras, "ImageGaussianBlur"), image=flat, radius=8, sigma=3.0).values  # pad > size
    assert torch.allclose(out, flat, atol=1e-7)
    x = images()
    (same,) = run_node(node(extras, "ImageGaussianBlur"), image=x, radius=0, sigma=1.0).values
    assert torch.equal(same, x)


def test_sharpen_is_an_unsharp_mask(extras: Any, run_node: Any) -> None:
    x = torch.zeros(1, 1, 8, 1).repeat(1, 3, 1, 3)
    x[:, :, 4:] = 0.5  # a vertical step edge
    (out,) = run_node(node(extras, "ImageSharpen"), image=x, radius=2, sigma=1.0, amount=1.5).values
    blurred = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 1.0, 1.0, 0), mode="mirror", radius=(0, 2, 2, 0))
    expected = np.clip(x.numpy() + 1.5 * (x.numpy() - blurred), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)
    assert float(out[0, 0, 4, 0]) > 0.5 and float(out[0, 0, 3, 0]) == 0.0  # overshoot, clamped undershoot
    (same,) = run_node(node(extras, "ImageSharpen"), image=x, radius=2, sigma=1.0, amount=0.0).values
    assert torch.allclose(same, x)


def test_color_adjust(extras: Any, run_node: Any) -> None:
    adjust = node(extras, "ImageColorAdjust")
    x = images((1, 4, 4, 4))  # RGBA: alpha passes through
    (same,) = run_node(adjust, image=x).values
    assert torch.allclose(same, x, atol=1e-6)
    (gray,) = run_node(adjust, image=x, saturation=0.0).values
    luma = (x[..., :3] * torch.tensor([0.2126, 0.7152, 0.0722])).sum(-1)
    for c in range(3):
        assert torch.allclose(gray[..., c], luma, atol=1e-6)
    assert torch.equal(gray[..., 3], x[..., 3])
    (flat,) = run_node(adjust, image=x, contrast=0.0).values
    assert torch.allclose(flat[..., :3], luma.mean().expand(1, 4, 4, 3), atol=1e-6)
    (bright,) = run_node(adjust, image=torch.full((1, 2, 2, 3), 0.5), brightness=0.2).values
    assert torch.allclose(bright, torch.full((1, 2, 2, 3), 0.7))
    (gamma,) = run_node(adjust, image=torch.full((1, 2, 2, 3), 0.25), gamma=2.0).values
    assert torch.allclose(gamma, torch.full((1, 2, 2, 3), 0.5))
    (clamped,) = run_node(adjust, image=torch.full((1, 2, 2, 3), 0.9), brightness=0.5).values
    assert float(clamped.max()) == 1.0


def test_filter_ranges_are_validated(extras: Any, run_node: Any) -> None:
    with pytest.raises(ValueError, match="less than or equal to 64"):
        run_node(node(extras, "ImageGaussianBlur"), image=images(), radius=65)


# ---- palette --------------------------------------------------------------------------------------


def three_colour_image() -> torch.Tensor:
    """8x8: top half red (1/2), bottom-left quarter blue (1/8 of it: 2 columns), the rest black (3/8)."""
    x = torch.zeros(1, 8, 8, 3)
    x[:, :4] = torch.tensor([1.0, 0.0, 0.0])
    x[:, 4:, :2] = torch.tensor([0.0, 0.0, 1.0])
    return x


def test_extract_palette_finds_the_colours_and_their_shares(extras: Any, run_node: Any) -> None:
    result = run_node(node(extras, "ExtractPalette"), image=three_colour_image(), colors=3)
    (palette,) = result.values
    assert palette.hex() == ["#ff0000", "#000000", "#0000ff"]
    assert palette.weights.tolist() == [0.5, 0.375, 0.125]
    assert result.ui == {"palette": ["#ff0000", "#000000", "#0000ff"], "weights": [0.5, 0.375, 0.125]}
    (fewer,) = run_node(node(extras, "ExtractPalette"), image=three_colour_image(), colors=10).values
    assert len(fewer) == 3  # never more colours than the image holds


def test_extract_palette_clusters_noisy_colours_deterministically(extras: Any, run_node: Any) -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9]])
    labels = torch.arange(3).repeat_interleave(torch.tensor([600, 300, 100]))
    pixels = (centres[labels] + 0.02 * torch.randn(1000, 3, generator=g)).clamp(0, 1)
    image = pixels.reshape(1, 20, 50, 3)
    first = run_node(node(extras, "ExtractPalette"), image=image, colors=3, seed=7).values[0]
    again = run_node(node(extras, "ExtractPalette"), image=image, colors=3, seed=7).values[0]
    assert torch.equal(first.colors, again.colors)
    assert torch.allclose(first.colors, centres, atol=0.01)
    assert first.weights.tolist() == pytest.approx([0.6, 0.3, 0.1])


def test_palette_from_colors_parses_hex_and_rejects_bad_codes(extras: Any, run_node: Any) -> None:
    (palette,) = run_node(node(extras, "PaletteFromColors"), colors="#FF8000, 0f0\n#00000a").values
    assert palette.hex() == ["#ff8000", "#00ff00", "#00000a"]
    assert torch.allclose(palette.colors[0], torch.tensor([1.0, 128 / 255, 0.0]))
    assert palette.weights.tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="'#12345' is not a hex colour; write #rrggbb or #rgb"):
        run_node(node(extras, "PaletteFromColors"), colors="#ffffff #12345")
    with pytest.raises(ValueError, match="no colours given"):
        run_node(node(extras, "PaletteFromColors"), colors=" , ")


def test_render_palette(extras: Any, run_node: Any) -> None:
    (palette,) = run_node(node(extras, "ExtractPalette"), image=three_colour_image(), colors=3).values
    (image,) = run_node(node(extras, "RenderPalette"), palette=palette, width=8, height=2).values
    assert image.shape == (1, 2, 8, 3)
    row = [tuple(int(v) for v in px) for px in image[0, 1]]
    assert row == [(1, 0, 0)] * 4 + [(0, 0, 0)] * 3 + [(0, 0, 1)]
    (equal,) = run_node(node(extras, "RenderPalette"), palette=palette, width=6, height=1, proportional=False).values
    assert [tuple(int(v) for v in px) for px in equal[0, 0]] == [(1, 0, 0)] * 2 + [(0, 0, 0)] * 2 + [(0, 0, 1)] * 2


def test_apply_palette_maps_to_the_nearest_colour(extras: Any, run_node: Any) -> None:
    (palette,) = run_node(node(extras, "PaletteFromColors"), colors="#000000 #ffffff #ff0000").values
    x = torch.tensor([[[[0.1, 0.1, 0.1], [0.8, 0.9, 0.7], [0.7, 0.2, 0.1], [0.4, 0.4, 0.4]]]])
    (out,) = run_node(node(extras, "ApplyPalette"), image=x, palette=palette).values
    assert out.tolist() == [[[[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]]]]
    (half,) = run_node(node(extras, "ApplyPalette"), image=x, palette=palette, strength=0.5).values
    assert torch.allclose(half, (x + out) / 2)


def test_palette_workflow_runs_end_to_end_and_saves_the_swatches(core_and_extras: Any, run_workflow: Any,
                                                                  tmp_path: Path) -> None:
    prompt = {
        "1": {"class_type": "PaletteFromColors", "inputs": {"colors": "#ff0000 #0000ff"}},
        "2": {"class_type": "RenderPalette", "inputs": {"palette": ["1", 0], "width": 4, "height": 2}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "palette"}},
    }
    outputs = run_workflow(prompt)
    (saved,) = outputs["3"]["images"]
    pixels = np.asarray(Image.open(tmp_path / "output" / saved["subfolder"] / saved["filename"]))
    assert pixels.shape == (2, 4, 3)
    assert pixels[0].tolist() == [[255, 0, 0], [255, 0, 0], [0, 0, 255], [0, 0, 255]]
    assert outputs["1"] == {"palette": ["#ff0000", "#0000ff"], "weights": [0.5, 0.5]}


def test_bad_palette_text_is_a_validation_error_before_anything_runs(core_and_extras: Any,
                                                                     run_workflow: Any) -> None:
    prompt = {
        "1": {"class_type": "PaletteFromColors", "inputs": {"colors": "#ff0000 purple"}},
        "2": {"class_type": "RenderPalette", "inputs": {"palette": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(WorkflowRunError) as info:
        run_workflow(prompt)
    message = str(info.value)
    assert message.startswith("workflow is invalid")
    assert "input 'colors': 'purple' is not a hex colour; write #rrggbb or #rgb" in message


def test_palette_link_type_is_checked(core_and_extras: Any, run_workflow: Any) -> None:
    prompt = {
        "1": {"class_type": "PaletteFromColors", "inputs": {}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    with pytest.raises(WorkflowRunError, match="expected IMAGE, but the link"):
        run_workflow(prompt)


# ---- sampler and schedules ------------------------------------------------------------------------

K = load_sampling()


def k_sigmas(name: str, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A k-diffusion schedule computed in float64 (its float32 loses digits near sigma 0), as float32."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return getattr(K, name)(*args, **kwargs).float()
    finally:
        torch.set_default_dtype(default)


def test_polyexponential_and_vp_nodes_equal_k_diffusion(extras: Any, run_node: Any) -> None:
    for rho in (1.0, 2.5):
        (ours,) = run_node(node(extras, "PolyexponentialScheduler"), steps=12, sigma_max=14.6, sigma_min=0.03,
                           rho=rho).values
        theirs = k_sigmas("get_sigmas_polyexponential", 12, 0.03, 14.6, rho=rho)
        assert ours.shape == (13,) and float(ours[-1]) == 0.0
        torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=1e-7)
    (ours,) = run_node(node(extras, "VPScheduler"), steps=10, beta_d=19.9, beta_min=0.1, eps_s=0.001).values
    torch.testing.assert_close(ours, k_sigmas("get_sigmas_vp", 10, 19.9, 0.1, 0.001), rtol=2e-6, atol=1e-7)


def test_vp_scheduler_spans_the_models_range_through_the_builtin_registry(core_and_extras: Any) -> None:
    from nodes.diffusion.model_sampling import ModelSamplingDiscrete
    from nodes.diffusion.schedules import calculate_sigmas

    sampling = ModelSamplingDiscrete()
    sigmas = calculate_sigmas(sampling, "vp", 20, core_and_extras.schedulers)
    assert sigmas.shape == (21,) and float(sigmas[-1]) == 0.0
    assert math.isclose(float(sigmas[0]), float(sampling.sigma_max), rel_tol=1e-5)
    assert math.isclose(float(sigmas[-2]), float(sampling.sigma_min), rel_tol=1e-4)
    assert bool((sigmas[:-1] > sigmas[1:]).all())
    # the same curve as k-diffusion's VP schedule with the fitted parameters
    smin, smax = float(sampling.sigma_min), float(sampling.sigma_max)
    beta_d = 2 * (math.log1p(smax**2) - 0.1)
    eps_s = (-0.1 + math.sqrt(0.01 + 2 * beta_d * math.log1p(smin**2))) / beta_d
    torch.testing.assert_close(sigmas, k_sigmas("get_sigmas_vp", 20, beta_d, 0.1, eps_s), rtol=2e-6, atol=1e-7)


def test_sampler_and_scheduler_are_choices_of_the_builtin_nodes(core_and_extras: Any) -> None:
    info = core_and_extras.nodes.object_info(core_and_extras.environment())
    assert "ralston" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert "vp" in info["KSampler"]["input"]["required"]["scheduler"][0]
    assert "vp" in info["BasicScheduler"]["input"]["required"]["scheduler"][0]
    assert "ralston" in info["KSamplerSelect"]["input"]["required"]["sampler_name"][0]


class Gaussian:
    """Exact denoiser of data N(mu, s^2): D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def __init__(self, mu: torch.Tensor, s: float) -> None:
        self.mu, self.s = mu, s

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        sig2 = sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2
        return (self.s**2 * x + sig2 * self.mu) / (self.s**2 + sig2)

    def exact(self, x: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
        """The probability-flow ODE's solution from sigma_start to sigma_end."""
        return self.mu + (x - self.mu) * math.sqrt(self.s**2 + sigma_end**2) / math.sqrt(self.s**2 + sigma_start**2)


def ode_error(sampler: Any, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    model = Gaussian(torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64) * 0.5, 0.5)
    x = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64) * 10.0
    # geometric spacing, ending above 0 so that no step is Euler's
    sigmas = torch.exp(torch.linspace(math.log(10.0), math.log(0.1), steps + 1, dtype=torch.float64))
    out = sampler(model, x, sigmas)
    return float((out - model.exact(x, 10.0, 0.1)).abs().max())


def test_ralston_is_second_order_on_the_exact_gaussian_ode(extras: Any) -> None:
    ralston = extras.samplers["ralston"]
    errors = [ode_error(ralston, n) for n in (16, 32, 64)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(1.85 < p < 2.15 for p in orders), orders  # halving the step quarters the error
    assert errors[1] < ode_error(K.sample_euler, 32) / 20  # far better than Euler at the same steps
    heun = ode_error(lambda m, x, s: K.sample_heun(m, x, s, disable=True), 32)
    assert errors[1] < heun  # and, on this ODE, than Heun's method (the same order, a smaller constant)


def test_ralston_runs_through_the_builtin_sampler_registry(core_and_extras: Any) -> None:
    from nodes.diffusion.samplers import SamplingInterrupted, get_sampler

    sampler = get_sampler("ralston", core_and_extras.samplers)
    model = Gaussian(torch.zeros(1, 4, 2, 2), 0.5)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0)) * 14.6
    sigmas = torch.tensor([14.6, 3.0, 0.5, 0.0])
    seen: list[int] = []
    info: dict[str, Any] = {}
    out = sampler.sample(model, x, sigmas, callback=lambda d: seen.append(d["i"]), info=info)
    assert seen == [0, 1, 2] and info["nfe"] == 5  # two evaluations per step, one for the last (Euler) step
    assert out.shape == x.shape and float(out.abs().max()) < float(x.abs().max()) / 10
    with pytest.raises(SamplingInterrupted, match="sampler 'ralston' interrupted at step 0"):
        sampler.sample(model, x, sigmas, should_stop=lambda: True)
