"""Merkle cache keys for node results, and the policies that bound how many results are kept.

A node's key hashes its type, version, constant inputs, fingerprint and the keys of the upstream
outputs it reads, so equal keys mean equal results: an unchanged subgraph is never recomputed,
an edit invalidates only the edited node and its descendants, and identical subgraphs share work.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "CacheEntry",
    "CachePolicy",
    "CachePolicyError",
    "NoCache",
    "LRUCache",
    "RAMCache",
    "parse_cache_policy",
    "cache_key",
    "ordered_key",
    "estimate_bytes",
]

_GIB = 1024**3
_WALK_LIMIT = 100_000  # objects visited per estimate; bounds the time spent on odd object graphs


class CachePolicyError(ValueError):
    """A cache policy string that cannot be understood."""


@dataclass(frozen=True)
class CacheEntry:
    """A node's cached result: its output values and the UI data it returned (if any)."""

    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


def cache_key(
    node_type: str,
    version: str,
    constants: Mapping[str, Any],
    fingerprint: Hashable | None,
    upstream: Iterable[tuple[str, bytes, int]],
) -> bytes:
    """The Merkle key of one node: a 128-bit BLAKE2b digest of everything its result depends on.

    `upstream` holds (input name, upstream node's key, output index) for every linked input, so a
    key is computed from its parents' keys in constant time per link (one linear pass per graph).
    """
    return ordered_key((node_type, version), sorted(constants.items()), fingerprint, sorted(upstream))


def ordered_key(identity: tuple[str, str], constants: Any, fingerprint: Any, upstream: Any) -> bytes:
    """`cache_key` for callers whose constants and links already come in a fixed order (the executor's).

    The executor's inputs are in each class's declared input order, so sorting them is wasted work.
    """
    text = repr((identity, constants, fingerprint, upstream)).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(text, digest_size=16).digest()


def estimate_bytes(value: Any) -> int:
    """Bytes held by tensors, arrays, buffers and strings inside `value` (shared objects once).

    Walks tuples, lists, sets, dicts and objects' attributes iteratively; anything exposing an
    integer `nbytes` (torch tensors, numpy arrays) counts that; PIL images count width x height x bands.
    """
    total = 0
    seen: set[int] = set()
    stack = [value]
    visited = 0
    while stack and visited < _WALK_LIMIT:
        obj = stack.pop()
        if obj is None or isinstance(obj, (bool, int, float, complex, type, ModuleType)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        visited += 1
        if isinstance(obj, (bytes, bytearray)):
            total += len(obj)
        elif isinstance(obj, str):
            total += len(obj)
        elif isinstance(obj, memoryview):
            total += obj.nbytes
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            nbytes = getattr(obj, "nbytes", None)
            if isinstance(nbytes, int):
                total += nbytes
            elif callable(getattr(obj, "getbands", None)) and isinstance(getattr(obj, "size", None), tuple):
                width, height = obj.size
                total += width * height * len(obj.getbands())
            else:
                attrs = getattr(obj, "__dict__", None)
                if isinstance(attrs, dict):
                    stack.extend(attrs.values())
                for slot in getattr(type(obj), "__slots__", ()):
                    stack.append(getattr(obj, slot, None))
    return total


class CachePolicy(ABC):
    """Where node results live between prompts, and how many are kept. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.evictions = 0  # results dropped to respect the bound, since creation

    @abstractmethod
    def get(self, key: bytes) -> CacheEntry | None:
        """The entry for `key` (marking it recently used), or None."""

    @abstractmethod
    def put(self, key: bytes, entry: CacheEntry) -> None:
        """Store a result, evicting others as the policy requires."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every result."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def describe(self) -> str:
        """The policy as its command-line string (e.g. "lru:128")."""


class NoCache(CachePolicy):
    """Keeps nothing between prompts (results live only while their prompt runs)."""

    def get(self, key: bytes) -> CacheEntry | None:
        return None

    def put(self, key: bytes, entry: CacheEntry) -> None:
        return None

    def clear(self) -> None:
        return None

    def __len__(self) -> int:
        return 0

    def __contains__(self, key: object) -> bool:
        return False

    def describe(self) -> str:
        return "none"


class LRUCache(CachePolicy):
    """Keeps the `max_entries` most recently used results."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        if max_entries < 0:
            raise CachePolicyError(f"lru cache size must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()

    def get(self, key: bytes) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, entry: CacheEntry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def describe(self) -> str:
        return f"lru:{self.max_entries}"


class RAMCache(CachePolicy):
    """Keeps results while their estimated size (see `estimate_bytes`) totals at most `max_bytes`.

    The least recently used go first; a result larger than the whole budget is not kept at all.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        if max_bytes < 0:
            raise CachePolicyError(f"ram cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.rejected = 0  # results too large to keep at all
        self._entries: OrderedDict[bytes, tuple[CacheEntry, int]] = OrderedDict()

    def get(self, key: bytes) -> CacheEntry | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                return None
            self._entries.move_to_end(key)
            return item[0]

    def put(self, key: bytes, entry: CacheEntry) -> None:
        size = estimate_bytes(entry.outputs)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes_used -= old[1]
            if size > self.max_bytes:
                self.rejected += 1
                return
            self._entries[key] = (entry, size)
            self.bytes_used += size
            while self.bytes_used > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes_used -= dropped
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def describe(self) -> str:
        return f"ram:{self.max_bytes / _GIB:g}"


def parse_cache_policy(spec: str | CachePolicy) -> CachePolicy:
    """Build a policy from "none", "lru:N" (keep N results) or "ram:GB" (keep up to GB GiB)."""
    if isinstance(spec, CachePolicy):
        return spec
    if not isinstance(spec, str):
        raise CachePolicyError(f"cache policy must be a string such as 'lru:128', got {spec!r}")
    text = spec.strip().lower()
    kind, _, arg = text.partition(":")
    usage = "use 'none', 'lru:N' (keep the N latest results, e.g. lru:128) or 'ram:GB' (e.g. ram:8)"
    if kind == "none" and not arg:
        return NoCache()
    if kind == "lru":
        try:
            count = int(arg)
        except ValueError:
            raise CachePolicyError(
                f"cache policy {spec!r}: N must be a whole number of results >= 0; {usage}") from None
        if count < 0:
            raise CachePolicyError(f"cache policy {spec!r}: N must be >= 0; {usage}")
        return LRUCache(count)
    if kind == "ram":
        try:
            gib = float(arg)
        except ValueError:
            raise CachePolicyError(f"cache policy {spec!r}: GB must be a number of gibibytes > 0; {usage}") from None
        if not gib > 0 or gib == float("inf"):
            raise CachePolicyError(f"cache policy {spec!r}: GB must be a finite number > 0; {usage}")
        return RAMCache(int(gib * _GIB))
    raise CachePolicyError(f"unknown cache policy {spec!r}; {usage}")
