"""Calibration samples: the recipe's ``calibration`` section picked out of a data split.

The samples are drawn without replacement by a generator seeded with ``calibration.seed`` (the
recipe's seed by default), read untransformed by augmentation, cut to ``calibration.seq_len``
tokens where given, and stacked into batches of ``calibration.batch_size`` in the drawn
order. The same recipe gives the same batches on every run and every resume.

Example:
    >>> from compress.data import build_data
    >>> from compress.recipe.calibration import CalibrationSpec
    >>> from compress.recipe.sources import DataSpec
    >>> bundle = build_data(DataSpec(source="digits"))
    >>> batches = calibration_batches(bundle, CalibrationSpec(samples=20, batch_size=8), seed=0)
    >>> [tuple(b.shape) for b in batches]
    [(8, 1, 8, 8), (8, 1, 8, 8), (4, 1, 8, 8)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from compress.errors import InputError

if TYPE_CHECKING:
    from compress.data import DataBundle
    from compress.recipe.calibration import CalibrationSpec

__all__ = ["calibration_batches"]

# The sample choice must not replay the permutations of the data subsets (same base seed).
_CALIBRATION_SEED_OFFSET = 3_000_017


def calibration_batches(bundle: DataBundle, spec: CalibrationSpec,
                        seed: int) -> list[torch.Tensor]:
    """The calibration inputs of ``spec`` from ``bundle`` (``seed``: the recipe's, used when
    ``spec.seed`` is unset), in batches; :class:`InputError` when the split is missing or holds
    fewer samples than asked."""
    loader = bundle.train if spec.split == "train" else bundle.eval
    if loader is None:
        raise InputError("calibration.split is train but this run loads no training data; "
                         "set calibration.split: eval")
    dataset = loader.dataset
    n = len(dataset)  # type: ignore[arg-type]  # map-style datasets all have a length
    if spec.samples > n:
        raise InputError(f"calibration.samples is {spec.samples} but the {spec.split} split "
                         f"holds only {n} samples; lower calibration.samples or give more data")
    base = spec.seed if spec.seed is not None else seed + _CALIBRATION_SEED_OFFSET
    order = torch.randperm(n, generator=torch.Generator().manual_seed(base))[: spec.samples]
    # An int index reads a sample without augmentation (see compress.data.base.View).
    rows = [dataset[int(i)][0] for i in order]
    if spec.seq_len is not None:
        if rows[0].dim() != 1 or rows[0].is_floating_point():
            raise InputError("calibration.seq_len applies to token data (data.source text or "
                             "text_lm); remove it")
        rows = [r[: spec.seq_len] for r in rows]
    return [torch.stack(rows[i:i + spec.batch_size])
            for i in range(0, len(rows), spec.batch_size)]
