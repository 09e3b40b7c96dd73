"""``compress validate`` is side-effect free: no function a recipe names runs, no model's own code
is imported, nothing is written; it says what ``apply`` would import or call instead.

Every payload here writes the marker file :data:`tests.hostile.MARKER_NAME` when it is imported
or called: at import (module level) and in its function. ``os:abort`` and ``sys:exit`` would end
the process, so their cases also prove nothing was called.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, tiny_recipe
from tests.hostile import MARKER_NAME, Tree, assert_no_marker, assert_refused, hostile, invoke

MODULE = "compress_hostile_payload"  # a name no real package has


def _payload(folder: Path) -> str:
    marker = str(folder / MARKER_NAME)
    return (f"open({marker!r}, 'w').close()  # runs at import\n\n\n"
            f"def build(**kwargs):\n    open({marker!r}, 'w').close()\n    return {marker!r}\n")


@pytest.fixture
def payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``compress_hostile_payload.py`` (importable) and ``evil.py`` in ``tmp_path``."""
    (tmp_path / f"{MODULE}.py").write_text(_payload(tmp_path))
    (tmp_path / "evil.py").write_text(_payload(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return tmp_path


def _validate(tmp_path: Path, recipe: dict[str, Any], *args: str) -> Any:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    tree = Tree(tmp_path)
    result = invoke(["validate", path, *args], cwd=tmp_path)
    assert tree.new_files() == [], "validate wrote a file"
    assert_no_marker(tmp_path)
    assert MODULE not in sys.modules
    return result


def _hf(tmp_path: Path, name: str, **model: Any) -> dict[str, Any]:
    recipe = tiny_recipe(tmp_path)
    recipe["model"] = {"source": "huggingface", "name": name, "task": "sequence-classification",
                       "num_classes": 10, **model}
    return recipe


def _valid_saying(result: Any, *fragments: str) -> None:
    assert result.exit_code == 0, result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@hostile
def test_a_python_factory_module_is_described_not_imported(payload: Path) -> None:
    recipe = tiny_recipe(payload, model={"factory": f"{MODULE}:build", "kwargs": {}})
    _valid_saying(_validate(payload, recipe), f"code: apply will import module {MODULE!r} and "
                                              f"call {MODULE}.build() (model.factory)")


@hostile
def test_a_python_factory_file_is_described_not_run(payload: Path) -> None:
    recipe = tiny_recipe(payload, model={"factory": "evil.py:build", "kwargs": {}})
    result = _validate(payload, recipe, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["code"] == [
        f"apply will run the file {str(payload / 'evil.py')!r} and call its build() "
        f"(model.factory)"]


@hostile
def test_a_module_function_model_name_is_not_called(payload: Path) -> None:
    _valid_saying(_validate(payload, _hf(payload, f"{MODULE}:build")),
                  f"code: apply will import module {MODULE!r} and call {MODULE}.build() to find "
                  f"the model folder (model.name)")


@hostile
def test_sys_exit_as_model_name_is_not_called(tmp_path: Path) -> None:
    # Called, sys.exit() would end validate with exit 0 and print nothing more.
    _valid_saying(_validate(tmp_path, _hf(tmp_path, "sys:exit")),
                  "call sys.exit() to find the model folder")


@hostile
def test_a_module_function_tokenizer_is_not_called(payload: Path) -> None:
    (payload / "sst2").mkdir()
    for split in ("train", "test"):  # validate checks that the split files exist
        (payload / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\nfine\t1\n")
    recipe = tiny_recipe(payload, data={"source": "text", "path": "sst2",
                                        "tokenizer": f"{MODULE}:build", "train_subset": None,
                                        "eval_subset": None})
    _valid_saying(_validate(payload, recipe),
                  f"call {MODULE}.build() to find the tokenizer folder (data.tokenizer)")


@hostile
@pytest.mark.parametrize("key, name", [("factory", "os:abort"), ("name", "os:abort")])
def test_os_abort_in_a_real_shell_is_not_called(tmp_path: Path, key: str, name: str) -> None:
    recipe = (tiny_recipe(tmp_path, model={"factory": name, "kwargs": {}}) if key == "factory"
              else _hf(tmp_path, name))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, "-m", "compress", "validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # os.abort() would be -6 (SIGABRT)
    assert "call os.abort()" in done.stderr and "valid" in done.stdout


def _custom_code_folder(tmp_path: Path, model_type: str) -> Path:
    """A local transformers folder whose config.json maps the Auto classes to its own code,
    code that writes the marker when imported."""
    folder = tmp_path / "custom-model"
    folder.mkdir()
    config = {"model_type": model_type, "architectures": ["EvilModel"],
              "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                           "AutoModel": "modeling_evil.EvilModel",
                           "AutoModelForSequenceClassification": "modeling_evil.EvilModel"},
              "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2}
    (folder / "config.json").write_text(json.dumps(config))
    for module in ("configuration_evil", "modeling_evil"):
        (folder / f"{module}.py").write_text(_payload(tmp_path))
    return folder


@hostile
def test_a_folder_with_its_own_code_and_a_stock_type_runs_none_of_it(tmp_path: Path) -> None:
    _custom_code_folder(tmp_path, "bert")
    _valid_saying(_validate(tmp_path, _hf(tmp_path, "custom-model")),
                  "note: config.json names the model's own code (configuration_evil.py, "
                  "modeling_evil.py); apply will not run it (model.trust_remote_code is false)")


def _masked(recipe: dict[str, Any]) -> dict[str, Any]:
    """Unstructured pruning: a model type without a head/FFN layout is not refused for it."""
    recipe["pruning"] = {"kind": "unstructured", "ratio": 0.5}
    return recipe


@hostile
def test_a_folder_only_its_own_code_can_load_is_refused_without_trust(tmp_path: Path) -> None:
    _custom_code_folder(tmp_path, "evil")
    result = _validate(tmp_path, _masked(_hf(tmp_path, "custom-model")))
    assert_refused(result, "model_type 'evil', which transformers does not know",
                   "model.trust_remote_code: true")


@hostile
def test_trust_remote_code_is_described_not_imported(tmp_path: Path) -> None:
    _custom_code_folder(tmp_path, "evil")
    result = _validate(tmp_path, _masked(_hf(tmp_path, "custom-model",
                                             trust_remote_code=True)))
    _valid_saying(result, "code: apply will import the model's own code (its files "
                          "configuration_evil.py, modeling_evil.py, named by config.json's "
                          "auto_map) because model.trust_remote_code is true")


@hostile
@pytest.mark.parametrize("config", ["[1]", "{", '{"model_type": ["bert"]}', "9" * 5000])
def test_a_broken_config_json_is_one_sentence_or_a_note(tmp_path: Path, config: str) -> None:
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    result = _validate(tmp_path, _hf(tmp_path, "broken-model"))
    if result.exit_code != 0:  # a model_type that is no string is left to transformers
        assert_refused(result, "config.json")


def test_inspect_writes_nothing(tmp_path: Path) -> None:
    """inspect builds the model the recipe names (that is its job) but writes no file."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    tree = Tree(tmp_path)
    result = invoke(["inspect", path], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert tree.new_files() == []
