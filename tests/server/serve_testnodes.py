"""Run a real server with the test nodes: `python -m tests.server.serve_testnodes BASE_DIR`.

Listens on a free loopback port and prints `READY <url>` once it accepts connections.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine.server import serve
from tests.server.conftest import make_host, make_settings


def main() -> None:
    settings = make_settings(Path(sys.argv[1]))
    settings.port = 0
    serve(settings, make_host(), on_ready=lambda urls: print(f"READY {urls[0]}", flush=True))


if __name__ == "__main__":
    main()
