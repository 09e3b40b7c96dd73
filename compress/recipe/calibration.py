"""The recipe's ``calibration`` section: the few samples criteria that look at activations run
through the model (``wanda``, ``sparsegpt``; activation statistics of structured criteria).

The samples come from the recipe's ``data`` section: rows of token ids for ``text_lm``
(blocks of ``data.max_length`` tokens) and ``text`` (one padded sentence each; padding is left
out of every statistic), images for image data. They are picked at random (seeded) from one
split, once per run, and are the same on every resume. Only criteria that need calibration
read this section; its defaults are the papers' (128 sequences, Wanda arXiv 2306.11695 and
SparseGPT arXiv 2301.00774), cut to the data's own row length.

Example:
    >>> spec = CalibrationSpec(samples=16, seq_len=64)
    >>> spec.batch_size, spec.split, spec.seed is None
    (8, 'train', True)
    >>> CalibrationSpec(samples=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pydantic_core._pydantic_core.ValidationError: 1 validation error for CalibrationSpec
    ...
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.recipe.base import Section

__all__ = ["CalibrationSpec"]


class CalibrationSpec(Section):
    """Calibration samples for criteria that measure activations."""

    samples: int = Field(128, gt=0, le=100_000, description="Number of samples (token "
                         "sequences, sentences or images) run through the model; the split "
                         "must hold at least this many (refused otherwise).", examples=[128])
    seq_len: int | None = Field(None, gt=1, description="Token data: tokens kept of each "
                                "sample (its first seq_len; at most data.max_length). Default: "
                                "the whole row, data.max_length tokens.", examples=[128])
    batch_size: int = Field(8, gt=0, description="Samples per forward pass while calibrating "
                            "(memory, not results: the statistics are sums over all samples).",
                            examples=[8])
    split: Literal["train", "eval"] = Field("train", description="The data split the samples "
                                            "come from: train (data.train_split) or eval "
                                            "(data.eval_split; the before/after metrics are then "
                                            "measured on data the criterion has seen).",
                                            examples=["train"])
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed of the sample choice "
                             "(default: the recipe's seed).", examples=[0])
