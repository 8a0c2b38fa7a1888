import os
import threading
import time
from pathlib import Path

import pytest
import torch

from nodes.diffusion.model_cache import ModelCache, model_key, object_nbytes
from nodes.diffusion.preview import LatentPreviewer, latent_to_rgb


def test_latent_to_rgb_uses_the_family_factors() -> None:
    latent = torch.zeros(2, 4, 3, 5)
    latent[0, 0] = 1.0  # channel 0 only: rgb = row 0 + bias
    rgb = latent_to_rgb(latent, "sdxl")
    assert rgb.shape == (3, 5, 3)
    expected = (torch.tensor([0.3651, 0.4232, 0.4341]) + torch.tensor([0.1084, -0.0175, -0.0011]) + 1) / 2
    assert torch.allclose(rgb[1, 2], expected, atol=1e-6)
    sd1 = latent_to_rgb(latent, "sd1")
    assert torch.allclose(sd1[0, 0], (torch.tensor([0.3512, 0.2297, 0.3227]) + 1) / 2, atol=1e-6)
    assert float(latent_to_rgb(torch.full((4, 2, 2), 50.0)).max()) == 1.0  # clamped
    with pytest.raises(KeyError, match="no latent preview factors"):
        latent_to_rgb(latent, "flux")
    with pytest.raises(ValueError, match="expects 4 latent channels"):
        latent_to_rgb(torch.zeros(16, 2, 2))


def test_previewer_limits_the_size_to_512() -> None:
    image = LatentPreviewer("sdxl")(torch.randn(1, 4, 128, 64))
    assert image.size == (64, 128) and image.mode == "RGB"
    big = LatentPreviewer("sdxl")(torch.randn(1, 4, 100, 1024))
    assert big.size == (512, 50)


def test_model_key_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"12345")
    key = model_key(path, torch.float32, "cpu")
    assert key == model_key(path, torch.float32, "cpu")
    assert key != model_key(path, torch.bfloat16, "cpu")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert key != model_key(path, torch.float32, "cpu")


def test_object_nbytes_counts_shared_storage_once() -> None:
    lin = torch.nn.Linear(10, 10)  # 110 floats
    assert object_nbytes(lin) == 440
    t = torch.zeros(100)
    assert object_nbytes({"a": t, "b": t[:10], "c": [lin]}) == 400 + 440


def test_cache_loads_once_and_evicts_least_recently_used() -> None:
    loads = []

    def loader(name: str, n: int):
        def load():
            loads.append(name)
            return torch.zeros(n)  # 4n bytes
        return load

    cache = ModelCache(budget_bytes=1000)
    a = cache.get("a", loader("a", 100))
    assert cache.get("a", loader("a", 100)) is a and loads == ["a"]
    cache.get("b", loader("b", 100))
    cache.get("a", loader("a", 100))  # a is now the most recent
    cache.get("c", loader("c", 100))  # 1200 bytes > 1000: evict b, the least recently used
    assert cache.keys() == ["a", "c"] and cache.stats.evictions == 1
    assert cache.used_bytes == 800
    cache.get("huge", loader("huge", 1000))  # larger than the budget: still served, alone
    assert cache.keys() == ["huge"]
    assert cache.stats.hits == 2 and cache.stats.misses == 4
    cache.clear()
    assert len(cache) == 0


def test_concurrent_gets_load_once() -> None:
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.05)
        return torch.zeros(1)

    cache = ModelCache(budget_bytes=1 << 20)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(r is results[0] for r in results)
