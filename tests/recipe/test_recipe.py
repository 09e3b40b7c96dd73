from pathlib import Path

import pytest
import yaml

from compress.errors import InputError
from compress.recipe.load import apply_overrides, load_recipe, parse_recipe, recipe_json_schema

ROOT = Path(__file__).resolve().parents[2]
BASE = {"version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
        "data": {"source": "digits"}, "pruning": {"ratio": 0.5}}


def _with(**changes):
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for dotted, value in changes.items():
        data = apply_overrides(data, {dotted.replace("__", "."): value})
    return data


def test_defaults() -> None:
    r = parse_recipe(BASE)
    assert r.schedule.kind == "one-shot"
    assert r.pruning.round_to == "auto" and r.pruning.importance == "l2"
    assert r.device == "auto" and r.seed == 0


@pytest.mark.parametrize("changes, fragment", [
    ({"pruning__rate": 0.5},
     "unknown key 'pruning.rate' (did you mean 'ratio'?); allowed keys here: kind, importance"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"pruning__ratio": 1.5}, "'pruning.ratio': Input should be less than 1"),
    ({"pruning__ratio": -0.1}, "'pruning.ratio': Input should be greater than 0"),
    ({"finetune__epochs": "many"}, "'finetune.epochs': Input should be a valid integer"),
    ({"finetune__optimizer": "lion"}, "'finetune.optimizer': Input should be 'sgd' or 'adamw'"),
    ({"pruning__importance": "magic"}, "unknown importance criterion 'magic'; available: "),
    ({"model__source": "hub"}, "unknown model source 'hub'; available: cifar_resnet, huggingface, python"),
    ({"data__source": "imagenet"},
     "unknown dataset 'imagenet' (did you mean 'imagefolder'?); available: digits"),
    ({"schedule__kind": "sometimes"}, "unknown schedule 'sometimes'; available: hybrid, iterative, one-shot"),
    ({"pruning__target": {"macs": 0.5}}, "give exactly one of 'ratio'"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda, cuda:N"),
    ({"version": 2}, "'version': Input should be 1"),
    # A tolerance large enough passes any proof or parity check: bounded, named by its path.
    ({"pruning__verify_atol": 1.0}, "'pruning.verify_atol': Input should be less than or equal"),
    ({"export__parity_atol": 0.5}, "'export.parity_atol': Input should be less than or equal"),
    ({"export__parity_rtol": 2.0}, "'export.parity_rtol': Input should be less than or equal"),
])
def test_errors_name_the_yaml_path(changes, fragment) -> None:
    with pytest.raises(InputError) as info:
        parse_recipe(_with(**changes))
    assert fragment in str(info.value)


def test_missing_section_is_named() -> None:
    data = dict(BASE)
    del data["pruning"]
    with pytest.raises(InputError, match="missing required key 'pruning'"):
        parse_recipe(data)


def test_overrides_parse_yaml_values() -> None:
    out = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d.e=true", "f=text"])
    assert out == {"a": {"b": 2, "c": [1, 2]}, "d": {"e": True}, "f": "text"}


def test_override_errors() -> None:
    with pytest.raises(InputError, match="not of the form a.b.c=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(InputError, match="'a' is not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_load_recipe_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "r.yaml").write_text(yaml.safe_dump(BASE))
    r = load_recipe(sub / "r.yaml", ["finetune.epochs=2"])
    assert r.name == "r" and r.finetune.epochs == 2
    assert r.resolve_path("../data/x.tar.gz") == tmp_path / "recipes" / ".." / "data/x.tar.gz"
    assert r.resolve_path("/abs/file") == Path("/abs/file")


@pytest.mark.parametrize("text, fragment", [
    ("version: 1\nmodel: [", "not valid YAML at line"),
    ("", "the recipe is empty"),
    ("- a\n- b\n", "a recipe must be a mapping"),
])
def test_bad_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=fragment):
        load_recipe(path)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_schema_describes_every_field() -> None:
    schema = recipe_json_schema()
    assert "base_dir" not in schema["properties"]
    for name, definition in schema["$defs"].items():
        for field, body in definition.get("properties", {}).items():
            assert body.get("description"), f"{name}.{field} has no description"


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    from compress.run.preflight import check_recipe

    recipe = load_recipe(path)
    check_recipe_paths = recipe.data.path is None or recipe.resolve_path(recipe.data.path).exists()
    if check_recipe_paths and (recipe.model.checkpoint is None
                               or recipe.resolve_path(recipe.model.checkpoint).exists()):
        check_recipe(recipe)


def test_registry_names_are_checked_without_importing_registries_early() -> None:
    import subprocess
    import sys

    # The source/importance/kind validators import their registries (and torch) only when a
    # recipe is validated, so `import compress.recipe.spec` stays light.
    code = ("import sys, compress.recipe.spec; "
            "print(sorted(m for m in sys.modules if m in ('torch', 'compress.models', "
            "'compress.data', 'compress.pruning.structured', 'compress.schedules')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("section, key, registry", [
    ("model", "source", "model source"), ("data", "source", "dataset"),
    ("pruning", "importance", "importance criterion"), ("schedule", "kind", "schedule")])
def test_every_registered_name_is_checked_by_its_registry(section: str, key: str,
                                                          registry: str) -> None:
    with pytest.raises(InputError) as info:
        parse_recipe(_with(**{f"{section}__{key}": "nope"}))
    assert f"'{section}.{key}': unknown {registry} 'nope'; available: " in str(info.value)
