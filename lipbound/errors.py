"""The package's exception types (a leaf module: it imports nothing of lipbound).

Every error that lipbound raises because of what a caller passed in (an argument, a file, a model
of an unsupported kind) is a :class:`LipboundError`. The bad-input errors also subclass the builtin
that Python code expects (:class:`ValueError`, :class:`TypeError`), so ``except ValueError`` keeps
working. The ``lipbound`` command reports a :class:`LipboundError` as a one-line message with exit
status 2; any other exception is a bug in lipbound and shows its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError", "LipboundError"]


class LipboundError(Exception):
    """Base class of every exception that lipbound raises on purpose."""


class InputError(LipboundError, ValueError):
    """An argument, option or file has a value that lipbound cannot use; the message names it and
    says what was expected."""


class InputTypeError(LipboundError, TypeError):
    """An argument has a type that lipbound cannot use; the message names it and says what was
    expected."""
