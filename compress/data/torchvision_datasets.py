"""Classification datasets from ``torchvision.datasets`` that come as a fixed train/test pair.

``data.name`` is the class name, ``data.path`` the root folder torchvision reads (and, with
``data.download: true``, writes). Nothing is downloaded unless the recipe says so.

Example:
    >>> from compress.data import build_data
    >>> from compress.recipe.sources import DataSpec
    >>> spec = DataSpec(source="torchvision", name="CIFAR10", path="~/data/cifar10")
    >>> build_data(spec).sample_shape  # doctest: +SKIP
    (3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from compress.data import DATASETS
from compress.data.base import RawData, pil_to_float
from compress.data.images import ImageSource
from compress.errors import InputError

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["SUPPORTED", "TorchvisionDataSource"]

# How each dataset picks its split. Only datasets with exactly a train and a test split are
# listed: others (EMNIST, ImageNet, ...) need extra arguments a recipe has no keys for.
SUPPORTED: dict[str, str] = {
    "MNIST": "train", "FashionMNIST": "train", "KMNIST": "train", "QMNIST": "train",
    "CIFAR10": "train", "CIFAR100": "train", "USPS": "train", "SVHN": "split",
}
_GRAY = frozenset({"MNIST", "FashionMNIST", "KMNIST", "QMNIST", "USPS"})
_NO_FLIP = frozenset({"MNIST", "KMNIST", "QMNIST", "USPS", "SVHN"})  # digits and letters


def _open(name: str, root: Path, is_train: bool, download: bool) -> Dataset[Any]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    split_kw: dict[str, Any] = ({"train": is_train} if SUPPORTED[name] == "train"
                                else {"split": "train" if is_train else "test"})
    if not download and not root.is_dir():
        raise InputError(f"data.path {str(root)!r} does not exist; point it at the torchvision "
                         f"{name} root folder or set data.download: true")
    try:
        return cls(root=str(root), download=download, transform=pil_to_float, **split_kw)
    except (RuntimeError, AssertionError, ValueError, EOFError) as err:
        # torchvision says "Dataset not found or corrupted" for missing or damaged files.
        if not download:
            raise InputError(f"data.path {str(root)!r} does not hold readable torchvision {name} "
                             "files; set data.download: true or point data.path at the dataset "
                             "root folder") from err
        raise InputError(f"torchvision {name} could not be prepared in data.path "
                         f"{str(root)!r} ({err})") from err
    except OSError as err:  # network errors (URLError is an OSError) and unwritable roots
        raise InputError(f"downloading torchvision {name} into data.path {str(root)!r} failed "
                         f"({err}); check the network or put the files there yourself") from err


def _class_names(datasets: list[Dataset[Any]]) -> list[str]:
    classes = getattr(datasets[0], "classes", None)
    if classes:
        return [str(c) for c in classes]
    # USPS and SVHN have no class list; their labels are the digits 0..9.
    top = 0
    for ds in datasets:
        labels = getattr(ds, "targets", None)
        labels = getattr(ds, "labels", None) if labels is None else labels
        if labels is not None and len(labels):
            top = max(top, int(np.max(np.asarray(labels))))
    return [str(i) for i in range(top + 1)]


@DATASETS.register("torchvision")
class TorchvisionDataSource(ImageSource):
    accepts = frozenset({"name", "path", "download"})
    required = frozenset({"name", "path"})

    def starter_classes(self, arg: str) -> int:
        """CIFAR-100's hundred classes, else ten (every other supported dataset has ten).

        Example:
            >>> TorchvisionDataSource().starter_classes("CIFAR100")
            100
        """
        return 100 if arg == "CIFAR100" else 10

    def starter_keys(self, w: StarterWriter, arg: str,
                     request: StarterRequest) -> tuple[bool, bool]:
        """The dataset and its root folder, never downloaded unless asked to.

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> TorchvisionDataSource().starter_keys(StarterWriter(), "MNIST", StarterRequest())
            (False, False)
        """
        if arg not in SUPPORTED:
            raise InputError(f"data {request.data!r}: torchvision dataset {arg!r} is not "
                             f"supported; supported: {', '.join(SUPPORTED)}")
        w.key("name", arg)
        w.key("path", "./data", "Root folder torchvision reads the dataset from.")
        w.key("download", False, "Nothing is downloaded unless this is true: set it for the "
              "first run if ./data does not hold the files yet.")
        return arg not in _GRAY, arg not in _NO_FLIP

    def load(self, spec: Any, resolve: Callable[[str], Path], train: bool) -> RawData:
        import torchvision.datasets as tvd

        if spec.name not in SUPPORTED:
            what = ("is not supported" if hasattr(tvd, spec.name)
                    else "is not a torchvision dataset")
            raise InputError(f"data.name {spec.name!r} {what}; supported torchvision datasets: "
                             f"{', '.join(SUPPORTED)} (use the imagefolder source for others)")
        root = resolve(spec.path)
        eval_set = _open(spec.name, root, False, spec.download)
        train_set = _open(spec.name, root, True, spec.download) if train else None
        for split, ds in (("test", eval_set), ("train", train_set)):
            if ds is not None and len(ds) == 0:  # type: ignore[arg-type]
                raise InputError(f"data.path {str(root)!r}: the torchvision {spec.name} {split} "
                                 "split is empty; point data.path at the full dataset")
        present = [ds for ds in (eval_set, train_set) if ds is not None]
        return RawData(train=train_set, eval=eval_set, class_names=_class_names(present))
