"""Normalisations over channels: restricting them to the kept channels, so pruning is provable.

A LayerNorm, GroupNorm or RMSNorm whose normalised dimension loses channels computes its
statistics over every channel it sees. Zeroing the removed channels does not make them absent:
the zeroed model still averages over them, so it can never equal the pruned model. The proof
therefore takes its reference with each such norm restricted to its kept channels
(:func:`restricted_norms`), which is exactly what the pruned norm computes; the removed
channels' outputs stay zero. The same code serves torch-pruning's groups (ConvNeXt's
channels-last ``LayerNorm2d``, GroupNorm, ``nn.RMSNorm``) and the hidden size of transformers.

Which dimension of a norm's input holds the channels is not read from the module's class (a
``LayerNorm`` subclass may permute, as torchvision's ``LayerNorm2d`` does): each candidate
dimension is tried on the actual input and the one that reproduces the norm's actual output is
used. A norm no candidate reproduces is refused in one sentence.

Example:
    >>> ln = nn.LayerNorm(4)
    >>> x = torch.randn(2, 4) * torch.tensor([1.0, 1.0, 1.0, 0.0])  # channel 3 zeroed
    >>> with restricted_norms({ln: [3]}, {ln: "ln"}):
    ...     y = ln(x)
    >>> torch.allclose(y[:, :3], F.layer_norm(x[:, :3], (3,), ln.weight[:3], ln.bias[:3]))
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from compress.errors import CheckFailed

__all__ = ["CHANNEL_NORMS", "RMSNormPruner", "is_channel_norm", "is_hf_rms_norm",
           "norm_width", "restricted_norms", "suspect_cause"]

# Norms whose statistics mix channels; compress restricts these to the kept channels.
# (BatchNorm and InstanceNorm normalise each channel on its own: zeroing is enough.)
CHANNEL_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def is_channel_norm(module: Any) -> bool:
    """Whether ``module`` normalises across channels in a way :func:`restricted_norms` handles.

    Example:
        >>> is_channel_norm(nn.GroupNorm(2, 4)), is_channel_norm(nn.BatchNorm2d(4))
        (True, False)
    """
    return isinstance(module, CHANNEL_NORMS)


def is_hf_rms_norm(module: Any) -> bool:
    """Whether ``module`` is transformers' T5-style RMSNorm (Llama, Qwen2/3, Mistral):
    ``weight * x / rms(x)`` over the last dim, its epsilon in ``variance_epsilon``.

    Gemma's RMSNorm scales by ``1 + weight`` and names its epsilon ``eps``: it is not one.
    Which dim it normalises is still checked on the actual input (see the module docstring).

    Example:
        >>> is_hf_rms_norm(nn.RMSNorm(4)), is_hf_rms_norm(nn.LayerNorm(4))
        (False, False)
    """
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Module) and type(module).__name__.endswith("RMSNorm")
            and isinstance(getattr(module, "variance_epsilon", None), float)
            and isinstance(weight, torch.Tensor) and weight.ndim == 1)


def norm_width(module: nn.Module) -> int:
    """The number of channels ``module`` normalises now (its last normalised dim for LN/RMS).

    Example:
        >>> norm_width(nn.LayerNorm((3, 8))), norm_width(nn.GroupNorm(2, 6))
        (8, 6)
    """
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if is_hf_rms_norm(module):
        return int(module.weight.shape[-1])
    return int(module.normalized_shape[-1])


class RMSNormPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning's missing pruner for ``nn.RMSNorm``: its scale and its normalised shape.

    Without it torch-pruning treats the scale as a free parameter and cuts it alone, leaving
    ``normalized_shape`` at the old width (the pruned model no longer runs).
    """

    TARGET_MODULES = nn.RMSNorm

    def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
        keep = sorted(set(range(norm_width(layer))) - {int(i) for i in idxs})
        if layer.weight is not None:
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, -1)
        layer.normalized_shape = (*layer.normalized_shape[:-1], len(keep))
        return layer

    prune_in_channels = prune_out_channels  # one width: pruning either side prunes both

    def get_out_channels(self, layer: nn.Module) -> int:
        return norm_width(layer)

    get_in_channels = get_out_channels


def _restricted(m: nn.Module, x: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """``m``'s output on ``x`` with statistics over the ``keep`` channels of ``dim`` only."""
    k = len(keep)
    if isinstance(m, nn.GroupNorm):
        xm = x.movedim(dim, 1)
        kept = xm.index_select(1, keep)
        w = m.weight.index_select(0, keep) if m.weight is not None else None
        b = m.bias.index_select(0, keep) if m.bias is not None else None
        y = F.group_norm(kept, m.num_groups, w, b, m.eps)
        out = xm.new_zeros(xm.shape)
        out.index_copy_(1, keep, y.to(out.dtype))
        return out.movedim(1, dim)
    xm = x.movedim(dim, -1)
    kept = xm.index_select(-1, keep)
    w = m.weight.index_select(-1, keep) if m.weight is not None else None
    if is_hf_rms_norm(m):  # its own arithmetic: float32 statistics, weight times the cast back
        h = kept.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)
        y = w * h.to(kept.dtype)
    elif isinstance(m, nn.RMSNorm):
        y = F.rms_norm(kept, (*m.normalized_shape[:-1], k), w, m.eps)
    else:
        b = m.bias.index_select(-1, keep) if m.bias is not None else None
        y = F.layer_norm(kept, (*m.normalized_shape[:-1], k), w, b, m.eps)
    out = xm.new_zeros(xm.shape)
    out.index_copy_(-1, keep, y.to(out.dtype))
    return out.movedim(-1, dim)


def _channel_dim(m: nn.Module, x: torch.Tensor, output: torch.Tensor, name: str,
                 advice: str) -> int:
    """The dim of ``x`` that ``m`` normalises as channels: the one reproducing ``output``."""
    width = norm_width(m)
    if isinstance(m, nn.GroupNorm):
        candidates = [1] + [d for d in range(x.ndim) if d != 1]
    elif is_hf_rms_norm(m) or len(m.normalized_shape) > 1:
        candidates = [x.ndim - 1]  # the pruned dim is the last of several normalised ones
    else:
        candidates = [x.ndim - 1] + list(range(x.ndim - 1))
    everything = torch.arange(width, device=x.device)
    # what one norm computed twice may differ by: a few rounding steps of its dtype
    atol = max(1.0, output.detach().abs().max().item()) * max(1e-5, 16 * torch.finfo(
        output.dtype).eps if output.is_floating_point() else 0.0)
    for d in candidates:
        if x.shape[d] != width or output.shape != x.shape:
            continue
        if torch.allclose(_restricted(m, x, everything, d), output, rtol=0, atol=atol):
            return d
    raise CheckFailed(f"{type(m).__name__} {name!r} normalises over pruned channels in a layout "
                      f"compress cannot restrict to the kept channels (input {tuple(x.shape)}); "
                      f"{advice}")


def _check_groups(m: nn.Module, keep: list[int], name: str, advice: str) -> None:
    """A GroupNorm must keep the same number of channels in each group, in the same groups."""
    if not isinstance(m, nn.GroupNorm):
        return
    size = m.num_channels // m.num_groups
    counts = [sum(1 for i in keep if i // size == g) for g in range(m.num_groups)]
    if len(set(counts)) != 1:
        raise CheckFailed(f"GroupNorm {name!r} would keep {counts} channels of its "
                          f"{m.num_groups} groups: a pruned GroupNorm needs the same number "
                          f"in each group; give pruning.round_to a multiple of {m.num_groups} "
                          f"or {advice}")


@contextmanager
def restricted_norms(removed: Mapping[nn.Module, Iterable[int]], names: Mapping[nn.Module, str],
                     roots: Mapping[nn.Module, str] | None = None,
                     ) -> Iterator[Callable[[nn.Module, Iterable[int]], None]]:
    """Inside, each norm in ``removed`` normalises over the channels it will keep.

    ``removed`` maps a norm to the channel indices (of its current width) that will be removed;
    ``names`` names norms in messages, ``roots`` the layer to ignore when one cannot be
    restricted. Yields ``note_removed(norm, idxs)``: call it just before pruning ``idxs`` (of
    the norm's width then) from a norm, so that a norm pruned in parts (it follows a
    concatenation of several pruned layers) keeps normalising over the channels that will stay;
    a norm pruned to its kept width computes that itself and passes through. Raises
    :class:`CheckFailed` for a GroupNorm whose groups would lose unequal numbers of channels,
    or a norm whose channel layout no candidate dimension reproduces.
    """
    states: dict[nn.Module, _Restriction] = {}
    for norm, idxs in removed.items():
        assert is_channel_norm(norm) or is_hf_rms_norm(norm), type(norm)
        root = (roots or {}).get(norm)
        state = _Restriction(norm_width(norm), {int(i) for i in idxs},
                             names.get(norm, type(norm).__name__),
                             f"add {root!r} to pruning.ignored" if root else
                             "add the layer that feeds it to pruning.ignored")
        if state.doomed:
            _check_groups(norm, state.kept(), state.name, state.advice)
            states[norm] = state

    handles = [norm.register_forward_hook(state.hook) for norm, state in states.items()]
    try:
        yield _NoteRemoved(states)
    finally:
        for h in handles:
            h.remove()


class _NoteRemoved:
    """``note_removed(norm, idxs)``; ``restrictions`` are the objects it changes, for a proof
    that snapshots and restores the model's state while it searches for a failing group."""

    def __init__(self, states: dict[nn.Module, _Restriction]) -> None:
        self.states = states
        self.restrictions = list(states.values())

    def __call__(self, norm: nn.Module, idxs: Iterable[int]) -> None:
        if norm in self.states:
            gone = {int(i) for i in idxs}
            state = self.states[norm]
            state.alive = [c for i, c in enumerate(state.alive) if i not in gone]


class _Restriction:
    """One norm's channels: those still there (original ids) and those that will go."""

    def __init__(self, width: int, doomed: set[int], name: str, advice: str) -> None:
        self.alive, self.doomed, self.name = list(range(width)), doomed, name
        self.advice = advice  # what to ignore if it cannot be restricted
        self.dim: int | None = None  # the input's channel dim, found on the first call

    def kept(self) -> list[int]:
        """Positions, in the norm as it is now, of the channels that will stay."""
        return [i for i, c in enumerate(self.alive) if c not in self.doomed]

    def hook(self, m: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> Any:
        assert norm_width(m) == len(self.alive), (self.name, norm_width(m), len(self.alive))
        keep = self.kept()
        if len(keep) == len(self.alive):
            return None  # pruned already: it normalises over the kept channels itself
        x = inputs[0]
        if self.dim is None:
            self.dim = _channel_dim(m, x, output, self.name, self.advice)
        idx = torch.tensor(keep, dtype=torch.long, device=x.device)
        return _restricted(m, x, idx, self.dim).to(output.dtype)


# Autograd nodes of ops that reduce over a dimension so that a zeroed channel still counts:
# a mean divides by it, a softmax or a max sees its zero.
_REDUCTIONS = re.compile(r"^(Mean|Softmax|LogSoftmax|Var|Std|VarMean|StdMean|Max|Amax|Min|Amin|"
                         r"Logsumexp|Norm|LinalgVectorNorm)Backward")
_PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def _reduced_sizes(grad_fn: Any) -> list[int] | None:
    """The sizes of the dims an autograd reduction node reduced, if it saved them."""
    shape = getattr(grad_fn, "_saved_self_sym_sizes", None)
    for saved in ("_saved_self", "_saved_result"):
        if shape is None and isinstance(getattr(grad_fn, saved, None), torch.Tensor):
            shape = getattr(grad_fn, saved).shape
    if shape is None:
        return None
    dims = getattr(grad_fn, "_saved_dim", None)
    if dims is None:
        return list(shape)  # a reduction over everything
    dims = dims if isinstance(dims, tuple) else (dims,)
    # negative dims are saved as unsigned 64-bit integers
    return [shape[d - 2**64 if d >= 2**63 else d] for d in dims] if len(shape) else []


def suspect_cause(members: Iterable[tuple[Any, str, Any]], root: str,
                  width: int) -> str | None:
    """Why zeroing a group's channels cannot reproduce its removal, if a known cause is there.

    ``members`` are ``(module, name, autograd node)`` of the group rooted at ``root``, whose
    ``width`` channels are being pruned; a free parameter's member is its owning module. The
    answer is one clause with advice, for a failed proof's sentence; ``None`` when no known
    cause is among them.

    Example:
        >>> class MyRMSNorm(nn.Module):  # a home-made norm compress cannot restrict
        ...     pass
        >>> suspect_cause([(MyRMSNorm(), "norm", None)], "fc1", 32).split(",")[0]
        "MyRMSNorm 'norm' normalises over the pruned channels"
    """
    members = list(members)
    for module, name, _ in members:
        kind = type(module).__name__
        if "Norm" in kind and isinstance(module, nn.Module) and not is_channel_norm(module) \
                and not isinstance(module, _PER_CHANNEL):
            return (f"{kind} {name!r} normalises over the pruned channels, which still count in "
                    f"its statistics when zeroed; compress restricts nn.LayerNorm, nn.GroupNorm "
                    f"and nn.RMSNorm to the kept channels, not {kind}: use one of those or add "
                    f"{root!r} to pruning.ignored")
    ops = [(type(fn).__name__, fn) for _, _, fn in members if fn is not None]
    for op, _ in ops:
        if "Norm" in op and not _REDUCTIONS.match(op) and "BatchNorm" not in op:
            return (f"a functional norm ({op}) normalises over the pruned channels, which still "
                    f"count in its statistics when zeroed; make it an nn.LayerNorm, "
                    f"nn.GroupNorm or nn.RMSNorm module (compress restricts those to the kept "
                    f"channels) or add {root!r} to pruning.ignored")
    reductions = sorted({op for op, fn in ops if _REDUCTIONS.match(op)
                         and width in (_reduced_sizes(fn) or [])})
    if reductions:
        return (f"the group passes through {', '.join(reductions)} over a dimension of "
                f"{width}: a mean, softmax or max over the pruned channels still counts them "
                f"when zeroed, so removing them cannot be proven; add {root!r} to "
                f"pruning.ignored")
    return None
