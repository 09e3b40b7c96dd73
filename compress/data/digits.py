"""scikit-learn's bundled 8x8 handwritten digits: 1,797 grayscale images, 10 classes, offline.

Small enough to run a whole recipe on a laptop CPU in seconds, which is what tests and the
quickstart need.

Example:
    >>> from compress.data.digits import load_digits_split
    >>> raw = load_digits_split()
    >>> len(raw.train), len(raw.eval), raw.eval[0][0].shape
    (1437, 360, torch.Size([1, 8, 8]))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from compress.data import DATASETS
from compress.data.base import RawData, TensorImages
from compress.data.images import IMAGE_STARTER, ImageSource
from compress.errors import InputError

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["DigitsSource", "load_digits_split"]

# The split seed is fixed (not the recipe seed) so the eval set never changes between runs.
_SPLIT_SEED = 0
_EVAL_FRACTION = 0.2


def load_digits_split() -> RawData:
    """The digits as a fixed, stratified 80/20 train/eval split with pixels scaled to 0..1."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are integers 0..16.
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, eval_idx = train_test_split(np.arange(len(labels)), test_size=_EVAL_FRACTION,
                                           random_state=_SPLIT_SEED, stratify=digits.target)
    train_idx, eval_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(eval_idx))
    return RawData(train=TensorImages(images[train_idx], labels[train_idx]),
                   eval=TensorImages(images[eval_idx], labels[eval_idx]),
                   class_names=[str(i) for i in range(10)])


@DATASETS.register("digits")
class DigitsSource(ImageSource):
    accepts: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    starter_defaults = {**IMAGE_STARTER, "small": True, "val_subset": 200,
                        "crop_padding": (1, "8x8 images: pad random crops by one pixel.")}

    def starter_classes(self, arg: str) -> int:
        """Ten: the digits 0 to 9.

        Example:
            >>> DigitsSource().starter_classes("")
            10
        """
        return 10

    def starter_keys(self, w: StarterWriter, arg: str,
                     request: StarterRequest) -> tuple[bool, bool]:
        """No keys to write: grayscale digits, which mirroring would turn into other shapes.

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> DigitsSource().starter_keys(StarterWriter(), "", StarterRequest(data="digits"))
            (False, False)
        """
        if arg:
            raise InputError(f"data source 'digits' takes no argument (got {request.data!r}); "
                             f"use digits")
        return False, False

    def load(self, spec: Any, resolve: Callable[[str], Path], train: bool) -> RawData:
        return load_digits_split()
