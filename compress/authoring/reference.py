"""The recipe reference (``docs/recipes.md``) and the registry listing, generated from the code.

Both read the pydantic recipe models and the live registries, so a new field or a newly
registered name shows up here without anyone editing a document;
``tests/authoring/test_reference.py`` fails when the committed ``docs/recipes.md`` is stale.

Example:
    >>> from compress.authoring.reference import list_registries, render_recipe_reference
    >>> dict(list_registries()["Schedules (schedule.kind)"])["one-shot"][:32]
    'One-shot: a single step straight'
    >>> "| `mean` | `list[float]` | required |" in render_recipe_reference()
    True
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from compress.registry import Registry

__all__ = ["inline_yaml", "list_registries", "recipe_sections", "render_recipe_reference",
           "section_snippets"]

# Keys of each section shown in its YAML snippet. The VALUES come from the fields' `examples`;
# only the choice of keys is made here, because not every example combines with every other
# (ratio vs target, hybrid-only keys) and a snippet must be a valid recipe.
# tests/authoring/test_reference.py validates all snippets together as one recipe.
_SNIPPET_KEYS: dict[str, tuple[str, ...]] = {
    "": ("version", "name", "seed", "device"),
    "model": ("source", "name", "checkpoint"),
    "data": ("source", "path", "batch_size", "val_subset", "augment", "normalize"),
    "pruning": ("kind", "importance", "target", "round_to", "ignored"),
    "calibration": ("samples", "seq_len", "batch_size", "split"),
    "schedule": ("kind", "steps", "step_rule"),
    "finetune": ("optimizer", "lr", "patience", "monitor", "min_delta", "max_epochs",
                 "eval_every"),
    "export": ("safetensors", "onnx", "opset", "steps"),
    "report": ("latency", "engines", "batch_sizes"),
    "gates": ("max_accuracy_drop", "min_macs_reduction", "min_speedup"),
}
_HIDDEN = frozenset({"base_dir"})  # set by the loader, refused in a recipe


def inline_yaml(value: Any) -> str:
    """``value`` as one line of YAML flow style (quoted only where YAML needs it).

    Example:
        >>> inline_yaml({"macs": 0.5}), inline_yaml(["random_crop"]), inline_yaml(None)
        ('{macs: 0.5}', '[random_crop]', 'null')
    """
    # Dumping a one-item list avoids the "..." document end marker YAML adds after a scalar.
    text = yaml.safe_dump([value], default_flow_style=True, width=sys.maxsize, sort_keys=False)
    return text.strip()[1:-1]


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``), if any."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def recipe_sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section of a recipe as ``(dotted path, model)``: top level ``""`` first, then
    each section followed by its nested ones (``data.normalize``), in recipe order."""
    from compress.recipe.spec import Recipe

    out: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel]) -> None:
        out.append((path, model))
        for name, field in model.model_fields.items():
            nested = _section_model(field.annotation)
            if nested is not None and name not in _HIDDEN:
                walk(f"{path}.{name}" if path else name, nested)

    walk("", Recipe)
    return out


def _fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    return ((n, f) for n, f in model.model_fields.items() if n not in _HIDDEN)


def _type_name(annotation: Any, *, top: bool = True) -> str:
    """A readable type: ``int``, ``float | null``, ``list[str]``, ``one of: sgd, adamw``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        values = [str(a) for a in args]
        return "one of: " + ", ".join(values) if top else " | ".join(f'"{v}"' for v in values)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a, top=False) for a in args)
    if origin is list:
        item = args[0]
        if get_origin(item) is Literal:  # "list of: a, b" reads better than list["a" | "b"]
            return "list of: " + ", ".join(str(a) for a in get_args(item))
        return f"list[{_type_name(item, top=False)}]"
    if origin is dict:
        return f"mapping[{_type_name(args[0], top=False)}, {_type_name(args[1], top=False)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return f"`{inline_yaml(value)}`"


def _cell(text: str) -> str:
    # A "|" would end the table cell, even inside a code span (GFM escapes it as "\|").
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, spaces to '-', other punctuation dropped."""
    return re.sub(r"[^a-z0-9_-]", "", heading.lower().replace(" ", "-"))


def _field_rows(path: str, model: type[BaseModel]) -> list[str]:
    registered = {key: reg.names() for _, key, reg in _registries()}
    rows = ["| key | type | default | description | example |", "|---|---|---|---|---|"]
    for name, field in _fields(model):
        key = f"{path}.{name}" if path else name
        description = field.description or ""
        if _section_model(field.annotation) is not None:
            description += f" See [`{key}`](#{_anchor(key)})."
        # Registry-checked strings list what is registered today (a Literal type already does).
        if key in registered and get_origin(field.annotation) is not Literal:
            description += " Registered: " + ", ".join(f"`{n}`" for n in registered[key]) + "."
        examples = ", ".join(f"`{inline_yaml(e)}`" for e in field.examples or [])
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{name}`", f"`{_type_name(field.annotation)}`", _default(field), description,
            examples)) + " |")
    return rows


def section_snippets() -> dict[str, dict[str, Any]]:
    """Per section, an example mapping built from the fields' first examples.

    Top-level keys are under ``""``; merged together they make a valid recipe.
    """
    from compress.recipe.spec import Recipe

    out: dict[str, dict[str, Any]] = {}
    for section, keys in _SNIPPET_KEYS.items():
        model = _section_model(Recipe.model_fields[section].annotation) if section else Recipe
        assert model is not None, section
        fields = model.model_fields
        out[section] = {k: fields[k].examples[0] for k in keys if fields[k].examples}
    return out


def _section_text(path: str, model: type[BaseModel]) -> str:
    """The section's docstring, else the description of the field that holds it."""
    from compress.recipe.spec import Recipe

    if not path:
        return ("Keys at the top of the recipe; each section below is a mapping under its own "
                "key.")
    doc = model.__dict__.get("__doc__")  # not inherited: BaseModel's own docstring is no use
    if doc:
        return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    parent: type[BaseModel] = Recipe
    *parents, last = path.split(".")
    for part in parents:
        nested = _section_model(parent.model_fields[part].annotation)
        assert nested is not None, path
        parent = nested
    return parent.model_fields[last].description or ""


def _snippet_yaml(section: str, values: dict[str, Any]) -> str:
    lines = [f"{k}: {inline_yaml(v)}" for k, v in values.items()]
    if section:
        lines = [f"{section}:", *(f"  {line}" for line in lines)]
    return "\n".join(["```yaml", *lines, "```"])


def _describe(entry: Any, registry: Registry[Any]) -> str:
    """One line about a registered entry.

    Its ``description`` when it has one (importance criteria); else the docstring of its module
    when that module registers only this entry (the one-file-per-source convention); else its
    own docstring. First paragraph, reST markup removed.
    """
    text = getattr(entry, "description", None)
    if not isinstance(text, str) or not text:
        module = sys.modules.get(getattr(entry, "__module__", ""), None)
        here = getattr(module, "__name__", None)
        siblings = [n for n in registry.names()
                    if getattr(registry.get(n), "__module__", 0) == here]
        doc = module.__doc__ if module is not None and len(siblings) == 1 else None
        text = doc or inspect.getdoc(entry) or ""
    first = inspect.cleandoc(text).split("\n\n")[0]
    first = re.sub(r":\w+:`([^`]*)`", r"\1", first).replace("``", "")
    return " ".join(first.split()).rstrip(".")


def _registries() -> list[tuple[str, str, Registry[Any]]]:
    """``(title, recipe key, registry)`` of every registry a recipe names entries of."""
    # Importing a registry's package registers its entries (sources, criteria, kinds...).
    from compress.data import DATASETS
    from compress.models import MODEL_SOURCES
    from compress.pruning.base import PRUNING_KINDS
    from compress.pruning.criteria import IMPORTANCE
    from compress.schedules import SCHEDULES

    return [("Model sources", "model.source", MODEL_SOURCES),
            ("Datasets", "data.source", DATASETS),
            ("Importance criteria", "pruning.importance", IMPORTANCE),
            ("Pruning kinds", "pruning.kind", PRUNING_KINDS),
            ("Schedules", "schedule.kind", SCHEDULES)]


def list_registries() -> dict[str, list[tuple[str, str]]]:
    """Registry title (naming its recipe key) -> sorted ``(name, one-line description)``.

    What ``compress list`` prints and the last part of the recipe reference.
    """
    return {f"{title} ({key})": [(name, _describe(reg.get(name), reg)) for name in reg.names()]
            for title, key, reg in _registries()}


def render_recipe_reference() -> str:
    """The Markdown recipe reference: every section and field, then every registered name.

    Deterministic (no timestamps; registry names sorted), ends with one newline.
    """
    sections = recipe_sections()
    snippets = section_snippets()
    out = ["# Recipe reference", "",
           "<!-- Generated from compress/recipe/ and the registries by "
           "`compress schema --markdown > docs/recipes.md`; do not edit by hand. -->", "",
           "A recipe is a YAML mapping of the sections below. Every key is checked: an unknown "
           "key, a wrong type or an unknown name fails with the key's YAML path and the allowed "
           "values. Relative paths resolve against the recipe's folder. `compress init` writes "
           "a commented starter recipe; `compress validate RECIPE` checks one without running "
           "it.", "", "Sections:", ""]
    out += [f"- [`{p}`](#{_anchor(p)})" if p else "- [Top level](#top-level)"
            for p, _ in sections]
    out += ["- [Registered names](#registered-names)", ""]
    for path, model in sections:
        out += [f"## `{path}`" if path else "## Top level", "", _section_text(path, model), ""]
        out += _field_rows(path, model) + [""]
        if path in snippets:
            out += [_snippet_yaml(path, snippets[path]), ""]
    out += ["## Registered names", "",
            "The names each registry accepts, read from the code (`compress list` prints the "
            "same).", ""]
    for title, entries in list_registries().items():
        out += [f"### {title}", "", "| name | description |", "|---|---|"]
        out += [f"| `{_cell(name)}` | {_cell(text)} |" for name, text in entries]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
