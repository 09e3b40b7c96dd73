"""The config-rewrite refusal advises pruning.hidden only where the layout can prune it."""
import transformers as t
from torch import nn

from compress.pruning.hf_layout import Block, layout_for, rewrite_config_


def _blocks(heads: int, head_dim: int) -> list[Block]:
    lin = nn.Linear(2, 2)
    return [Block(0, lin, [lin], lin, [lin], lin, head_dim, heads, heads)]


def test_gpt2_refusal_does_not_advise_unsupported_hidden() -> None:
    config = t.GPT2Config(n_embd=32, n_head=4, n_layer=1, n_inner=64)
    problems = rewrite_config_(config, layout_for(config), _blocks(2, 8))
    assert problems and "pruning.hidden by the same fraction" not in problems[0]
    assert "set pruning.heads: 0" in problems[0]


def test_bert_refusal_advises_hidden_only_where_it_can_be_pruned() -> None:
    config = t.BertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                          intermediate_size=64)
    # A classifier (hidden size prunable, given) is advised to prune it ...
    problems = rewrite_config_(config, layout_for(config), _blocks(2, 8), hidden=32)
    assert problems and "pruning.hidden by the same fraction" in problems[0]
    # ... an encoder without a classification head (hidden None: not prunable) is not.
    problems = rewrite_config_(config, layout_for(config), _blocks(2, 8))
    assert problems and "pruning.hidden" not in problems[0]
    assert "set pruning.heads: 0" in problems[0]
