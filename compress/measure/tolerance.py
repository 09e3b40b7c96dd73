"""The tolerance of every output comparison compress makes: pruning proofs and export parity.

A fixed absolute tolerance means nothing without the output's scale: ``1e-4`` is one part in
10 000 of a logit around 1, but ten percent of an output around ``1e-3`` (SqueezeNet's logits at
random initialisation are ~6e-4), where a wrong removal would pass. So the ``atol`` a recipe gives
(``pruning.verify_atol``, ``export.parity_atol``, at most 1e-2) is read as a share of the
reference output's peak magnitude:

    tolerance = max(atol, 8 · eps(dtype)) × max(max |reference|, tiny(dtype))

* The peak ``max |reference|`` (over the whole probe batch, finite entries) sets the scale: the
  differences a correct removal or export causes are rounding errors, which grow with the values
  computed, not with 1. The peak (not each element, not the RMS) keeps outputs that happen to be
  near zero from failing on the rounding noise of their larger neighbours.
* ``8 · eps(dtype)`` is the floor for the dtype the output was computed in: a few units in the
  last place of the peak is what float rounding alone produces (float32: 9.5e-7, far below any
  recipe's atol; float16: 7.8e-3; bfloat16: 6.3e-2), so a half-precision model is not failed by
  its own precision.
* ``tiny(dtype)`` only keeps an all-zero reference from giving a zero tolerance that no exact
  result could fail anyway; it never widens anything.

A reference that is not finite (NaN, inf) cannot anchor a comparison: :class:`CheckFailed`.

Example:
    >>> tol = scaled_tolerance(torch.tensor([1e-3, -2e-3]), 1e-4)
    >>> f"{tol.value:.1e}", tol.describe()
    ('2.0e-07', '1e-04 × max|output| 2.0e-03 = 2.0e-07 (float32)')
    >>> scaled_tolerance(torch.tensor([5.0]), 1e-4).value
    0.0005
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compress.errors import CheckFailed

__all__ = ["Tolerance", "scaled_tolerance", "describe_tolerance", "DTYPE_ULPS"]

DTYPE_ULPS = 8  # units in the last place of the peak that rounding alone may produce


@dataclass(frozen=True)
class Tolerance:
    """An absolute threshold (``value``) and how it was derived, for reports and messages."""

    atol: float    # the factor the recipe gave
    factor: float  # max(atol, DTYPE_ULPS * eps(dtype)): the factor used
    peak: float    # max |reference| (floored at tiny(dtype))
    dtype: str
    value: float   # factor * peak

    def describe(self) -> str:
        """One line for messages: factor × peak = threshold (dtype)."""
        return describe_tolerance(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for report.json."""
        return {"value": self.value, "atol": self.atol, "factor": self.factor,
                "peak": self.peak, "dtype": self.dtype, "rule": "factor x max|reference|"}


def describe_tolerance(tol: Mapping[str, Any]) -> str:
    """A recorded tolerance (:meth:`Tolerance.to_dict`, maybe with the parity's ``rtol``) in
    words, for reports.

    Example:
        >>> describe_tolerance({"value": 2e-7, "factor": 1e-4, "peak": 2e-3, "dtype": "float32",
        ...                     "rtol": 1e-3})
        '1e-04 × max|output| 2.0e-03 = 2.0e-07 (float32) + 0.001·|output|'
    """
    words = (f"{tol['factor']:.0e} × max|output| {tol['peak']:.1e} = {tol['value']:.1e} "
             f"({tol['dtype']})")
    return words + (f" + {tol['rtol']:g}·|output|" if tol.get("rtol") else "")


def scaled_tolerance(reference: torch.Tensor | np.ndarray, atol: float, *,
                     dtype: torch.dtype | None = None) -> Tolerance:
    """The tolerance of a comparison against ``reference`` (see the module docstring).

    ``dtype``: the dtype the output was computed in, when ``reference`` was already cast (the
    proof compares in float32); default: ``reference``'s own.
    """
    ref = torch.as_tensor(reference)
    dtype = dtype or (ref.dtype if ref.is_floating_point() else torch.float32)
    if ref.numel() and not bool(torch.isfinite(ref).all()):
        raise CheckFailed("the reference output is not finite (NaN or inf), so nothing can be "
                          "compared against it; check the model and its inputs")
    info = torch.finfo(dtype)
    peak = max(float(ref.detach().abs().max()) if ref.numel() else 0.0, float(info.tiny))
    factor = max(float(atol), DTYPE_ULPS * float(info.eps))
    return Tolerance(float(atol), factor, peak, str(dtype).removeprefix("torch."), factor * peak)
