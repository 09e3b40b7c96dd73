"""Fuzzing ``compress.load``'s input: whatever model.json holds, loading returns a model or raises
:class:`InputError` with one sentence, and runs no code the caller did not name.

The run folder holds a real manifest and weights (a ``python``-source model whose factory file
writes the marker if it is ever imported). Each example loads once without ``build`` (a manifest
that names code must be refused) and once with the caller's own ``build``, which reaches the
width and shape checks.
"""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from compress.errors import InputError
from compress.export.load import load_model
from compress.export.safetensors import save_safetensors
from compress.recipe.sources import ModelSpec
from tests.fuzz_json import FUZZ, as_text, json_values, mutated
from tests.hostile import MARKER_NAME, assert_no_marker


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 36, 3))


@pytest.fixture(scope="module")
def folder() -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "net.py").write_text(textwrap.dedent(f"""
            open({str(root / MARKER_NAME)!r}, "w").close()
            def net():
                raise AssertionError("never called")
        """))
        spec = ModelSpec(source="python", factory=f"{root / 'net.py'}:net")
        save_safetensors(_net(), root / "run", spec, (1, 8, 8))
        (root / "pristine.json").write_bytes((root / "run" / "model.json").read_bytes())
        yield root


def _manifest(folder: Path) -> dict[str, Any]:
    """The manifest as written (the tests overwrite model.json)."""
    return json.loads((folder / "pristine.json").read_text())


def _check_load(folder: Path, data: bytes) -> None:
    (folder / "run" / "model.json").write_bytes(data)
    for kwargs in ({}, {"build": lambda **_: _net()}):
        try:
            model = load_model(folder / "run", **kwargs)
        except InputError as err:
            assert "\n" not in str(err) and str(err), repr(str(err))
        else:
            assert isinstance(model, nn.Module)
    assert_no_marker(folder)


def test_the_unmutated_manifest_loads_only_with_build(folder: Path) -> None:
    """The fuzz's base case: refused without build (its factory is code), loaded with it."""
    data = json.dumps(_manifest(folder)).encode()
    (folder / "run" / "model.json").write_bytes(data)
    with pytest.raises(InputError, match="net.py:net"):
        load_model(folder / "run")
    assert isinstance(load_model(folder / "run", build=lambda **_: _net()), nn.Module)
    assert_no_marker(folder)


@FUZZ
@given(data=st.data())
def test_a_mutated_manifest_loads_or_is_one_sentence(folder: Path, data: st.DataObject) -> None:
    manifest = data.draw(mutated(_manifest(folder)))
    _check_load(folder, json.dumps(manifest).encode())


@FUZZ
@given(data=st.data())
def test_any_json_or_damaged_text_loads_or_is_one_sentence(folder: Path,
                                                           data: st.DataObject) -> None:
    docs = st.one_of(json_values, mutated(_manifest(folder)))
    _check_load(folder, data.draw(as_text(docs)))

