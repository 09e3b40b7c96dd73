"""The run context: what every stage of a run needs, passed explicitly (no globals).

Example:
    >>> ctx = RunContext.create(recipe, Path("runs/demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress.errors import InputError
from compress.recipe.spec import Recipe

__all__ = ["RunContext", "resolve_device", "seed_everything"]


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; an absent CUDA is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was requested but torch sees no CUDA GPU; "
                         f"use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RunContext:
    recipe: Recipe
    out_dir: Path
    device: torch.device
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("compress.run"))

    @classmethod
    def create(cls, recipe: Recipe, out_dir: Path) -> RunContext:
        return cls(recipe=recipe, out_dir=out_dir, device=resolve_device(recipe.device))
