"""Every example workflow end to end through `main.py run`, on tiny random checkpoints at 64x64."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main
import nodes.plugin
from engine.executor import Executor
from engine.plugins import PluginHost
from engine.workflow import editor_to_api, load_workflow
from tests.workflows.editor_format import api_to_editor

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"

# Per workflow: the --set overrides that make it small (64x64, a few steps) and the node saving images.
SMALL = {
    "sdxl_txt2img": ["5.width=64", "5.height=64", "3.steps=3"],
    "sdxl_base_refiner": ["5.width=64", "5.height=64", "10.steps=5", "10.end_at_step=4", "11.steps=5",
                          "11.start_at_step=4"],
    "sdxl_hires_fix": ["5.width=64", "5.height=64", "3.steps=3", "11.steps=3", "8.tile_size=64", "8.overlap=32"],
    "sdxl_custom_sampling": ["5.width=64", "5.height=64", "23.steps=4", "24.step=2"],
    "sdxl_refine_node": ["5.width=64", "5.height=64", "23.steps=5"],
    "sdxl_img2img": ["3.steps=3"],
    "sdxl_inpaint": ["3.steps=3"],
    "default": ["5.width=64", "5.height=64", "3.steps=3"],
    "comfyui_default_sdxl": ["5.width=64", "5.height=64", "3.steps=3"],
}
SIZES = {"sdxl_hires_fix": (96, 96)}  # 64 * 1.5


def _api(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.api.json").read_text())


def _run_cli(dirs: dict[str, Path], workflow: Path, overrides: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = ["run", str(workflow), "--out", str(dirs["output"]), "--models-dir", str(dirs["models"]),
            "--input-directory", str(dirs["input"]), "--temp-directory", str(dirs["temp"]), "--cpu",
            "--precision", "fp32", "--quiet"]
    for item in overrides:
        args += ["--set", item]
    code = main.main(args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _saved(dirs: dict[str, Path]) -> list[Path]:
    return sorted(dirs["output"].rglob("*.png"))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_every_workflow_has_both_formats() -> None:
    api = {p.name[: -len(".api.json")] for p in WORKFLOWS.glob("*.api.json")}
    editor = {p.name[: -len(".json")] for p in WORKFLOWS.glob("*.json") if not p.name.endswith(".api.json")}
    assert api == editor == set(SMALL)


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(entry_points=False, plugins=[("core", nodes.plugin)]).load()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_editor_file_converts_to_its_api_twin(name: str, host: PluginHost) -> None:
    editor = json.loads((WORKFLOWS / f"{name}.json").read_text())
    converted = editor_to_api(editor, host.nodes)
    expected = _api(name)
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in converted.items()} == \
        {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in expected.items()}
    assert api_to_editor(expected, host.nodes) == editor  # the committed file is what the generator writes


@pytest.mark.parametrize("name", sorted(SMALL))
def test_workflow_runs_end_to_end(name: str, dirs: dict[str, Path]) -> None:
    code, out, err = _run_cli(dirs, WORKFLOWS / f"{name}.api.json", SMALL[name])
    assert code == 0, err
    (png,) = _saved(dirs)
    assert str(png) in out
    image = Image.open(png)
    assert image.size == SIZES.get(name, (64, 64)) and image.mode == "RGB"
    prompt = json.loads(image.text["prompt"])
    expected = _api(name)
    for item in SMALL[name]:  # the embedded prompt is the one that ran, overrides included
        key, value = item.split("=")
        node_id, input_name = key.split(".")
        expected[node_id]["inputs"][input_name] = json.loads(value)
    assert {k: v["inputs"] for k, v in prompt.items()} == {k: v["inputs"] for k, v in expected.items()}
    pixels = _pixels(png)
    assert pixels.std() > 1.0  # an image, not a flat fill


@pytest.mark.parametrize("name", ["sdxl_base_refiner", "sdxl_inpaint"])
def test_editor_format_embeds_the_workflow(name: str, dirs: dict[str, Path]) -> None:
    code, _, err = _run_cli(dirs, WORKFLOWS / f"{name}.json", SMALL[name])
    assert code == 0, err
    (png,) = _saved(dirs)
    text = Image.open(png).text
    assert json.loads(text["workflow"]) == json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert set(json.loads(text["prompt"])) == set(_api(name))
    # the PNG is itself a workflow file again
    again = load_workflow(png, PluginHost(entry_points=False, plugins=[("core", nodes.plugin)]).load().nodes)
    assert again.editor == json.loads(text["workflow"])


def test_cli_subprocess_runs_the_default_workflow(dirs: dict[str, Path]) -> None:
    args = [sys.executable, str(ROOT / "main.py"), "run", str(WORKFLOWS / "default.json"), "--out", str(dirs["output"]),
            "--models-dir", str(dirs["models"]), "--input-directory", str(dirs["input"]), "--cpu", "--quiet"]
    for item in SMALL["default"]:
        args += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (png,) = _saved(dirs)
    assert png.name == "latentgraph_00001_.png"
    assert "workflow" in Image.open(png).text and "prompt" in Image.open(png).text


def test_seed_changes_rerun_only_downstream_nodes(dirs: dict[str, Path], host: PluginHost) -> None:
    env = host.environment({"models_dir": str(dirs["models"]), "input_dir": str(dirs["input"]),
                            "output_dir": str(dirs["output"]), "temp_dir": str(dirs["temp"]), "device": "cpu",
                            "precision": "fp32", "preview": "none"})
    executor = Executor(host.nodes, env)
    prompt = _api("sdxl_txt2img")
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"]["steps"] = 3
    first = executor.execute(prompt, prompt_id="a")
    assert first.status == "success" and set(first.executed) == set(prompt)
    same = executor.execute(json.loads(json.dumps(prompt)), prompt_id="b")
    assert same.executed == [] and set(same.cached) == set(prompt)
    reseeded = json.loads(json.dumps(prompt))
    reseeded["3"]["inputs"]["seed"] = 43
    third = executor.execute(reseeded, prompt_id="c")
    assert sorted(third.executed) == ["3", "8", "9"] and sorted(third.cached) == ["4", "5", "6", "7"]
    executor.reset()
    fourth = executor.execute(json.loads(json.dumps(prompt)), prompt_id="d")  # same seed as the first, recomputed
    assert set(fourth.executed) == set(prompt)
    files = [dirs["output"] / e["subfolder"] / e["filename"]
             for r in (first, third, fourth) for e in r.outputs["9"]["images"]]
    a, other, again = (_pixels(f) for f in files)
    assert np.array_equal(a, again)  # same seed -> identical pixels
    assert not np.array_equal(a, other)  # another seed -> different pixels


def test_comfyui_api_file_validates_unchanged(dirs: dict[str, Path]) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main.main(["validate", str(WORKFLOWS / "comfyui_default_sdxl.api.json"), "--models-dir", str(dirs["models"])],
                     stdout=out, stderr=err)
    assert code == 0, err.getvalue()


def test_workflow_with_unknown_nodes_fails_naming_them(dirs: dict[str, Path], tmp_path: Path) -> None:
    prompt = _api("comfyui_default_sdxl")
    prompt["10"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x-UltraSharp.pth"}}
    prompt["11"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["10", 0], "image": ["8", 0]}}
    prompt["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "up"}}
    path = tmp_path / "upscale.api.json"
    path.write_text(json.dumps(prompt))
    code, _, err = _run_cli(dirs, path, SMALL["comfyui_default_sdxl"])
    assert code != 0
    assert "UpscaleModelLoader" in err and "ImageUpscaleWithModel" in err
    assert _saved(dirs) == []


def test_startup_writes_the_default_checkpoint(tmp_path: Path) -> None:
    from nodes.diffusion.checkpoint import detect, read_shapes

    settings = {"models_dir": str(tmp_path / "models")}
    path = nodes.plugin.ensure_default_checkpoint(settings)
    assert path == (tmp_path / "models" / "checkpoints" / nodes.plugin.DEFAULT_CHECKPOINT).resolve()
    assert detect(read_shapes(path)).family == "sdxl"
    assert path.read_bytes() == nodes.plugin.SHIPPED_CHECKPOINT.read_bytes()
    stamp = path.stat().st_mtime_ns
    assert nodes.plugin.ensure_default_checkpoint(settings) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [nodes.plugin.DEFAULT_CHECKPOINT]  # no partial files left
    default = _api("default")
    assert default["4"]["inputs"]["ckpt_name"] == nodes.plugin.DEFAULT_CHECKPOINT


def test_the_editor_opens_the_same_default_workflow() -> None:
    editor_default = json.loads((ROOT / "web" / "app" / "default_workflow.json").read_text())
    assert editor_default == json.loads((WORKFLOWS / "default.json").read_text())


@pytest.mark.slow
def test_comfyui_api_file_runs_unchanged(dirs: dict[str, Path]) -> None:
    """ComfyUI's default graph as ComfyUI saves it (1024x1024, 20 steps), with not a value changed."""
    code, _, err = _run_cli(dirs, WORKFLOWS / "comfyui_default_sdxl.api.json", [])
    assert code == 0, err
    (png,) = _saved(dirs)
    assert png.name == "ComfyUI_00001_.png" and Image.open(png).size == (1024, 1024)


def test_main_train_demo_writes_a_loadable_sdxl_checkpoint(tmp_path: Path) -> None:
    from nodes.diffusion.checkpoint import detect, read_shapes

    out = tmp_path / "demo.safetensors"
    code = main.main(["train-demo", "--images", "4", "--vae-steps", "2", "--unet-steps", "2", "--unet-batch", "2", "--decoder-steps", "2",
                      "--vae-batch", "2", "--threads", "1", "--out", str(out), "--work", str(tmp_path / "work"),
                      "--offset-noise", "0.2", "--caption-drop", "0.1", "0.1", "0.1", "0.3", "0.3", "--transformer-depth", "0", "1", "1"])
    assert code == 0
    assert detect(read_shapes(out)).family == "sdxl"
    assert read_shapes(out).keys() == read_shapes(nodes.plugin.SHIPPED_CHECKPOINT).keys()
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        recipe = json.loads(f.metadata()["latentgraph.demo_recipe"])  # every recipe field is a flag
    assert recipe["offset_noise"] == 0.2 and recipe["caption_drop"] == [0.1, 0.1, 0.1, 0.3, 0.3] and recipe["unet_steps"] == 2 and recipe["decoder_steps"] == 2
