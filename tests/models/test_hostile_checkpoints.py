"""Hostile checkpoints: weights no model can be built from are bad input, said where they enter.

A checkpoint of NaN or infinite weights, complex weights or integer keys, as ``.safetensors``
(where safetensors can hold it) and ``.pt``: ``read_state_dict`` raises one
:class:`~compress.errors.InputError` naming the tensor, and ``compress apply`` exits 2 with that
sentence (not a failed pruning proof blaming the dependency graph, exit 1), writing nothing
outside the run folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from compress.errors import InputError
from compress.models.checkpoint import read_state_dict
from tests.conftest import ROOT
from tests.hostile import Tree, assert_no_marker, assert_refused, hostile, invoke

FACTORY = f"{ROOT}/examples/quickstart/digits_cnn.py:digits_cnn"
WEIGHTS = ROOT / "examples" / "quickstart" / "digits_cnn.safetensors"


def _weights() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(WEIGHTS))


def _poisoned(value: float, count: int) -> Callable[[dict[str, torch.Tensor]], str]:
    def poison(state: dict[str, torch.Tensor]) -> str:
        name = sorted(k for k, v in state.items() if v.is_floating_point())[1]
        state[name].view(-1)[:count] = value
        return name
    return poison


def _complex(state: dict[str, torch.Tensor]) -> str:
    name = sorted(state)[0]
    state[name] = state[name].to(torch.complex64)
    return name


# (what is done to the real quickstart weights, the fragments of the sentence)
CASES: dict[str, tuple[Callable[[dict[str, torch.Tensor]], str], str]] = {
    "all-nan": (_poisoned(float("nan"), 10**9), "non-finite weights in the checkpoint"),
    "one-nan": (_poisoned(float("nan"), 1), "holds 1 NaN or infinite values"),
    "inf": (_poisoned(float("inf"), 3), "holds 3 NaN or infinite values"),
    "minus-inf": (_poisoned(float("-inf"), 1), "non-finite weights in the checkpoint"),
    "complex": (_complex, "holds complex weights"),
}


def _write(tmp_path: Path, case: str, suffix: str) -> tuple[Path, str]:
    state = _weights()
    name = CASES[case][0](state)
    path = tmp_path / f"{case}{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, name


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("case", list(CASES))
def test_read_state_dict_names_the_bad_tensor(tmp_path: Path, case: str, suffix: str) -> None:
    path, name = _write(tmp_path, case, suffix)
    with pytest.raises(InputError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert CASES[case][1] in message and f"{name!r}" in message and str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("keys", [{0: torch.zeros(2)}, {"w": torch.zeros(2), 1: torch.zeros(1)},
                                  {(1, 2): torch.zeros(1)},
                                  {"state_dict": {3: torch.zeros(1)}}],
                         ids=["int", "mixed", "tuple", "wrapped-int"])
def test_a_pt_state_dict_with_non_string_keys_is_one_sentence(tmp_path: Path,
                                                               keys: dict) -> None:
    torch.save(keys, tmp_path / "k.pt")
    with pytest.raises(InputError, match=r"has a key that is not a parameter name \((0|1|\(1, "
                       r"2\)|3), of type (int|tuple)\); save it with torch.save\(model.state_dict"):
        read_state_dict(tmp_path / "k.pt")


def test_finite_real_checkpoints_still_load(tmp_path: Path) -> None:
    state = _weights()
    torch.save(state, tmp_path / "ok.pt")
    loaded = read_state_dict(tmp_path / "ok.pt")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def _apply(tmp_path: Path, checkpoint: Path):  # type: ignore[no-untyped-def]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "version": 1,
        "model": {"source": "python", "factory": FACTORY, "checkpoint": checkpoint.name,
                  "num_classes": 10},
        "data": {"source": "digits", "train_subset": 64, "eval_subset": 32},
        "pruning": {"ratio": 0.5}, "finetune": {"epochs": 1, "max_steps": 1},
        "export": {"onnx": False}, "report": {"latency": False}}))
    tree = Tree(tmp_path)
    result = invoke(["apply", recipe, "--out", tmp_path / "run"], cwd=tmp_path)
    assert tree.new_files(allowed=["run"]) == []
    assert_no_marker(tmp_path)
    return result


@hostile
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("case", list(CASES))
def test_apply_refuses_a_bad_checkpoint_with_exit_2(tmp_path: Path, case: str,
                                                    suffix: str) -> None:
    path, name = _write(tmp_path, case, suffix)
    assert_refused(_apply(tmp_path, path), CASES[case][1], repr(name), str(path))


@hostile
def test_apply_refuses_integer_keys_with_exit_2(tmp_path: Path) -> None:
    state = dict(enumerate(_weights().values()))
    torch.save(state, tmp_path / "ints.pt")
    assert_refused(_apply(tmp_path, tmp_path / "ints.pt"), "has a key that is not a parameter "
                   "name (0, of type int)")


@hostile
def test_apply_refuses_a_hugging_face_folder_with_nan_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tests.hf_models import save_tiny

    folder, _ = save_tiny("bert", tmp_path / "nan-bert")
    state = load_file(str(folder / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[1]
    state[name].view(-1)[:2] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\n" + "good film\t1\n" * 4
                                                 + "so so\t2\n" * 4)
    (tmp_path / "data" / "dev.tsv").write_text("sentence\tlabel\n" + "bad film\t0\n" * 8)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "version": 1,
        "model": {"source": "huggingface", "name": str(folder), "num_classes": 3,
                  "task": "sequence-classification"},
        "data": {"source": "text", "path": "data", "eval_split": "dev"},
        "pruning": {"ratio": 0.5, "ffn": 0.5}, "finetune": {"epochs": 1, "max_steps": 1},
        "export": {"onnx": False}, "report": {"latency": False}}))
    tree = Tree(tmp_path)
    result = invoke(["apply", recipe, "--out", tmp_path / "run"], cwd=tmp_path)
    assert tree.new_files(allowed=["run"]) == []
    assert_no_marker(tmp_path)
    assert_refused(result, "non-finite weights in the checkpoint", repr(name), "holds 2 NaN")
