"""Device and dtype choice."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.devices import DeviceError, cpu_has_fast_bf16, parse_dtype, pick_device, pick_dtype


def test_pick_device_auto_and_explicit():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert pick_device("auto").type == expected
    assert pick_device(None).type == expected
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


def test_pick_device_errors():
    with pytest.raises(DeviceError, match="not a torch device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            pick_device("cuda")


def test_cpu_bf16_follows_cpu_flags():
    assert cpu_has_fast_bf16(frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert cpu_has_fast_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert not cpu_has_fast_bf16(frozenset({"avx2", "avx512f"}))
    assert pick_dtype("cpu", "auto", flags=frozenset({"amx_bf16"})) == torch.bfloat16
    assert pick_dtype("cpu", "auto", flags=frozenset({"avx2"})) == torch.float32
    assert pick_dtype("cpu", None, flags=frozenset({"avx512_bf16"})) == torch.bfloat16


def test_this_machine_flags_are_read():
    flags = open("/proc/cpuinfo").read()
    assert cpu_has_fast_bf16() == ("amx_bf16" in flags or "avx512_bf16" in flags)


def test_forced_precision_wins():
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16), ("BF16", torch.bfloat16)]:
        assert pick_dtype("cpu", name, flags=frozenset()) == dtype
    assert pick_dtype("mps", "auto") == torch.float16
    assert parse_dtype(torch.float16) == torch.float16
    with pytest.raises(DeviceError, match="not one of auto, fp32, bf16, fp16"):
        pick_dtype("cpu", "fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_prefers_bf16():
    assert pick_dtype("cuda") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
