"""The Node base class: a pydantic model whose fields are its inputs and whose `run` computes outputs.

A node author writes::

    class EmptyLatentImage(Node):
        \"\"\"An all-zero latent batch to start text-to-image from.\"\"\"

        category = "latent"
        outputs = (Output(LATENT),)

        width: int = Input(1024, ge=16, le=16384, step=8)
        height: int = Input(1024, ge=16, le=16384, step=8)
        batch_size: int = Input(1, ge=1, le=4096)

        def run(self, ctx: NodeContext) -> tuple[Any, ...]:
            return ({"samples": torch.zeros(self.batch_size, 4, self.height // 8, self.width // 8)},)

Link inputs are annotated with `In[SOCKET_TYPE]`; widget inputs with a Python type (int, float, str,
bool) and `Input(...)` for the default, range, step, choices and editor options.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from engine.types import BOOLEAN, COMBO, FLOAT, INT, STRING, SocketType

__all__ = [
    "Node",
    "In",
    "Input",
    "Output",
    "InputSpec",
    "NodeResult",
    "NodeContext",
    "Environment",
    "Problem",
    "Interrupted",
    "NodeDefinitionError",
    "Choices",
]

Choices = Union[Sequence[str], Callable[["Environment"], Sequence[str]]]


class NodeDefinitionError(TypeError):
    """A node class is declared wrongly (bad output list, unknown input annotation, ...)."""


class Interrupted(Exception):
    """Raised inside a node when the user interrupted the prompt."""


@dataclass(frozen=True)
class _LinkMarker:
    socket: SocketType


class _InFactory:
    """`In[MODEL]` annotates a link input of socket type MODEL (any Python value travels)."""

    def __getitem__(self, socket: SocketType) -> Any:
        if not isinstance(socket, SocketType):
            raise NodeDefinitionError(f"In[...] takes a SocketType, got {socket!r}")
        return Annotated[Any, _LinkMarker(socket)]


In = _InFactory()


@dataclass(frozen=True, eq=False)
class _ChoicesMarker:
    choices: Any


_UI_KEYS = (
    "step", "round", "multiline", "placeholder", "control_after_generate", "force_input", "display",
    "image_upload", "label_on", "label_off", "dynamic_prompts", "socketless", "hidden_choices",
)


def Input(  # noqa: N802 - reads like a type in class bodies, as pydantic's Field does
    default: Any = ...,
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    step: float | None = None,
    round: float | None = None,  # noqa: A002 - ComfyUI's option name
    choices: Choices | None = None,
    multiline: bool = False,
    placeholder: str | None = None,
    tooltip: str | None = None,
    control_after_generate: bool = False,
    force_input: bool = False,
    optional: bool = False,
    display: str | None = None,
    image_upload: bool = False,
    label_on: str | None = None,
    label_off: str | None = None,
    dynamic_prompts: bool | None = None,
) -> Any:
    """Declare a widget input: its default, numeric range, step, choices and editor options."""
    ui: dict[str, Any] = {
        "step": step, "round": round, "multiline": multiline or None, "placeholder": placeholder,
        "control_after_generate": control_after_generate or None, "force_input": force_input or None,
        "display": display, "image_upload": image_upload or None, "label_on": label_on,
        "label_off": label_off, "dynamic_prompts": dynamic_prompts,
    }
    extra: dict[str, Any] = {"x-ui": {k: v for k, v in ui.items() if v is not None}}
    if optional:
        extra["x-optional"] = True
    info: FieldInfo = Field(default, ge=ge, le=le, gt=gt, lt=lt, description=tooltip,
                            json_schema_extra=cast(Any, extra))
    # Choices may be computed (a folder listing), so they live beside the schema, not inside it.
    if choices is not None:
        info.metadata.append(_ChoicesMarker(choices))
    return info


@dataclass(frozen=True)
class Output:
    """A declared output socket: its type, display name, tooltip, and whether it yields a list."""

    type: SocketType
    name: str | None = None
    tooltip: str | None = None
    is_list: bool = False

    @property
    def label(self) -> str:
        return self.name or self.type.name


@dataclass(frozen=True)
class InputSpec:
    """One input of a node class as the engine sees it (derived once from the pydantic field)."""

    name: str
    type: str  # socket type name ("INT", "MODEL", "COMBO", ...)
    link_only: bool  # a socket with no widget: must be linked
    required: bool  # must be given (link, or widget without a default)
    optional: bool  # listed under "optional" in object_info
    default: Any
    has_default: bool
    ge: float | None
    le: float | None
    gt: float | None
    lt: float | None
    choices: Choices | None
    ui: Mapping[str, Any]
    tooltip: str | None
    python_type: builtins.type | None

    def choice_list(self, env: Environment | None) -> list[str] | None:
        if self.choices is None:
            return None
        if callable(self.choices):
            return list(self.choices(env if env is not None else Environment()))
        return list(self.choices)


@dataclass
class NodeResult:
    """What `run` may return instead of a bare tuple: output values plus UI data (e.g. images)."""

    values: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class Problem:
    """A validation problem a node reports about its own inputs (e.g. a missing model file)."""

    input: str | None
    message: str
    value: Any = None


@dataclass
class Environment:
    """What nodes reach besides their inputs: settings (folders, device) and shared services.

    Services are created lazily by whoever needs them (`env.service("models", factory)`), so the
    engine never knows what a model cache is.
    """

    settings: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def service(self, name: str, factory: Callable[[Environment], Any]) -> Any:
        with self._lock:
            if name not in self.services:
                self.services[name] = factory(self)
            return self.services[name]


class NodeContext:
    """Handed to `Node.run`: where the node runs, progress reporting and the interrupt check."""

    def __init__(
        self,
        *,
        node_id: str,
        node_type: str,
        prompt_id: str = "",
        prompt: Mapping[str, Any] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        env: Environment | None = None,
        on_progress: Callable[[str, float, float, Any], None] | None = None,
        is_interrupted: Callable[[], bool] | None = None,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.prompt_id = prompt_id
        self.prompt = prompt or {}
        self.extra_data = extra_data or {}
        self.env = env if env is not None else Environment()
        self._on_progress = on_progress
        self._is_interrupted = is_interrupted
        self._emit = emit

    @property
    def interrupted(self) -> bool:
        return bool(self._is_interrupted and self._is_interrupted())

    def check_interrupted(self) -> None:
        """Raise `Interrupted` if the user asked to stop; call between units of long work."""
        if self.interrupted:
            raise Interrupted(f"node {self.node_id} ({self.node_type}) interrupted")

    def progress(self, value: float, maximum: float, preview: Any = None) -> None:
        """Report progress `value/maximum` (and an optional preview, e.g. a PIL image); checks interrupt."""
        if self._on_progress is not None:
            self._on_progress(self.node_id, value, maximum, preview)
        self.check_interrupted()

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send a custom event to listeners (the server forwards it to the prompt's client)."""
        if self._emit is not None:
            self._emit(event, data)


def _widget_socket(annotation: Any, has_choices: bool) -> SocketType | None:
    if has_choices:
        return COMBO
    if annotation is bool:
        return BOOLEAN
    if annotation is int:
        return INT
    if annotation is float:
        return FLOAT
    if annotation is str:
        return STRING
    return None


def _link_marker(info: FieldInfo) -> _LinkMarker | None:
    for m in info.metadata:
        if isinstance(m, _LinkMarker):
            return m
    ann = info.annotation
    if get_origin(ann) is Annotated:
        for m in get_args(ann)[1:]:
            if isinstance(m, _LinkMarker):
                return m
    return None


class Node(BaseModel):
    """Base class of every node. Fields are inputs; `outputs` declares the output sockets."""

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True, extra="forbid")

    # Identity and presentation; subclasses override.
    node_type: ClassVar[str] = ""  # defaults to the class name
    display_name: ClassVar[str] = ""
    category: ClassVar[str] = "misc"
    description: ClassVar[str] = ""  # defaults to the docstring's first line
    version: ClassVar[str] = "1.0.0"
    outputs: ClassVar[tuple[Output, ...]] = ()
    output_node: ClassVar[bool] = False
    not_idempotent: ClassVar[bool] = False  # never cached: re-runs every prompt
    deprecated: ClassVar[bool] = False
    experimental: ClassVar[bool] = False

    __inputs__: ClassVar[dict[str, InputSpec]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "node_type" not in cls.__dict__ or not cls.__dict__["node_type"]:
            cls.node_type = cls.__name__
        if not cls.__dict__.get("display_name"):
            cls.display_name = cls.node_type
        if not cls.__dict__.get("description"):
            doc = (cls.__doc__ or "").strip()
            cls.description = doc.splitlines()[0] if doc else ""
        for out in cls.outputs:
            if not isinstance(out, Output):
                raise NodeDefinitionError(f"node {cls.node_type}: outputs must be Output(...) entries, got {out!r}")
        cls.__inputs__ = {name: cls._input_spec(name, info) for name, info in cls.model_fields.items()}

    @classmethod
    def _input_spec(cls, name: str, info: FieldInfo) -> InputSpec:
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        ui = dict(extra.get("x-ui", {}))  # type: ignore[arg-type]
        choices = next((m.choices for m in info.metadata if isinstance(m, _ChoicesMarker)), None)
        ge = le = gt = lt = None
        for m in info.metadata:
            ge = getattr(m, "ge", ge)
            le = getattr(m, "le", le)
            gt = getattr(m, "gt", gt)
            lt = getattr(m, "lt", lt)
        has_default = not info.is_required()
        default = info.get_default(call_default_factory=True) if has_default else None
        link = _link_marker(info)
        if link is not None:
            return InputSpec(
                name=name, type=link.socket.name, link_only=True, required=not has_default,
                optional=has_default, default=default, has_default=has_default, ge=None, le=None,
                gt=None, lt=None, choices=None, ui=ui, tooltip=info.description, python_type=None,
            )
        socket = _widget_socket(info.annotation, choices is not None)
        if socket is None:
            raise NodeDefinitionError(
                f"node {cls.node_type} input {name!r}: annotate links as In[TYPE] and widgets as "
                f"int, float, str or bool (got {info.annotation!r})"
            )
        return InputSpec(
            name=name, type=socket.name, link_only=False, required=not has_default,
            optional=bool(extra.get("x-optional")), default=default, has_default=has_default,
            ge=ge, le=le, gt=gt, lt=lt, choices=choices, ui=ui, tooltip=info.description,
            python_type=socket.python_type,
        )

    # ---- hooks a node may override -------------------------------------------------------------

    @classmethod
    def fingerprint(cls, inputs: Mapping[str, Any], env: Environment) -> Hashable | None:
        """A value that changes when something the inputs do not show changes (a file's hash).

        Called before execution with the constant (widget) inputs only; links are absent.
        """
        return None

    @classmethod
    def check_inputs(cls, inputs: Mapping[str, Any], env: Environment) -> Iterable[Problem]:
        """Extra validation over constant inputs (e.g. the named file exists); yields Problems."""
        return ()

    def run(self, ctx: NodeContext) -> tuple[Any, ...] | NodeResult | None:
        raise NotImplementedError(f"node {self.node_type} does not implement run(ctx)")

    # ---- schema ------------------------------------------------------------------------------

    @classmethod
    def inputs(cls) -> dict[str, InputSpec]:
        return cls.__inputs__

    @classmethod
    def object_info(cls, env: Environment | None = None, plugin: str | None = None) -> dict[str, Any]:
        """This class in ComfyUI's `/object_info` shape."""
        required: dict[str, Any] = {}
        optional: dict[str, Any] = {}
        for spec in cls.__inputs__.values():
            opts: dict[str, Any] = {}
            if not spec.link_only:
                if spec.has_default:
                    opts["default"] = spec.default
                for key, value in (("min", spec.ge), ("max", spec.le)):
                    if value is not None:
                        opts[key] = value
                for key, value in spec.ui.items():
                    opts[key if key != "force_input" else "forceInput"] = value
            if spec.tooltip:
                opts["tooltip"] = spec.tooltip
            choices = spec.choice_list(env)
            entry: list[Any] = [choices if choices is not None else spec.type]
            if opts:
                entry.append(opts)
            (optional if spec.optional else required)[spec.name] = entry
        info: dict[str, Any] = {
            "input": {"required": required, "optional": optional},
            "input_order": {"required": list(required), "optional": list(optional)},
            "output": [o.type.name for o in cls.outputs],
            "output_is_list": [o.is_list for o in cls.outputs],
            "output_name": [o.label for o in cls.outputs],
            "output_tooltips": [o.tooltip for o in cls.outputs],
            "name": cls.node_type,
            "display_name": cls.display_name,
            "description": cls.description,
            "python_module": plugin or cls.__module__,
            "category": cls.category,
            "output_node": cls.output_node,
            "deprecated": cls.deprecated,
            "experimental": cls.experimental,
            "api_node": False,
            "version": cls.version,
        }
        return info

    @classmethod
    def json_schema(cls, plugin: str | None = None) -> dict[str, Any]:
        """JSON Schema of the inputs, with `x-node` metadata and `x-socket` on every input."""
        schema = cls.model_json_schema()
        props = schema.setdefault("properties", {})
        for name, spec in cls.__inputs__.items():
            prop = props.setdefault(name, {})
            prop["x-socket"] = spec.type
            prop["x-link-only"] = spec.link_only
            if isinstance(spec.choices, Sequence) and not isinstance(spec.choices, str):
                prop["enum"] = list(spec.choices)
        schema["x-node"] = {
            "type": cls.node_type, "version": cls.version, "plugin": plugin, "category": cls.category,
            "display_name": cls.display_name, "output_node": cls.output_node,
            "outputs": [{"type": o.type.name, "name": o.label, "is_list": o.is_list} for o in cls.outputs],
        }
        return schema
