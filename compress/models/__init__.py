"""Model sources: one file per source, each registered in :data:`MODEL_SOURCES`.

A source is a class with ``fields`` (the ``model.*`` recipe keys it uses), ``required`` (those it
needs) and ``build(spec, resolve, pretrained)``. Checkpoints are loaded here, once for all
sources, so every source accepts ``model.checkpoint``.

Example:
    >>> from compress.models import build_model
    >>> from compress.recipe import ModelSpec
    >>> net = build_model(ModelSpec(source="cifar_resnet", name="resnet20"))
    >>> sum(p.numel() for p in net.parameters())
    269722
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from torch import nn

from compress.registry import Registry, check_entry_fields

if TYPE_CHECKING:
    from compress.recipe import ModelSpec

__all__ = ["MODEL_SOURCES", "ModelSource", "build_model", "check_model_spec"]


class ModelSource(Protocol):
    fields: frozenset[str]
    required: frozenset[str]

    def build(self, spec: ModelSpec, resolve: Callable[[str], Path], pretrained: bool) -> nn.Module:
        ...

    def check(self, spec: ModelSpec) -> None:
        """Cheap checks of the spec (names), without building anything."""


MODEL_SOURCES: Registry[type[ModelSource]] = Registry("model source")

_COMMON = frozenset({"source", "checkpoint", "kwargs"})


def check_model_spec(spec: ModelSpec) -> None:
    """Raise :class:`InputError` when ``spec`` sets keys its source does not use or misses some."""
    source = MODEL_SOURCES.get(spec.source)
    check_entry_fields(spec, section="model", kind="model source",
                       accepts=source.fields | _COMMON, required=source.required)
    source().check(spec)


def build_model(spec: ModelSpec, *, resolve: Callable[[str], Path] = Path,
                pretrained: bool = True) -> nn.Module:
    """Build the model a recipe describes; with ``pretrained`` also load weights/checkpoint."""
    from compress.models.checkpoint import load_checkpoint_

    check_model_spec(spec)
    model = MODEL_SOURCES.get(spec.source)().build(spec, resolve, pretrained)
    if pretrained and spec.checkpoint:
        load_checkpoint_(model, resolve(spec.checkpoint))
    return model


# Registering sources is a side effect of importing their modules.
from compress.models import (cifar_resnet, huggingface, python_source,  # noqa: E402,F401
                             torchvision_source)
