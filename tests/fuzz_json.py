"""Hypothesis strategies for the JSON files compress reads back (reports, manifests).

* :data:`json_values`: any JSON document, small, with the edges a parser meets (huge and
  negative integers, NaN, empty containers, odd keys);
* :func:`mutated`: a valid document with one to three changes: a value swapped for another
  type, a key dropped, a value wrapped in deep nesting, an edge value;
* :func:`as_text`: a document as file bytes, sometimes truncated or with a byte flipped.

Every fuzz test runs under :data:`FUZZ` (deterministic, no example database, bounded) so it
takes seconds in ``make test``.

Example:
    >>> from hypothesis import given
    >>> @FUZZ
    ... @given(mutated({"a": [1, 2], "b": {"c": 3}}))
    ... def check(doc):
    ...     assert doc is not None
    >>> check()
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = ["FUZZ", "json_values", "mutated", "as_text"]

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_edges = st.sampled_from([0, -1, 1, 2**63, -(2**63), 10**30, 1e308, -1e-308, float("nan"),
                          float("inf"), "", " ", "\n", "NaN", "0", "1.5", "true", [], {},
                          [[]], {"": None}]).map(copy.deepcopy)  # fresh: mutations edit them
leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(), st.text(max_size=12), _edges)
json_values = st.recursive(
    leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                    st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=16)


def _slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key or index) in ``doc``, the document itself excluded."""
    stack = [doc]
    while stack:
        node = stack.pop()
        items = (node.items() if isinstance(node, dict)
                 else enumerate(node) if isinstance(node, list) else ())
        for key, value in items:
            yield node, key
            stack.append(value)


def _nested(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"x": value}
    return value


@st.composite
def _mutate(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        slots = list(_slots(doc))
        if not slots:
            break
        node, key = slots[draw(st.integers(min_value=0, max_value=len(slots) - 1))]
        op = draw(st.sampled_from(["swap", "drop", "nest", "edge"]))
        if op == "drop":
            del node[key]
        elif op == "swap":
            node[key] = draw(json_values)
        elif op == "nest":
            node[key] = _nested(node[key], draw(st.integers(min_value=1, max_value=300)),
                                draw(st.booleans()))
        else:
            node[key] = draw(_edges)
    return doc


def mutated(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``base`` (a valid document) with one to three random changes."""
    return _mutate(base)


@st.composite
def _text(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    data = json.dumps(draw(docs)).encode()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage != "none" and data:
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data = data[:at] if damage == "truncate" else \
            data[:at] + bytes([draw(st.integers(min_value=0, max_value=255))]) + data[at + 1:]
    return data


def as_text(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Documents from ``docs`` as file bytes; a quarter truncated, a quarter with a byte
    changed."""
    return _text(docs)
