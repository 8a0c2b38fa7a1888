"""latentgraph's command line: `python main.py [serve|run|validate|nodes|plugins|new-plugin|train-demo] ...`.

Everything but `train-demo` is the engine's CLI (`engine/cli.py`); `train-demo` trains the embedded
demo model (`nodes/diffusion/demo_train.py`, docs/demo_model.md), which belongs to the node library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

from engine.cli import main as engine_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run one command; `train-demo` goes to the demo trainer, everything else to the engine's CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train-demo"]:
        from nodes.diffusion.demo_train import main as train_demo

        return int(train_demo(args[1:]) or 0)
    return engine_main(args, stdout=stdout, stderr=stderr)


if __name__ == "__main__":
    sys.exit(main())
