"""A bounded safe YAML reader: caps on file size, nesting depth and alias-expanded size.

PyYAML shares an anchored node between its aliases, so a few lines of nested anchors stand for
~10^10 nodes that later code (validation, JSON dumps) expands; the size is counted on the node
graph before anything is constructed.

Example:
    >>> read_yaml("a: [1, 2]", source="x")
    {'a': [1, 2]}
"""

from __future__ import annotations

from typing import Any

import yaml

from compress.errors import InputError

__all__ = ["read_yaml", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 100
MAX_NODES = 100_000


class _TooDeep(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_DEPTH while composing (before recursing)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep()
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError):  # a date like 2024-13-45, an int of 5000 digits
            value = str(node.value)
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown!r} is not a valid {node.tag.rsplit(':', 1)[-1]}",
                node.start_mark) from None


def _expanded_size(root: yaml.Node, source: str) -> None:
    """Count nodes and levels as aliases expand them (memoised per node); refuse cycles, large
    totals and deep expansions (a chain of anchors, each an alias of the previous one, nests one
    level per anchor although each line is shallow)."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded levels)
    active: set[int] = set()

    def size(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InputError(f"{source}: a YAML alias refers to itself; remove the "
                             "self-referencing anchor")
        active.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        measured = [size(child) for child in children]
        total = 1 + sum(t for t, _ in measured)
        levels = 1 + max((d for _, d in measured), default=0)
        active.discard(key)
        sizes[key] = (total, levels)
        if total > MAX_NODES:
            raise InputError(f"{source}: the YAML expands to more than {MAX_NODES} nodes "
                             "through aliases; write the values out instead")
        if levels > MAX_DEPTH:
            raise InputError(f"{source}: the YAML is nested deeper than {MAX_DEPTH} levels once "
                             "its aliases are expanded")
        return sizes[key]

    size(root)


def read_yaml(text: str, *, source: str) -> Any:
    """Parse ``text`` as one YAML document within the caps; raise InputError in one sentence."""
    if len(text) > MAX_BYTES:
        raise InputError(f"{source}: the YAML is larger than {MAX_BYTES // 1024} KiB")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except _TooDeep:
        raise InputError(f"{source}: the YAML is nested deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = f" ({err.problem})" if isinstance(err, yaml.constructor.ConstructorError) else ""
        raise InputError(f"{source}: not valid YAML{where}{problem}; check indentation and "
                         "quoting") from None
    finally:
        loader.dispose()
