"""Model sources: one file per source, each registered in :data:`MODEL_SOURCES`.

A source is a class with ``accepts`` (the ``model.*`` recipe keys it uses beyond the common
ones), ``required`` (those it needs), ``check(spec)`` (cheap checks of names, calling no user
code), ``code(spec, resolve)`` (what building would import or call, in words) and
``build(spec, resolve, pretrained)``; :meth:`compress.registry.SourceRegistry.check_spec`
holds a ``model`` section to them. For ``compress init`` it also has ``starter_defaults`` and
``starter(writer, arg, request)`` (:mod:`compress.authoring.starter`); sources pruned by channels
share theirs in :mod:`compress.models.base`. Checkpoints are loaded here, once for all sources,
so every source accepts ``model.checkpoint``.

Example:
    >>> from compress.models import build_model
    >>> from compress.recipe.sources import ModelSpec
    >>> net = build_model(ModelSpec(source="cifar_resnet", name="resnet20"))
    >>> sum(p.numel() for p in net.parameters())
    269722
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from compress.registry import SourceRegistry

if TYPE_CHECKING:
    from compress.recipe.pruning import PruningSpec
    from compress.recipe.sources import ModelSpec

__all__ = ["MODEL_SOURCES", "ModelSource", "build_model", "check_model_spec", "model_tokenizer"]


class ModelSource(Protocol):
    accepts: frozenset[str]
    required: frozenset[str]
    starter_defaults: dict[str, Any]

    def build(self, spec: ModelSpec, resolve: Callable[[str], Path], pretrained: bool) -> nn.Module:
        ...

    def check(self, spec: ModelSpec) -> None:
        """Cheap checks of the spec (names), without building anything."""

    def tokenizer(self, spec: ModelSpec) -> str | None:
        """The tokenizer that comes with the model (text data defaults to it), or None."""

    def notes(self, spec: ModelSpec, pruning: PruningSpec,
              resolve: Callable[[str], Path]) -> list[str]:
        """What a valid recipe will do that its author may not expect (``compress validate``)."""

    def code(self, spec: ModelSpec, resolve: Callable[[str], Path]) -> list[str]:
        """What building ``spec`` would import or call, one sentence each, found without
        importing or calling anything (``compress validate`` is side-effect free)."""

    def check_pruning(self, spec: ModelSpec, pruning: PruningSpec,
                      resolve: Callable[[str], Path]) -> None:
        """Raise :class:`InputError` for a pruning this model cannot take, known before it is
        built (``compress validate`` and every run check it)."""


MODEL_SOURCES: SourceRegistry[type[ModelSource]] = SourceRegistry(
    "model source", section="model", common=frozenset({"source", "checkpoint", "kwargs"}))


def check_model_spec(spec: ModelSpec) -> None:
    """Raise :class:`InputError` when ``spec`` sets keys its source does not use, misses some,
    or names something the source does not know (the one check of a model section).

    Example:
        >>> from compress.recipe.sources import ModelSpec
        >>> check_model_spec(ModelSpec(source="cifar_resnet", name="resnet9"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        compress.errors.InputError: unknown cifar_resnet name 'resnet9'; available: resnet20, ...
    """
    MODEL_SOURCES.check_spec(spec)


def model_tokenizer(spec: ModelSpec) -> str | None:
    """The tokenizer the model ``spec`` names comes with, as its source says (None for none).

    Example:
        >>> from compress.recipe.sources import ModelSpec
        >>> model_tokenizer(ModelSpec(source="cifar_resnet", name="resnet20")) is None
        True
    """
    return MODEL_SOURCES.get(spec.source)().tokenizer(spec)


def build_model(spec: ModelSpec, *, resolve: Callable[[str], Path] = Path,
                pretrained: bool = True, check: bool = True) -> nn.Module:
    """Build the model a recipe describes; with ``pretrained`` also load weights/checkpoint.

    ``check=False`` skips :func:`check_model_spec`, for a spec already checked (as
    ``compress.run.preflight.check_recipe`` does for a whole recipe).
    """
    from compress.models.checkpoint import load_checkpoint_

    if check:
        check_model_spec(spec)
    model = MODEL_SOURCES.get(spec.source)().build(spec, resolve, pretrained)
    if pretrained and spec.checkpoint:
        load_checkpoint_(model, resolve(spec.checkpoint))
    return model


# Registering sources is a side effect of importing their modules.
from compress.models import cifar_resnet, huggingface, python_source, torchvision_source  # noqa: E402,F401
