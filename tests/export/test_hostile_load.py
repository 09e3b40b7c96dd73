"""Hostile run folders for ``compress.load``: a manifest never runs code the caller did not name,
and a broken manifest is refused in one sentence."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import compress
from compress.errors import InputError
from compress.export.load import load_model
from compress.export.safetensors import save_safetensors
from compress.recipe.sources import ModelSpec
from tests.hostile import MARKER_NAME, assert_no_marker, hostile

_NET = textwrap.dedent('''
    import torch
    from torch import nn


    def net(width: int = 4) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(width * 36, 3))
''')
_namespace: dict[str, Any] = {}
exec(_NET, _namespace)  # the same factory as the file the manifest names, for build=
_net = _namespace["net"]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A finished folder of a ``python``-source model whose factory is a legit local file."""
    (tmp_path / "legit.py").write_text(_NET)
    model = _net(width=4)
    spec = ModelSpec(source="python", factory=f"{tmp_path / 'legit.py'}:net", kwargs={"width": 4})
    save_safetensors(model, tmp_path / "run", spec, (1, 8, 8))
    return tmp_path / "run"


def _set_model(run: Path, model: Any) -> None:
    manifest = json.loads((run / "model.json").read_text())
    manifest["model"] = model
    (run / "model.json").write_text(json.dumps(manifest))


def _refused(run: Path, *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(InputError) as info:
        load_model(run, **kwargs)
    line = str(info.value)
    assert "\n" not in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


@hostile
def test_os_system_factory_is_refused_and_never_runs(run: Path) -> None:
    marker = run.parent / MARKER_NAME
    _set_model(run, {"source": "python", "factory": "os:system",
                     "kwargs": {"command": f"touch {marker}"}})
    _refused(run, "'os:system'", "pass build=... or trust_code=True")
    with pytest.raises(InputError, match="trust_code=True"):
        compress.load(run)  # the public API refuses it the same way
    assert_no_marker(run.parent)


@hostile
def test_py_file_factory_that_runs_at_import_is_refused(run: Path) -> None:
    marker = run.parent / MARKER_NAME
    evil = run.parent / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n" + _NET)
    _set_model(run, {"source": "python", "factory": f"{evil}:net", "kwargs": {"width": 4}})
    _refused(run, "evil.py:net", "pass build=... or trust_code=True")
    assert_no_marker(run.parent)


@hostile
def test_factory_under_another_source_is_refused(run: Path) -> None:
    _set_model(run, {"source": "cifar_resnet", "name": "resnet20", "factory": "os:system"})
    _refused(run, "'os:system'")


@hostile
def test_trust_remote_code_in_the_manifest_is_refused(run: Path) -> None:
    _set_model(run, {"source": "huggingface", "name": str(run), "task": "feature-extraction",
                     "trust_remote_code": True})
    _refused(run, "trust_remote_code", "pass build=... or trust_code=True")


@hostile
def test_module_function_name_is_refused(run: Path) -> None:
    _set_model(run, {"source": "huggingface", "name": "os:getcwd", "task": "feature-extraction"})
    _refused(run, "'os:getcwd'", "pass build=... or trust_code=True")
    assert_no_marker(run.parent)


def test_build_replaces_the_factory_with_equal_outputs(run: Path) -> None:
    _set_model(run, {"source": "python", "factory": "os:system", "kwargs": {"width": 4}})
    calls: list[dict[str, Any]] = []

    def build(**kwargs: Any) -> nn.Module:
        calls.append(kwargs)
        return _net(**kwargs)

    loaded = load_model(run, build=build)
    assert calls == [{"width": 4}]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), _net(width=4).eval()(x))


def test_build_must_return_a_module(run: Path) -> None:
    with pytest.raises(InputError, match="build returned int"):
        load_model(run, build=lambda **kw: 3)


def test_trust_code_runs_a_legit_factory(run: Path) -> None:
    _refused(run, "legit.py:net")  # not without asking
    loaded = compress.load(run, trust_code=True)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), _net(width=4).eval()(x))


@hostile
@pytest.mark.parametrize("text, fragment", [
    ("{not json", "is not JSON"),
    ("\xff\xfe", "is not UTF-8 text"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('"compress"', "holds a JSON string, not an object"),
    ("[" * 100_000 + "]" * 100_000, "levels deep, the most read"),
    ('{"format": "compress.model/1", "layers": {"0": {"out_channels": ' + "9" * 5000 + "}}}",
     "holds an integer of 5,000 digits"),
    ("", "is not JSON"),
])
def test_unreadable_manifests_are_refused(run: Path, text: str, fragment: str) -> None:
    (run / "model.json").write_bytes(text.encode("latin-1"))
    _refused(run, fragment, trust_code=True)


@hostile
@pytest.mark.parametrize("change, fragment", [
    ({"layers": None}, "'layers' should be a JSON object (got None)"),
    ({"layers": [1]}, "'layers' should be a JSON object (got [1])"),
    ({"model": "os:system"}, "'model' should be a JSON object (got 'os:system')"),
    ({"model": {"source": "cifar_resnet", "name": "resnet20", "kwargs": [1]}}, "'model.kwargs'"),
    ({"model": {"source": "cifar_resnet", "evil": 1}}, "'model.evil'"),
    ({"layers": {"0": "wide"}}, "'layers.0' should be a JSON object"),
    ({"layers": {"0": {"out_channels": {"a": 1}}}}, "'layers.0.out_channels' should be a number"),
    ({"layers": {"0": {"type": "Conv2d", "in_channels": 1, "out_channels": "4"}}},
     "'layers.0.out_channels' must be a whole number"),
    ({"format": "compress.model/2"}, "is not a compress manifest"),
])
def test_wrong_manifest_types_are_refused(run: Path, change: dict[str, Any],
                                          fragment: str) -> None:
    manifest = json.loads((run / "model.json").read_text())
    manifest.update(change)
    (run / "model.json").write_text(json.dumps(manifest))
    _refused(run, fragment, trust_code=True)


@hostile
def test_missing_layers_is_refused(run: Path) -> None:
    manifest = json.loads((run / "model.json").read_text())
    del manifest["layers"]
    (run / "model.json").write_text(json.dumps(manifest))
    _refused(run, "'layers' is missing", trust_code=True)


@hostile
@pytest.mark.parametrize("layer, change, fragment", [
    ("0", {"out_channels": 5}, "out_channels 5, groups 1) does not fit '0.weight' of shape"),
    ("0", {"in_channels": 2}, "(in_channels 2, out_channels 4, groups 1) does not fit '0.w"),
    ("3", {"in_features": 100}, "(in_features 100, out_features 3) does not fit '3.weight'"),
    ("3", {"out_features": 7}, "(in_features 144, out_features 7) does not fit '3.weight'"),
    ("0", {"groups": 2}, "(in_channels 1, out_channels 4, groups 2) does not fit"),
])
def test_widths_that_disagree_with_the_weights_are_refused(run: Path, layer: str,
                                                           change: dict[str, Any],
                                                           fragment: str) -> None:
    """A manifest whose widths no longer match the safetensors shapes: refused before the
    model is built (the factory file would otherwise run first)."""
    manifest = json.loads((run / "model.json").read_text())
    manifest["layers"][layer].update(change)
    (run / "model.json").write_text(json.dumps(manifest))
    marker = run.parent / MARKER_NAME
    (run.parent / "legit.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + _NET)
    _refused(run, fragment, "do not belong together", trust_code=True)
    assert_no_marker(run.parent)


@hostile
def test_zero_groups_is_refused(run: Path) -> None:
    manifest = json.loads((run / "model.json").read_text())
    manifest["layers"]["0"]["groups"] = 0
    (run / "model.json").write_text(json.dumps(manifest))
    _refused(run, "'layers.0.groups' must be at least 1", trust_code=True)


@hostile
def test_weights_of_another_model_are_refused_in_one_sentence(run: Path) -> None:
    """Widths the manifest does not state (here: a tensor the model lacks) are caught after
    building, instead of load_state_dict's multi-line RuntimeError."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(run / "model.safetensors"))
    _refused(run, "holds 'extra.weight'", "do not belong together", trust_code=True)
    del state["extra.weight"], state["3.bias"]
    save_file(state, str(run / "model.safetensors"))
    _refused(run, "lacks '3.bias'", trust_code=True)


@hostile
@pytest.mark.parametrize("status", ["[]", "{", '{"state": [1]}', "9" * 5000])
def test_a_broken_status_json_reads_as_unfinished(run: Path, status: str) -> None:
    (run / "status.json").write_text(status)
    _refused(run, "holds an unfinished run", "force=True", trust_code=True)


@hostile
@pytest.mark.parametrize("layer, attrs, fragment", [
    ("3", {"forward": "x"}, "'layers.3.forward' is not a width compress stores for a Linear"),
    ("3", {"type": "Conv2d"}, "layer '3' is a 'Conv2d' in the manifest but a 'Linear'"),
    ("", {"training": False}, "'layers..training' is not a width compress stores"),
    ("1", {"inplace": True}, "'layers.1.inplace' is not a width compress stores for a ReLU"),
])
def test_a_manifest_sets_no_attribute_but_widths(run: Path, layer: str, attrs: dict[str, Any],
                                                 fragment: str) -> None:
    manifest = json.loads((run / "model.json").read_text())
    manifest["layers"].setdefault(layer, {}).update(attrs)
    (run / "model.json").write_text(json.dumps(manifest))
    _refused(run, fragment, build=_net)


@hostile
def test_a_layer_wider_than_built_is_refused(run: Path) -> None:
    """Manifest and weights agree on a wider layer than the model builds: pruning only
    shrinks, so this is another model (and a way to make load allocate at will)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    state["3.weight"], state["3.bias"] = torch.zeros(5, 144), torch.zeros(5)
    save_file(state, str(run / "model.safetensors"))
    manifest = json.loads((run / "model.json").read_text())
    manifest["layers"]["3"]["out_features"] = 5
    (run / "model.json").write_text(json.dumps(manifest))
    _refused(run, "'layers.3.out_features' is 5, which a Linear built as 3 cannot be pruned to",
             build=_net)
