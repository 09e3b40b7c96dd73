"""A small generic registry: config names map to behaviour.

:class:`SourceRegistry` is the registry of a recipe section's ``source`` key (model sources,
datasets): each entry declares the section keys it ``accepts`` and those it ``required``, and
:meth:`SourceRegistry.check_spec` holds a section to that, so every source is checked the same
way, once, by one function.

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

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from compress.errors import InputError

__all__ = ["Registry", "SourceRegistry", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"``: the closest of ``choices`` to a misspelt ``name``, or ``""``.

    Example:
        >>> did_you_mean("epohcs", ["epochs", "lr"]), did_you_mean("zzz", ["epochs"])
        (" (did you mean 'epochs'?)", '')
    """
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
                f"unknown {self.kind} {name!r}{did_you_mean(str(name), self.names())}; "
                f"available: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


class SourceRegistry(Registry[T]):
    """The sources a recipe ``section`` names in its ``source`` key.

    Entries are classes with ``accepts`` and ``required`` (sets of section keys) and, optionally,
    ``check(spec)`` for what only the source can tell (a name it does not know). ``common`` are
    keys every source accepts; ``label`` names a source in messages (default: ``kind``).
    """

    def __init__(self, kind: str, *, section: str, common: frozenset[str] = frozenset(),
                 label: str | None = None) -> None:
        super().__init__(kind)
        self.section = section
        self.common = common
        self.label = label or kind

    def check_spec(self, spec: Any) -> None:
        """Reject keys of ``spec`` its source does not use, or misses; then the source's check.

        ``spec`` is a pydantic section whose ``source`` names the entry; a key counts as set
        when the user set it to something other than its default.

        Example:
            >>> from pydantic import BaseModel
            >>> class Shape(BaseModel):
            ...     source: str
            ...     side: int | None = None
            ...     radius: int | None = None
            >>> shapes = SourceRegistry("shape source", section="shape",
            ...                         common=frozenset({"source"}))
            >>> @shapes.register("square")
            ... class Square:
            ...     accepts = frozenset({"side"})
            ...     required = frozenset({"side"})
            >>> shapes.check_spec(Shape(source="square", side=2))
            >>> shapes.check_spec(Shape(source="square", side=2, radius=1))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            compress.errors.InputError: shape.radius is not used by shape source 'square'; ...
            >>> shapes.check_spec(Shape(source="square"))
            Traceback (most recent call last):
            compress.errors.InputError: shape source 'square' needs shape.side
        """
        entry: Any = self.get(spec.source)
        accepts = entry.accepts | self.common
        fields = type(spec).model_fields
        set_keys = {k for k in spec.model_fields_set
                    if getattr(spec, k) != fields[k].get_default(call_default_factory=True)}
        unused = sorted(set_keys - accepts)
        if unused:
            raise InputError(f"{self.section}.{unused[0]} is not used by {self.label} "
                             f"{spec.source!r}; it accepts: {', '.join(sorted(accepts))}")
        missing = sorted(k for k in entry.required if getattr(spec, k) is None)
        if missing:
            raise InputError(f"{self.label} {spec.source!r} needs {self.section}.{missing[0]}")
        if hasattr(entry, "check"):
            entry().check(spec)
