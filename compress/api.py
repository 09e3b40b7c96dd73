"""The Python API: ``apply`` a recipe, ``load`` a result, ``prune`` your own model and
``save`` it like a run folder (``load`` reloads that folder too).

Example:
    >>> import compress
    >>> result = compress.apply("recipes/quickstart.yaml", finetune={"epochs": 1})  # doctest: +SKIP
    >>> result.ok, result.report["macs_reduction"]  # doctest: +SKIP
    (True, 0.5)
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError, InputError
from compress.export.load import load_model
from compress.export.standalone import export_pruned
from compress.measure.counts import count_macs_params
from compress.progress import ProgressFn, progress_to
from compress.recipe.load import apply_overrides, load_recipe, parse_recipe
from compress.recipe.pruning import PruningSpec, ScheduleSpec
from compress.recipe.spec import Recipe
from compress.recipe.stages import FinetuneSpec
from compress.run.loop import CALIBRATION_HINT, run_schedule_
from compress.run.pipeline import Result, run_recipe

__all__ = ["apply", "load", "prune", "save", "in_python_terms", "Result", "PruneResult"]


def apply(recipe: str | os.PathLike[str] | Recipe | dict[str, Any], *,
          out_dir: str | os.PathLike[str] | None = None, overwrite: bool = False,
          resume: bool = False, overrides: Sequence[str] = (),
          progress: ProgressFn | None = None, **sections: Any) -> Result:
    """Run a recipe (a YAML path, a dict or a :class:`Recipe`) end to end.

    ``overrides`` are ``a.b.c=value`` strings; keyword ``sections`` are merged into the recipe
    (``finetune={"epochs": 1}``). ``progress`` receives a
    :class:`~compress.progress.ProgressEvent` as each phase of the run (baseline evaluation,
    width search, prune, fine-tune, evaluation, export, timing) starts, advances and ends.

    Example:
        >>> result = apply("recipes/quickstart.yaml", out_dir="runs/q")  # doctest: +SKIP
    """
    section_overrides = {f"{sec}.{k}": v for sec, body in sections.items()
                         for k, v in (body.items() if isinstance(body, dict) else [(None, body)])}
    flat = {k.removesuffix(".None"): v for k, v in section_overrides.items()}
    if isinstance(recipe, (str, os.PathLike)):
        r = load_recipe(recipe, list(overrides))
        if flat:
            r = _reparse(r, flat)
    elif isinstance(recipe, Recipe):
        r = _reparse(recipe, flat, list(overrides)) if (flat or overrides) else recipe
    elif isinstance(recipe, dict):
        data = apply_overrides(apply_overrides(recipe, list(overrides)), flat)
        r = parse_recipe(data, base_dir=Path.cwd())
    else:
        raise InputError(f"apply() takes a recipe path, dict or Recipe, not "
                         f"{type(recipe).__name__}")
    try:
        with _listening(progress):
            return run_recipe(r, Path(out_dir) if out_dir is not None else None,
                              overwrite=overwrite, resume=resume)
    except CompressError as err:
        err.args = tuple(in_python_terms(a) if isinstance(a, str) else a for a in err.args)
        raise


# The run's sentences name the CLI's flags; a Python caller passes arguments instead.
_FLAG_ARGUMENTS = ((re.compile(r"--overwrite\b"), "overwrite=True"),
                   (re.compile(r"--resume\b"), "resume=True"),
                   (re.compile(r"(?<![\w-])--out\b"), "out_dir"),
                   (re.compile(r"(?<![\w-])--set\b"), "overrides="))


def in_python_terms(sentence: str) -> str:
    """``sentence`` with the ``compress apply`` flags it advises named as :func:`apply`'s
    arguments (the CLI shows the same errors with its flags).

    Example:
        >>> in_python_terms("'runs/q' holds a finished run; pass --overwrite to replace it or "
        ...                 "choose another --out")
        "'runs/q' holds a finished run; pass overwrite=True to replace it or choose another out_dir"
    """
    for flag, argument in _FLAG_ARGUMENTS:
        sentence = flag.sub(argument, sentence)
    return sentence


@contextlib.contextmanager
def _calibration_in_python_terms() -> Iterator[None]:
    """prune()'s calibration batches are an argument, not a recipe section."""
    try:
        yield
    except InputError as err:
        if CALIBRATION_HINT not in str(err):
            raise
        raise InputError("prune(): " + str(err).replace(
            CALIBRATION_HINT, "pass calibration=[input batches]")) from None


def _listening(progress: ProgressFn | None) -> contextlib.AbstractContextManager[None]:
    # No listener given: keep the caller's (an outer progress_to), do not silence it.
    return progress_to(progress) if progress is not None else contextlib.nullcontext()


def _reparse(recipe: Recipe, flat: dict[str, Any], strings: Sequence[str] = ()) -> Recipe:
    data = apply_overrides(apply_overrides(recipe.to_dict(), list(strings)), flat)
    new = parse_recipe(data, base_dir=recipe.base_dir)
    new.name = recipe.name if "name" not in flat else new.name
    return new


def load(run_dir: str | os.PathLike[str], *, force: bool = False,
         build: Callable[..., nn.Module] | None = None, trust_code: bool = False) -> nn.Module:
    """Rebuild the compressed model of a run folder (or of a :func:`save` folder) from
    safetensors + manifest (no pickle).

    An unfinished run folder (status not ``done``) is refused unless ``force``. A manifest
    whose model would run code (a ``python`` factory, a ``module:function`` name,
    ``trust_remote_code``) is refused unless ``build`` (your constructor, called with the
    manifest's kwargs) or ``trust_code=True``.
    """
    return load_model(run_dir, force=force, build=build, trust_code=trust_code)


def save(model: nn.Module, out_dir: str | os.PathLike[str], example_inputs: torch.Tensor, *,
           build: Callable[..., nn.Module] | None = None,
           kwargs: dict[str, Any] | None = None, onnx: bool = True,
           overwrite: bool = False) -> dict[str, Any]:
    """Write a pruned ``model`` to ``out_dir`` like a run folder: safetensors + manifest, ONNX,
    and ``hf/`` for transformers models, each proven on ``example_inputs``.

    A model defined in Python needs ``build`` (its constructor, called with ``kwargs``); pass
    the same to :func:`load`. A transformers model loaded by compress needs nothing. Returns the
    paths and the parity differences measured.

    Example:
        >>> info = save(net, "out/net", x, build=Net)  # doctest: +SKIP
        >>> same = load("out/net", build=Net)  # doctest: +SKIP
    """
    return export_pruned(model, out_dir, example_inputs, build=build, kwargs=kwargs, onnx=onnx,
                         overwrite=overwrite)


@dataclass
class PruneResult:
    """What :func:`prune` did; :meth:`save` writes the model like a run folder."""

    model: nn.Module
    steps: list[dict[str, Any]]
    macs_before: int
    macs_after: int
    example_inputs: torch.Tensor | None = None

    def save(self, out_dir: str | os.PathLike[str], *,
               build: Callable[..., nn.Module] | None = None,
               kwargs: dict[str, Any] | None = None, onnx: bool = True,
               overwrite: bool = False) -> dict[str, Any]:
        """:func:`save` of the pruned model, proven on the inputs it was pruned with."""
        assert self.example_inputs is not None, "set by prune()"
        return save(self.model, out_dir, self.example_inputs, build=build, kwargs=kwargs,
                      onnx=onnx, overwrite=overwrite)


def prune(model: nn.Module, example_inputs: torch.Tensor, *,
          ratio: float | None = None, target_macs: float | None = None,
          importance: str = "l2", ignored: Sequence[str] = (), round_to: int | str = "auto",
          scope: str = "local", schedule: str | dict[str, Any] = "one-shot",
          heads: float | None = None, ffn: float | None = None, hidden: float | None = None,
          blocks: int | float | None = None,
          kind: str = "structured", n: int = 2, m: int = 4,
          calibration: Sequence[torch.Tensor] | None = None,
          train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
          eval_fn: Callable[[nn.Module], dict[str, float] | float] | None = None,
          finetune: dict[str, Any] | FinetuneSpec | None = None,
          probe: torch.Tensor | None = None,
          device: str | torch.device = "cpu",
          progress: ProgressFn | None = None) -> PruneResult:
    """Prune your own ``model`` in place, with your own data and metric.

    Every step is proven exact on ``probe`` (default: ``example_inputs``). ``eval_fn`` returns
    a metric (float, or a dict with ``accuracy``) after each step. ``schedule`` is a kind
    (``"one-shot"``) or a dict like the recipe's section
    (``{"kind": "iterative", "steps": 3}``). ``heads``, ``ffn``, ``hidden`` and ``blocks`` are
    the recipe's transformers fractions (a transformers model is compress's ``HFModel``).
    ``kind``: ``"structured"``, ``"unstructured"`` (with ``ratio``) or ``"n:m"`` (``n`` of
    every ``m``). ``calibration``: model inputs (e.g. batches of token ids) for the criteria
    that read activations (``activation``, ``wanda``, ``sparsegpt``) and to rank ``blocks``
    (without it blocks are ranked on the probe). ``progress`` receives a
    :class:`~compress.progress.ProgressEvent` as fine-tuning advances.

    Example:
        >>> net = torchvision.models.resnet18(num_classes=10)  # doctest: +SKIP
        >>> res = prune(net, torch.randn(1, 3, 64, 64), target_macs=0.5,
        ...             train_loader=train, eval_fn=my_eval)  # doctest: +SKIP
    """
    try:
        nm = {"n": n, "m": m} if kind == "n:m" else {}
        spec = PruningSpec(kind=kind, ratio=ratio,
                           target={"macs": target_macs} if target_macs else None,
                           importance=importance, ignored=list(ignored), round_to=round_to,
                           scope=scope, heads=heads, ffn=ffn, hidden=hidden, blocks=blocks,
                           **nm)
        sched = ScheduleSpec(kind=schedule) if isinstance(schedule, str) \
            else ScheduleSpec(**schedule)
        ft = finetune if isinstance(finetune, FinetuneSpec) else FinetuneSpec(
            **(finetune or {"epochs": 0}))
    except ValueError as err:
        raise InputError(f"prune(): {err}") from None
    if calibration is not None and (isinstance(calibration, torch.Tensor) or not all(
            isinstance(b, torch.Tensor) for b in calibration) or not calibration):
        raise InputError("prune(): calibration= takes a non-empty list of input batches "
                         "(tensors), e.g. list(token_ids.split(8))")
    dev = torch.device(device)
    model.to(dev)
    example = example_inputs.to(dev)

    def metric(m: nn.Module) -> dict[str, float]:
        if eval_fn is None:
            return {}
        value = eval_fn(m)
        return dict(value) if isinstance(value, dict) else {"accuracy": float(value)}

    before, _ = count_macs_params(model, example[:1])
    with _listening(progress), _calibration_in_python_terms():
        steps, pruner = run_schedule_(model, example=example[:1],
                                      probe=(probe if probe is not None else example).to(dev),
                                      pruning=spec, schedule=sched, finetune=ft,
                                      train=train_loader, evaluate_fn=metric, device=dev,
                                      calibration=None if calibration is None
                                      else [b.to(dev) for b in calibration])
    pruner.finalize_()
    return PruneResult(model, steps, before, steps[-1]["macs"], example.detach().cpu())
