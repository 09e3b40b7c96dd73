"""Starter-recipe sections for transformers models (``compress init --model huggingface:...``).

The task follows the data: ``text`` → sequence classification, ``text_lm`` → causal language
model, ``imagefolder`` → image classification. A local model folder is read (its
``config.json`` only) to tell whether it already has a classification head; without one the
recipe trains a new head first (``model.head: finetune``), which is the baseline.

Example:
    >>> from compress.starter import render_starter_recipe
    >>> text = render_starter_recipe("huggingface:./my-bert", "text:./sst2",
    ...                              target_sparsity=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import InputError

__all__ = ["TASK_OF_DATA", "write_hf_model", "write_text_data", "write_hf_pruning"]

TASK_OF_DATA = {"text": "sequence-classification", "text_lm": "causal-lm",
                "imagefolder": "image-classification"}


def _has_head(name: str, task: str) -> bool | None:
    """Whether a local model folder has a head for ``task``; None when it cannot be told."""
    from compress.models.huggingface import resolve_hf_name

    try:
        folder = resolve_hf_name(name, Path)  # calls a 'module:function' name
    except InputError:
        return None
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    suffix = {"sequence-classification": "ForSequenceClassification",
              "image-classification": "ForImageClassification"}.get(task)
    if suffix is None:
        return True
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(a.endswith(suffix) for a in architectures)


def write_hf_model(w: Any, name: str, data_source: str, classes: int | None) -> dict[str, Any]:
    """Write the model section of a transformers model; return its fields."""
    if data_source not in TASK_OF_DATA:
        raise InputError(f"huggingface models take data text:PATH (classification), "
                         f"text_lm:PATH (language modelling) or imagefolder:PATH (got data "
                         f"source {data_source!r})")
    task = TASK_OF_DATA[data_source]
    w.section("model", "A transformers model: a local folder, a hub id (downloaded on first "
              "use) or 'package.module:function' returning a folder.")
    w.key("source", "huggingface")
    w.key("name", name)
    w.key("task", task, "Picked from the data source; the model is loaded with this task's "
          "AutoModel class.")
    fields: dict[str, Any] = {"source": "huggingface", "name": name, "task": task}
    if task == "causal-lm":
        return fields
    has_head = _has_head(name, task)
    if classes is not None:
        fields["num_classes"] = classes
        w.key("num_classes", classes)
    else:
        w.comment("num_classes: 2   # the labels in your data; needed when a new head is "
                  "trained", 2)
    if has_head is False:
        fields.update(head="finetune", head_epochs=1)
        w.key("head", "finetune", f"{name} has no {task} head: a new one is trained together "
              f"with the body first, and that trained model is the baseline every number is "
              f"compared with (train: the head alone, body frozen).")
        w.key("head_epochs", 1)
        if classes is None:
            raise InputError(f"{name} has no {task} head, so the recipe trains one: give "
                             f"--num-classes (the number of labels in your data)")
    return fields


def write_text_data(w: Any, source: str, path: str, patience: bool) -> None:
    """Write the data section for ``text`` / ``text_lm`` files."""
    if not path:
        raise InputError(f"data source {source!r} needs a folder: {source}:PATH")
    w.section("data", "Local text files, tokenised with the model's tokenizer.")
    w.key("source", source)
    if source == "text":
        w.key("path", path, "A folder with <split>.tsv/.csv/.json/.jsonl files holding a text "
              "column (sentence or text) and an integer label column.")
    else:
        w.key("path", path, "A folder with <split>.txt files, cut into token blocks.")
    w.key("train_split", "train")
    w.key("eval_split", "test", "The file accuracy (or perplexity) is measured on, e.g. dev.")
    w.key("max_length", 128, "Tokens per row: longer texts are cut; batches are cut to their "
          "longest row, so short texts cost less.")
    w.key("batch_size", 32)
    if patience:
        w.key("val_subset", 500, "Training rows held out as validation data for "
              "patience-based fine-tuning.")


def write_hf_pruning(w: Any, target: float) -> None:
    """Write the pruning section: heads and FFN neurons by ``target``."""
    pct = f"{target * 100:g}"
    w.section("pruning", "Structured: whole attention heads and FFN neurons go, so the dense "
              "model gets faster and stays a normal transformers model.")
    w.key("kind", "structured")
    w.key("importance", "l2", "L2 norm of each head's and neuron's weights (taylor uses "
          "gradients of a few training batches instead).")
    w.key("ratio", target, f"Remove {pct} % of every block's heads and FFN neurons, which "
          f"removes about {pct} % of the blocks' MACs (embeddings are not pruned).")
    w.key("heads", target)
    w.key("ffn", target)
    w.comment(f"hidden: {target:g}   # BERT-family/DistilBERT classifiers: also shrink the "
              f"hidden size; with the same fraction as heads, hf/ stays loadable by stock "
              f"from_pretrained", 2)
