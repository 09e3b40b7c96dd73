"""The numerics of one-shot calibrated pruning: the per-row mask choice Wanda and SparseGPT share,
and SparseGPT's reconstruction (Frantar & Alistarh, arXiv 2301.00774).

Every function works on a weight as a matrix ``[out, in]`` (rows: outputs, columns: inputs) and
chooses the weights to prune within each output row, as both papers do: a :class:`RowPattern`
says how many weights each row loses (``counts``, exact, for unstructured) or that each group
of ``m`` consecutive inputs keeps ``n`` (n:m).

SparseGPT minimises ``||W X - W' X||²`` over the calibration inputs ``X`` one layer at a time:
with ``H = 2 X Xᵀ`` (damped), it visits the columns left to right; pruning a weight moves its
error onto the row's weights not yet visited along the row of the upper Cholesky factor of
``H⁻¹`` (the optimal brain surgeon update restricted to those weights), so those are, after
each pruned column, the least-squares optimum given every column before. Columns are handled in
blocks of ``block`` whose updates to the later columns are applied at once (the lazy batch
update: the same result, fewer memory passes), and within a block each row's mask is chosen
from ``w² / [H⁻¹]_jj²`` as the weights are at that point (adaptive mask selection).

Example:
    >>> w = torch.tensor([[1.0, -4.0, 2.0, 3.0]])
    >>> prune_lowest(w.abs(), RowPattern(counts=torch.tensor([2]))).tolist()
    [[True, False, True, False]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RowPattern", "row_counts", "prune_lowest", "Hessian", "sparsegpt_"]


@dataclass(frozen=True)
class RowPattern:
    """How many weights each output row loses: ``counts`` (one per row, unstructured) or,
    with ``nm = (n, m)``, all but ``n`` of every ``m`` consecutive inputs."""

    counts: torch.Tensor | None = None
    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        assert (self.counts is None) != (self.nm is None), "counts or nm, not both"


def row_counts(rows: int, cols: int, ratio: float) -> torch.Tensor:
    """Per-row counts summing to exactly ``round(ratio * rows * cols)``; the remainder goes
    one each to the first rows.

    Example:
        >>> row_counts(3, 5, 0.5).tolist()  # round(7.5) = 8
        [3, 3, 2]
    """
    total = round(ratio * rows * cols)
    counts = torch.full((rows,), total // rows, dtype=torch.long)
    counts[: total % rows] += 1
    return counts


def _lowest(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """True at the ``counts[r]`` lowest scores of each row ``r`` (ties: the earlier column)."""
    ranks = scores.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
    return ranks < counts.to(scores.device).view(-1, 1)


def prune_lowest(scores: torch.Tensor, pattern: RowPattern) -> torch.Tensor:
    """The weights to prune (True) of a ``[out, in]`` score matrix, lowest scores first."""
    if pattern.counts is not None:
        return _lowest(scores, pattern.counts)
    assert pattern.nm is not None
    n, m = pattern.nm
    rows, cols = scores.shape
    groups = scores.reshape(rows * (cols // m), m)
    return _lowest(groups, torch.full((len(groups),), m - n)).reshape(rows, cols)


class Hessian:
    """``H = 2/N Σ x xᵀ`` of a layer's inputs, accumulated batch by batch in float64 (the
    scale does not change SparseGPT's result; the mean keeps the damping's meaning)."""

    def __init__(self, columns: int, device: torch.device | str = "cpu") -> None:
        self.matrix = torch.zeros(columns, columns, dtype=torch.float64, device=device)
        self.samples = 0

    def add_(self, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (``[tokens, columns]``)."""
        if not len(x):
            return
        x = x.to(self.matrix.device, torch.float64)
        total = self.samples + len(x)
        self.matrix.mul_(self.samples / total).addmm_(x.T, x, alpha=2.0 / total)
        self.samples = total


def _inverse_factor_(h: torch.Tensor, damping: float) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + λI)⁻¹``, ``λ`` = ``damping`` × the mean diagonal,
    computed in ``h``'s own memory (``h`` is overwritten and returned): a Hessian of a wide
    layer (FFN down projection of a 1B model: 5632² doubles, 254 MB) is never held twice.

    A column no calibration input ever reached (zero diagonal) gets a unit diagonal: its
    weights are then pruned by magnitude and move nothing."""
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag += damping * diag.mean()
    torch.linalg.cholesky(h, out=h)
    torch.cholesky_inverse(h, out=h)
    return torch.linalg.cholesky(h, upper=True, out=h)


def _block_counts(counts: torch.Tensor, start: int, stop: int, cols: int) -> torch.Tensor:
    """Each row's share of its count within columns ``start:stop``: cumulative rounding, so
    the shares of all blocks add up to the row's count exactly."""
    def upto(i: int) -> torch.Tensor:
        return (2 * counts * i + cols) // (2 * cols)
    return upto(stop) - upto(start)


def sparsegpt_(weight: torch.Tensor, hessian: torch.Tensor, pattern: RowPattern, *,
               damping: float = 0.01, block: int = 128,
               keep: torch.Tensor | None = None, consume: bool = False) -> torch.Tensor:
    """Prune ``weight`` (``[out, in]``, in place) to ``pattern`` with SparseGPT's update on the
    ``[in, in]`` Hessian; returns the kept weights (True). The pruned ones are exactly zero.

    ``keep``: a fixed mask instead of SparseGPT's own choice (only the update runs), e.g. to
    compare the update with a direct least-squares solve. ``consume``: ``hessian`` (float64,
    on ``weight``'s device) is not needed afterwards and is overwritten instead of copied.
    """
    rows, cols = weight.shape
    assert hessian.shape == (cols, cols), (hessian.shape, cols)
    if pattern.nm is not None:
        assert cols % pattern.nm[1] == 0 and block % pattern.nm[1] == 0, (cols, block)
    w = weight.detach().to(torch.float64).clone()
    owned = consume and hessian.dtype == torch.float64 and hessian.device == w.device
    factor = _inverse_factor_(hessian if owned else hessian.to(w.device, torch.float64,
                                                               copy=True), damping)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        w1, f1 = w[:, start:stop].clone(), factor[start:stop, start:stop]
        d = f1.diagonal()
        err = torch.zeros_like(w1)
        if keep is not None:
            p1 = ~keep[:, start:stop].to(w.device)
        elif pattern.counts is not None:
            counts = _block_counts(pattern.counts.to(w.device), start, stop, cols)
            p1 = _lowest(w1 ** 2 / d ** 2, counts)
        else:
            p1 = torch.zeros_like(w1, dtype=torch.bool)
        for j in range(stop - start):
            if keep is None and pattern.nm is not None and j % pattern.nm[1] == 0:
                m = pattern.nm[1]
                p1[:, j:j + m] = prune_lowest(w1[:, j:j + m] ** 2 / d[j:j + m] ** 2, pattern)
            q = w1[:, j].masked_fill(p1[:, j], 0.0)
            err[:, j] = (w1[:, j] - q) / d[j]
            w1[:, j:] -= err[:, j:j + 1] * f1[j:j + 1, j:]
            w1[:, j] = q  # exactly zero where pruned, whatever the rounding of the update
        w[:, start:stop] = w1
        w[:, stop:] -= err @ factor[start:stop, stop:]
        pruned[:, start:stop] = p1
    with torch.no_grad():
        weight.copy_(w.to(weight.dtype))
    return ~pruned
