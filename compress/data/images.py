"""What the image dataset sources share: how a served model's input is described, and the
image keys of a ``compress init`` starter recipe.

digits, imagefolder and torchvision datasets all feed float pixels, channels first; each says
only what differs (its own keys, whether it is colour, whether mirroring keeps the class).

Example:
    >>> from types import SimpleNamespace
    >>> from compress.recipe.sources import DataSpec
    >>> info = ImageSource().serving_info(DataSpec(source="digits", image_size=16),
    ...                                   SimpleNamespace(class_names=["0", "1"]))
    >>> info["classes"], info["preprocess"]["image_size"]
    (['0', '1'], 16)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter
    from compress.data import DataBundle
    from compress.recipe.sources import DataSpec

__all__ = ["IMAGENET_STATS", "IMAGE_STARTER", "ImageSource"]

IMAGENET_STATS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# Read by compress.authoring.starter; a source changes what differs ({**IMAGE_STARTER, key: value}).
IMAGE_STARTER: dict[str, Any] = {
    "note": "Data for fine-tuning, and for accuracy before and after.",
    "inputs": "images",      # what the model is fed: images or tokens
    "small": False,          # a few hundred samples: evaluate and train in short spans
    "val_subset": 1000,      # training samples held out for patience-based fine-tuning
    "crop_padding": None,    # (pixels, why) when random crops need other padding
}


class ImageSource:
    """Base of the dataset sources that give images."""

    starter_defaults: dict[str, Any] = IMAGE_STARTER

    def serving_info(self, spec: DataSpec, bundle: DataBundle) -> dict[str, Any]:
        """What model.json tells a service about the classes and the input pixels.

        Example:
            >>> from types import SimpleNamespace
            >>> from compress.recipe.sources import DataSpec
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

    def starter_classes(self, arg: str) -> int | None:
        """How many classes the data named by ``arg`` has, when that can be told cheaply.

        Example:
            >>> ImageSource().starter_classes("") is None
            True
        """
        return None

    def starter_keys(self, w: StarterWriter, arg: str,
                     request: StarterRequest) -> tuple[bool, bool]:
        """Write the keys naming the data (after ``source``); return (colour, flip keeps class)."""
        raise NotImplementedError

    def starter(self, w: StarterWriter, arg: str, request: StarterRequest) -> None:
        """Write the data section's keys after ``source``.

        Example:
            >>> from compress.data.digits import DigitsSource
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> w = StarterWriter()
            >>> DigitsSource().starter(w, "", StarterRequest(data="digits"))
            >>> [line for line in w.lines if not line.lstrip().startswith("#")]
            ['  batch_size: 64', '  augment: [random_crop]', '  crop_padding: 1']
        """
        rgb, flip = self.starter_keys(w, arg, request)
        defaults = self.starter_defaults
        if request.image_size is not None:
            w.key("image_size", request.image_size, "Images are resized to the input size the "
                  "model was trained at.")
        elif request.imagenet_input:
            w.key("image_size", 224, "Images are resized to the input size torchvision's "
                  "ImageNet models expect.")
        w.key("batch_size", 64)
        if request.patience:
            w.key("val_subset", defaults["val_subset"], "Training samples held out as "
                  "validation data for patience-based fine-tuning (about a tenth of the "
                  "training split is plenty).")
        augment = ["random_crop", "horizontal_flip"] if flip else ["random_crop"]
        w.key("augment", augment, "Training augmentations." + ("" if flip else " No "
              "horizontal_flip: mirrored digits and letters are different classes."))
        if defaults["crop_padding"] is not None:
            w.key("crop_padding", *defaults["crop_padding"])
        if rgb:
            w.key("normalize", IMAGENET_STATS, "Use the statistics the model was trained with "
                  "(these are ImageNet's, which the CIFAR ResNet checkpoints also use).")
