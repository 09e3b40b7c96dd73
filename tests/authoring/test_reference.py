"""The generated recipe reference and the registry listing stay complete and up to date."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.authoring.reference import (
    inline_yaml,
    list_registries,
    recipe_sections,
    render_recipe_reference,
    section_snippets,
)

ROOT = Path(__file__).resolve().parents[2]
REGEN = "compress schema --markdown > docs/recipes.md"


def _registries():
    from compress.data import DATASETS
    from compress.models import MODEL_SOURCES
    from compress.pruning.base import PRUNING_KINDS
    from compress.pruning.criteria import IMPORTANCE
    from compress.schedules import SCHEDULES

    return {"model.source": MODEL_SOURCES, "data.source": DATASETS,
            "pruning.importance": IMPORTANCE, "pruning.kind": PRUNING_KINDS,
            "schedule.kind": SCHEDULES}


def test_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert committed == render_recipe_reference(), (
        f"docs/recipes.md is stale (a recipe field, description, example or registry entry "
        f"changed); regenerate it: {REGEN}")


def test_reference_is_deterministic() -> None:
    assert render_recipe_reference() == render_recipe_reference()


def test_every_field_has_a_description_and_an_example() -> None:
    missing = []
    for path, model in recipe_sections():
        for name, field in model.model_fields.items():
            if name == "base_dir":  # set by the loader, not a recipe key
                continue
            key = f"{path}.{name}" if path else name
            if not (field.description or "").strip():
                missing.append(f"{key}: no description")
            if not field.examples:
                missing.append(f"{key}: no examples")
    assert not missing, ("add description=/examples= in compress/recipe/: "
                         + "; ".join(missing))


def test_every_section_and_field_is_in_the_reference() -> None:
    doc = render_recipe_reference()
    for path, model in recipe_sections():
        if path:
            assert f"## `{path}`" in doc
        for name in model.model_fields:
            if name != "base_dir":
                assert f"| `{name}` |" in doc, f"{path}.{name}"
    assert "base_dir" not in doc


def test_reference_mentions_every_registered_name() -> None:
    doc = render_recipe_reference()
    for key, registry in _registries().items():
        for name in registry.names():
            assert f"`{name}`" in doc, f"{key} {name!r} is missing from the reference"


@pytest.mark.parametrize("row", [
    "| `optimizer` | `one of: sgd, adamw` | `sgd` |",
    "| `name` | `str \\| null` | `null` |",
    "| `ignored` | `list[str]` | `[]` |",
    "| `round_to` | `int \\| \"auto\"` | `auto` |",
    "| `patience` | `int \\| list[int] \\| null` | `null` |",
    "| `augment` | `list of: random_crop, horizontal_flip` | `[]` |",
    "| `macs` | `float \\| null` | `null` |",
    "| `mean` | `list[float]` | required |",
    "| `schedule` | `mapping` | (section defaults) |",
])
def test_readable_types_and_defaults(row: str) -> None:
    assert row in render_recipe_reference()


def test_section_snippets_make_a_valid_recipe() -> None:
    from compress.data import check_data_spec
    from compress.models import check_model_spec
    from compress.recipe.load import parse_recipe
    from compress.schedules import plan_targets

    snippets = section_snippets()
    data = {**snippets.pop(""), **snippets}
    recipe = parse_recipe(data, source="docs snippets")
    plan_targets(recipe.schedule, recipe.pruning.final_target())
    check_model_spec(recipe.model)
    check_data_spec(recipe.data)
    doc = render_recipe_reference()
    for section in snippets:
        assert f"```yaml\n{section}:\n" in doc


def test_list_registries_covers_every_registry() -> None:
    listed = list_registries()
    registries = _registries()
    assert len(listed) == len(registries)
    for key, registry in registries.items():
        [title] = [t for t in listed if t.endswith(f"({key})")]
        assert [name for name, _ in listed[title]] == registry.names()
        for name, description in listed[title]:
            assert description.strip() and "\n" not in description, f"{key} {name!r}"
            assert "``" not in description and ":meth:" not in description


def test_descriptions_come_from_the_code() -> None:
    listed = {title.split(" (")[0]: dict(rows) for title, rows in list_registries().items()}
    assert listed["Importance criteria"]["l2"] == "L2 norm of the group's weights"
    assert listed["Schedules"]["one-shot"].startswith("One-shot: a single step")
    assert listed["Pruning kinds"]["n:m"].startswith("Keep the n largest of every m")


@pytest.mark.parametrize("value, text", [
    (0.5, "0.5"), ("cifar_resnet", "cifar_resnet"), ("cuda:0", "'cuda:0'"), (None, "null"),
    (True, "true"), ([1, 64], "[1, 64]"), ({"macs": 0.5}, "{macs: 0.5}"),
])
def test_inline_yaml(value, text) -> None:
    import yaml

    assert inline_yaml(value) == text
    assert yaml.safe_load(text) == value
