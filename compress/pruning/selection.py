"""Layer selection: which layers a pruner may touch, and how channel counts are rounded.

Every pruning kind keeps the layers the recipe names in ``pruning.ignored`` and the layer that
produces the model's output (its width is the task's: classes, vocabulary).

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    >>> _ = net(torch.randn(1, 3, 8, 8))
    >>> resolve_ignored(net, ["re:\\\\d"])
    {'re:\\\\d': ['0', '1', '2']}
    >>> protected_layers(net, torch.randn(1, 3, 8, 8), []), default_round_to(net)
    (['2'], 8)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from compress.errors import InputError

__all__ = ["resolve_ignored", "output_layers", "protected_layers", "default_round_to",
           "channel_round_to"]


def default_round_to(model: nn.Module) -> int | None:
    """8 for models with convolutions (SIMD conv kernels work in blocks of 8), else None.

    None for models with ``nn.MultiheadAttention``: see :func:`channel_round_to`.
    """
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return None
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return 8 if has_conv else None


def channel_round_to(model: nn.Module, round_to: int | str) -> int | None:
    """The ``round_to`` torch-pruning gets for ``pruning.round_to``.

    Channels through an attention layer are cut per head (the same offsets in every head),
    and torch-pruning rounds such a group's per-head count as if it were the layer's whole
    width, which cuts every channel (the group is then silently skipped): models with
    ``nn.MultiheadAttention`` take no rounding (their widths stay multiples of the head count).

    Example:
        >>> channel_round_to(nn.MultiheadAttention(8, 2), "auto") is None
        True
    """
    if round_to == "auto":
        return default_round_to(model)
    assert isinstance(round_to, int), round_to
    if round_to > 1 and any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        raise InputError(f"pruning.round_to: {round_to} does not apply to models with "
                         f"nn.MultiheadAttention layers (their widths stay multiples of the head "
                         f"count); use round_to: auto")
    return round_to


def resolve_ignored(model: nn.Module, patterns: Sequence[str]) -> dict[str, list[str]]:
    """Map each ``ignored`` pattern to the module names it matches; no match is an error.

    A pattern is an exact module name, or ``re:`` followed by a regular expression that must
    match the whole name.
    """
    names = [n for n, _ in model.named_modules() if n]
    matched: dict[str, list[str]] = {}
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as err:
                raise InputError(f"pruning.ignored: {pattern!r} is not a valid regular "
                                 f"expression ({err})") from None
            hits = [n for n in names if rx.fullmatch(n)]
        else:
            hits = [n for n in names if n == pattern]
        if not hits:
            sample = ", ".join(names[:6])
            raise InputError(f"pruning.ignored: {pattern!r} matches no module; module names "
                             f"look like: {sample}, ...")
        matched[pattern] = hits
    return matched


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of the layers whose outputs are the model's outputs (never pruned)."""
    with torch.no_grad():
        out = model(example_inputs)
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() > 0 else None
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == width:
            last = name
        elif isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == width:
            last = name
    return [last] if last is not None else []


def protected_layers(model: nn.Module, example_inputs: torch.Tensor,
                     patterns: Sequence[str]) -> list[str]:
    """Sorted names of the layers no pruning kind touches: ``patterns`` and the output layer.

    The model runs once in eval mode (normalisation statistics untouched), then gets its mode
    back.
    """
    ignored = {n for hits in resolve_ignored(model, patterns).values() for n in hits}
    was_training = model.training
    try:
        ignored |= set(output_layers(model.eval(), example_inputs))
    finally:
        model.train(was_training)
    return sorted(ignored)
