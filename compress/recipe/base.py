"""What every recipe section shares: unknown keys refused, registry names checked lazily.

Example:
    >>> class Part(Section):
    ...     size: int = 1
    >>> Part(size=2).size
    2
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["Section", "registered", "pruning_kind_of", "device_name"]


def registered(field: str, module: str, registry: str) -> Any:
    """A validator of ``field``: its value must name an entry of ``module.registry``.

    The registry is imported when a recipe is validated, not with this module (registries
    import torch).
    """

    def check(name: str) -> str:
        getattr(importlib.import_module(module), registry).get(name)
        return name

    return field_validator(field)(check)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def pruning_kind_of(name: str) -> Any:
    """The registered kind; imported when a recipe is validated (the kinds import torch)."""
    return importlib.import_module("compress.pruning").pruning_kind(name)


def device_name(v: str) -> str:
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError("device must be one of auto, cpu, cuda, cuda:N")
