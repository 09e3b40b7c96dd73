"""Test modules are imported by basename (no __init__.py under tests/), so two files with the
same name in different folders stop the collection of the whole suite."""

from __future__ import annotations

from collections import Counter

from tests.conftest import ROOT


def test_every_test_module_has_a_name_of_its_own() -> None:
    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1]
