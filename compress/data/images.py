"""What the image dataset sources share: how a served model's input is described.

digits, imagefolder and torchvision datasets all feed float pixels, channels first; each says
only what differs.

Example:
    >>> from types import SimpleNamespace
    >>> from compress.recipe import DataSpec
    >>> info = ImageSource().serving_info(DataSpec(source="digits", image_size=16),
    ...                                   SimpleNamespace(class_names=["0", "1"]))
    >>> info["classes"], info["preprocess"]["image_size"]
    (['0', '1'], 16)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.data import DataBundle
    from compress.recipe import DataSpec

__all__ = ["ImageSource"]


class ImageSource:
    """Base of the dataset sources that give images."""

    def serving_info(self, spec: DataSpec, bundle: DataBundle) -> dict[str, Any]:
        """What model.json tells a service about the classes and the input pixels.

        Example:
            >>> from types import SimpleNamespace
            >>> from compress.recipe import DataSpec
            >>> ImageSource().serving_info(DataSpec(source="digits"),
            ...                            SimpleNamespace(class_names=[]))["preprocess"]["pixels"]
            'float32, channels first, scaled to 0..1'
        """
        norm = spec.normalize
        return {"classes": list(bundle.class_names),
                "preprocess": {"pixels": "float32, channels first, scaled to 0..1",
                               "image_size": spec.image_size,
                               "resize": "bilinear, antialiased",
                               "normalize": norm.model_dump() if norm is not None else None}}
