"""What every dataset source shares: raw datasets, seeded subsets, transforms and the sampler.

A source returns :class:`RawData`: datasets whose items are ``(float CHW tensor in 0..1, int)``.
Everything after that (subsets, resize, augmentation, normalisation, loaders) is done here, once,
so all sources behave the same.

Example:
    >>> import torch
    >>> from compress.data.base import TensorImages, Transform
    >>> images = TensorImages(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), [0, 1])
    >>> Transform(image_size=16)(images[1][0]).shape
    torch.Size([1, 16, 16])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from compress.errors import InputError

__all__ = ["RawData", "TensorImages", "Transform", "View", "SeededShuffle", "seeded_subset",
           "seeded_holdout", "pil_to_float"]

Item = tuple[torch.Tensor, int]


@dataclass
class RawData:
    """A source's output: untransformed train/eval datasets and the class names (index order)."""

    train: Dataset[Item] | None
    eval: Dataset[Item]
    class_names: list[str]
    # How a list of items becomes a batch; None: torch's default (stacking).
    collate: Callable[[list[Any]], Any] | None = None


class TensorImages(Dataset[Item]):
    """Images held in one tensor ``(N, C, H, W)``: uint8 (0..255) or float (already 0..1).

    Keeping uint8 and converting per item costs 4x less memory than storing floats.
    """

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> None:
        assert images.dim() == 4, "images must be (N, C, H, W)"
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        assert len(self.labels) == len(images), "one label per image"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        x = self.images[index]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        return x, int(self.labels[index])


def pil_to_float(image: object) -> torch.Tensor:
    """A PIL image as a float CHW tensor in 0..1 (grayscale keeps its single channel)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        raise InputError(f"images of PIL mode {getattr(image, 'mode', '?')!r} are not supported; "
                         "use 8-bit grayscale or RGB images")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


@dataclass(frozen=True)
class Transform:
    """Resize -> augmentations (train only) -> normalise, on one CHW float tensor."""

    image_size: int | None = None
    augment: tuple[str, ...] = ()
    crop_padding: int = 4
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    _stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False,
                                                            compare=False)

    def __post_init__(self) -> None:
        if self.mean is not None and self.std is not None:
            stats = (torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1))
            object.__setattr__(self, "_stats", stats)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        s = self.image_size
        if s is not None and tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x[None], size=(s, s), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        for op in self.augment:
            if op == "random_crop":
                p = self.crop_padding
                h, w = x.shape[-2:]
                padded = F.pad(x, (p, p, p, p))
                top, left = torch.randint(0, 2 * p + 1, (2,), generator=generator).tolist()
                x = padded[:, top:top + h, left:left + w]
            elif op == "horizontal_flip":
                if torch.rand((), generator=generator).item() < 0.5:
                    x = x.flip(-1)
            else:  # the recipe schema only admits the two above
                raise AssertionError(f"unknown augmentation {op!r}")
        if self._stats is not None:
            mean, std = self._stats
            x = (x - mean) / std
        return x.contiguous()


class View(Dataset[Item]):
    """A fixed subset of a raw dataset with a transform applied per item.

    An index may be an ``int`` or an ``(int, seed)`` pair from :class:`SeededShuffle`; the seed
    drives the augmentation, so the same recipe seed gives the same augmented batches whether
    the loader uses worker processes or not.
    """

    def __init__(self, base: Dataset[Item], indices: Sequence[int] | None,
                 transform: Transform) -> None:
        self.base = base
        self.indices = list(indices) if indices is not None else None
        self.transform = transform

    def __len__(self) -> int:
        if self.indices is not None:
            return len(self.indices)
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int | tuple[int, int]) -> Item:
        generator = None
        if isinstance(index, tuple):
            index, seed = index
            if self.transform.augment:
                generator = torch.Generator().manual_seed(seed)
        x, y = self.base[self.indices[index] if self.indices is not None else index]
        return self.transform(x, generator), (y if isinstance(y, torch.Tensor) else int(y))


class SeededShuffle(Sampler[tuple[int, int]]):
    """A new permutation each epoch from a generator seeded once, plus a seed per sample.

    Yields ``(index, augmentation_seed)`` pairs for :class:`View`.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=self.generator).tolist()
        return iter(zip(order, seeds))


def seeded_subset(n: int, size: int | None, seed: int, key: str, what: str) -> list[int] | None:
    """Sorted indices of a fixed random subset of ``size`` out of ``n`` (None = everything)."""
    if size is None:
        return None
    if size > n:
        raise InputError(f"data.{key} is {size} but the {what} has only {n} samples; "
                         f"lower data.{key} or remove it")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:size].tolist())


def seeded_holdout(n: int, size: int, seed: int, key: str,
                   what: str) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into a seeded random held-out part of ``size`` and the sorted rest.

    At least one sample must remain, since the rest is what a run trains on.

    Example:
        >>> held, rest = seeded_holdout(10, 3, seed=0, key="val_subset", what="training split")
        >>> len(held), len(rest), sorted(held + rest) == list(range(10))
        (3, 7, True)
    """
    if size >= n:
        raise InputError(f"data.{key} is {size} but the {what} has only {n} samples and at "
                         f"least one must remain for training; lower data.{key}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    return sorted(order[:size]), sorted(order[size:])
