"""What ``compress validate`` says about a huggingface model without building or importing it.

Validate is side-effect free: it never calls a ``module:function`` name, never imports a model
folder's own code (``auto_map`` in ``config.json``) and never fetches a hub id. It reads a
local folder's ``config.json`` as plain JSON (bounded, :mod:`compress.jsonio`), not through
transformers, which could prompt for or run that code. What ``apply`` would import or call is
said in words instead (:func:`hf_code`).

Example:
    >>> from compress.recipe.sources import ModelSpec
    >>> hf_code(ModelSpec(source="huggingface", name="os:getcwd", task="causal-lm"), Path)
    ["apply will import module 'os' and call os.getcwd() to find the model folder (model.name)"]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import InputError
from compress.hf_names import hf_name_function, local_hf_folder
from compress.jsonio import read_json_object
from compress.pruning.hf_layout import LAYOUTS

if TYPE_CHECKING:
    from compress.recipe.pruning import PruningSpec
    from compress.recipe.sources import ModelSpec

__all__ = ["hf_code", "hf_model_type", "hf_notes", "read_local_config", "local_block_count"]


def read_local_config(spec: ModelSpec, resolve: Callable[[str], Path]) -> dict[str, Any] | None:
    """The ``config.json`` of the local folder ``model.name`` names, as plain JSON; None for a
    hub id or a ``module:function`` name (nothing is fetched or called)."""
    folder = local_hf_folder(spec.name or "", resolve)
    if folder is None or not (folder / "config.json").is_file():
        return None
    return read_json_object(folder / "config.json", label="the model folder's config ")


def hf_model_type(spec: ModelSpec, pruning: PruningSpec,
                  resolve: Callable[[str], Path]) -> str | None:
    """``model_type`` of a local model pruned by shapes (structured); None otherwise (a hub id,
    a ``module:function`` name, no readable ``model_type``, or a kind that only masks)."""
    from compress.pruning import pruning_kind  # the kinds import torch-pruning

    if not pruning_kind(pruning.kind).shrinks_shapes:
        return None
    config = read_local_config(spec, resolve)
    model_type = config.get("model_type") if config is not None else None
    return model_type if isinstance(model_type, str) else None


def local_block_count(spec: ModelSpec, resolve: Callable[[str], Path]) -> int | None:
    """The number of blocks a local folder's ``config.json`` gives (the key GPT-2 and
    DistilBERT use too); None when there is no local config or it names no count."""
    config = read_local_config(spec, resolve)
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        value = (config or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _own_code(config: dict[str, Any]) -> list[str]:
    """The Python files a config's ``auto_map`` names (``modeling_x.Cls`` -> ``modeling_x.py``)."""
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return []
    refs: list[str] = []
    for value in auto_map.values():
        refs += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    # "repo--module.Class" names another repository's code; the module is what gets imported.
    return sorted({ref.split("--")[-1].rpartition(".")[0] + ".py" for ref in refs if "." in ref})


def hf_code(spec: ModelSpec, resolve: Callable[[str], Path]) -> list[str]:
    """What building ``spec`` would import or call, one sentence each (nothing is imported)."""
    lines = []
    function = hf_name_function(spec.name or "")
    if function is not None:
        module, attr = function
        lines.append(f"apply will import module {module!r} and call {module}.{attr}() to find "
                     f"the model folder (model.name)")
    if spec.trust_remote_code:
        config = read_local_config(spec, resolve)
        files = _own_code(config) if config is not None else []
        where = (f"its files {', '.join(files)}, named by config.json's auto_map" if files
                 else "whatever code the model repository ships")
        lines.append(f"apply will import the model's own code ({where}) because "
                     f"model.trust_remote_code is true")
    return lines


def hf_notes(spec: ModelSpec, pruning: PruningSpec, resolve: Callable[[str], Path]) -> list[str]:
    """Whether a model folder's own code is left unrun, and whether a pruned model stays
    loadable by stock ``from_pretrained`` (``hf/``), judged from the local ``config.json``."""
    from compress.pruning import pruning_kind  # the kinds import torch-pruning

    config = read_local_config(spec, resolve)
    if config is None:
        return []
    model_type = config.get("model_type")
    if not isinstance(model_type, str):  # a hand-edited config; transformers will say more
        model_type = "(no model_type)"
    notes = []
    files = _own_code(config)
    if files and not spec.trust_remote_code:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type not in CONFIG_MAPPING_NAMES:
            raise InputError(f"model.name's config.json has model_type {str(model_type)[:40]!r}, "
                             f"which transformers does not know: only the folder's own code "
                             f"({', '.join(files)}) can load it, and it runs only with "
                             f"model.trust_remote_code: true (for sources you trust)")
        notes.append(f"config.json names the model's own code ({', '.join(files)}); apply will "
                     f"not run it (model.trust_remote_code is false) and loads transformers' "
                     f"stock {model_type} classes")
    if not pruning_kind(pruning.kind).shrinks_shapes or model_type not in LAYOUTS:
        return notes  # a model type without a layout is refused by check_pruning
    layout = LAYOUTS.get(model_type)
    # With a MACs target the search sets the head fraction unless heads is given.
    heads = pruning.heads if pruning.heads is not None else (pruning.ratio or "searched")
    hidden = pruning.hidden or 0.0
    # A params target keeps only results a stock config can express (it picks the fractions).
    by_params = pruning.target is not None and pruning.target.params is not None
    if heads and heads != hidden and not layout.head_dim_in_config and not by_params:
        shown = heads if isinstance(heads, str) else f"{heads:g}"
        fix = ("Set pruning.hidden equal to pruning.heads (both shrink, the head size "
               "stays), or pruning.heads: 0 to prune FFN neurons only, to keep hf/"
               if layout.hidden is not None and spec.task in layout.hidden.tasks
               and pruning.target is None
               else "Set pruning.heads: 0 to prune FFN neurons only and keep hf/")
        notes.append(f"{model_type} configs derive the head size from hidden_size / "
                     f"num_attention_heads, so with heads ({shown}) and hidden "
                     f"({hidden:g}) pruned by different fractions no stock from_pretrained "
                     f"folder (hf/) is written; compress.load rebuilds the model. {fix}")
    if pruning.scope == "global":
        notes.append("scope: global gives blocks different widths, which a transformers "
                     "config cannot express: no hf/ folder is written; compress.load "
                     "rebuilds the model")
    return notes
