"""The model cache: each model file is loaded once per (file, modification time, dtype, device) and
reused across prompts, under a memory budget with least-recently-used eviction.

Plain Python (no engine import). Node code reaches one shared instance through
`ctx.env.service("models", lambda env: ModelCache(...))`.

LoRA and other patches never touch cached entries: loaders hand out the cached base, and patching
nodes wrap it in a patched clone that applies its patches only while it is used (see
`nodes/models.py`), so the weights stored here stay unpatched for every other prompt.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ModelCache", "CacheStats", "model_key", "object_nbytes", "default_budget_bytes"]


def model_key(path: str | os.PathLike[str], dtype: Any, device: Any, *extra: Hashable) -> tuple[Hashable, ...]:
    """The identity of a loaded model: file, its modification time and size, dtype, device, extras.

    A file replaced on disk gets a new key, so the next prompt loads the new weights.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    return (real, st.st_mtime_ns, st.st_size, str(dtype), str(device), *extra)


def object_nbytes(obj: Any, _seen: set[Any] | None = None) -> int:
    """Bytes of tensor storage reachable from `obj` (modules, tensors, containers, attributes).

    Tensors sharing one storage are counted once.
    """
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = ("storage", storage.data_ptr())
        if key in seen and key[1] != 0:
            return 0
        seen.add(key)  # type: ignore[arg-type]
        return storage.nbytes()
    if isinstance(obj, torch.nn.Module):
        total = 0
        for t in list(obj.parameters()) + list(obj.buffers()):
            total += object_nbytes(t, seen)
        return total
    if isinstance(obj, dict):
        return sum(object_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(object_nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(object_nbytes(v, seen) for v in vars(obj).values())
    return 0


def default_budget_bytes(fraction: float = 0.5) -> int:
    """Half of the machine's physical memory (the CPU holds the weights on CPU-only machines)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return int(total * fraction)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: list[Hashable] = field(default_factory=list)


@dataclass
class _Entry:
    value: Any
    nbytes: int


class ModelCache:
    """Loaded models by key, bounded by `budget_bytes`, evicting the least recently used first.

    A model larger than the whole budget is still returned (and kept until the next load needs the
    room), so one big checkpoint always works. Loads of the same key from several threads wait for
    one another instead of loading twice.
    """

    def __init__(self, budget_bytes: int | None = None, size_of: Callable[[Any], int] = object_nbytes) -> None:
        self.budget_bytes = default_budget_bytes() if budget_bytes is None else int(budget_bytes)
        self.size_of = size_of
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def get(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        """The cached value for `key`, or `loader()`'s result, stored and returned."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry.value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:  # another thread may have loaded it while we waited
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.stats.hits += 1
                    return entry.value
            value = loader()
            nbytes = self.size_of(value)
            with self._lock:
                self.stats.misses += 1
                self.stats.loads.append(key)
                self._make_room(nbytes)
                self._entries[key] = _Entry(value, nbytes)
                self._key_locks.pop(key, None)
            return value

    def _make_room(self, nbytes: int) -> None:
        while self._entries and self.used_bytes + nbytes > self.budget_bytes:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def evict(self, key: Hashable) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        """Drop every model (ComfyUI's `/free` with unload_models)."""
        with self._lock:
            self._entries.clear()
