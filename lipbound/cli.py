"""The ``lipbound`` command.

Each subcommand lives in its own module, imported only when that subcommand runs (so ``lipbound
--help`` stays fast). A command module provides ``add_arguments(parser)`` and ``run(args) -> int``;
register it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import LipboundError

__all__ = ["COMMANDS", "main"]

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bounds": ("lipbound.bounds.cli",
               "forward and inverse Lipschitz bounds (Table 3) of a spec or model, block by block"),
    "check": ("lipbound.check",
              "per-block float32/float64 round-trip and log-det errors of a model"),
    "diagnose": ("lipbound.diagnostics.cli",
                 "round-trip statistics, failing blocks, Jacobian spectrum, invertibility attack"),
    "verify": ("lipbound.precision.verify_cli",
               "rounding-versus-instability decomposition of a model against the oracle"),
    "sweep": ("lipbound.precision.sweep_cli",
              "the paper's Figure 1 depth sweep: PNG, CSV, table (and --json)"),
    "example": ("lipbound.example",
                "write a small model and matching inputs (NAME.pt, NAME.npz) to try the others on"),
    "train": ("lipbound.training.cli", "train a preset or config with the stability monitor"),
}

#: What the command reports as a one-line error (exit 2); anything else is a bug in lipbound and
#: shows its traceback.
_HANDLED = (LipboundError, FileNotFoundError)


def _top_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {name:<10} {help_}" for name, (_, help_)
                                       in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="lipbound",
        description="Numerical invertibility of invertible neural networks "
                    "(Behrmann et al., AISTATS 2021). Run 'lipbound COMMAND --help' for details.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), metavar="COMMAND",
                        help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("--version", action="version", version=f"lipbound {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    split = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    args = top.parse_args(argv[: split + 1])
    if args.command is None:
        top.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    parser = argparse.ArgumentParser(prog=f"lipbound {args.command}",
                                     description=COMMANDS[args.command][1])
    module.add_arguments(parser)
    sub_args = parser.parse_args(argv[split + 1:])
    try:
        return int(module.run(sub_args))
    except _HANDLED as err:
        print(f"lipbound {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of stdout went away (``lipbound bounds ... | head``): stop quietly, and keep
        # Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
