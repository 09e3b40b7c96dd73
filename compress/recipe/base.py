"""What every recipe section shares: unknown keys refused, registry names checked lazily.

Example:
    >>> class Part(Section):
    ...     size: int = 1
    >>> Part(size=2).size
    2
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["Section", "registered", "registered_names", "pruning_kind_of", "criterion_of",
           "device_name"]


def registered(field: str, module: str, registry: str) -> Any:
    """A validator of ``field``: its value must name an entry of ``module.registry``.

    The registry is imported when a recipe is validated, not with this module (registries
    import torch).
    """

    def check(name: str) -> str:
        getattr(importlib.import_module(module), registry).get(name)
        return name

    return field_validator(field)(check)


def registered_names(module: str, registry: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of a field ``registered`` checks: the JSON schema lists the names
    registered when the schema is made, as its ``enum`` (editors complete and check them) and
    at the end of its description (so no hand-written list of names can go stale)."""

    def extra(schema: dict[str, Any]) -> None:
        names = getattr(importlib.import_module(module), registry).names()
        schema["enum"] = names
        text = schema.get("description", "").rstrip()
        schema["description"] = (text + " " if text else "") + f"One of: {', '.join(names)}."

    return extra


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def pruning_kind_of(name: str) -> Any:
    """The registered kind; imported when a recipe is validated (the kinds import torch)."""
    return importlib.import_module("compress.pruning").pruning_kind(name)


def criterion_of(name: str) -> Any:
    """The registered importance criterion (imported lazily, as the kinds are)."""
    return importlib.import_module("compress.pruning.criteria").IMPORTANCE.get(name)


def device_name(v: str) -> str:
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError("device must be one of auto, cpu, cuda, cuda:N")
