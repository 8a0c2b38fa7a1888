"""`main.py new-plugin`: the generated plugin installs, loads through its entry point, and its tests pass."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.scaffold import PluginNames, ScaffoldError, plugin_names, render_plugin, write_plugin

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTGRAPH_")}
    env.update(extra)
    return env


@pytest.mark.parametrize(("name", "expected"), [
    ("my-nodes", PluginNames("my-nodes", "my_nodes", "MyNodes")),
    ("Fancy.Filters_2", PluginNames("Fancy.Filters_2", "fancy_filters_2", "FancyFilters2")),
    ("x", PluginNames("x", "x", "X")),
])
def test_plugin_names(name: str, expected: PluginNames) -> None:
    assert plugin_names(name) == expected


@pytest.mark.parametrize(("name", "message"), [
    ("9lives", "plugin name '9lives' must start with a letter"),
    ("my nodes", "plugin name 'my nodes' must start with a letter and hold only letters, digits"),
    ("nodes", "gives the package name 'nodes', which is reserved; choose another, e.g. nodes_nodes"),
    ("class", "gives the package name 'class', which is reserved"),
])
def test_bad_plugin_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(ScaffoldError, match=re.escape(message)):
        plugin_names(name)


def test_rendered_files() -> None:
    files = render_plugin(plugin_names("my-nodes"))
    assert sorted(files) == ["README.md", "my_nodes/__init__.py", "my_nodes/nodes.py", "pyproject.toml",
                             "tests/test_plugin.py"]
    assert '[project.entry-points.latentgraph]\nmy_nodes = "my_nodes"\n' in files["pyproject.toml"]
    assert 'name = "my-nodes"' in files["pyproject.toml"]
    assert "class MyNodesRepeat(Node):" in files["my_nodes/nodes.py"]
    assert "{{" not in "".join(files.values())
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")


def test_new_plugin_command_writes_the_package_and_never_overwrites(tmp_path: Path) -> None:
    code, out, err = run_cli("new-plugin", "my-nodes", "--dir", str(tmp_path))
    assert (code, err) == (0, "")
    root = tmp_path / "my-nodes"
    assert out.splitlines()[0] == f"wrote plugin 'my-nodes' (package my_nodes, entry point 'my_nodes') to {root}"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "my_nodes/__init__.py", "my_nodes/nodes.py", "pyproject.toml", "tests/test_plugin.py"]
    before = (root / "my_nodes" / "nodes.py").read_text()
    code, out, err = run_cli("new-plugin", "my-nodes", "--dir", str(tmp_path))
    assert (code, out) == (2, "")
    assert err == f"error: {str(root)!r} already exists and is not empty; choose another name or --dir\n"
    assert (root / "my_nodes" / "nodes.py").read_text() == before
    code, _, err = run_cli("new-plugin", "engine", "--dir", str(tmp_path))
    assert code == 2 and "which is reserved" in err
    assert write_plugin("empty-ok", tmp_path) == tmp_path / "empty-ok"


def docs_block(heading: str, index: int = 0) -> str:
    """The `index`-th python block under a `## heading` of docs/plugins.md."""
    section = DOCS.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def fake_install(site: Path, dist: str, package: str, version: str = "0.1.0") -> None:
    """A dist-info with the plugin's entry point, so importlib.metadata finds it (no pip needed)."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[latentgraph]\n{package} = {package}\n")


def test_generated_plugin_installs_loads_and_its_tests_pass_with_the_docs_example(tmp_path: Path) -> None:
    # 1. the template as generated, installed for real with pip (into a private folder, not the venv)
    code, _, _ = run_cli("new-plugin", "my-nodes", "--dir", str(tmp_path / "src"))
    assert code == 0
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(site), str(tmp_path / "src" / "my-nodes")],
        capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert pip.returncode == 0, pip.stderr
    (entry_points,) = site.glob("my_nodes-0.1.0.dist-info/entry_points.txt")
    assert entry_points.read_text().split() == ["[latentgraph]", "my_nodes", "=", "my_nodes"]

    # 2. the docs' five-minute node and its test example, in a second generated plugin
    write_plugin("doc-nodes", tmp_path / "src")
    doc_root = tmp_path / "src" / "doc-nodes"
    nodes_py = doc_root / "doc_nodes" / "nodes.py"
    node_code = docs_block("A node in five minutes", 1)
    nodes_py.write_text(nodes_py.read_text().replace("NODES = (DocNodesRepeat,)", "")
                        + "\n" + node_code + "\nNODES = (DocNodesRepeat, ImageSolarize)\n")
    test_code = docs_block("Testing a plugin").replace("my_nodes", "doc_nodes")
    (doc_root / "tests" / "test_plugin.py").write_text(test_code)  # only the docs' tests here
    fake_install(site, "doc-nodes", "doc_nodes")

    # 3. both plugins' tests, importing the installed copy of my_nodes and the source of doc_nodes
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(site), str(doc_root)]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
         "-W", "ignore::DeprecationWarning", str(tmp_path / "src" / "my-nodes" / "tests"), str(doc_root / "tests")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b8 passed\b", result.stdout), result.stdout

    # 4. latentgraph itself finds the installed plugin through its entry point
    listing = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "plugins", "--json"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env=subprocess_env(PYTHONPATH=str(site), LATENTGRAPH_LOAD_PLUGINS="my_nodes"))
    assert listing.returncode == 0, listing.stderr
    (record,) = json.loads(listing.stdout)
    assert {k: record[k] for k in ("name", "version", "source", "status", "nodes", "module")} == {
        "name": "my_nodes", "version": "0.1.0", "source": "entry point", "status": "ok",
        "nodes": ["MyNodesRepeat"], "module": "my_nodes"}
    assert record["error"] is None
