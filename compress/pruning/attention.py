"""``nn.MultiheadAttention`` under torch-pruning's graph: head dimensions cut, proven exact.

In ``nn.MultiheadAttention`` one width, ``embed_dim``, is the residual channels the layer reads
and writes and ``num_heads * head_dim`` inside it; the packed ``in_proj_weight`` stacks q, k and
v. Cutting residual channel ``i`` therefore cuts dimension ``i % head_dim`` of head
``i // head_dim`` in q, k and v. That is exact when every head loses the same dimensions
(:func:`heads_of` makes torch-pruning choose them per head, the same offsets in every head) and
when the attention scores keep their scale: the layer divides by ``sqrt(head_dim)``, which
shrinks with the cut, so the kept q rows are multiplied by ``sqrt(new / old head_dim)``.
torch-pruning's own pruner does neither; :class:`MultiheadAttentionPruner` replaces it.

The proof zeroes the same channels (:func:`zero_attention_`): rows of q, k, v and of the output
projection, input columns, ``bias_k``/``bias_v`` entries. A zeroed q/k dimension adds nothing to
a score and a zeroed v dimension nothing to the output, which is what the cut layer computes.

Example:
    >>> import torch
    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> x = torch.randn(1, 3, 8)
    >>> keep = [0, 1, 2, 4, 5, 6]  # dimension 3 of each head goes
    >>> with torch.no_grad():
    ...     zero_attention_(mha, [3, 7])
    ...     zeroed = mha(x, x, x, need_weights=False)[0][..., keep]
    ...     cut = MultiheadAttentionPruner().prune_out_channels(mha, [3, 7])
    ...     removed = cut(x[..., keep], x[..., keep], x[..., keep], need_weights=False)[0]
    >>> mha.embed_dim, mha.head_dim, bool(torch.allclose(zeroed, removed, atol=1e-6))
    (6, 3, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CheckFailed, InputError

__all__ = ["MultiheadAttentionPruner", "attention_pruners", "heads_of", "zero_attention_",
           "unsupported_attention", "sync_widths_", "refuse_unfollowable_attention"]

# Attention layers that split their input channels into heads inside their own forward
# (qkv reshaped into heads, weights used through F.linear, a bias per head): torch-pruning's
# graph sees plain channels there and would cut q, k and v apart and heads unevenly, and the
# per-head tables (relative position bias) along a wrong axis. By qualified class name, so no
# library is imported for the check.
_UNFOLLOWABLE = {
    "torchvision.models.swin_transformer.ShiftedWindowAttention": "shifted-window attention",
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2": "shifted-window attention",
    "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": "relative-position "
                                                                      "attention",
}


def unsupported_attention(m: nn.MultiheadAttention) -> str | None:
    """Why compress cannot cut ``m``, or None: separate key/value widths are not coupled to
    the residual channels the graph prunes."""
    if not m._qkv_same_embed_dim:
        return (f"its keys and values have their own widths (kdim {m.kdim}, vdim {m.vdim}, "
                f"embed_dim {m.embed_dim})")
    return None


def _per_head(m: nn.MultiheadAttention, idxs: Sequence[int]) -> tuple[list[int], int]:
    """The kept channels, and the head dimension after the cut; every head must lose the same
    offsets (otherwise the cut layer would regroup dimensions into other heads)."""
    gone = sorted(set(int(i) for i in idxs))
    by_head = [tuple(i % m.head_dim for i in gone if i // m.head_dim == h)
               for h in range(m.num_heads)]
    if any(offsets != by_head[0] for offsets in by_head):
        raise CheckFailed(f"cannot cut MultiheadAttention ({m.embed_dim} channels, "
                          f"{m.num_heads} heads): the channels chosen differ between heads")
    keep = [i for i in range(m.embed_dim) if i not in set(gone)]
    return keep, m.head_dim - len(by_head[0])


def zero_attention_(m: nn.MultiheadAttention, idxs: Sequence[int]) -> None:
    """Zero everything of ``m`` that cutting residual channels ``idxs`` removes."""
    why = unsupported_attention(m)
    if why is not None:
        raise CheckFailed(f"cannot prove the pruning of a MultiheadAttention layer: {why}")
    e = m.embed_dim
    idx = torch.as_tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
    rows = torch.cat([idx, idx + e, idx + 2 * e])
    with torch.no_grad():
        w = m.in_proj_weight
        w.index_fill_(0, rows.to(w.device), 0.0).index_fill_(1, idx.to(w.device), 0.0)
        if m.in_proj_bias is not None:
            m.in_proj_bias.index_fill_(0, rows.to(w.device), 0.0)
        for p in (m.bias_k, m.bias_v):
            if p is not None:
                p.index_fill_(2, idx.to(p.device), 0.0)
        out = m.out_proj
        out.weight.index_fill_(0, idx.to(w.device), 0.0).index_fill_(1, idx.to(w.device), 0.0)
        if out.bias is not None:
            out.bias.index_fill_(0, idx.to(w.device), 0.0)


class MultiheadAttentionPruner(tp.pruner.function.BasePruningFunc):
    """Cuts residual channels of an ``nn.MultiheadAttention`` (its in and out are one width).

    Kept q rows are rescaled by ``sqrt(new / old head_dim)`` so the scores do not change.
    """

    TARGET_MODULES = nn.MultiheadAttention

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, nn.MultiheadAttention) and unsupported_attention(layer) is None
        e = layer.embed_dim
        keep, head_dim = _per_head(layer, idxs)
        if len(keep) == e:
            return layer
        k = torch.as_tensor(keep, dtype=torch.long, device=layer.in_proj_weight.device)
        rows = torch.cat([k, k + e, k + 2 * e])
        scale = torch.ones(len(rows), device=k.device)
        scale[: len(keep)] = math.sqrt(head_dim / layer.head_dim)  # the q rows
        with torch.no_grad():
            w = layer.in_proj_weight[rows][:, k] * scale[:, None].to(layer.in_proj_weight.dtype)
            layer.in_proj_weight = nn.Parameter(w, requires_grad=layer.in_proj_weight.requires_grad)
            if layer.in_proj_bias is not None:
                b = layer.in_proj_bias[rows] * scale.to(layer.in_proj_bias.dtype)
                layer.in_proj_bias = nn.Parameter(b, requires_grad=layer.in_proj_bias.requires_grad)
            for name in ("bias_k", "bias_v"):
                p = getattr(layer, name)
                if p is not None:
                    setattr(layer, name, nn.Parameter(p[:, :, k], requires_grad=p.requires_grad))
            out = layer.out_proj
            out.weight = nn.Parameter(out.weight[k][:, k], requires_grad=out.weight.requires_grad)
            if out.bias is not None:
                out.bias = nn.Parameter(out.bias[k], requires_grad=out.bias.requires_grad)
            out.in_features = out.out_features = len(keep)
        layer.embed_dim = layer.kdim = layer.vdim = len(keep)
        layer.head_dim = head_dim
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim


def attention_pruners(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """torch-pruning ``customized_pruners`` entries for the attention layers of ``model``."""
    has = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    return {nn.MultiheadAttention: MultiheadAttentionPruner()} if has else {}


def heads_of(model: nn.Module) -> dict[nn.Module, int]:
    """torch-pruning's ``out_channel_groups`` for attention layers: a group through one is
    chosen per head (the same offsets in every head), so the cut keeps the heads apart.

    Not torch-pruning's ``num_heads``: that re-roots the group at a downstream layer whose
    name then keys the group's ranking scope, and the layer's own group replaces it there.
    """
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def sync_widths_(model: nn.Module) -> None:
    """Update the widths models keep besides their layers once a cut changed the layers.

    torchvision's ``VisionTransformer`` reshapes its patch embedding by ``hidden_dim``, which
    must follow ``conv_proj``; the manifest stores it (see compress.export.safetensors).
    """
    for m in model.modules():
        proj = getattr(m, "conv_proj", None)
        if isinstance(getattr(m, "hidden_dim", None), int) and isinstance(proj, nn.Conv2d):
            m.hidden_dim = proj.out_channels


def refuse_unfollowable_attention(model: nn.Module, ignored: Sequence[str]) -> None:
    """One sentence (:class:`InputError`) naming the first attention layer of ``model`` that
    compress cannot cut exactly and ``ignored`` (module names) does not cover.

    Ignoring them is not advised: torch-pruning still traces the rest of such a model, which
    took over 15 minutes for Swin-T at 32 px on two busy cores.

    Example:
        >>> refuse_unfollowable_attention(nn.Sequential(nn.Linear(2, 2)), [])
    """
    covered = tuple(f"{n}." for n in ignored)
    found = []
    for name, m in model.named_modules():
        cls = type(m)
        what = _UNFOLLOWABLE.get(f"{cls.__module__}.{cls.__qualname__}")
        if what is not None and name not in ignored and not name.startswith(covered):
            found.append((name, what))
    if not found:
        return
    name, what = found[0]
    cls = type(model.get_submodule(name)).__name__
    err = InputError(f"{cls} {name!r} cannot be pruned: its {what} splits its channels into "
                     f"heads inside its own forward, which compress cannot cut exactly "
                     f"({len(found)} such layers), so structured pruning does not support this "
                     f"model")
    # What the pruning of closed blocks (compress.pruning.local) says when it takes over.
    err.untraceable = (f"its {len(found)} {cls} layers split their channels into heads inside "
                       f"their own forward, which compress cannot cut exactly")
    raise err

