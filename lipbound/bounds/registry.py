"""Rules keyed by type, shared by the block rules (:mod:`.blocks`) and the layer rules
(:mod:`.layers`): a type without a rule of its own inherits the rule of its nearest registered base
class, and an unknown type gets a ``TypeError`` that says how to register one."""

from __future__ import annotations

from typing import Generic, TypeVar

from ..errors import InputTypeError

__all__ = ["TypeRegistry"]

R = TypeVar("R")


class TypeRegistry(Generic[R]):
    """Rules of class ``rule_type`` keyed by the type of the object they bound.

    Args:
        rule_type: the class every registered rule must be an instance of.
        what: what is looked up, for messages (``"bound rule for block type"``).
        how: how to register one, for messages (a call to show the user).
    """

    def __init__(self, rule_type: type[R], what: str, how: str) -> None:
        self.rule_type, self.what, self.how = rule_type, what, how
        self._rules: dict[type, R] = {}

    def register(self, key: type, rule: R) -> None:
        """Register ``rule`` for ``key`` and its subclasses without a rule of their own."""
        if not isinstance(key, type):
            raise InputTypeError(f"the type to register must be a class, got {key!r}")
        if not isinstance(rule, self.rule_type):
            raise InputTypeError(f"rule must be a {self.rule_type.__name__}, got "
                            f"{type(rule).__name__}")
        self._rules[key] = rule

    def lookup(self, obj: object) -> R:
        """The rule of ``obj``'s type or of its nearest registered base class."""
        for cls in type(obj).__mro__:
            if cls in self._rules:
                return self._rules[cls]
        raise InputTypeError(f"no {self.what} {type(obj).__name__}; register one with {self.how}")
