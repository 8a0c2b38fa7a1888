"""Fixtures for node tests: folders in tmp_path, the core plugin loaded, and a prompt runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nodes.plugin
from engine import Environment
from engine.executor import ExecutionResult, Executor
from engine.plugins import PluginHost


@pytest.fixture(scope="session")
def host() -> PluginHost:
    return PluginHost(entry_points=False, plugins=[("core", nodes.plugin)]).load()


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for key, sub in (("models_dir", "models"), ("input_dir", "input"), ("output_dir", "output"), ("temp_dir", "temp")):
        out[key] = tmp_path / sub
        out[key].mkdir()
    return out


@pytest.fixture
def env(host: PluginHost, folders: dict[str, Path]) -> Environment:
    settings = {k: str(v) for k, v in folders.items()}
    settings.update(device="cpu", precision="fp32", preview="none")
    return host.environment(settings)


@pytest.fixture
def executor(host: PluginHost, env: Environment) -> Executor:
    return Executor(host.nodes, env, cache="lru:64")


@pytest.fixture
def run(executor: Executor) -> Callable[..., ExecutionResult]:
    counter = iter(range(1_000_000))

    def run_prompt(prompt: dict[str, Any], **kwargs: Any) -> ExecutionResult:
        result = executor.execute(prompt, prompt_id=f"p{next(counter)}", **kwargs)
        assert result.status == "success", (result.error, result.node_errors)
        return result

    return run_prompt


@pytest.fixture
def call(env: Environment) -> Callable[..., Any]:
    """Run one node class directly: call(Cls, input=value, ...) -> its output tuple (or NodeResult)."""
    from engine import NodeContext

    def call_node(cls: type, _ctx: dict[str, Any] | None = None, **inputs: Any) -> Any:
        ctx = NodeContext(node_id="1", node_type=cls.node_type, env=env, **(_ctx or {}))
        return cls.model_construct(**inputs).run(ctx)

    return call_node


@pytest.fixture(scope="session")
def tiny_files(request: pytest.FixtureRequest) -> Path:
    from tests.nodes.tiny_models import tiny_model_files

    return tiny_model_files(Path(request.config.cache.mkdir("latentgraph")))


@pytest.fixture
def models(tiny_files: Path, folders: dict[str, Path]) -> Path:
    """The test's models folder, holding the tiny checkpoints and LoRA."""
    from tests.nodes.tiny_models import install_models, write_input_images

    install_models(tiny_files, folders["models_dir"])
    write_input_images(folders["input_dir"])
    return folders["models_dir"]
