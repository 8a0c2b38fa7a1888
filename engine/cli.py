"""The command line: serve (default), run, validate, nodes, plugins, new-plugin.

`main(argv) -> exit code`: 0 success, 1 execution (or server) error, 2 invalid input (usage, workflow
file, validation). The parser is built by a function; nothing is parsed or loaded at import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from engine.config import Settings

__all__ = ["main", "build_parser", "parse_set", "CLIError"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
COMMANDS = ("serve", "run", "validate", "nodes", "plugins", "new-plugin")


class CLIError(Exception):
    """A user mistake on the command line; printed as `error: ...` with exit code 2."""


# ---- parser ---------------------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, sub: bool) -> None:
    # Subcommands repeat the global options with suppressed defaults, so an option given before the
    # subcommand is not reset by the subcommand's own default.
    d = (lambda value: argparse.SUPPRESS) if sub else (lambda value: value)
    group = parser.add_argument_group("plugins and folders")
    group.add_argument("--plugins-dir", action="append", metavar="DIR", default=d(None),
                       help="load plugins (*.py files and packages) from DIR; repeatable")
    group.add_argument("--disable-plugin", action="append", metavar="NAME", default=d(None),
                       help="do not load the plugin NAME; repeatable")
    group.add_argument("--base-directory", metavar="DIR", default=d(None),
                       help="base folder for models/, input/, output/, temp/ and user/ (default: working dir)")
    for flag, what in (("--models-dir", "model files"), ("--output-directory", "saved outputs"),
                       ("--input-directory", "input images"), ("--temp-directory", "previews"),
                       ("--user-directory", "user data")):
        group.add_argument(flag, metavar="DIR", default=d(None), help=f"folder for {what}")
    device = parser.add_argument_group("device")
    device.add_argument("--device", metavar="DEVICE", default=d(None), help="auto, cpu, cuda, cuda:N or mps")
    device.add_argument("--cpu", action="store_true", default=d(False), help="run on the CPU (= --device cpu)")
    device.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=d(None),
                        help="compute precision (default: auto)")


def _serve_options(parser: argparse.ArgumentParser, sub: bool) -> None:
    d = (lambda value: argparse.SUPPRESS) if sub else (lambda value: value)
    group = parser.add_argument_group("server")
    group.add_argument("--listen", nargs="?", const="0.0.0.0", metavar="ADDR", default=d(None),
                       help="address to bind (default 127.0.0.1; bare --listen means 0.0.0.0)")
    group.add_argument("--port", type=int, metavar="PORT", default=d(None), help="port (default 8188)")
    group.add_argument("--token", metavar="TOKEN", default=d(os.environ.get("LATENTGRAPH_TOKEN")),
                       help="API token clients must send; required when listening beyond loopback "
                            "(default: $LATENTGRAPH_TOKEN)")
    group.add_argument("--cache", metavar="POLICY", default=d(None),
                       help="result cache: none, lru:N or ram:GB (default lru:128)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: global options, serve options (serve is the default), subcommands."""
    parser = argparse.ArgumentParser(
        prog="latentgraph", description="A node-graph engine for SDXL latent diffusion (ComfyUI-compatible).")
    _common_options(parser, sub=False)
    _serve_options(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = subs.add_parser("serve", help="start the server and editor (the default)")
    _common_options(serve, sub=True)
    _serve_options(serve, sub=True)

    run = subs.add_parser("run", help="run a workflow (API JSON, editor JSON or PNG) once")
    run.add_argument("workflow", metavar="WORKFLOW", help="workflow file: API JSON, editor JSON or a PNG")
    run.add_argument("--out", metavar="DIR", help="write outputs into DIR (sets the output folder)")
    run.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE", dest="overrides",
                     help="override a widget value, e.g. --set 3.seed=42; repeatable")
    run.add_argument("--targets", metavar="IDS", help="comma-separated node ids to compute (default: all outputs)")
    run.add_argument("--cache", metavar="POLICY", default=argparse.SUPPRESS, help="none, lru:N or ram:GB")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _common_options(run, sub=True)

    validate = subs.add_parser("validate", help="check a workflow without running it")
    validate.add_argument("workflow", metavar="WORKFLOW", help="workflow file: API JSON, editor JSON or a PNG")
    validate.add_argument("--targets", metavar="IDS", help="comma-separated node ids to check")
    validate.add_argument("--json", action="store_true", help="print ComfyUI's {error, node_errors} as JSON")
    _common_options(validate, sub=True)

    nodes = subs.add_parser("nodes", help="list the node types plugins provide")
    nodes.add_argument("--json", action="store_true", help="print /object_info as JSON")
    _common_options(nodes, sub=True)

    plugins = subs.add_parser("plugins", help="list plugins and whether they loaded")
    plugins.add_argument("--json", action="store_true", help="print the plugin records as JSON")
    _common_options(plugins, sub=True)

    new_plugin = subs.add_parser("new-plugin", help="write a new plugin package (pyproject, a node, tests)")
    new_plugin.add_argument("name", metavar="NAME", help="distribution and folder name, e.g. my-nodes")
    new_plugin.add_argument("--dir", metavar="DIR", default=".", help="write DIR/NAME (default: the working dir)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; unset flags keep Settings' defaults."""
    values: dict[str, Any] = {}
    base = getattr(args, "base_directory", None)
    if base:
        values["base_dir"] = Path(base)
    for flag, name in (("models_dir", "models_dir"), ("output_directory", "output_dir"),
                       ("input_directory", "input_dir"), ("temp_directory", "temp_dir"),
                       ("user_directory", "user_dir"), ("out", "output_dir")):
        value = getattr(args, flag, None)
        if value:
            values[name] = Path(value)
    device = "cpu" if getattr(args, "cpu", False) else getattr(args, "device", None)
    for name, value in (("device", device), ("precision", getattr(args, "precision", None)),
                        ("listen", getattr(args, "listen", None)), ("port", getattr(args, "port", None)),
                        ("token", getattr(args, "token", None)), ("cache", getattr(args, "cache", None))):
        if value is not None:
            values[name] = value
    values["plugin_dirs"] = [Path(p) for p in getattr(args, "plugins_dir", None) or []]
    values["disabled_plugins"] = list(getattr(args, "disable_plugin", None) or [])
    return Settings(**values)


# ---- shared steps ---------------------------------------------------------------------------------


def _load_host(settings: Settings, err: IO[str], warn: bool = True) -> Any:
    from engine.plugins import PluginHost

    for folder in settings.plugin_dirs:
        if not folder.is_dir():
            raise CLIError(f"--plugins-dir {str(folder)!r}: no such folder")
    host = PluginHost(entry_points=settings.load_entry_points, plugin_dirs=settings.plugin_dirs,
                      disabled=settings.disabled_plugins).load()
    if warn:
        for record in host.failed():
            last = (record.error or "").strip().splitlines()[-1:] or ["unknown error"]
            print(f"warning: plugin {record.name!r} failed to load: {last[0]} "
                  f"(details: latentgraph plugins)", file=err)
    return host


def _load(path: str, host: Any) -> Any:
    from engine.workflow import WorkflowFormatError, load_workflow

    try:
        return load_workflow(Path(path), host.nodes)
    except WorkflowFormatError as exc:
        raise CLIError(str(exc)) from None


def parse_value(text: str) -> Any:
    """A --set value: JSON where it parses (42, 1.5, true, "x", null), else the raw string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(prompt: dict[str, Any], overrides: Sequence[str], registry: Any) -> None:
    """Apply `ID.INPUT=VALUE` overrides to an API prompt in place; unknown nodes or inputs are errors."""
    for item in overrides:
        key, eq, raw = item.partition("=")
        node_id, dot, input_name = key.strip().rpartition(".")
        if not eq or not dot or not node_id or not input_name:
            raise CLIError(f"--set {item!r}: expected ID.INPUT=VALUE, e.g. --set 3.seed=42")
        node = prompt.get(node_id)
        if node is None:
            known = ", ".join(sorted(prompt, key=lambda k: (len(k), k))) or "none"
            raise CLIError(f"--set {item!r}: the workflow has no node {node_id!r} (node ids: {known})")
        cls = registry.get(node["class_type"])
        if cls is not None and input_name not in cls.inputs():
            names = ", ".join(cls.inputs()) or "none"
            raise CLIError(f"--set {item!r}: node {node_id} ({node['class_type']}) has no input "
                           f"{input_name!r} (inputs: {names})")
        node.setdefault("inputs", {})[input_name] = parse_value(raw)


def _targets(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _print_node_errors(result: Any, err: IO[str]) -> None:
    error = result.error or {}
    message = error.get("message") or "some outputs failed validation; nothing was run"
    print(f"error: {message}", file=err)
    if error.get("details"):
        print(f"  {error['details']}", file=err)
    for node_id, entry in result.node_errors.items():
        for problem in entry.get("errors", []):
            details = f" ({problem['details']})" if problem.get("details") else ""
            print(f"  node {node_id} ({entry.get('class_type', '?')}): {problem.get('message', '')}{details}",
                  file=err)


class _Progress:
    """Plain-text progress on stderr driven by executor events: a line per node, a bar per sampler."""

    def __init__(self, err: IO[str], total: int, prompt: dict[str, Any], quiet: bool) -> None:
        self.err, self.total, self.prompt, self.quiet = err, total, prompt, quiet
        self.count = 0
        self.tty = bool(getattr(err, "isatty", lambda: False)())

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        data = event.data
        if event.type == "execution_cached" and data.get("nodes"):
            print(f"cached: {', '.join(data['nodes'])}", file=self.err)
        elif event.type == "executing" and data.get("node") is not None:
            self.count += 1
            node = str(data["node"])
            kind = self.prompt.get(node, {}).get("class_type", "?")
            print(f"[{self.count}/{self.total}] node {node} ({kind})", file=self.err)
        elif event.type == "progress":
            value, maximum = float(data.get("value", 0)), float(data.get("max", 1)) or 1.0
            width = 30
            filled = int(width * min(value / maximum, 1.0))
            line = f"  [{'#' * filled}{'.' * (width - filled)}] {value:g}/{maximum:g}"
            if self.tty:
                print("\r" + line, end="\n" if value >= maximum else "", file=self.err, flush=True)
            elif value >= maximum:
                print(line, file=self.err)


def _output_files(outputs: dict[str, dict[str, Any]], settings: Settings) -> list[Path]:
    folders = {"output": settings.output_dir, "temp": settings.temp_dir, "input": settings.input_dir}
    files: list[Path] = []
    for ui in outputs.values():
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    folder = folders.get(item.get("type", "output")) or settings.output_dir
                    assert folder is not None
                    files.append(Path(folder) / item.get("subfolder", "") / item["filename"])
    return files


# ---- commands -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Validate and run a workflow once, with progress on stderr and a summary on stdout."""
    from engine.executor import Executor
    from engine.validate import validate_prompt

    settings = settings_from_args(args)
    host = _load_host(settings, err)
    workflow = _load(args.workflow, host)
    prompt = workflow.api
    parse_set(prompt, args.overrides, host.nodes)
    targets = _targets(args.targets)
    env = host.environment(settings)
    assert settings.output_dir is not None
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    host.startup(env)
    validation = validate_prompt(prompt, host.nodes, env, targets)
    if not validation.ok or validation.node_errors:  # stricter than the server: no partial runs
        _print_node_errors(validation, err)
        return EXIT_INVALID
    progress = _Progress(err, len(validation.order), prompt, args.quiet)
    executor = Executor(host.nodes, env, cache=settings.cache)
    started = time.perf_counter()
    interrupt = threading.Event()
    try:
        result = executor.execute(prompt, prompt_id=str(uuid.uuid4()), targets=targets, listener=progress,
                                  extra_data={"extra_pnginfo": workflow.extra_pnginfo()}, interrupt=interrupt)
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    elapsed = time.perf_counter() - started
    if result.status != "success":
        error = result.error or {}
        where = f"node {error.get('node_id')} ({error.get('node_type')})" if error.get("node_id") else "the prompt"
        print(f"error: {where} failed: {error.get('exception_type', result.status)}: "
              f"{error.get('exception_message', '')}".rstrip(": "), file=err)
        if error.get("traceback"):
            trace = error["traceback"]
            text = "".join(trace) if isinstance(trace, list) else str(trace)
            print(f"Traceback (most recent call last):\n{text}".rstrip(), file=err)
        return EXIT_FAILED
    print(f"done in {elapsed:.2f}s: {len(result.executed)} node(s) executed, {len(result.cached)} cached",
          file=out)
    files = _output_files(result.outputs, settings)
    for path in files:
        print(f"  {path}", file=out)
    if not files:
        print(f"outputs: {json.dumps(result.outputs, default=str)}", file=out)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Validate a workflow; print its errors (or JSON) and exit 2 when it is invalid."""
    from engine.validate import validate_prompt

    settings = settings_from_args(args)
    host = _load_host(settings, err)
    workflow = _load(args.workflow, host)
    env = host.environment(settings)
    result = validate_prompt(workflow.api, host.nodes, env, _targets(args.targets))
    valid = result.ok and not result.node_errors
    if args.json:
        print(json.dumps({"ok": valid, "error": result.error, "node_errors": result.node_errors,
                          "outputs": result.outputs}, indent=2, default=str), file=out)
    elif valid:
        print(f"ok: {len(workflow.api)} node(s), outputs {', '.join(result.outputs)}", file=out)
    else:
        _print_node_errors(result, err)
    return EXIT_OK if valid else EXIT_INVALID


def cmd_nodes(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """List node types (or print /object_info as JSON)."""
    settings = settings_from_args(args)
    host = _load_host(settings, err)
    env = host.environment(settings)
    info = host.nodes.object_info(env)
    if args.json:
        print(json.dumps(info, indent=2, default=str), file=out)
        return EXIT_OK
    for name in sorted(info, key=lambda n: (info[n]["category"], n)):
        entry = info[name]
        print(f"{name:32} {entry['category']:24} {entry['python_module']:20} {entry['description']}", file=out)
    print(f"{len(info)} node type(s)", file=out)
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """List plugins with version, source, status and node count; errors for failed ones."""
    settings = settings_from_args(args)
    host = _load_host(settings, err, warn=False)
    if args.json:
        print(json.dumps([r.to_dict() for r in host.records], indent=2), file=out)
        return EXIT_OK
    for record in host.records:
        print(f"{record.name:28} {record.version or '-':10} {record.source:12} {record.status:9} "
              f"{len(record.nodes)} node(s)", file=out)
        if record.error:
            for line in record.error.rstrip().splitlines():
                print(f"    {line}", file=out)
    return EXIT_OK


def cmd_new_plugin(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Write a plugin package from the template (engine.scaffold) and say what to do next."""
    from engine.scaffold import ScaffoldError, plugin_names, write_plugin

    try:
        root = write_plugin(args.name, args.dir)
    except ScaffoldError as exc:
        raise CLIError(str(exc)) from None
    names = plugin_names(args.name)
    print(f"wrote plugin {names.dist!r} (package {names.package}, entry point {names.package!r}) to {root}", file=out)
    print(f"next: pip install -e {root} && latentgraph plugins; its tests: python -m pytest {root / 'tests'}",
          file=out)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """Start the HTTP/websocket server (blocks until stopped)."""
    settings = settings_from_args(args)
    from aiohttp import web

    from engine.server import ServerConfigError, create_app

    try:
        app = create_app(settings)
    except ServerConfigError as exc:
        raise CLIError(str(exc)) from None
    hosts = [h.strip() for h in settings.listen.split(",") if h.strip()] or ["127.0.0.1"]
    print(f"latentgraph serving at {', '.join(f'http://{h}:{settings.port}' for h in hosts)}", file=out)
    web.run_app(app, host=hosts if len(hosts) > 1 else hosts[0], port=settings.port, print=None)
    return EXIT_OK


HANDLERS = {"serve": cmd_serve, "run": cmd_run, "validate": cmd_validate, "nodes": cmd_nodes,
            "plugins": cmd_plugins, "new-plugin": cmd_new_plugin}


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), run the command, return its exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_INVALID
    handler = HANDLERS[args.command or "serve"]
    try:
        return handler(args, out, err)
    except CLIError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_INVALID
