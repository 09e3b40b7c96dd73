"""Any ``torchvision.models`` architecture, optionally with its pretrained weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from compress.errors import InputError
from compress.models import MODEL_SOURCES

__all__ = ["TorchvisionSource"]


@MODEL_SOURCES.register("torchvision")
class TorchvisionSource:
    accepts = frozenset({"name", "num_classes", "weights"})
    required = frozenset({"name"})

    def check(self, spec: Any) -> None:
        import torchvision

        available = torchvision.models.list_models()
        if spec.name not in available:
            close = [n for n in available if n.startswith(spec.name[:4])][:8]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise InputError(f"unknown torchvision model {spec.name!r}{hint}")

    def build(self, spec: Any, resolve: Callable[[str], Path], pretrained: bool) -> nn.Module:
        import torchvision

        kwargs = dict(spec.kwargs)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        weights = None
        if pretrained and spec.weights:
            try:
                weights = torchvision.models.get_model_weights(spec.name)[spec.weights]
            except KeyError:
                names = [w.name for w in torchvision.models.get_model_weights(spec.name)]
                raise InputError(f"unknown weights {spec.weights!r} for {spec.name}; available: "
                                 f"DEFAULT, {', '.join(names)}") from None
        try:
            return torchvision.models.get_model(spec.name, weights=weights, **kwargs)
        except (TypeError, ValueError) as err:
            raise InputError(f"torchvision model {spec.name!r} rejected its arguments: {err}") from None
