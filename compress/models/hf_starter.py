"""``compress init`` for transformers models: the huggingface source's starter defaults.

The task follows the data (``text`` → sequence classification, ``text_lm`` → causal language
model, ``imagefolder`` → image classification). A local model folder is read (its
``config.json`` only) to tell whether it already has a classification head; without one the
recipe trains a new head first (``model.head: finetune``), which is the baseline.

Example:
    >>> from compress.authoring.starter import render_starter_recipe
    >>> text = render_starter_recipe("huggingface:./my-bert", "text:./sst2",
    ...                              target_sparsity=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import InputError
from compress.hf_names import resolve_hf_name
from compress.jsonio import read_json_object

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["TASK_OF_DATA", "HuggingFaceStarter"]

TASK_OF_DATA = {"text": "sequence-classification", "text_lm": "causal-lm",
                "imagefolder": "image-classification"}


class HuggingFaceStarter:
    """What a starter recipe for a transformers model says: heads and FFN neurons go."""

    starter_defaults: dict[str, Any] = {
        "note": "A transformers model: a local folder, a hub id (downloaded on first use) or "
                "'package.module:function' returning a folder.",
        "transformer": True, "imagenet_input": True, "inputs": ("images", "tokens"),
        "macs_target": False,  # pruned by fractions of heads and neurons
        "unit": "heads",
        "pruning": "Structured: whole attention heads and FFN neurons go, so the dense model "
                   "gets faster and stays a normal transformers model.",
        "importance": "L2 norm of each head's and neuron's weights (taylor uses gradients of a "
                      "few training batches instead).",
        "ratio": "Remove {pct} % of every block's heads and FFN neurons, which removes about "
                 "{pct} % of the blocks' MACs (embeddings are not pruned).",
    }

    # Set by starter from a local folder's config: True where the config derives the head size
    # from hidden_size / heads (BERT family), None when it cannot be told (a hub id).
    derives_head_size: bool | None = None

    def starter(self, w: StarterWriter, arg: str, request: StarterRequest) -> dict[str, Any]:
        """Write the model section's keys after ``source``; return them as recipe fields.

        The task follows the data (:data:`TASK_OF_DATA`). A local folder's ``config.json``
        tells whether it has a classification head; without one the recipe trains a new head
        first (``head: finetune``), and that model is the baseline.

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> HuggingFaceStarter().starter(StarterWriter(), "org/gpt", StarterRequest(
            ...     model="huggingface:org/gpt", data="text_lm:./corpus"))
            {'name': 'org/gpt', 'task': 'causal-lm'}
        """
        if not arg:
            raise InputError("model huggingface: needs a folder, hub id or module:function "
                             "after the source, e.g. huggingface:./my-bert")
        if request.data_source not in TASK_OF_DATA:
            raise InputError(f"huggingface models take data text:PATH (classification), "
                             f"text_lm:PATH (language modelling) or imagefolder:PATH (got data "
                             f"source {request.data_source!r})")
        task = TASK_OF_DATA[request.data_source]
        # A local folder is a path (relative to the recipe); anything else a hub id or module.
        w.key("name", w.path(arg) if Path(arg).is_dir() else arg)
        w.key("task", task, "Picked from the data source; the model is loaded with this task's "
              "AutoModel class.")
        fields: dict[str, Any] = {"name": arg, "task": task}
        config = _config(arg)  # read once: a 'module:function' name is called to find it
        self.derives_head_size = _derives_head_size(config)
        if task == "causal-lm":
            return fields
        has_head = _has_head(config, task)
        classes = request.num_classes
        if classes is not None:
            fields["num_classes"] = classes
            w.key("num_classes", classes)
        else:
            w.comment("num_classes: 2   # the labels in your data; needed when a new head is "
                      "trained", 2)
        if has_head is False:
            fields.update(head="finetune", head_epochs=1)
            w.key("head", "finetune", f"{arg} has no {task} head: a new one is trained together "
                  f"with the body first, and that trained model is the baseline every number is "
                  f"compared with (train: the head alone, body frozen).")
            w.key("head_epochs", 1)
            if classes is None:
                raise InputError(f"{arg} has no {task} head, so the recipe trains one: give "
                                 f"--num-classes (the number of labels in your data)")
        return fields

    def starter_name(self, arg: str) -> str:
        """The folder's name, or the module's for ``module:function``.

        Example:
            >>> HuggingFaceStarter().starter_name("./models/my-bert")
            'my-bert'
        """
        module, colon, _ = arg.partition(":")
        return module.replace(".", "-") if colon else Path(arg).name or "model"

    def starter_pruning(self, w: StarterWriter, target: float) -> None:
        """Write the pruning keys that follow the ratio: heads and FFN neurons alike, or FFN
        neurons only where the config derives the head size (BERT family), so that ``hf/``
        stays loadable by stock ``from_pretrained``.

        Example:
            >>> from compress.authoring.writer import StarterWriter
            >>> w = StarterWriter()
            >>> HuggingFaceStarter().starter_pruning(w, 0.5)
            >>> w.lines[:2]
            ['  heads: 0.5', '  ffn: 0.5']
            >>> bert, w = HuggingFaceStarter(), StarterWriter()
            >>> bert.derives_head_size = True
            >>> bert.starter_pruning(w, 0.5)
            >>> [line for line in w.lines if not line.lstrip().startswith("#")]
            ['  heads: 0', '  ffn: 0.5']
        """
        if self.derives_head_size:
            w.key("heads", 0, "Every head is kept: this config derives the head size from "
                  "hidden_size / heads, so fewer heads would leave no stock-loadable hf/ "
                  "folder. At half the MACs, FFN neurons alone lost least accuracy of the "
                  "stock-loadable choices on MiniLM/SST-2 (BENCHMARKS.md); fewer MACs go than "
                  "the ratio says, since attention is kept.")
            w.key("ffn", target)
            return
        w.key("heads", target)
        w.key("ffn", target)
        w.comment(f"hidden: {target:g}   # BERT-family/DistilBERT classifiers: also shrink the "
                  f"hidden size; with the same fraction as heads, hf/ stays loadable by stock "
                  f"from_pretrained", 2)


def _config(name: str) -> dict[str, Any] | None:
    """A local model folder's ``config.json``; None when there is none or it cannot be read."""
    try:
        folder = resolve_hf_name(name, Path)  # calls a 'module:function' name
    except InputError:
        return None
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        return read_json_object(config)
    except InputError:
        return None


def _derives_head_size(config: dict[str, Any] | None) -> bool | None:
    """Whether ``config`` derives the head size from hidden_size / heads; None when it cannot
    be told (no local config, a model type without a layout)."""
    from compress.pruning.hf_layout import LAYOUTS

    model_type = (config or {}).get("model_type")
    if not isinstance(model_type, str) or model_type not in LAYOUTS:
        return None
    return not LAYOUTS.get(model_type).head_dim_in_config


def _has_head(config: dict[str, Any] | None, task: str) -> bool | None:
    """Whether the model of a local ``config`` has a head for ``task``; None when it cannot be
    told (no local config)."""
    if config is None:
        return None
    suffix = {"sequence-classification": "ForSequenceClassification",
              "image-classification": "ForImageClassification"}.get(task)
    if suffix is None:
        return True
    architectures = config.get("architectures")
    return any(isinstance(a, str) and a.endswith(suffix)
               for a in (architectures if isinstance(architectures, list) else []))
