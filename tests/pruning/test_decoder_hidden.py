"""Hidden-size pruning of decoders (Llama with GQA, Qwen2, Qwen3, Mistral, GPT-2): the residual
stream loses channels in the embedding, every projection reading or writing it, every RMSNorm /
LayerNorm (the final one too) and the LM head, tied or not; proven with each norm restricted to
the kept channels; written to hf/ with the new hidden size, reloaded by stock transformers,
generating the same tokens; ONNX parity; compress.load rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.errors import CheckFailed, InputError
from compress.pruning.hf_layout import blocks
from compress.pruning.transformer import TransformerPruner
from compress.recipe.pruning import PruningSpec
from tests.decoder_checks import assert_stock_and_onnx
from tests.hf_models import build_tiny as _build
from tests.hf_models import example_input, fast_subset, save_all, save_tiny

# arch -> (hidden before, heads fraction that keeps the config expressible)
DECODERS = {"llama": (64, 0.0), "qwen2": (64, 0.0), "qwen3": (64, 0.0), "mistral": (64, 0.0),
            "gpt2": (32, 0.5)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return save_all(tmp_path_factory.mktemp("decoders"), DECODERS)


@pytest.mark.parametrize("arch", fast_subset(DECODERS, {"llama"}))
def test_hidden_pruned_proven_reloaded_generating_and_exported(arch: str, folders,
                                                               tmp_path: Path) -> None:
    width, heads = DECODERS[arch]
    spec = PruningSpec(ratio=0.5, heads=heads, ffn=0.25, hidden=0.5, round_to=1)
    folder, task = folders[arch]
    model = _build(folder, task)
    kv_before = [b.kv_heads for b in blocks(model.hf, model.layout)]
    x = example_input(model)
    pruner = TransformerPruner(model, x[:1], spec, cumulative_ratios=[0.25, 0.5])
    for ratio in (0.25, 0.5):
        record = pruner.step_(ratio, x)
        assert record.max_abs_diff is not None and record.max_abs_diff < 1e-4
        assert record.layers["hidden"] == width - round(width * ratio)
    assert pruner.config_problems == []
    config = model.hf.config
    assert config.hidden_size == width // 2
    found = blocks(model.hf, model.layout)
    if not heads:  # GPT-2 is multi-head: its k/v heads are its heads, pruned with hidden
        assert [b.kv_heads for b in found] == kv_before  # k/v groups untouched
    assert {b.head_dim for b in found} == {8}
    head = model.hf.lm_head if task == "causal-lm" else model.hf.score  # Qwen2's classifier
    assert head.weight.shape[1] == width // 2
    assert_stock_and_onnx(model, x, tmp_path, folder, task)


def test_a_tied_lm_head_stays_tied(folders, tmp_path: Path) -> None:
    import transformers

    folder, task = folders["qwen3"]
    config = transformers.AutoConfig.from_pretrained(str(folder))
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path / "tied"))
    model = _build(tmp_path / "tied", task)
    x = example_input(model)
    record = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, ffn=0.0,
                                                         hidden=0.5, round_to=1)).step_(0.5, x)
    assert record.max_abs_diff is not None and record.max_abs_diff < 1e-4
    hf = model.hf
    assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    assert hf.get_input_embeddings().weight.shape[1] == 32
    assert_stock_and_onnx(model, x, tmp_path / "out", tmp_path / "tied", task)
    saved = json.loads((tmp_path / "out" / "hf" / "config.json").read_text())
    assert saved["hidden_size"] == 32 and saved["tie_word_embeddings"] is True


def test_the_proof_catches_a_wrong_decoder_hidden_mapping(folders, monkeypatch) -> None:
    import compress.pruning.transformer as tp

    real = tp.cut_hidden_

    def shifted(s, keep, head_keep):  # keeps the neighbour of each chosen channel
        real(s, (keep + 1) % s.width, head_keep)

    monkeypatch.setattr(tp, "cut_hidden_", shifted)
    model = _build(*folders["llama"])
    x = example_input(model)
    with pytest.raises(CheckFailed, match="hidden size"):
        TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, hidden=0.5,
                                                    round_to=1)).step_(0.5, x)


def test_the_restricted_rms_norm_is_what_the_cut_norm_computes(folders) -> None:
    """Zeroing channels alone is not the cut model: the RMS still counts them. The proof's
    reference restricts each RMSNorm; without that restriction it would fail."""
    import compress.pruning.transformer as tp

    model = _build(*folders["llama"])
    x = example_input(model)
    norm = model.hf.model.norm
    h = torch.randn(2, 3, 64)
    h[..., 32:] = 0.0
    from compress.pruning.norms import restricted_norms

    with restricted_norms({norm: range(32, 64)}, {}):
        restricted = norm(h)
    kept = h[..., :32].float()
    expected = norm.weight[:32] * (kept * torch.rsqrt(kept.pow(2).mean(-1, keepdim=True)
                                                      + norm.variance_epsilon))
    assert torch.allclose(restricted[..., :32], expected, atol=1e-6)
    assert not torch.allclose(norm(h)[..., :32], expected, atol=1e-3)

    class Unmasked:  # a masking that restricts nothing
        def __init__(self, *args) -> None:
            pass

        def __enter__(self):
            return lambda: None

        def __exit__(self, *exc) -> None:
            return None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tp, "masked_norms", Unmasked)
        with pytest.raises(CheckFailed, match="hidden size"):
            TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, ffn=0.0,
                                                        hidden=0.5, round_to=1)).step_(0.5, x)


def test_hidden_replays_on_resume_for_a_decoder(folders) -> None:
    model, fresh = _build(*folders["llama"]), _build(*folders["llama"])
    x = example_input(model)
    spec = PruningSpec(ratio=0.5, hidden=0.5, heads=0.0)
    pruner = TransformerPruner(model, x[:1], spec, cumulative_ratios=[0.25, 0.5])
    pruner.step_(0.25, x)
    replay = TransformerPruner(fresh, x[:1], spec, cumulative_ratios=[0.25, 0.5])
    replay.restore_(json.loads(json.dumps(pruner.get_state())), {})
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert replay.widths() == pruner.widths() and replay.widths()["hidden"] == 48


def test_gemma_hidden_is_refused_in_one_sentence(tmp_path: Path) -> None:
    model = _build(*save_tiny("gemma", tmp_path / "gemma"))
    with pytest.raises(InputError, match="pruning.hidden is not supported for gemma models; "
                                         "supported: .*llama"):
        TransformerPruner(model, example_input(model)[:1], PruningSpec(ratio=0.5, hidden=0.5))
