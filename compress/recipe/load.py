"""Loading recipes: YAML with bounded aliases and depth, ``--set`` overrides, one-sentence
errors that name the YAML path, and the JSON schema.

Example:
    >>> r = parse_recipe({"version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
    ...                   "data": {"source": "digits"}, "pruning": {"ratio": 0.5}})
    >>> r.schedule.kind, r.pruning.importance
    ('one-shot', 'l2')
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from compress.errors import InputError
from compress.recipe.spec import Recipe
from compress.recipe.yamlsafe import MAX_BYTES, read_yaml
from compress.registry import did_you_mean

__all__ = ["parse_recipe", "apply_overrides", "load_recipe", "recipe_json_schema"]


def _format_loc(loc: tuple[Any, ...]) -> str:
    # A key may hold a newline or other control characters: escape them, the message is one line.
    parts = (str(p) if str(p).isprintable() else str(p).encode("unicode_escape").decode("ascii")
             for p in loc)
    return ".".join(parts) or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return [k for k in model.model_fields if k != "base_dir"]


def _validation_message(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = _format_loc(loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            parts.append(f"unknown key '{where}'{did_you_mean(str(loc[-1]), allowed)}; "
                         f"allowed keys here: {', '.join(allowed)}")
        elif e["type"] == "missing":
            parts.append(f"missing required key '{where}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            # A check across sections (no location) names its keys itself.
            parts.append(f"'{where}': {msg}{got_s}" if loc else f"{msg}{got_s}")
    return f"{source}: " + "; ".join(parts)


def parse_recipe(data: dict[str, Any], *, source: str = "recipe",
                 base_dir: str | os.PathLike[str] | None = None) -> Recipe:
    """Validate a recipe given as a dict; raise :class:`InputError` naming the bad keys."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a recipe must be a mapping of sections, got "
                         f"{type(data).__name__}")
    if "base_dir" in data:
        raise InputError(f"{source}: unknown key 'base_dir'")
    try:
        # Strict where input enters: '0.5' is not a number, true is not 1 (an int is a float).
        recipe = Recipe.model_validate(data, strict=True)
    except ValidationError as err:
        raise InputError(_validation_message(err, source)) from None
    if base_dir is not None:
        recipe.base_dir = str(Path(base_dir).resolve())
    return recipe


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML).

    Example:
        >>> apply_overrides({"finetune": {"epochs": 3}}, ["finetune.epochs=1"])
        {'finetune': {'epochs': 1}}
    """
    out = copy.deepcopy(data)
    items: list[tuple[str, Any]]
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise InputError(f"override {item!r} is not of the form a.b.c=value")
            value = read_yaml(raw, source=f"override {item!r}") if raw.strip() else None
            items.append((key.strip(), value))
    for key, value in items:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"override {key!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_recipe(path: str | os.PathLike[str],
                overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load, override and validate a YAML recipe; relative paths resolve against its folder.

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", ["finetune.epochs=1"])  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"recipe file {str(p)!r} does not exist; pass the path of a YAML recipe")
    with open(p, "rb") as f:  # one byte past the cap is enough to refuse a huge file
        raw = f.read(MAX_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a UTF-8 text file") from None
    data = read_yaml(text, source=str(p))
    if data is None:
        raise InputError(f"{p}: the recipe is empty")
    if overrides:
        if not isinstance(data, dict):
            raise InputError(f"{p}: a recipe must be a mapping of sections, got "
                             f"{type(data).__name__}")
        data = apply_overrides(data, overrides)
    recipe = parse_recipe(data, source=str(p), base_dir=p.parent)
    if recipe.name is None:
        recipe.name = p.stem
    return recipe


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe (what ``compress schema`` prints)."""
    schema = Recipe.model_json_schema()
    schema["properties"].pop("base_dir", None)
    return schema
