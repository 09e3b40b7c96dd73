"""A small generic registry: config names map to behaviour.

Example:
    >>> from compress.registry import Registry
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side):
    ...     return side * side
    >>> shapes.get("square")(3)
    9
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from compress.errors import InputError

__all__ = ["Registry", "check_entry_fields"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (model sources, datasets, criteria, schedules)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate name is a programming error."""

        def decorator(obj: T) -> T:
            assert name not in self._entries, f"{self.kind} {name!r} registered twice"
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry called ``name`` or raise :class:`InputError` listing the available ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise InputError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def check_entry_fields(spec: Any, *, section: str, kind: str, accepts: frozenset[str],
                       required: frozenset[str]) -> None:
    """Reject keys of a recipe section that its registered entry does not use, or misses.

    ``spec`` is a pydantic section whose ``source`` names the entry; a key counts as set when
    the user set it to something other than its default.
    """
    fields = type(spec).model_fields
    set_keys = {k for k in spec.model_fields_set
                if getattr(spec, k) != fields[k].get_default(call_default_factory=True)}
    unused = sorted(set_keys - accepts)
    if unused:
        raise InputError(f"{section}.{unused[0]} is not used by {kind} {spec.source!r}; "
                         f"it accepts: {', '.join(sorted(accepts))}")
    missing = sorted(k for k in required if getattr(spec, k) is None)
    if missing:
        raise InputError(f"{kind} {spec.source!r} needs {section}.{missing[0]}")
