"""The prologue every run of a recipe shares: seed, data, model, probe batch, output check.

``compress apply`` and ``compress inspect`` both start here, on a recipe that
:func:`compress.run.preflight.check_recipe` already accepted (each entry point checks once, before
it writes anything): the model and data sections are not checked again here.

Example:
    >>> from compress.recipe.load import load_recipe
    >>> p = prepare(load_recipe("recipes/quickstart.yaml"), train=False)
    >>> tuple(p.probe.shape), p.bundle.num_classes
    ((8, 1, 8, 8), 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.data import DataBundle, build_data
from compress.data.text import with_default_tokenizer
from compress.errors import InputError
from compress.models import build_model, model_tokenizer
from compress.recipe.sources import ModelSpec
from compress.recipe.spec import Recipe
from compress.run.context import seed_everything

__all__ = ["Prepared", "prepare", "check_outputs", "resolved_model_spec"]


@dataclass
class Prepared:
    """A recipe's data, its model (on the CPU, as built) and the fixed probe batch."""

    bundle: DataBundle
    model: nn.Module
    probe: torch.Tensor


def prepare(recipe: Recipe, *, train: bool = True) -> Prepared:
    """Seed, build the data (``train``: with its training split) and the model; with the
    training split, check that the model's outputs fit the data (without it, the classes seen
    may be a subset). The probe batch holds enough samples for the pruning proofs and the
    export parity checks."""
    seed_everything(recipe.seed)
    data = with_default_tokenizer(recipe.data, model_tokenizer(recipe.model))
    bundle = build_data(data, resolve=recipe.resolve_path, seed=recipe.seed, train=train,
                        check=False)
    model = build_model(recipe.model, resolve=recipe.resolve_path, check=False)
    probe = bundle.probe_batch(max(recipe.pruning.probe_batch, recipe.export.parity_batch))
    if train:
        check_outputs(model, bundle, probe)
    return Prepared(bundle, model, probe)


def check_outputs(model: nn.Module, bundle: DataBundle, probe: torch.Tensor) -> None:
    """Class logits of shape (batch, classes) that match the data, or language-model logits."""
    with torch.no_grad():
        out = model.eval()(probe[:1])
    if isinstance(out, torch.Tensor) and out.dim() == 3 and not bundle.class_names:
        return  # language model: (batch, length, vocab) logits against token targets
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InputError(f"the model must return class logits of shape (batch, classes); it "
                         f"returned {getattr(out, 'shape', type(out).__name__)}")
    if out.shape[1] != bundle.num_classes:
        raise InputError(f"the model outputs {out.shape[1]} classes but the data has "
                         f"{bundle.num_classes}; set model.num_classes: {bundle.num_classes}")


def resolved_model_spec(recipe: Recipe) -> ModelSpec:
    """The model spec with file paths made absolute, as stored in the manifest."""
    spec = recipe.model
    if spec.factory and ".py:" in spec.factory:
        file, _, attr = spec.factory.rpartition(":")
        spec = spec.model_copy(update={"factory": f"{recipe.resolve_path(file).resolve()}:{attr}"})
    return spec
