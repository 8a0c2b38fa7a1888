"""`main.py new-plugin NAME`: write a plugin distribution that installs and whose own tests pass.

The package it writes has a pyproject with the `latentgraph` entry point, a package with one
example node and its hook, a README, and `tests/test_plugin.py` using the fixtures of
`engine.testing`. The templates are strings in this module with `{{marker}}` placeholders (not
`str.format`, so the code in them keeps its own braces).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ScaffoldError", "PluginNames", "plugin_names", "render_plugin", "write_plugin"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
# Names a plugin package must not take: they would shadow latentgraph's own packages.
_RESERVED = {"engine", "nodes", "main", "latentgraph", "tests", "web"}


class ScaffoldError(ValueError):
    """The plugin cannot be written: a bad name, or a folder that already holds files."""


@dataclass(frozen=True)
class PluginNames:
    """The names derived from the one the user typed: `my-nodes` -> my_nodes, MyNodes."""

    dist: str  # distribution (pip) name and folder: "my-nodes"
    package: str  # import name, also the entry point name: "my_nodes"
    title: str  # CamelCase prefix of the example node type: "MyNodes"


def plugin_names(name: str) -> PluginNames:
    """Derive the distribution, package and class-prefix names, or raise ScaffoldError saying why not."""
    if not _NAME.match(name):
        raise ScaffoldError(
            f"plugin name {name!r} must start with a letter and hold only letters, digits, '-', '_' or '.', "
            f"e.g. my-nodes")
    package = re.sub(r"[-.]+", "_", name).lower()
    if keyword.iskeyword(package) or package in _RESERVED:
        raise ScaffoldError(f"plugin name {name!r} gives the package name {package!r}, which is reserved; "
                            f"choose another, e.g. {package}_nodes")
    title = "".join(part[:1].upper() + part[1:] for part in re.split(r"[-._]+", name) if part)
    return PluginNames(dist=name, package=package, title=title)


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{{dist}}"
version = "0.1.0"
description = "A latentgraph plugin."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["latentgraph>={{engine_version}}"]

[project.optional-dependencies]
test = ["pytest>=8"]

# latentgraph finds the plugin through this entry point: name = module with the hook implementations.
[project.entry-points.latentgraph]
{{package}} = "{{package}}"

[tool.setuptools.packages.find]
include = ["{{package}}*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# {{dist}}

A latentgraph plugin. It adds the node `{{title}}Repeat` (category
`{{package}}`): a text repeated a number of times.

    pip install -e .            # into latentgraph's environment; then restart latentgraph
    latentgraph plugins         # lists `{{package}}` with its node
    python -m pytest            # runs tests/test_plugin.py with latentgraph's fixtures

Write more nodes in `{{package}}/nodes.py` and register them in `{{package}}/__init__.py`. How to write
nodes, socket types, samplers, schedulers and web extensions: latentgraph's `docs/plugins.md`.
"""

INIT = '''\
"""{{dist}}: a latentgraph plugin (entry point `{{package}}` in the group `latentgraph`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import hookimpl

__all__ = ["__version__", "register_nodes"]

__version__ = "0.1.0"


@hookimpl
def register_nodes(register: Callable[..., Any]) -> None:
    from {{package}}.nodes import NODES

    for cls in NODES:
        register(cls)
'''

NODES = '''\
"""The nodes of {{dist}}."""

from __future__ import annotations

from engine import STRING, Input, Node, NodeContext, NodeResult, Output

__all__ = ["{{title}}Repeat", "NODES"]


class {{title}}Repeat(Node):
    """Repeat a text a number of times, joined by a separator."""

    category = "{{package}}"
    outputs = (Output(STRING, "text"),)
    output_node = True  # shows its text in the editor, so a workflow can end here

    text: str = Input("hello", tooltip="what to repeat")
    times: int = Input(2, ge=1, le=100)
    separator: str = Input(" ")

    def run(self, ctx: NodeContext) -> NodeResult:
        text = self.separator.join([self.text] * self.times)
        return NodeResult((text,), ui={"text": [text]})


NODES = ({{title}}Repeat,)
'''

TEST = '''\
"""Tests of {{dist}}, with the fixtures latentgraph installs for pytest (`engine.testing`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import {{package}}
from {{package}}.nodes import {{title}}Repeat


def test_plugin_registers_its_node(register_plugin):
    record = register_plugin({{package}}, name="{{package}}")
    assert (record.status, record.nodes) == ("ok", ["{{title}}Repeat"])


def test_node_runs(run_node):
    result = run_node({{title}}Repeat, text="ab", times=3, separator="-")
    assert result.values == ("ab-ab-ab",)
    assert result.ui == {"text": ["ab-ab-ab"]}


def test_node_rejects_out_of_range_inputs(run_node):
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        run_node({{title}}Repeat, text="ab", times=0)


def test_workflow_runs(register_plugin, run_workflow):
    register_plugin({{package}}, name="{{package}}")
    prompt = {"1": {"class_type": "{{title}}Repeat", "inputs": {"text": "hi", "times": 2, "separator": " "}}}
    assert run_workflow(prompt) == {"1": {"text": ["hi hi"]}}


def test_entry_point_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["latentgraph"] == {"{{package}}": "{{package}}"}
'''


def render_plugin(names: PluginNames, engine_version: str = "0.1") -> dict[str, str]:
    """The plugin's files: relative path -> text."""
    values = {"dist": names.dist, "package": names.package, "title": names.title, "engine_version": engine_version}

    def fill(template: str) -> str:
        return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)

    return {
        "pyproject.toml": fill(PYPROJECT),
        "README.md": fill(README),
        f"{names.package}/__init__.py": fill(INIT),
        f"{names.package}/nodes.py": fill(NODES),
        "tests/test_plugin.py": fill(TEST),
    }


def write_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the plugin `name` into `directory/name`; returns that folder. Never overwrites files."""
    names = plugin_names(name)
    root = Path(directory) / names.dist
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ScaffoldError(f"{str(root)!r} already exists and is not empty; choose another name or --dir")
    for relative, text in render_plugin(names).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
