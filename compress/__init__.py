"""compress: recipe-driven structured pruning with proofs, export and honest speed reports.

Example:
    >>> import compress
    >>> result = compress.apply("recipes/quickstart.yaml", finetune={"epochs": 1})  # doctest: +SKIP
    >>> model = compress.load(result.out_dir)  # doctest: +SKIP
    >>> pruned = compress.prune(net, x, target_macs=0.5)  # doctest: +SKIP
    >>> pruned.save("out/net", build=Net)  # doctest: +SKIP
    >>> compress.load("out/net", build=Net)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.errors import CheckFailed, CompressError, InputError

__version__ = "0.1.0"

__all__ = ["apply", "load", "prune", "save", "Result", "PruneResult", "CompressError",
           "InputError", "CheckFailed", "__version__"]

if TYPE_CHECKING:
    from compress.api import PruneResult, Result, apply, load, prune, save


def __getattr__(name: str) -> Any:
    # Importing torch and friends costs seconds; `compress --help` and recipe errors should not.
    if name in {"apply", "load", "prune", "save", "Result", "PruneResult"}:
        from compress import api

        return getattr(api, name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
