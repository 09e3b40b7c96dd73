"""`compress init -o FILE`: the recipe lands in another folder with its paths rewritten relative
to it, validates and applies from anywhere; the splits it names are the ones that exist, and
`compress validate` refuses a split that does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from tests.hostile import Tree, assert_refused, invoke

NETS = """
from torch import nn


def build(num_classes=2):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
"""


def _workspace(root: Path) -> None:
    """What a user has in the folder they run `compress init` from: images (train/ and val/,
    no test/), a model file and its weights."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6)):
        for c, name in enumerate(("cat", "dog")):
            folder = root / "imgs" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (8, 8, 3)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg")
    (root / "nets.py").write_text(NETS)
    namespace: dict = {}
    exec(NETS, namespace)
    torch.manual_seed(0)
    save_file(namespace["build"]().state_dict(), str(root / "w.safetensors"))


def test_init_o_writes_paths_relative_to_the_recipe_which_validates_and_applies(
        tmp_path: Path) -> None:
    _workspace(tmp_path)
    out = Path("conf") / "deep" / "recipe.yaml"
    made = invoke(["init", "--model", "python:nets.py:build", "--data", "imagefolder:imgs",
                   "--checkpoint", "w.safetensors", "--num-classes", "2", "--image-size", "8",
                   "-o", str(out)], cwd=tmp_path)
    assert made.exit_code == 0, made.output
    recipe = yaml.safe_load((tmp_path / out).read_text())
    assert recipe["data"]["path"] == "../../imgs"
    assert recipe["model"]["checkpoint"] == "../../w.safetensors"
    assert recipe["model"]["factory"] == "../../nets.py:build"
    assert recipe["data"]["eval_split"] == "val"  # the folder has no test/
    assert "recipe:" not in made.stdout  # written, not printed

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = str(tmp_path / out)
    valid = invoke(["validate", path], cwd=elsewhere)
    assert valid.exit_code == 0, valid.output
    applied = invoke(["apply", path, "--out", str(tmp_path / "run"),
                      "--set", "finetune.epochs=1", "--set", "report.latency=false",
                      "--set", "export.onnx=false", "--set", "gates={}",
                      "--set", "data.batch_size=8"], cwd=elsewhere)
    assert applied.exit_code == 0, applied.output
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_init_o_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "recipe.yaml"
    target.write_text("# mine\n")
    result = invoke(["init", "--model", "cifar_resnet:resnet20", "--data", "digits",
                     "-o", str(target)])
    assert_refused(result, "exists; remove it or choose another -o")
    assert target.read_text() == "# mine\n"


@pytest.mark.parametrize("files, eval_split", [
    (["train.tsv", "dev.tsv"], "dev"),
    (["train.csv", "test.csv", "dev.csv"], "test"),
    (["train.jsonl", "validation.jsonl"], "validation"),
])
def test_init_names_the_text_splits_that_exist(tmp_path: Path, files: list[str],
                                               eval_split: str) -> None:
    from compress.authoring.starter import render_starter_recipe

    for name in files:
        (tmp_path / "d" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "d" / name).write_text("sentence\tlabel\n")
    text = render_starter_recipe("huggingface:org/bert", f"text:{tmp_path / 'd'}",
                                 num_classes=2)
    assert yaml.safe_load(text)["data"]["eval_split"] == eval_split


@pytest.mark.hostile
@pytest.mark.parametrize("key, value, fragment", [
    ("eval_split", "test", "data.eval_split 'test'"),
    ("train_split", "training", "data.train_split 'training'"),
])
def test_validate_refuses_a_split_file_that_does_not_exist(tmp_path: Path, key: str, value: str,
                                                           fragment: str) -> None:
    data = tmp_path / "sst"
    data.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_text("sentence\tlabel\nfine\t1\n")
    recipe = {"version": 1, "model": {"source": "huggingface", "name": "org/bert",
                                      "task": "sequence-classification"},
              "data": {"source": "text", "path": "sst", "train_split": "train",
                       "eval_split": "dev", key: value},
              "pruning": {"ratio": 0.5}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    tree = Tree(tmp_path)
    result = invoke(["validate", str(path)])
    assert_refused(result, fragment, "its splits: dev, train")
    assert tree.new_files() == []  # validate writes nothing


@pytest.mark.hostile
def test_validate_refuses_an_image_split_folder_that_does_not_exist(tmp_path: Path) -> None:
    _workspace(tmp_path)
    recipe = {"version": 1, "model": {"source": "python", "factory": "nets.py:build"},
              "data": {"source": "imagefolder", "path": "imgs"}, "pruning": {"ratio": 0.5}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert_refused(invoke(["validate", str(path)]), "no 'test' split folder (data.eval_split)")
