"""Dataset sources: one file per source, each registered in :data:`DATASETS`.

A source is a class with ``accepts`` (the ``data.*`` recipe keys it uses beyond the common
ones), ``required`` (those it needs), ``load(spec, resolve, train) -> RawData`` and
``serving_info(spec, bundle)`` (how a served model's input is described in model.json). For
``compress init`` it also has ``starter_defaults`` and ``starter(writer, arg, request)``; the
image sources share theirs in :mod:`compress.data.images`. Subsets, resizing, augmentation,
normalisation and the loaders are built here, once for all sources.

Example:
    >>> from compress.data import build_data
    >>> from compress.recipe.sources import DataSpec
    >>> data = build_data(DataSpec(source="digits", eval_subset=100, val_subset=200))
    >>> data.num_classes, data.sample_shape, len(data.eval.dataset)
    (10, (1, 8, 8), 100)
    >>> len(data.train.dataset), len(data.val.dataset)  # 1437 training samples, 200 held out
    (1237, 200)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from compress.data.base import (
    RawData,
    SeededShuffle,
    Transform,
    View,
    seeded_holdout,
    seeded_subset,
)
from compress.errors import InputError
from compress.registry import SourceRegistry

if TYPE_CHECKING:
    from compress.recipe.sources import DataSpec

__all__ = ["DATASETS", "DataBundle", "DatasetSource", "RawData", "build_data", "check_data_spec",
           "serving_info"]


class DatasetSource(Protocol):
    accepts: frozenset[str]
    required: frozenset[str]
    starter_defaults: dict[str, Any]

    def load(self, spec: DataSpec, resolve: Callable[[str], Path], train: bool) -> RawData:
        ...

    def serving_info(self, spec: DataSpec, bundle: DataBundle) -> dict[str, Any]:
        """The classes and how inputs are prepared, as model.json tells a service."""


# The common keys act on the raw datasets after loading, so every source accepts them.
DATASETS: SourceRegistry[type[DatasetSource]] = SourceRegistry(
    "dataset", section="data", label="dataset source",
    common=frozenset({"source", "batch_size", "eval_batch_size", "train_subset", "eval_subset",
                      "val_subset", "image_size", "augment", "crop_padding", "normalize",
                      "num_workers"}))

# The train order must not replay the permutation that picked the train subset.
_ORDER_SEED_OFFSET = 1_000_003
# Nor may the validation hold-out replay it (both permute the training split).
_VAL_SEED_OFFSET = 2_000_003


@dataclass
class DataBundle:
    """The loaders a run uses, plus what the model and report need to know about the data.

    ``val`` holds ``data.val_subset`` samples of the training split out of ``train`` (None when
    unset): transformed like eval data, in a fixed order, for patience-based fine-tuning.
    """

    train: DataLoader | None
    eval: DataLoader
    num_classes: int
    sample_shape: tuple[int, ...]
    class_names: list[str]
    val: DataLoader | None = None

    def probe_batch(self, n: int) -> torch.Tensor:
        """The first ``n`` eval inputs (all of them if fewer), transformed and stacked.

        Eval data is never augmented, so every call returns the same tensor.
        """
        assert n > 0, "a probe batch needs at least one sample"
        dataset = self.eval.dataset
        count = min(n, _size(dataset))
        return torch.stack([dataset[i][0] for i in range(count)])


def check_data_spec(spec: DataSpec) -> None:
    """Raise :class:`InputError` when ``spec`` sets keys its source does not use or misses some
    (the one check of a data section).

    Example:
        >>> from compress.recipe.sources import DataSpec
        >>> check_data_spec(DataSpec(source="imagefolder"))
        Traceback (most recent call last):
        compress.errors.InputError: dataset source 'imagefolder' needs data.path
    """
    DATASETS.check_spec(spec)
    padding_set = spec.crop_padding != type(spec).model_fields["crop_padding"].default
    if padding_set and "random_crop" not in spec.augment:
        raise InputError("data.crop_padding is only used by the random_crop augmentation; "
                         "add random_crop to data.augment or remove data.crop_padding")


def _size(dataset: Dataset) -> int:
    return len(dataset)  # type: ignore[arg-type]  # map-style datasets all have a length


def _check_channels(spec: DataSpec, channels: int) -> None:
    if spec.normalize is not None and len(spec.normalize.mean) != channels:
        raise InputError(f"data.normalize has {len(spec.normalize.mean)} channel(s) but the "
                         f"images have {channels}; give one mean and one std per channel")


def build_data(spec: DataSpec, *, resolve: Callable[[str], Path] = Path, seed: int = 0,
               train: bool = True, check: bool = True) -> DataBundle:
    """Load the data a recipe describes and wrap it in loaders.

    ``resolve`` turns recipe paths into real ones (``Recipe.resolve_path``); ``seed`` fixes the
    subsets, the train order and the augmentations. With ``train=False`` the train split is not
    loaded at all (evaluation-only runs) and ``DataBundle.train`` and ``DataBundle.val`` are None.

    ``data.val_subset`` is held out of the training split first and ``data.train_subset`` then
    picks from what remains, so validation and training samples never overlap.

    ``check=False`` skips :func:`check_data_spec`, for a spec already checked (as
    ``compress.run.preflight.check_recipe`` does for a whole recipe).
    """
    if check:
        check_data_spec(spec)
    raw = DATASETS.get(spec.source)().load(spec, resolve, train)
    if _size(raw.eval) == 0:
        raise InputError(f"the evaluation split of dataset source {spec.source!r} is empty")
    _check_channels(spec, int(raw.eval[0][0].shape[0]))

    mean = tuple(spec.normalize.mean) if spec.normalize else None
    std = tuple(spec.normalize.std) if spec.normalize else None
    common = dict(image_size=spec.image_size, crop_padding=spec.crop_padding, mean=mean, std=std)
    # Pinned host memory only helps (and only works) when batches go to a CUDA device.
    loader_args = dict(num_workers=spec.num_workers, pin_memory=torch.cuda.is_available(),
                       drop_last=False, collate_fn=raw.collate)

    eval_indices = seeded_subset(_size(raw.eval), spec.eval_subset, seed, "eval_subset",
                                 "evaluation split")
    eval_set = View(raw.eval, eval_indices, Transform(**common))  # type: ignore[arg-type]
    eval_loader = DataLoader(eval_set, batch_size=spec.eval_batch_size, shuffle=False,
                             **loader_args)  # type: ignore[arg-type]

    train_loader = val_loader = None
    if train and raw.train is not None:
        n_train = _size(raw.train)
        pool: list[int] | None = None  # None: the whole training split
        if spec.val_subset is not None:
            val_indices, pool = seeded_holdout(n_train, spec.val_subset, seed + _VAL_SEED_OFFSET,
                                               "val_subset", "training split")
            # Validation data measures the model, so it is transformed like eval data.
            val_set = View(raw.train, val_indices, Transform(**common))  # type: ignore[arg-type]
            val_loader = DataLoader(val_set, batch_size=spec.eval_batch_size, shuffle=False,
                                    **loader_args)  # type: ignore[arg-type]
        if pool is None:
            train_indices = seeded_subset(n_train, spec.train_subset, seed, "train_subset",
                                          "training split")
        else:
            picked = seeded_subset(len(pool), spec.train_subset, seed, "train_subset",
                                   "training split left after data.val_subset")
            train_indices = pool if picked is None else [pool[i] for i in picked]
        train_set = View(raw.train, train_indices,
                         Transform(augment=tuple(spec.augment), **common))  # type: ignore[arg-type]
        sampler = SeededShuffle(len(train_set), seed + _ORDER_SEED_OFFSET)
        train_loader = DataLoader(train_set, batch_size=spec.batch_size, sampler=sampler,
                                  **loader_args)  # type: ignore[arg-type]

    return DataBundle(train=train_loader, eval=eval_loader, num_classes=len(raw.class_names),
                      sample_shape=tuple(eval_set[0][0].shape), class_names=list(raw.class_names),
                      val=val_loader)


def serving_info(spec: DataSpec, bundle: DataBundle) -> dict[str, Any]:
    """What model.json tells a service: the class names and how inputs were prepared, as the
    data source describes them."""
    return DATASETS.get(spec.source)().serving_info(spec, bundle)


# Registering sources is a side effect of importing their modules.
from compress.data import digits, imagefolder, text, torchvision_datasets  # noqa: E402,F401
