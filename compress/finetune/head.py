"""Training the head a pretrained body was shipped without, before the baseline is measured.

``model.head: train`` trains only the newly initialised parameters (body frozen);
``model.head: finetune`` trains them and the body together, with the recipe's fine-tune
settings for ``model.head_epochs`` epochs.

Example:
    >>> train_head_(model, bundle, recipe, torch.device("cpu"))  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from compress.data import DataBundle
from compress.errors import InputError
from compress.finetune.finetune import finetune_
from compress.recipe.spec import Recipe

__all__ = ["train_head_"]


def train_head_(model: nn.Module, bundle: DataBundle, recipe: Recipe,
                 device: torch.device) -> None:
    """Train the parameters the checkpoint lacked (a new classification head), body frozen;
    with ``model.head: finetune`` the body trains too."""
    new = set(getattr(model, "new_parameters", []))
    if recipe.model.head == "finetune":
        new |= {name for name, _ in model.named_parameters()}
    elif not new:
        raise InputError("model.head: train found no newly initialised parameters: the "
                         "checkpoint already has a head; use model.head: pretrained")
    if bundle.train is None:
        raise InputError("model.head: train needs training data")
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name in new)
    spec = recipe.finetune.model_copy(update={"epochs": recipe.model.head_epochs,
                                              "patience": None, "distill": None,
                                              "max_steps": None})
    try:
        finetune_(model, bundle.train, spec, device, description="train head")
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])
