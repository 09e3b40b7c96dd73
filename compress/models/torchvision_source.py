"""Any ``torchvision.models`` architecture, optionally with its pretrained weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from compress.errors import InputError
from compress.models import MODEL_SOURCES
from compress.models.base import CHANNEL_STARTER, ChannelPrunedSource

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["TorchvisionSource"]


@MODEL_SOURCES.register("torchvision")
class TorchvisionSource(ChannelPrunedSource):
    accepts = frozenset({"name", "num_classes", "weights"})
    required = frozenset({"name"})
    starter_defaults = {**CHANNEL_STARTER, "imagenet_input": True}

    def starter_keys(self, w: StarterWriter, arg: str, request: StarterRequest) -> dict[str, Any]:
        """The architecture; ImageNet weights for ImageNet's 1000 classes, else the data's.

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> TorchvisionSource().starter_keys(StarterWriter(), "resnet18", StarterRequest())
            {'name': 'resnet18'}
        """
        fields: dict[str, Any] = {"name": arg}
        w.key("name", arg)
        classes = request.classes
        if classes not in (None, 1000):
            fields["num_classes"] = classes
            why = (f"torchvision's ImageNet weights have 1000 classes and the data has "
                   f"{classes}: give weights trained on your data in checkpoint (without them "
                   f"the model starts from random weights).")
            if request.checkpoint:
                why = "The data's classes, which your checkpoint was trained for."
            w.key("num_classes", classes, why)
        elif request.checkpoint is None:
            w.key("weights", "DEFAULT", "ImageNet weights from torchvision (downloaded on first "
                  "use): the data needs ImageNet's 1000 classes. For other data, drop this, set "
                  "num_classes and give your trained weights in checkpoint.")
        elif classes is not None:
            fields["num_classes"] = classes
            w.key("num_classes", classes)
        return fields

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
