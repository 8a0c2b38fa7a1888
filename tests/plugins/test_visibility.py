"""Visibility and isolation end to end: broken local plugins next to the installed ones, through the CLI
(subprocesses and in-process) and the server's `/api/plugins`, `/extensions` and `/object_info`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]

LOCAL_PLUGINS = {
    "faulty_import.py": """
        raise ImportError("faulty_import needs the library 'nonexistent' (pip install nonexistent)")
    """,
    "faulty_node.py": """
        from engine import hookimpl

        class NotANode:
            '''Forgot to derive from engine.Node.'''

        @hookimpl
        def register_nodes(register):
            register(NotANode)
    """,
    "faulty_hook.py": """
        from engine import hookimpl

        @hookimpl
        def register_samplers(register):
            raise RuntimeError("faulty_hook broke while registering")
    """,
    "good.py": """
        from engine import STRING, Input, Node, NodeResult, Output, hookimpl

        __version__ = "2.0.1"

        class LocalEcho(Node):
            '''Show a text.'''
            output_node = True
            outputs = (Output(STRING),)
            text: str = Input("echo")
            def run(self, ctx):
                return NodeResult((self.text,), ui={"text": [self.text]})

        @hookimpl
        def register_nodes(register):
            register(LocalEcho)
    """,
}


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "local_plugins"
    folder.mkdir()
    for name, source in LOCAL_PLUGINS.items():
        (folder / name).write_text(textwrap.dedent(source))
    return folder


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATENTGRAPH_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LATENTGRAPH_LOAD_PLUGINS", raising=False)


def cli(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LATENTGRAPH_")}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env={**clean, **env})


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in records}


def check_records(records: dict[str, dict[str, Any]], plugins_dir: Path) -> None:
    assert list(records) == ["core", "extras", "local:faulty_hook", "local:faulty_import", "local:faulty_node",
                             "local:good"]
    core, extras, good = records["core"], records["extras"], records["local:good"]
    assert (core["source"], core["status"], core["module"]) == ("entry point", "ok", "nodes.plugin")
    assert "KSampler" in core["nodes"]
    assert {k: extras[k] for k in ("version", "source", "status", "error", "module")} == {
        "version": "0.1.0", "source": "entry point", "status": "ok", "error": None, "module": "latentgraph_extras"}
    assert extras["nodes"][:3] == ["ImageGaussianBlur", "ImageSharpen", "ImageColorAdjust"]
    assert {k: good[k] for k in ("version", "source", "status", "nodes", "path")} == {
        "version": "2.0.1", "source": "local", "status": "ok", "nodes": ["LocalEcho"],
        "path": str(plugins_dir / "good.py")}
    for name, expected in (
        ("local:faulty_import", "ImportError: faulty_import needs the library 'nonexistent' (pip install nonexistent)"),
        ("local:faulty_node", "which is not a Node subclass"),
        ("local:faulty_hook", "RuntimeError: faulty_hook broke while registering"),
    ):
        record = records[name]
        assert (record["status"], record["nodes"], record["source"]) == ("failed", [], "local"), name
        assert expected in record["error"], (name, record["error"])
    assert "failed to import" in records["local:faulty_import"]["error"]
    assert "failed while registering" in records["local:faulty_hook"]["error"]


def test_cli_plugins_json_shows_every_plugin_with_its_error(plugins_dir: Path, tmp_path: Path) -> None:
    result = cli("--plugins-dir", str(plugins_dir), "plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    check_records(by_name(json.loads(result.stdout)), plugins_dir)


def test_cli_run_works_beside_broken_plugins_and_honours_both_ways_of_disabling(
    plugins_dir: Path, tmp_path: Path
) -> None:
    workflow = tmp_path / "palette.json"
    workflow.write_text(json.dumps({
        "1": {"class_type": "PaletteFromColors", "inputs": {"colors": "#00ff00 #ffffff"}},
        "2": {"class_type": "RenderPalette", "inputs": {"palette": ["1", 0], "width": 4, "height": 1}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "swatch"}},
        "4": {"class_type": "LocalEcho", "inputs": {"text": "still here"}},
    }))
    result = cli("--plugins-dir", str(plugins_dir), "--disable-plugin", "faulty_import", "run", str(workflow),
                 "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path,
                 LATENTGRAPH_DISABLE_PLUGINS="local:faulty_hook")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: plugin 'local:faulty_node' failed to load: ")
    assert warnings[0].endswith("(details: latentgraph plugins)")
    (png,) = (tmp_path / "out").glob("swatch_*.png")
    assert np.asarray(Image.open(png)).tolist() == [[[0, 255, 0], [0, 255, 0], [255, 255, 255], [255, 255, 255]]]


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_plugins_text_and_disabling_in_process(plugins_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_main("--plugins-dir", str(plugins_dir), "plugins")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    extras = next(line for line in lines if line.startswith("extras "))
    assert extras.split() == ["extras", "0.1.0", "entry", "point", "ok", "9", "node(s)"]
    bad = lines.index(next(line for line in lines if line.startswith("local:faulty_import ")))
    assert lines[bad].split()[-3:] == ["failed", "0", "node(s)"]
    assert lines[bad + 1].startswith("    plugin 'local:faulty_import' failed to import:")
    assert any(line.startswith("    ImportError: faulty_import needs the library") for line in lines[bad + 1:])

    monkeypatch.setenv("LATENTGRAPH_DISABLE_PLUGINS", "local:faulty_node,faulty_hook")
    code, out, err = run_main("--plugins-dir", str(plugins_dir), "--disable-plugin", "extras",
                              "--disable-plugin", "local:faulty_import", "nodes")
    assert (code, err) == (0, "")  # nothing failed: every broken plugin is disabled
    names = {line.split()[0] for line in out.splitlines()[:-1]}
    assert "LocalEcho" in names and "KSampler" in names and "ExtractPalette" not in names
    code, out, _ = run_main("--plugins-dir", str(plugins_dir), "--disable-plugin", "extras", "plugins", "--json")
    statuses = {r["name"]: r["status"] for r in json.loads(out)}
    assert statuses == {"core": "ok", "extras": "disabled", "local:faulty_hook": "disabled",
                        "local:faulty_import": "failed", "local:faulty_node": "disabled", "local:good": "ok"}


@pytest.mark.asyncio
async def test_server_shows_plugins_serves_the_web_extension_and_keeps_working(
    plugins_dir: Path, tmp_path: Path, aiohttp_client: Any
) -> None:
    from engine.config import Settings
    from engine.server import create_app

    settings = Settings(base_dir=tmp_path / "server", plugin_dirs=[plugins_dir], cache="none",
                        extra={"serve_web": False})
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/api/plugins")
    assert response.status == 200
    check_records(by_name(await response.json()), plugins_dir)

    urls = await (await client.get("/extensions")).json()
    assert urls == ["/extensions/extras/palette.js"]
    script = await client.get(urls[0])
    assert script.status == 200 and script.content_type in ("application/javascript", "text/javascript")
    assert "app.registerExtension(extension);" in await script.text()

    info = await (await client.get("/object_info")).json()
    assert info["ExtractPalette"]["output"] == ["PALETTE"] and info["ExtractPalette"]["python_module"] == "extras"
    assert "LocalEcho" in info and "KSampler" in info
    assert "ralston" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    one = await (await client.get("/object_info/RenderPalette")).json()
    assert one["RenderPalette"]["input"]["required"]["palette"] == ["PALETTE"]
