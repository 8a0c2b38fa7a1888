"""Fixtures for the end-to-end workflow tests: a models folder with tiny checkpoints, input images."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_files(request: pytest.FixtureRequest) -> Path:
    from tests.nodes.tiny_models import tiny_model_files

    return tiny_model_files(Path(request.config.cache.mkdir("latentgraph")))


@pytest.fixture
def dirs(tmp_path: Path, tiny_files: Path) -> dict[str, Path]:
    from tests.nodes.tiny_models import install_models, write_input_images

    out = {name: tmp_path / name for name in ("models", "input", "output", "temp")}
    for folder in out.values():
        folder.mkdir()
    install_models(tiny_files, out["models"])
    write_input_images(out["input"])
    return out
