"""The command line: run, validate, nodes, plugins, serve wiring, options and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import build_parser, main, parse_value, settings_from_args

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
PLUGINS = FIXTURES / "plugins"
API = FIXTURES / "workflows" / "arith_api.json"
EDITOR = FIXTURES / "workflows" / "arith_editor.json"
PNG = FIXTURES / "workflows" / "arith.png"


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the fixture folder's plugins: the CLI's behaviour, not the built-in library's.
    monkeypatch.setenv("LATENTGRAPH_LOAD_PLUGINS", "")
    monkeypatch.delenv("LATENTGRAPH_DISABLE_PLUGINS", raising=False)


def cli(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# ---- run ------------------------------------------------------------------------------------------


def test_run_api_workflow_writes_outputs_and_summary(tmp_path: Path) -> None:
    code, out, err = cli("run", API, "--out", tmp_path, "--plugins-dir", PLUGINS)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checked_2.txt", "sum_5.txt"]
    assert (tmp_path / "sum_5.txt").read_text() == "5\n"
    lines = out.splitlines()
    assert lines[0].startswith("done in ") and lines[0].endswith(": 7 node(s) executed, 0 cached")
    assert sorted(lines[1:]) == [f"  {tmp_path / 'checked_2.txt'}", f"  {tmp_path / 'sum_5.txt'}"]
    assert "[1/7] node 1 (IntConst)" in err and "[7/7] node 7 (SaveNumber)" in err
    assert "[##############################] 4/4" in err  # CountSteps' progress, driven by events


def test_run_quiet_has_no_progress(tmp_path: Path) -> None:
    code, _, err = cli("run", API, "--out", tmp_path, "--plugins-dir", PLUGINS, "--quiet")
    assert code == 0 and err == ""


def test_run_set_overrides_a_widget(tmp_path: Path) -> None:
    code, _, err = cli("run", API, "--out", tmp_path, "--plugins-dir", PLUGINS, "--set", "1.value=10",
                       "--set", "5.prefix=total")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checked_10.txt", "total_13.txt"]


def test_run_execution_error_exits_1(tmp_path: Path) -> None:
    code, _, err = cli("run", API, "--out", tmp_path, "--plugins-dir", PLUGINS, "--set", "1.value=-1")
    assert code == 1
    assert "error: node 6 (FailIfNegative) failed: RuntimeError: negative value -1" in err
    assert 'raise RuntimeError(f"negative value {self.value}")' in err  # the node's frame


def test_run_targets_runs_only_what_they_need(tmp_path: Path) -> None:
    code, out, err = cli("run", API, "--out", tmp_path, "--plugins-dir", PLUGINS, "--set", "1.value=-1",
                         "--targets", "5")
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["sum_2.txt"]
    assert ": 5 node(s) executed, 0 cached" in out


def test_run_invalid_workflow_exits_2_naming_the_node(tmp_path: Path) -> None:
    code, out, err = cli("run", API, "--out", tmp_path, "--plugins-dir", PLUGINS, "--set", "2.value=5000")
    assert code == 2 and out == ""
    assert "node 2 (IntConst)" in err and "5000" in err
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", [EDITOR, PNG], ids=["editor", "png"])
def test_run_editor_json_and_png(tmp_path: Path, source: Path) -> None:
    code, _, err = cli("run", source, "--out", tmp_path, "--plugins-dir", PLUGINS, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checked_2.txt", "sum_5.txt"]


@pytest.mark.parametrize(("item", "message"), [
    ("99.value=1", "--set '99.value=1': the workflow has no node '99' (node ids: 1, 2, 3, 4, 5, 6, 7)"),
    ("1.valu=1", "--set '1.valu=1': node 1 (IntConst) has no input 'valu' (inputs: value)"),
    ("value=1", "--set 'value=1': expected ID.INPUT=VALUE, e.g. --set 3.seed=42"),
    ("1.value", "--set '1.value': expected ID.INPUT=VALUE"),
])
def test_run_bad_set_exits_2(tmp_path: Path, item: str, message: str) -> None:
    code, _, err = cli("run", API, "--out", tmp_path, "--plugins-dir", PLUGINS, "--set", item)
    assert code == 2
    assert err.startswith(f"error: {message}")


@pytest.mark.parametrize(("text", "value"), [
    ("42", 42), ("-3", -3), ("1.5", 1.5), ("true", True), ("False", False), ("hello", "hello"),
    ('"7"', "7"), ("a photo of a cat", "a photo of a cat"), ("null", None),
])
def test_parse_value(text: str, value: Any) -> None:
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_run_missing_file_and_malformed_json(tmp_path: Path) -> None:
    code, _, err = cli("run", tmp_path / "nope.json", "--plugins-dir", PLUGINS)
    assert code == 2 and "does not exist; check the path" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": "IntConst",\n  "inputs": {"value": 1,}}}')
    code, _, err = cli("run", bad, "--plugins-dir", PLUGINS)
    assert code == 2
    assert f"error: {bad}: malformed JSON at line 2, column 25" in err


def test_run_editor_with_unknown_node_type_exits_2(tmp_path: Path) -> None:
    code, _, err = cli("run", EDITOR, "--out", tmp_path)  # the plugin folder is not loaded
    assert code == 2
    assert "unknown node types 'IntConst' (nodes 1, 2)" in err


def test_run_via_subprocess(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LATENTGRAPH_LOAD_PLUGINS": "", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "main.py", "run", str(PNG), "--out", str(tmp_path / "o"),
                           "--plugins-dir", str(PLUGINS), "--cache", "none", "--cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "7 node(s) executed" in proc.stdout
    assert (tmp_path / "o" / "sum_5.txt").read_text() == "5\n"


# ---- validate, nodes, plugins ---------------------------------------------------------------------


def test_validate_ok_and_invalid(tmp_path: Path) -> None:
    code, out, _ = cli("validate", API, "--plugins-dir", PLUGINS)
    assert (code, out) == (0, "ok: 7 node(s), outputs 5, 7\n")
    broken = json.loads(API.read_text())
    broken["3"]["inputs"].pop("b")
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    code, out, err = cli("validate", path, "--plugins-dir", PLUGINS)
    assert code == 2 and out == ""
    assert "node 3 (AddInts)" in err and "'b'" in err
    code, out, _ = cli("validate", path, "--json", "--plugins-dir", PLUGINS)
    report = json.loads(out)
    assert code == 2 and report["ok"] is False
    assert report["node_errors"]["3"]["class_type"] == "AddInts"
    assert report["node_errors"]["3"]["errors"][0]["extra_info"]["input_name"] == "b"


def test_nodes_json_is_object_info() -> None:
    code, out, _ = cli("nodes", "--json", "--plugins-dir", PLUGINS)
    info = json.loads(out)
    assert code == 0
    assert sorted(info) == ["AddInts", "CountSteps", "FailIfNegative", "IntConst", "SaveNumber", "Shout"]
    assert info["AddInts"]["python_module"] == "local:arith"
    assert info["AddInts"]["input"]["required"] == {"a": ["INT"], "b": ["INT"]}
    assert info["SaveNumber"]["output_node"] is True


def test_nodes_listing() -> None:
    code, out, _ = cli("nodes", "--plugins-dir", PLUGINS)
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "6 node type(s)"
    assert lines[0].split()[:3] == ["AddInts", "test/arith", "local:arith"]


def test_plugins_json_includes_failures(tmp_path: Path) -> None:
    (tmp_path / "zz_broken.py").write_text("import does_not_exist_anywhere\n")
    code, out, _ = cli("plugins", "--json", "--plugins-dir", PLUGINS, "--plugins-dir", tmp_path)
    records = json.loads(out)
    assert code == 0
    assert [(r["name"], r["status"]) for r in records] == [
        ("local:arith", "ok"), ("local:textpack", "ok"), ("local:zz_broken", "failed")]
    assert records[0]["version"] == "0.3.1" and records[0]["nodes"][0] == "IntConst"
    assert "ModuleNotFoundError: No module named 'does_not_exist_anywhere'" in records[2]["error"]
    code, out, _ = cli("plugins", "--plugins-dir", PLUGINS, "--plugins-dir", tmp_path)
    assert "local:zz_broken" in out and "failed" in out and "ModuleNotFoundError" in out


def test_failed_plugin_warns_on_other_commands(tmp_path: Path) -> None:
    (tmp_path / "zz_broken.py").write_text("raise RuntimeError('boom')\n")
    code, _, err = cli("nodes", "--plugins-dir", tmp_path)
    assert code == 0
    assert "warning: plugin 'local:zz_broken' failed to load: RuntimeError: boom" in err


def test_disable_plugin_flag() -> None:
    code, out, _ = cli("plugins", "--json", "--plugins-dir", PLUGINS, "--disable-plugin", "textpack")
    assert [(r["name"], r["status"]) for r in json.loads(out)] == [
        ("local:arith", "ok"), ("local:textpack", "disabled")]


@pytest.mark.parametrize("command", [["run", API, "--quiet"], ["validate", API], ["nodes"], ["plugins"]])
@pytest.mark.parametrize("before", [True, False], ids=["global", "after-subcommand"])
def test_plugins_dir_is_accepted_by_every_subcommand(tmp_path: Path, command: list[Any], before: bool) -> None:
    flags = ["--plugins-dir", PLUGINS, "--output-directory", tmp_path]
    argv = flags + command if before else command + flags
    code, out, err = cli(*argv)
    assert code == 0, err
    assert "error" not in err


def test_missing_plugins_dir_exits_2(tmp_path: Path) -> None:
    code, _, err = cli("nodes", "--plugins-dir", tmp_path / "missing")
    assert code == 2 and f"error: --plugins-dir '{tmp_path / 'missing'}': no such folder" in err


# ---- options and serve ----------------------------------------------------------------------------


def test_settings_from_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "--base-directory", str(tmp_path), "--models-dir", "/m", "--cpu", "--precision", "bf16",
        "--disable-plugin", "x", "serve", "--listen", "--port", "9000", "--token", "t", "--cache", "none",
        "--plugins-dir", "p1", "--user-directory", "/u"])
    s = settings_from_args(args)
    assert (s.listen, s.port, s.token, s.cache) == ("0.0.0.0", 9000, "t", "none")
    assert (s.device, s.precision) == ("cpu", "bf16")
    assert (s.models_dir, s.user_dir, s.output_dir) == (Path("/m"), Path("/u"), tmp_path / "output")
    assert (s.plugin_dirs, s.disabled_plugins) == ([Path("p1")], ["x"])
    defaults = settings_from_args(build_parser().parse_args([]))
    assert (defaults.listen, defaults.port, defaults.device, defaults.cache) == ("127.0.0.1", 8188, "auto", "lru:128")
    assert settings_from_args(build_parser().parse_args(["--listen", "10.0.0.2"])).listen == "10.0.0.2"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Calls to aiohttp's run_app (faked, so nothing listens); the app is built for real."""
    calls: list[dict[str, Any]] = []

    def run_app(app: Any, host: Any, port: int, **kwargs: Any) -> None:
        calls.append({"app": app, "host": host, "port": port})

    monkeypatch.setattr("aiohttp.web.run_app", run_app)
    monkeypatch.delenv("LATENTGRAPH_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    return calls


def test_serve_is_the_default_and_builds_the_app(served: list[dict[str, Any]], tmp_path: Path) -> None:
    from aiohttp import web

    from engine.server import STATE

    code, out, _ = cli("--port", "9123", "--cache", "ram:2", "--plugins-dir", PLUGINS)
    assert code == 0 and out == "latentgraph serving at http://127.0.0.1:9123\n"
    (call,) = served
    assert isinstance(call["app"], web.Application)
    assert (call["host"], call["port"]) == ("127.0.0.1", 9123)
    state = call["app"][STATE]
    assert state.settings.cache == "ram:2" and state.settings.output_dir == tmp_path / "output"
    assert "AddInts" in state.host.nodes


def test_serve_beyond_loopback_needs_a_token(served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.server import STATE

    code, _, err = cli("serve", "--listen")
    assert code == 2 and "error: refusing to listen on 0.0.0.0 without a token" in err
    assert served == []
    code, _, _ = cli("serve", "--listen", "--token", "secret")
    assert code == 0 and served[-1]["host"] == "0.0.0.0"
    monkeypatch.setenv("LATENTGRAPH_TOKEN", "from-env")
    code, _, _ = cli("serve", "--listen", "127.0.0.1,0.0.0.0", "--port", "8300")
    assert code == 0 and served[-1]["host"] == ["127.0.0.1", "0.0.0.0"]
    assert served[-1]["app"][STATE].settings.token == "from-env"


def test_usage_errors_exit_2_and_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--precision", "fp8", "nodes"]) == 2
    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out
