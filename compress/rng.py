"""Random states of a run: every generator a fine-tune consumes, saved and put back exactly.

A resumed run continues with the random states of the step (or fine-tune position) it resumes
from, so it reaches the result an uninterrupted run would have had.

Example:
    >>> state = rng_state(None)
    >>> a = torch.rand(1)
    >>> restore_rng_state(state, None)
    >>> bool(torch.rand(1) == a)
    True
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["sampler_generator", "rng_state", "restore_rng_state"]


def sampler_generator(loader: Any) -> torch.Generator | None:
    """The generator that orders a training loader's batches (its sampler's), if it has one."""
    return getattr(getattr(loader, "sampler", None), "generator", None)


def rng_state(sampler_generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Every random state a fine-tune consumes, as tensors (saved with safetensors)."""
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.tensor(list(_numpy_words()), dtype=torch.int64),
             "python": torch.tensor(list(_python_words()), dtype=torch.int64)}
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor],
                      sampler_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.random.get_state()
    np.random.set_state((keys[0], state["numpy"][:-1].numpy().astype(np.uint32),
                         int(state["numpy"][-1]), keys[3], keys[4]))
    random.setstate((3, tuple(int(w) for w in state["python"].tolist()), None))
    if sampler_generator is not None and "sampler" in state:
        sampler_generator.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _numpy_words() -> list[int]:
    _, keys, pos, _, _ = np.random.get_state()
    return [int(k) for k in keys] + [int(pos)]


def _python_words() -> list[int]:
    version, internal, _ = random.getstate()
    assert version == 3
    return [int(w) for w in internal]
