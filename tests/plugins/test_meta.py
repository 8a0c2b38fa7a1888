"""Meta-tests: every hookspec has a test, a docs/plugins.md section with its exact signature and version,
and a working example; a new hook without them fails here."""

from __future__ import annotations

import ast
import inspect
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import engine.testing
from engine import hookspecs
from engine.plugins import KNOWN_HOOKS, PluginHost

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"
HOOK_TEST_FILES = [ROOT / "tests" / "engine" / "test_plugins.py",
                   *sorted((ROOT / "tests" / "plugins").glob("test_*.py"))]


@dataclass(frozen=True)
class DocEntry:
    signature: str
    version: str | None
    example: str | None


def hookspecs_of(module: types.ModuleType) -> dict[str, Callable[..., Any]]:
    """The hook specifications a module declares (functions marked with @hookspec)."""
    return {name: fn for name, fn in vars(module).items()
            if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")}


def signature_text(name: str, fn: Callable[..., Any]) -> str:
    """`name(arg: Annotation, ...) -> Return`, annotations as written in the source."""
    sig = inspect.signature(fn)

    def show(annotation: Any) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    params = ", ".join(p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {show(p.annotation)}"
                       for p in sig.parameters.values())
    returns = "" if sig.return_annotation is inspect.Signature.empty else f" -> {show(sig.return_annotation)}"
    return f"{name}({params}){returns}"


def spec_version(fn: Callable[..., Any]) -> str | None:
    match = re.search(r"\.\. versionadded:: (\S+)", inspect.getdoc(fn) or "")
    return match.group(1) if match else None


def parse_docs(text: str) -> dict[str, DocEntry]:
    """The hook sections of docs/plugins.md: `### \\`signature\\``, "Added in version X.", a python example."""
    reference = text.split("\n## Hook reference\n", 1)[-1].split("\n## ", 1)[0]
    entries: dict[str, DocEntry] = {}
    for block in re.split(r"\n(?=### )", reference)[1:]:
        heading = re.match(r"### `((\w+)\(.*\)(?: -> .+)?)`\n", block)
        if heading is None:
            continue
        version = re.search(r"^Added in version (\S+?)\.$", block, re.M)
        example = re.search(r"```python\n(.*?)```", block, re.S)
        entries[heading.group(2)] = DocEntry(heading.group(1), version.group(1) if version else None,
                                             example.group(1) if example else None)
    return entries


def hook_tests(files: Iterable[Path]) -> set[str]:
    """Names of the test functions in the given files."""
    names: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text())
        names |= {node.name for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_")}
    return names


def problems(specs: dict[str, Callable[..., Any]], docs: dict[str, DocEntry], tests: set[str]) -> list[str]:
    """Everything a hook lacks: a test, a docs section, the exact signature, the version, an example."""
    found: list[str] = []
    for name, fn in sorted(specs.items()):
        expected = signature_text(name, fn)
        if not any(t == f"test_hook_{name}" or t.startswith(f"test_hook_{name}_") for t in tests):
            found.append(f"hook {name}: no test named test_hook_{name}")
        entry = docs.get(name)
        if entry is None:
            found.append(f"hook {name}: no section '### `{expected}`' in docs/plugins.md")
            continue
        if entry.signature != expected:
            found.append(f"hook {name}: docs/plugins.md says `{entry.signature}` but the hookspec is `{expected}`")
        version = spec_version(fn)
        if version is None:
            found.append(f"hook {name}: its docstring has no '.. versionadded:: X.Y'")
        if entry.version != version:
            found.append(f"hook {name}: docs/plugins.md says added in version {entry.version}, "
                         f"the hookspec says {version}")
        if entry.example is None:
            found.append(f"hook {name}: its docs section has no python example")
    for name in sorted(set(docs) - set(specs)):
        found.append(f"docs/plugins.md documents {name}, which is not a hook")
    return found


# ---- the real hooks -------------------------------------------------------------------------------


def test_every_hook_has_a_test_a_docs_section_with_its_exact_signature_and_version() -> None:
    specs = hookspecs_of(hookspecs)
    assert sorted(specs) == sorted(KNOWN_HOOKS)
    docs = parse_docs(DOCS.read_text())
    assert problems(specs, docs, hook_tests(HOOK_TEST_FILES)) == []
    assert docs["register_nodes"].signature == "register_nodes(register: Callable[..., Any]) -> None"
    assert docs["startup"] == DocEntry("startup(env: Environment) -> Any", "0.1", docs["startup"].example)


def test_docs_list_hooks_in_the_order_the_host_calls_them() -> None:
    assert list(parse_docs(DOCS.read_text())) == list(KNOWN_HOOKS)


def test_docs_state_the_versioning_rule_and_every_author_fixture() -> None:
    text = DOCS.read_text()
    assert "A hook's arguments are only ever **added**" in text
    assert "goes through a\n  deprecation release first" in text
    fixtures = [name for name, value in vars(engine.testing).items()
                if getattr(value, "_pytestfixturefunction", None) is not None or
                type(value).__name__ == "FixtureFunctionDefinition"]
    assert sorted(fixtures) == ["load_entry_point", "plugin_host", "register_plugin", "run_node", "run_workflow"]
    for name in fixtures:
        assert f"| `{name}" in text, f"fixture {name} is not in the fixtures table of docs/plugins.md"


# ---- the checker catches what it should -----------------------------------------------------------


def fake_hookspecs() -> types.ModuleType:
    """The real hooks plus a new one, `register_widgets`, that has neither docs nor a test."""
    module = types.ModuleType("fake_hookspecs")
    for name, fn in hookspecs_of(hookspecs).items():
        setattr(module, name, fn)

    def register_widgets(register: Callable[..., Any], kind: str) -> None:
        """Register editor widgets.

        .. versionadded:: 0.2
        """

    setattr(module, "register_widgets", hookspecs.hookspec(register_widgets))
    return module


def test_a_new_hook_without_docs_or_test_fails() -> None:
    found = problems(hookspecs_of(fake_hookspecs()), parse_docs(DOCS.read_text()), hook_tests(HOOK_TEST_FILES))
    assert found == [
        "hook register_widgets: no test named test_hook_register_widgets",
        "hook register_widgets: no section '### `register_widgets(register: Callable[..., Any], kind: str) -> None`' "
        "in docs/plugins.md",
    ]


def test_a_wrong_signature_version_or_missing_example_in_the_docs_fails() -> None:
    text = DOCS.read_text()
    edited = text.replace("### `startup(env: Environment) -> Any`", "### `startup(env: Environment, app: Any) -> Any`")
    start = edited.index("### `register_routes")
    section_end = edited.index("### `startup")
    edited = edited[:start] + edited[start:section_end].replace("Added in version 0.1.", "Added in version 0.3.") \
        .replace("```python", "```text") + edited[section_end:]
    found = problems(hookspecs_of(hookspecs), parse_docs(edited), hook_tests(HOOK_TEST_FILES))
    assert found == [
        "hook register_routes: docs/plugins.md says added in version 0.3, the hookspec says 0.1",
        "hook register_routes: its docs section has no python example",
        "hook startup: docs/plugins.md says `startup(env: Environment, app: Any) -> Any` but the hookspec is "
        "`startup(env: Environment) -> Any`",
    ]


def test_a_hook_test_in_tests_plugins_counts_too(tmp_path: Path) -> None:
    extra = tmp_path / "test_widgets.py"
    extra.write_text("def test_hook_register_widgets_orders():\n    pass\n")
    found = problems(hookspecs_of(fake_hookspecs()), parse_docs(DOCS.read_text()),
                     hook_tests([*HOOK_TEST_FILES, extra]))
    assert [p for p in found if "no test" in p] == []


# ---- every example in the hook reference works as a plugin ----------------------------------------


class Gaussian:
    """Exact denoiser of data N(0, 0.5^2)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return 0.25 * x / (0.25 + sigma.reshape(-1, 1, 1, 1) ** 2)


def check_types(host: PluginHost, tmp_path: Path) -> None:
    assert host.types.get("COLOR").color == "#ff8800"  # type: ignore[union-attr]


def check_nodes(host: PluginHost, tmp_path: Path) -> None:
    cls = host.nodes.get("Shout")
    assert cls is not None and cls(text="hey").run(None) == ("HEY",)  # type: ignore[arg-type]


def check_samplers(host: PluginHost, tmp_path: Path) -> None:
    x = torch.ones(1, 1, 2, 2) * 10.0
    out = host.samplers["euler_plain"](Gaussian(), x, torch.tensor([10.0, 5.0, 0.0]))
    # Euler from sigma 10 to 5: x * (1 - 5/10 * 100/100.25); then to 0: the denoised value
    x5 = 10.0 * (1 - 0.5 * 100 / 100.25)
    assert torch.allclose(out, torch.full_like(x, 0.25 * x5 / (0.25 + 25)))


def check_schedulers(host: PluginHost, tmp_path: Path) -> None:
    sampling = types.SimpleNamespace(sigma_min=torch.tensor(0.5), sigma_max=torch.tensor(2.0))
    assert host.schedulers["linear_sigma"](sampling, 4).tolist() == [2.0, 1.5, 1.0, 0.5, 0.0]


def check_model_loaders(host: PluginHost, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, str(tmp_path / "m.safetensors"))
    assert host.model_loaders["safetensors_state_dict"](str(tmp_path / "m.safetensors"))["w"].tolist() == [0, 1, 2]


def check_web_extensions(host: PluginHost, tmp_path: Path) -> None:
    (name,) = host.web_extensions
    assert host.web_extensions[name] == tmp_path / "web"


def check_routes(host: PluginHost, tmp_path: Path) -> None:
    (routes,) = host.routes.values()
    assert [(r.method, r.path) for r in routes] == [("GET", "/hello")]


def check_startup(host: PluginHost, tmp_path: Path) -> None:
    env = host.environment({"user_dir": str(tmp_path / "user")})
    host.startup(env)
    assert (tmp_path / "user" / "my_nodes").is_dir()
    assert env.services["my_nodes.cache_dir"] == tmp_path / "user" / "my_nodes"


CHECKS = {
    "register_types": check_types, "register_nodes": check_nodes, "register_samplers": check_samplers,
    "register_schedulers": check_schedulers, "register_model_loaders": check_model_loaders,
    "register_web_extensions": check_web_extensions, "register_routes": check_routes, "startup": check_startup,
}


@pytest.mark.parametrize("hook", KNOWN_HOOKS)
def test_hook_examples_in_the_docs_work_as_plugins(hook: str, tmp_path: Path) -> None:
    assert sorted(CHECKS) == sorted(KNOWN_HOOKS)
    example = parse_docs(DOCS.read_text())[hook].example
    assert example is not None
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"example_{hook}.py").write_text(example)
    (folder / "web").mkdir()  # the web extension example serves the folder beside its module
    (folder / "web" / "ext.js").write_text("export {};\n")
    host = PluginHost(entry_points=False, plugin_dirs=[folder]).load()
    (record,) = host.records
    assert (record.status, record.error, record.hooks) == ("ok", None, [hook])
    CHECKS[hook](host, tmp_path if hook != "register_web_extensions" else folder)
