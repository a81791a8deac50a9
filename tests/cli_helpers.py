"""Helpers for tests of the ``lipbound`` command."""

from __future__ import annotations

from lipbound.cli import main


def cli_error(args: list[str], capsys) -> str:
    """Run ``lipbound ARGS`` in-process; assert exit status 2 and a one-line message on stderr
    without a traceback; return that line."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()
