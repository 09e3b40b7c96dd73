"""Where attention heads and FFN neurons live in a transformers model, and how to cut them.

One :class:`Layout` per ``config.model_type``, registered in :data:`LAYOUTS`: a new architecture
is one registration. A layout names, relative to one block, the query/key/value projections (or
one fused projection: GPT-2's ``c_attn`` = [q | k | v], Phi-3's ``qkv_proj`` = [q | k | v] with
fewer k/v heads), the attention output projection and the FFN input/output layers (or one fused
input: Phi-3's ``gate_up_proj`` = [gate | up]). :meth:`Block.unit_slices` says which rows and
columns a head or an FFN neuron owns; the surgery below works on ``nn.Linear`` and on
transformers' transposed ``Conv1D`` alike.

Example:
    >>> LAYOUTS.get("llama").gqa
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from compress.pruning.hf_hidden import DECODER_HIDDEN, GPT2_HIDDEN, HiddenLayout
from compress.pruning.hf_surgery import dims, keep_in_, keep_out_, out_width, zero_in_, zero_out_
from compress.registry import Registry

__all__ = ["Layout", "LAYOUTS", "Block", "blocks", "set_attention_heads_", "rewrite_config_",
           "layout_for", "zero_units_", "remove_units_", "unsupported_sentence"]


@dataclass(frozen=True)
class Layout:
    """Module paths of one architecture, relative to the base model and to one block."""

    layers: str                       # the ModuleList of blocks, from the base model
    attention: str                    # the module whose head-count attributes are rewritten
    qkv: tuple[str, ...]              # (q, k, v), or (fused,) for GPT-2's c_attn = [q | k | v]
    out: str                          # attention output projection (input columns per head)
    ffn_in: tuple[str, ...]           # FFN layers whose output rows are the neurons
    ffn_out: str                      # FFN layer whose input columns are the neurons
    ffn_config_key: str = "intermediate_size"
    gqa: bool = False                 # separate, fewer k/v heads: only query heads are pruned
    head_dim_in_config: bool = False  # config.head_dim is read, so fewer heads stay loadable
    head_attrs: tuple[str, ...] = field(default=("num_attention_heads",))
    hidden: HiddenLayout | None = None  # where the hidden size lives, when it can be pruned
    ffn_parts: int = 1                # ffn_in fused from this many parts ([gate | up]: 2)
    # The attention reads config.num_attention_heads in forward (Phi-3 slices its fused qkv
    # by it): each pruned attention gets its own head count over the shared config.
    heads_from_config: bool = False


LAYOUTS: Registry[Layout] = Registry("transformer architecture")

_BERT = Layout(layers="encoder.layer", attention="attention.self",
               qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
               out="attention.output.dense", ffn_in=("intermediate.dense",),
               ffn_out="output.dense", hidden=HiddenLayout(
                   embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings",
                               "embeddings.token_type_embeddings"),
                   norms=("embeddings.LayerNorm",),
                   block_norms=("attention.output.LayerNorm", "output.LayerNorm")))
for _name in ("bert", "roberta", "xlm-roberta", "electra", "camembert"):
    LAYOUTS.register(_name)(_BERT)
LAYOUTS.register("distilbert")(Layout(
    layers="transformer.layer", attention="attention",
    qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"), out="attention.out_lin",
    ffn_in=("ffn.lin1",), ffn_out="ffn.lin2", ffn_config_key="hidden_dim",
    head_attrs=("n_heads",), hidden=HiddenLayout(
        embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
        norms=("embeddings.LayerNorm",), block_norms=("sa_layer_norm", "output_layer_norm"),
        config_key="dim")))
LAYOUTS.register("vit")(Layout(
    layers="layers", attention="attention",
    qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"), out="attention.o_proj",
    ffn_in=("mlp.fc1",), ffn_out="mlp.fc2", head_dim_in_config=True))
LAYOUTS.register("gpt2")(Layout(
    layers="h", attention="attn", qkv=("attn.c_attn",), out="attn.c_proj", ffn_in=("mlp.c_fc",),
    ffn_out="mlp.c_proj", ffn_config_key="n_inner", head_attrs=("num_heads",),
    hidden=GPT2_HIDDEN))
_DECODER = Layout(layers="layers", attention="self_attn",
                  qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  out="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"),
                  ffn_out="mlp.down_proj", gqa=True, head_dim_in_config=True, head_attrs=())
# Gemma 2/3 soft-cap and window attention per layer, Gemma 3 and Qwen3 normalise q and k per
# head (one weight of head_dim shared by all heads): none of it depends on the head count.
# Gemma scales its embeddings by sqrt(config.hidden_size) (and its RMSNorms by 1 + weight):
# a narrower stream would be scaled differently, so its hidden size is not pruned.
for _name in ("gemma", "gemma2", "gemma3_text"):
    LAYOUTS.register(_name)(_DECODER)
for _name in ("llama", "qwen2", "qwen3", "mistral"):
    LAYOUTS.register(_name)(replace(_DECODER, hidden=DECODER_HIDDEN))
LAYOUTS.register("phi3")(Layout(
    layers="layers", attention="self_attn", qkv=("self_attn.qkv_proj",), out="self_attn.o_proj",
    ffn_in=("mlp.gate_up_proj",), ffn_out="mlp.down_proj", gqa=True, head_dim_in_config=True,
    head_attrs=(), ffn_parts=2, heads_from_config=True))


def layout_for(config: Any) -> Layout:
    """The layout of ``config.model_type``; unknown types name the supported ones."""
    return LAYOUTS.get(config.model_type)


def unsupported_sentence(model_type: str) -> str:
    """Why a transformers model without a layout cannot be pruned structurally (one sentence).

    Example:
        >>> unsupported_sentence("qwen3_moe").split(" (")[0]
        "Hugging Face model type 'qwen3_moe' has no pruning layout in compress"
    """
    return (f"Hugging Face model type {model_type!r} has no pruning layout in compress (heads "
            f"and FFN neurons cannot be removed safely); supported: {', '.join(LAYOUTS.names())}; "
            f"use pruning.kind: unstructured or n:m for other models")


@dataclass
class Block:
    """One transformer block's prunable parts and its current head geometry."""

    index: int
    attention: nn.Module
    qkv: list[nn.Module]
    out: nn.Module
    ffn_in: list[nn.Module]
    ffn_out: nn.Module
    head_dim: int
    heads: int       # query heads now
    kv_heads: int    # key/value heads (== heads unless GQA)
    gqa: bool = False
    ffn_parts: int = 1
    module: nn.Module | None = None  # the block itself

    @property
    def ffn(self) -> int:
        return out_width(self.ffn_in[0]) // self.ffn_parts

    def unit_slices(self, kind: str, units: Sequence[int]) -> list[tuple[nn.Module, bool,
                                                                          torch.Tensor]]:
        """``(layer, is_output_side, indices)`` of every slice that ``units`` own.

        ``kind`` is ``"heads"`` (query heads; with GQA the k/v heads stay) or ``"ffn"``. The
        indices of a fused layer list the units' rows part after part, so a tensor of per-row
        scores reshaped to ``(parts, -1)`` sums to per-unit scores.
        """
        idx = torch.as_tensor(list(units), dtype=torch.long)
        if kind == "ffn":
            fused = torch.cat([idx + p * self.ffn for p in range(self.ffn_parts)])
            return [(m, True, fused) for m in self.ffn_in] + [(self.ffn_out, False, idx)]
        d = self.head_dim
        rows = (idx[:, None] * d + torch.arange(d)).flatten()
        if len(self.qkv) == 1:  # fused [q | k | v]: with GQA only the q part loses rows
            fused = torch.cat([rows + p * self.heads * d for p in range(1 if self.gqa else 3)])
            q_side = [(self.qkv[0], True, fused)]
        else:
            q_side = [(m, True, rows) for m in (self.qkv[:1] if self.gqa else self.qkv)]
        return q_side + [(self.out, False, rows)]


def blocks(hf_model: nn.Module, layout: Layout) -> list[Block]:
    """The blocks of ``hf_model`` (a ``PreTrainedModel``) with their current head counts."""
    config = hf_model.config
    stack = hf_model.base_model.get_submodule(layout.layers)
    n_heads0 = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads0
    out = []
    for i, block in enumerate(stack):
        qkv = [block.get_submodule(p) for p in layout.qkv]
        if len(qkv) > 1:
            heads = out_width(qkv[0]) // head_dim
            kv_heads = out_width(qkv[1]) // head_dim if layout.gqa else heads
        elif layout.gqa:  # [q | k | v] with the config's k/v heads, which are never pruned
            kv_heads = getattr(config, "num_key_value_heads", None) or n_heads0
            heads = out_width(qkv[0]) // head_dim - 2 * kv_heads
        else:
            heads = kv_heads = out_width(qkv[0]) // (3 * head_dim)
        out.append(Block(i, block.get_submodule(layout.attention), qkv,
                         block.get_submodule(layout.out),
                         [block.get_submodule(p) for p in layout.ffn_in],
                         block.get_submodule(layout.ffn_out), head_dim, heads, kv_heads,
                         layout.gqa, layout.ffn_parts, block))
    return out


@torch.no_grad()
def zero_units_(block: Block, kind: str, units: Sequence[int]) -> None:
    """Zero what ``units`` (heads or FFN neurons) own: the block computes as if they were gone."""
    for module, is_out, idx in block.unit_slices(kind, units):
        (zero_out_ if is_out else zero_in_)(module, idx)


@torch.no_grad()
def remove_units_(block: Block, layout: Layout, kind: str, units: Sequence[int]) -> None:
    """Remove ``units`` (heads or FFN neurons) from ``block`` physically."""
    for module, is_out, idx in block.unit_slices(kind, units):
        out_dim, in_dim = dims(module)
        width = module.weight.shape[out_dim if is_out else in_dim]
        keep = torch.tensor(sorted(set(range(width)) - set(idx.tolist())), dtype=torch.long)
        (keep_out_ if is_out else keep_in_)(module, keep)
    if kind == "heads":
        set_attention_heads_(block, layout, block.heads - len(units))


class _OwnHeads:
    """A config that is the shared one except for its head count (see Layout.heads_from_config).

    Reads go to the shared config, so later changes to it (the attention implementation) still
    reach the attention module.
    """

    def __init__(self, shared: Any, heads: int) -> None:
        self.__dict__.update(_shared=shared, num_attention_heads=heads)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_shared":  # copy/pickle probe before __init__
            raise AttributeError(name)
        return getattr(self._shared, name)


def set_attention_heads_(block: Block, layout: Layout, heads: int) -> None:
    """Rewrite the attention module's attributes for ``heads`` query heads."""
    attn = block.attention
    if layout.heads_from_config:
        attn.config = _OwnHeads(getattr(attn.config, "_shared", attn.config), heads)
    for name in layout.head_attrs:
        setattr(attn, name, heads)
    if hasattr(attn, "all_head_size"):
        attn.all_head_size = heads * block.head_dim
    if hasattr(attn, "split_size"):  # GPT-2 splits the fused projection by this width
        attn.split_size = heads * block.head_dim
    if layout.gqa and hasattr(attn, "num_key_value_groups"):
        attn.num_key_value_groups = heads // block.kv_heads
    block.heads = heads


def rewrite_config_(config: Any, layout: Layout, all_blocks: Sequence[Block],
                    hidden: int | None = None) -> list[str]:
    """Make ``config`` describe the pruned blocks; return why it cannot (empty when it can).

    A config holds one head count and one FFN width for all blocks; per-block widths, or a
    head size other than ``hidden_size / heads`` where the config derives it that way, are not
    expressible, and a stock ``from_pretrained`` would build the wrong shapes. ``hidden`` is
    the model's hidden size now where compress can prune it (None: it cannot, so unchanged).
    """
    heads = {b.heads for b in all_blocks}
    ffn = {b.ffn for b in all_blocks}
    problems = []
    if len(heads) > 1:
        problems.append(f"blocks have different head counts {sorted(heads)}")
    if len(ffn) > 1:
        problems.append(f"blocks have different FFN widths {sorted(ffn)}")
    head_dim = all_blocks[0].head_dim
    n_heads = next(iter(heads))
    hidden_key = layout.hidden.config_key if layout.hidden else "hidden_size"
    width = hidden if hidden is not None else getattr(config, hidden_key)
    if not layout.head_dim_in_config and n_heads * head_dim != width:
        # Advise pruning.hidden only where it can be pruned (not GPT-2, not a BERT encoder
        # without a classification head).
        advice = ("prune pruning.hidden by the same fraction as pruning.heads"
                  if hidden is not None else "set pruning.heads: 0 to keep a stock folder")
        problems.append(f"{config.model_type} configs derive the head size from the hidden "
                        f"size / heads, so {n_heads} heads of size {head_dim} beside hidden "
                        f"size {width} cannot be expressed ({advice})")
    if problems:
        return problems
    updates = {"num_attention_heads": n_heads, layout.ffn_config_key: next(iter(ffn)),
               **({"head_dim": head_dim} if layout.head_dim_in_config else {}),
               **({hidden_key: width} if hidden is not None else {})}
    # The config class's own validators decide (e.g. Llama's asks hidden_size % heads == 0
    # even though it reads head_dim): what it refuses, from_pretrained would refuse too.
    try:
        type(config).from_dict({**config.to_dict(), **updates})
    except Exception as err:  # validators raise ValueError or hub-specific errors
        cause = getattr(err, "__cause__", None) or err
        return [f"the {config.model_type} config class refuses {n_heads} heads / FFN "
                f"{updates[layout.ffn_config_key]}: {str(cause).splitlines()[0]}"]
    for key, value in updates.items():
        setattr(config, key, value)
    return problems
