"""Checks of a recipe that need more than its schema: source-specific keys and paths.

Cheap: nothing is built or loaded, so ``compress validate`` answers in about a second.

Example:
    >>> check_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from compress.data import check_data_spec
from compress.errors import InputError
from compress.models import check_model_spec
from compress.recipe import Recipe
from compress.schedules import plan_targets

__all__ = ["check_recipe"]


def check_recipe(recipe: Recipe) -> Recipe:
    """Raise :class:`InputError` for keys a source does not use and for missing files."""
    plan_targets(recipe.schedule, recipe.pruning.final_target())
    check_model_spec(recipe.model)
    check_data_spec(recipe.data)
    if recipe.model.checkpoint:
        path = recipe.resolve_path(recipe.model.checkpoint)
        if not path.is_file():
            raise InputError(f"model.checkpoint {str(path)!r} does not exist")
    if recipe.model.factory and ".py:" in recipe.model.factory:
        path = recipe.resolve_path(recipe.model.factory.rpartition(":")[0])
        if not path.is_file():
            raise InputError(f"model.factory file {str(path)!r} does not exist")
    if recipe.data.path and not recipe.data.download:
        path = recipe.resolve_path(recipe.data.path)
        if not path.exists():
            raise InputError(f"data.path {str(path)!r} does not exist")
    return recipe
