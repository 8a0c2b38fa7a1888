"""latentgraph's command line: `python main.py [serve|run|validate|nodes|plugins] ...`."""

from __future__ import annotations

import sys

from engine.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
