"""Checks of a recipe that need more than its schema: source-specific keys and paths.

Cheap and side-effect free: nothing is built or loaded, no user function is called and no
model's own code is imported, so ``compress validate`` answers in about a second and is safe on
a recipe from anyone. What ``apply`` would import or call is said instead (:func:`planned_code`).

Example:
    >>> check_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from compress.data import DATASETS, check_data_spec
from compress.errors import InputError
from compress.hf_names import hf_name_function
from compress.models import MODEL_SOURCES, ModelSource, check_model_spec
from compress.models.checkpoint import _TORCH_SUFFIXES as TORCH_SUFFIXES
from compress.recipe.spec import Recipe
from compress.schedules import plan_targets

__all__ = ["check_recipe", "recipe_notes", "planned_code", "MAX_STEPS"]

# Every pruning step is followed by a fine-tune; far more steps than this is a typo.
MAX_STEPS = 1000


def check_recipe(recipe: Recipe) -> Recipe:
    """Raise :class:`InputError` for keys a source does not use and for missing files."""
    _check_schedule(recipe)
    check_model_spec(recipe.model)
    _source(recipe).check_pruning(recipe.model, recipe.pruning, recipe.resolve_path)
    check_data_spec(recipe.data)
    for pattern in recipe.pruning.ignored:  # whether they match is known once the model is built
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as err:
                raise InputError(f"pruning.ignored: {pattern!r} is not a valid regular "
                                 f"expression ({err})") from None
    if recipe.model.checkpoint:
        path = recipe.resolve_path(recipe.model.checkpoint)
        kind = _kind(path, "model.checkpoint")
        if kind == "missing":
            raise InputError(f"checkpoint {str(path)!r} does not exist; fix model.checkpoint")
        if kind != "file":
            raise InputError(f"checkpoint {str(path)!r} is a {kind}, not a file; point "
                             f"model.checkpoint at a .safetensors or .pt file")
        if path.suffix != ".safetensors" and path.suffix not in TORCH_SUFFIXES:
            raise InputError(f"checkpoint {str(path)!r} has an unknown extension; use "
                             f".safetensors or one of {', '.join(sorted(TORCH_SUFFIXES))}")
    if recipe.model.factory and ".py:" in recipe.model.factory:
        path = recipe.resolve_path(recipe.model.factory.rpartition(":")[0])
        if _kind(path, "model.factory") != "file":
            raise InputError(f"model.factory file {str(path)!r} does not exist")
    if recipe.data.path and not recipe.data.download:
        path = recipe.resolve_path(recipe.data.path)
        if _kind(path, "data.path") == "missing":
            raise InputError(f"data.path {str(path)!r} does not exist")
        source = DATASETS.get(recipe.data.source)()
        if hasattr(source, "check_files"):  # the split files a local folder must hold
            source.check_files(recipe.data, recipe.resolve_path)
    return recipe


def _kind(path: Path, key: str) -> str:
    """``file``, ``folder``, ``special file`` or ``missing``; an unusable path is an InputError."""
    try:
        if path.is_file():
            return "file"
        if path.is_dir():
            return "folder"
        return "special file" if path.exists() else "missing"
    except OSError as err:  # a name too long, a folder we may not enter
        raise InputError(f"{key} {str(path)!r} cannot be checked "
                         f"({err.strerror or err}); fix {key}") from None


def _check_schedule(recipe: Recipe) -> None:
    """Plan the schedule, refusing plans too long to run or with steps that prune nothing."""
    spec, final = recipe.schedule, recipe.pruning.final_target()
    if spec.steps is not None and spec.steps > MAX_STEPS:
        raise InputError(f"schedule.steps is {spec.steps}, more than the {MAX_STEPS} pruning "
                         f"steps supported (each one is followed by a fine-tune)")
    if spec.step_rate is not None and 1.0 - spec.step_rate == 1.0:
        raise InputError(f"schedule.step_rate {spec.step_rate:g} is too small: 1 - step_rate "
                         f"rounds to 1, so no step would prune anything; raise "
                         f"schedule.step_rate")
    if spec.step_rate is not None and 0.0 < final < 1.0:
        start = spec.first_step if spec.kind == "hybrid" and spec.first_step else 0.0
        if start < final:
            # The formula of schedules.iterative.rate_targets, before it builds the list.
            needed = math.log((1 - final) / (1 - start)) / math.log(1 - spec.step_rate)
            if needed > MAX_STEPS:
                raise InputError(f"schedule.step_rate {spec.step_rate:g} needs about "
                                 f"{needed:.3g} steps to reach the target {final:g}, more than "
                                 f"the {MAX_STEPS} supported; raise schedule.step_rate")
    plan_targets(spec, final)


def recipe_notes(recipe: Recipe) -> list[str]:
    """What a valid recipe will do that its author may not expect (printed by validate), as
    the model source tells from its spec and the pruning section, without loading weights."""
    return _source(recipe).notes(recipe.model, recipe.pruning, recipe.resolve_path)


def planned_code(recipe: Recipe) -> list[str]:
    """What ``compress apply`` would import or call that is not compress's own code, one
    sentence each; found without importing or calling any of it.

    Example:
        >>> r = Recipe.model_validate({"version": 1,
        ...                            "model": {"source": "python", "factory": "nets:cnn"},
        ...                            "data": {"source": "digits"}, "pruning": {"ratio": 0.5}})
        >>> planned_code(r)
        ["apply will import module 'nets' and call nets.cnn() (model.factory)"]
    """
    lines = _source(recipe).code(recipe.model, recipe.resolve_path)
    tokenizer = recipe.data.tokenizer
    function = hf_name_function(tokenizer) if tokenizer else None
    if function is not None:
        module, attr = function
        lines.append(f"apply will import module {module!r} and call {module}.{attr}() to find "
                     f"the tokenizer folder (data.tokenizer)")
    return lines


def _source(recipe: Recipe) -> ModelSource:
    return MODEL_SOURCES.get(recipe.model.source)()
