"""SparseGPT's numerics against direct solves, and the per-row mask choice, on tiny layers."""

from __future__ import annotations

import pytest
import torch

from compress.pruning.sparsegpt import Hessian, RowPattern, prune_lowest, row_counts, sparsegpt_


def _layer(rows: int = 6, cols: int = 16, tokens: int = 200, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    # Correlated inputs, so the update has something to do.
    x = torch.randn(tokens, cols, generator=gen, dtype=torch.float64) @ torch.randn(
        cols, cols, generator=gen, dtype=torch.float64)
    h = Hessian(cols)
    for part in x.split(64):
        h.add_(part)
    return w, x, h.matrix


def _least_squares(w: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each row's kept weights re-fitted to reproduce ``x @ w_row`` (the others zero)."""
    out = torch.zeros_like(w)
    for r in range(len(w)):
        cols = keep[r].nonzero().flatten()
        sol = torch.linalg.lstsq(x[:, cols], x @ w[r]).solution
        out[r, cols] = sol
    return out


def test_hessian_is_twice_the_mean_outer_product() -> None:
    _, x, h = _layer()
    assert torch.allclose(h, 2 * x.T @ x / len(x), rtol=1e-12, atol=1e-9)


def test_update_is_the_least_squares_solve_when_pruned_columns_come_first() -> None:
    # Every pruned weight precedes every kept one: SparseGPT's sequential update re-fits all
    # kept weights, so it must equal the direct least-squares solve on them (damping off).
    w, x, h = _layer()
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, :5] = False
    got = w.clone()
    sparsegpt_(got, h, RowPattern(counts=torch.full((6,), 5)), damping=0.0, block=4, keep=keep)
    assert torch.allclose(got, _least_squares(w, x, keep), atol=1e-8)


def test_weights_after_the_last_pruned_column_are_the_optimum_given_the_columns_before() -> None:
    # Any mask: after the last pruned column of a row, the weights to its right are the
    # least-squares fit of the row's output given the (frozen) columns to the left.
    w, x, h = _layer(seed=1)
    got = w.clone()
    keep = sparsegpt_(got, h, RowPattern(counts=row_counts(6, 16, 0.5)), damping=0.0, block=16)
    for r in range(len(w)):
        last = int((~keep[r]).nonzero().max())
        target = x @ w[r] - x[:, : last + 1] @ got[r, : last + 1]
        sol = torch.linalg.lstsq(x[:, last + 1:], target).solution
        assert torch.allclose(got[r, last + 1:], sol, atol=1e-8), r


def test_blocks_do_not_change_the_result() -> None:
    w, _, h = _layer(seed=2)
    results = []
    for block in (4, 8, 16):
        got = w.clone()
        keep = sparsegpt_(got, h, RowPattern(nm=(2, 4)), block=block)
        results.append((got, keep))
    for got, keep in results[1:]:
        assert torch.equal(keep, results[0][1])
        assert torch.allclose(got, results[0][0], atol=1e-10)


@pytest.mark.parametrize("pattern", [RowPattern(counts=row_counts(6, 16, 0.5)),
                                     RowPattern(nm=(2, 4)), RowPattern(nm=(4, 8))])
def test_reconstruction_error_is_below_magnitudes(pattern) -> None:
    w, x, h = _layer(seed=3)
    got = w.clone()
    keep = sparsegpt_(got, h, pattern, block=8)
    assert int((~keep).sum()) == (48 if pattern.counts is not None else 96 - 96 * pattern.nm[0]
                                  // pattern.nm[1])
    assert torch.equal(got[~keep], torch.zeros(int((~keep).sum()), dtype=got.dtype))
    magnitude = w.masked_fill(prune_lowest(w.abs(), pattern), 0.0)
    err_sparsegpt = (x @ (w - got).T).norm()
    err_magnitude = (x @ (w - magnitude).T).norm()
    assert err_sparsegpt < err_magnitude, (err_sparsegpt, err_magnitude)


def test_nm_pattern_is_exact_in_every_group() -> None:
    w, _, h = _layer(seed=4)
    for n, m in ((2, 4), (4, 8), (1, 4)):
        got = w.clone()
        keep = sparsegpt_(got, h, RowPattern(nm=(n, m)), block=8)
        assert (keep.reshape(6, -1, m).sum(-1) == n).all()
        assert ((got != 0).reshape(6, -1, m).sum(-1) <= n).all()


def test_prune_lowest_counts_per_row() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    assert prune_lowest(scores, RowPattern(counts=torch.tensor([1, 3]))).tolist() == [
        [False, True, False, False], [True, True, True, False]]
    assert prune_lowest(scores, RowPattern(nm=(2, 4))).tolist() == [
        [False, True, False, True], [True, True, False, False]]
