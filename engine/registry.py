"""The node registry: which node classes a plugin host knows, who registered them, their schema."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from engine.node import Environment, Node
from engine.types import BUILTIN_TYPES, TypeRegistry

__all__ = ["NodeRegistry", "NodeConflictError", "NodeRegistrationError", "UnknownNodeError"]


class NodeRegistrationError(TypeError):
    """Something that is not a usable node class was registered."""


class NodeConflictError(ValueError):
    """Two different classes claim the same node type."""


class UnknownNodeError(KeyError):
    """A node type was looked up that no plugin registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NodeRegistry:
    """Node classes by node type, the plugin that registered each, and the socket types for links."""

    def __init__(self, types: TypeRegistry | None = None) -> None:
        self.types = types if types is not None else TypeRegistry(BUILTIN_TYPES)
        self._classes: dict[str, type[Node]] = {}
        self._owner: dict[str, str] = {}

    def register(self, cls: Any, plugin: str = "core") -> type[Node]:
        """Add a node class; the same class again from the same plugin is a no-op."""
        if not isinstance(cls, type) or not issubclass(cls, Node) or cls is Node:
            raise NodeRegistrationError(
                f"plugin {plugin!r} registered {cls!r}, which is not a Node subclass; "
                f"register classes that derive from engine.Node"
            )
        if cls.run is Node.run:
            raise NodeRegistrationError(
                f"plugin {plugin!r}: node class {cls.__qualname__} ({cls.node_type}) does not define "
                f"run(self, ctx); add one that returns its outputs"
            )
        name = cls.node_type
        existing = self._classes.get(name)
        if existing is not None:
            if existing is cls and self._owner[name] == plugin:
                return cls
            raise NodeConflictError(
                f"node type {name!r} from plugin {plugin!r} ({cls.__module__}.{cls.__qualname__}) "
                f"conflicts with the one registered by plugin {self._owner[name]!r} "
                f"({existing.__module__}.{existing.__qualname__}); set a distinct node_type on one of them"
            )
        self._classes[name] = cls
        self._owner[name] = plugin
        return cls

    def get(self, name: str) -> type[Node] | None:
        """The class registered as `name`, or None."""
        return self._classes.get(name)

    def __getitem__(self, name: str) -> type[Node]:
        cls = self._classes.get(name)
        if cls is None:
            hint = self.close_matches(name)
            did_you_mean = f"; did you mean {', '.join(repr(m) for m in hint)}?" if hint else ""
            raise UnknownNodeError(f"unknown node type {name!r}{did_you_mean}")
        return cls

    def owner(self, name: str) -> str | None:
        """The plugin that registered `name`, or None."""
        return self._owner.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def names(self) -> list[str]:
        """Registered node types, in registration order."""
        return list(self._classes)

    def classes(self) -> list[type[Node]]:
        """Registered node classes, in registration order."""
        return list(self._classes.values())

    def by_plugin(self, plugin: str) -> list[str]:
        """The node types one plugin registered."""
        return [name for name, owner in self._owner.items() if owner == plugin]

    def close_matches(self, name: str, n: int = 5) -> list[str]:
        """Registered node types that look like `name` (for 'did you mean' hints)."""
        if not isinstance(name, str):
            return []
        folded = {k.lower(): k for k in self._classes}
        matches = difflib.get_close_matches(name.lower(), list(folded), n=n, cutoff=0.6)
        return [folded[m] for m in matches]

    def object_info(self, env: Environment | None = None) -> dict[str, dict[str, Any]]:
        """ComfyUI's `/object_info`: every class's entry, keyed by node type."""
        return {name: cls.object_info(env, self._owner[name]) for name, cls in self._classes.items()}

    def json_schema(self) -> dict[str, dict[str, Any]]:
        """JSON Schema of every class's inputs, keyed by node type."""
        return {name: cls.json_schema(self._owner[name]) for name, cls in self._classes.items()}
