"""The one reader of the JSON files compress reads back: bounded, and one sentence when bad.

A run folder's ``status.json``, ``recipe.json`` and steps' ``state.json``, a ``model.json``
manifest and a ``report.json`` may come from anyone (a tampered artifact, a foreign folder, a
broken disk). Whatever they hold, :func:`read_json_object` returns a JSON object or raises
:class:`~compress.errors.InputError` with one sentence naming the file; it never hangs on or
exhausts memory for a hostile file:

* at most ``max_bytes`` are read (a regular file only: a FIFO would block the reader);
* text must be UTF-8; nesting deeper than ``max_depth`` and integers longer than
  :data:`MAX_INT_DIGITS` digits are refused (Python's own limits raise ``RecursionError`` and,
  past 4,300 digits, ``ValueError`` deep inside the parser);
* the top level must be an object.

What the object holds is the caller's to check (a pydantic model of the report or manifest).

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "status.json"
    >>> _ = path.write_text('{"state": "done"}')
    >>> read_json_object(path)
    {'state': 'done'}
    >>> _ = path.write_text("[1, 2]")
    >>> read_json_object(path, label="the run file ", hint="pass --overwrite")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    compress.errors.InputError: the run file '...' holds a JSON list, not an object; pass ...
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from compress.errors import InputError

_Model = TypeVar("_Model", bound=BaseModel)

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_INT_DIGITS", "read_json_object", "parse_json_object",
           "json_depth", "validate_json"]

MAX_BYTES = 64 * 2**20  # a manifest lists layer widths: megabytes even for an LLM
MAX_DEPTH = 128  # reports nest about 6 levels; a stored recipe at most the YAML loader's 100
MAX_INT_DIGITS = 64  # every count compress writes fits in 20 digits


class _Refused(Exception):
    """A problem found while parsing; becomes the caller's InputError."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"holds an integer of {len(text.lstrip('-')):,} digits (at most "
                       f"{MAX_INT_DIGITS} are read)")
    return int(text)


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion.

    Example:
        >>> json_depth(3), json_depth([]), json_depth({"a": [1, {"b": []}]})
        (0, 1, 4)
    """
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1)
                         for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _too_deep(max_depth: int) -> str:
    return f"nests lists and objects more than {max_depth} levels deep, the most read"


def parse_json_object(data: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object in ``data``; a problem raises ``ValueError`` saying what is wrong, in
    words that follow the file's name ("is not JSON (...)", "holds a JSON list, ...").

    Example:
        >>> parse_json_object(b'{"a": 1}')
        {'a': 1}
        >>> parse_json_object(b"[" * 10 + b"]" * 10, max_depth=5)
        Traceback (most recent call last):
        ValueError: nests lists and objects more than 5 levels deep, the most read
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"is not UTF-8 text (byte {err.start})") from None
    try:
        body = json.loads(text, parse_int=_bounded_int)
    except _Refused as err:
        raise ValueError(str(err)) from None
    except RecursionError:
        raise ValueError(_too_deep(max_depth)) from None
    except ValueError as err:  # JSONDecodeError, or a float Python cannot hold
        raise ValueError(f"is not JSON ({str(err).splitlines()[0]})") from None
    if json_depth(body) > max_depth:
        raise ValueError(_too_deep(max_depth))
    if not isinstance(body, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
            type(body), "number")
        raise ValueError(f"holds a JSON {kind}, not an object")
    return body


def read_json_object(path: Path, *, label: str = "", hint: str = "", max_bytes: int = MAX_BYTES,
                     max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object in the file ``path``, bounded; else an InputError: ``{label}'{path}'
    {problem}; {hint}`` (``label`` names the kind of file, ``hint`` says what to do)."""
    try:
        return parse_json_object(_read_bounded(Path(path), max_bytes), max_depth=max_depth)
    except ValueError as err:
        raise InputError(f"{label}{str(path)!r} {err}" + (f"; {hint}" if hint else "")) from None


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes``; else a ValueError."""
    too_large = f"is larger than {max_bytes:,} bytes, the most read"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is a folder" if stat.S_ISDIR(info.st_mode)
                             else "is not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(too_large)
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ValueError("does not exist") from None
    except OSError as err:
        raise ValueError(f"cannot be read ({err.strerror or err})") from None
    if len(data) > max_bytes:  # it grew after stat()
        raise ValueError(too_large)
    return data


def _printable(text: str) -> str:
    # A key may hold a newline or other control characters: escape them, the message is one line.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


# pydantic's words for a type error name Python types ("instance of Speedup"); say JSON's.
_PLAIN = {"model_type": "should be a JSON object", "dict_type": "should be a JSON object",
          "model_attributes_type": "should be a JSON object", "list_type": "should be a JSON list",
          "float_type": "should be a number", "float_parsing": "should be a number",
          "int_type": "should be a whole number", "int_parsing": "should be a whole number",
          "string_type": "should be a string", "bool_type": "should be true or false",
          "missing": "is missing", "extra_forbidden": "is not a known key"}


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit
        return "a number too long to show"
    return _printable(text if len(text) <= 80 else text[:77] + "...")


def validate_json(model: type[_Model], body: Any, where: str) -> _Model:
    """``body`` checked against the pydantic ``model``; the first problem is an InputError
    naming the field path: ``{where}: 'a.b.0' {what is wrong} (got ...)``.

    Example:
        >>> class Point(BaseModel):
        ...     x: float
        >>> validate_json(Point, {"x": 1}, "p.json").x
        1.0
        >>> validate_json(Point, {"x": "far"}, "'p.json'")
        Traceback (most recent call last):
        compress.errors.InputError: 'p.json': 'x' should be a number (got 'far')
    """
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(_printable(str(p)) for p in first["loc"]) or "(top level)"
        msg = _PLAIN.get(first["type"]) or first["msg"].removeprefix("Value error, ")
        msg = msg.removeprefix("Input ")
        msg = msg[:1].lower() + msg[1:]
        got = "" if first["type"] == "missing" else f" (got {_shown(first['input'])})"
        raise InputError(f"{where}: {loc!r} {msg}{got}") from None
