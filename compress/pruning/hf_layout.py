"""Where attention heads and FFN neurons live in a transformers model, and how to cut them.

One :class:`Layout` per ``config.model_type``, registered in :data:`LAYOUTS`: a new architecture
is one registration. A layout names, relative to one block, the query/key/value projections (or
one fused projection), the attention output projection and the FFN input/output layers; the
surgery below works on ``nn.Linear`` and on transformers' transposed ``Conv1D`` alike.

Example:
    >>> LAYOUTS.get("llama").gqa
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compress.pruning.hf_hidden import HiddenLayout
from compress.registry import Registry

__all__ = ["Layout", "LAYOUTS", "Block", "blocks", "keep_out_", "keep_in_", "zero_out_", "zero_in_",
           "out_width", "set_attention_heads_", "rewrite_config_", "layout_for"]


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
    ffn_out="mlp.c_proj", ffn_config_key="n_inner", head_attrs=("num_heads",)))
_DECODER = Layout(layers="layers", attention="self_attn",
                  qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  out="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"),
                  ffn_out="mlp.down_proj", gqa=True, head_dim_in_config=True, head_attrs=())
for _name in ("llama", "qwen2", "qwen3", "mistral"):
    LAYOUTS.register(_name)(_DECODER)


def layout_for(config: Any) -> Layout:
    """The layout of ``config.model_type``; unknown types name the supported ones."""
    return LAYOUTS.get(config.model_type)


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

    @property
    def ffn(self) -> int:
        return out_width(self.ffn_in[0])


def blocks(hf_model: nn.Module, layout: Layout) -> list[Block]:
    """The blocks of ``hf_model`` (a ``PreTrainedModel``) with their current head counts."""
    config = hf_model.config
    stack = hf_model.base_model.get_submodule(layout.layers)
    n_heads0 = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads0
    out = []
    for i, block in enumerate(stack):
        qkv = [block.get_submodule(p) for p in layout.qkv]
        q_width = out_width(qkv[0]) // (3 if len(qkv) == 1 else 1)
        heads = q_width // head_dim
        kv_heads = out_width(qkv[1]) // head_dim if layout.gqa else heads
        out.append(Block(i, block.get_submodule(layout.attention), qkv,
                         block.get_submodule(layout.out),
                         [block.get_submodule(p) for p in layout.ffn_in],
                         block.get_submodule(layout.ffn_out), head_dim, heads, kv_heads))
    return out


def _dims(module: nn.Module) -> tuple[int, int]:
    """(output dim, input dim) of the weight: transformers' Conv1D stores it transposed."""
    if isinstance(module, nn.Linear):
        return 0, 1
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return 1, 0
    raise AssertionError(f"unsupported projection {type(module).__name__}")


def out_width(module: nn.Module) -> int:
    return module.weight.shape[_dims(module)[0]]


def _set_widths(module: nn.Module) -> None:
    out_dim, in_dim = _dims(module)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:
        module.nf, module.nx = module.weight.shape[out_dim], module.weight.shape[in_dim]


def keep_out_(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep only output features ``idx`` (rows of a Linear)."""
    out_dim, _ = _dims(module)
    idx = idx.to(module.weight.device)
    module.weight = nn.Parameter(module.weight.data.index_select(out_dim, idx).clone())
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias.data.index_select(0, idx).clone())
    _set_widths(module)


def keep_in_(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep only input features ``idx`` (columns of a Linear)."""
    _, in_dim = _dims(module)
    module.weight = nn.Parameter(
        module.weight.data.index_select(in_dim, idx.to(module.weight.device)).clone())
    _set_widths(module)


@torch.no_grad()
def zero_out_(module: nn.Module, idx: torch.Tensor) -> None:
    out_dim, _ = _dims(module)
    module.weight.index_fill_(out_dim, idx.to(module.weight.device), 0.0)
    if module.bias is not None:
        module.bias.index_fill_(0, idx.to(module.bias.device), 0.0)


@torch.no_grad()
def zero_in_(module: nn.Module, idx: torch.Tensor) -> None:
    _, in_dim = _dims(module)
    module.weight.index_fill_(in_dim, idx.to(module.weight.device), 0.0)


def set_attention_heads_(block: Block, layout: Layout, heads: int) -> None:
    """Rewrite the attention module's attributes for ``heads`` query heads."""
    attn = block.attention
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
    the model's hidden size now (None: unchanged).
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
        # Advise pruning.hidden only where this layout can prune it (GPT-2's cannot).
        advice = ("prune pruning.hidden by the same fraction as pruning.heads" if layout.hidden
                  else f"{config.model_type} cannot prune pruning.hidden, so leave "
                       f"pruning.heads out")
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
