"""Starter recipes: a commented YAML recipe for a model, a dataset and a target.

The schedule follows Janusz et al., "One Shot vs. Iterative: Rethinking Pruning Strategies for
Model Compression" (arXiv 2508.13836), and the recipe says why in a comment above it. The text
is parsed and checked before it is returned, so what ``compress init`` prints always validates.

Only the generic parts live here (regime, schedule, fine-tuning, results). What a model or data
source writes comes from the source, found through :data:`compress.models.MODEL_SOURCES` and
:data:`compress.data.DATASETS`: its ``starter_defaults`` (notes, what it prunes, what input it
takes) and its ``starter(writer, arg, request)`` hook, which writes its section's keys.

Example:
    >>> text = render_starter_recipe("cifar_resnet:resnet56", "digits", target_macs=0.5)
    >>> "kind: one-shot" in text and "below ~80 %" in text
    True
    >>> choose_regime(0.85).kind, choose_regime(0.85).first_step, choose_regime(0.85).step_rate
    ('hybrid', 0.595, 0.02)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from compress.authoring.reference import inline_yaml
from compress.authoring.regime import (
    FIRST_STEP_SHARE,
    ONE_SHOT_BELOW,
    Regime,
    choose_regime,
    looks_like_transformer,
)
from compress.authoring.writer import StarterRequest, StarterWriter
from compress.errors import InputError

__all__ = ["render_starter_recipe", "save_starter_recipe"]


def _source(registry: Any, spec: str, what: str, example: str) -> tuple[str, str, Any]:
    """``(source name, argument, source class)`` of ``SOURCE:ARG``; no template is an error."""
    source, _, arg = spec.partition(":")
    if source not in registry:
        raise InputError(f"unknown {what} source {source!r} in {spec!r}; available: "
                         f"{', '.join(registry.names())} (write SOURCE:ARG, e.g. {example})")
    cls = registry.get(source)
    if not hasattr(cls, "starter"):
        raise InputError(f"compress init has no template for {what} source {source!r} yet; "
                         f"write the {what} section by hand (see docs/recipes.md)")
    return source, arg, cls


def _defaults(registry: Any, name: str) -> dict[str, Any]:
    """A registered source's ``starter_defaults``; empty for names the registry lacks."""
    return getattr(registry.get(name), "starter_defaults", {}) if name in registry else {}


def _model(w: StarterWriter, request: StarterRequest) -> tuple[str, Any]:
    """Write the model section; return the model's short name (for the recipe's) and source."""
    from compress.models import MODEL_SOURCES, check_model_spec
    from compress.recipe.sources import ModelSpec

    name, arg, cls = _source(MODEL_SOURCES, request.model, "model", "torchvision:resnet50")
    source = cls()
    w.section("model", source.starter_defaults["note"])
    w.key("source", name)
    fields = source.starter(w, arg, request)
    check_model_spec(ModelSpec(source=name, **fields))  # unknown names, a bad factory
    return source.starter_name(arg), source


def _data(w: StarterWriter, request: StarterRequest, inputs: tuple[str, ...]) -> None:
    """Write the data section, for a model that takes ``inputs`` (images, tokens)."""
    from compress.data import DATASETS

    source, arg, cls = _source(DATASETS, request.data, "data", "imagefolder:./data")
    if cls.starter_defaults["inputs"] not in inputs:
        raise InputError(f"compress init has no template for data source {source!r} yet; "
                         f"write the data section by hand (see docs/recipes.md)")
    w.section("data", cls.starter_defaults["note"])
    w.key("source", source)
    cls().starter(w, arg, request)


def _pruning(w: StarterWriter, target: float, by_macs: bool, source: Any) -> None:
    """The pruning section, in the words of the model ``source`` (channels, heads, neurons)."""
    texts = source.starter_defaults
    pct = f"{target * 100:g}"
    w.section("pruning", texts["pruning"])
    w.key("kind", "structured")
    w.key("importance", "l2", texts["importance"])
    if by_macs:
        w.key("target", {"macs": target}, f"Remove {pct} % of the multiply-accumulates; the "
              f"channel ratio that does it is found by search.")
    else:
        w.key("ratio", target, texts["ratio"].format(pct=pct))
    source.starter_pruning(w, target)


def _schedule(w: StarterWriter, target: float, regime: Regime) -> None:
    from compress.recipe.pruning import ScheduleSpec
    from compress.schedules import plan_targets

    steps = len(plan_targets(ScheduleSpec(kind=regime.kind, first_step=regime.first_step,
                                          step_rate=regime.step_rate), target))
    w.section("schedule", f"{regime.kind.capitalize()}, because {regime.reason} This plans "
              f"{steps} pruning step{'s' if steps > 1 else ''}.")
    w.key("kind", regime.kind)
    if regime.first_step is not None:
        w.key("first_step", regime.first_step, f"First step straight to {regime.first_step} "
              f"({FIRST_STEP_SHARE:g} x the target; the paper: 60-80 % of it).")
    if regime.step_rate is not None:
        later = "Each later step" if regime.first_step is not None else "Each step"
        w.key("step_rate", regime.step_rate, f"{later} removes {regime.step_rate * 100:g} % "
              f"of what is left (the paper: ~10 % for targets below 80 %, ~2 % above); the last "
              f"step lands exactly on the target. Fewer, bigger steps are faster and cost "
              f"accuracy.")


def _training(w: StarterWriter, *, transformer: bool, patience: bool, small: bool) -> None:
    w.section("finetune", "Fine-tuning after each pruning step.")
    if transformer:
        w.key("optimizer", "adamw", "AdamW with a small learning rate, as transformers are "
              "usually trained.")
        w.key("lr", 0.0001)
        w.key("weight_decay", 0.05)
    else:
        w.key("optimizer", "sgd")
        w.key("lr", 0.01)
    if patience:
        w.key("patience", [20, 2], "Patience-based, which the paper advocates over a fixed "
              "budget: stop a step's fine-tune after this many evaluations without improvement "
              "and keep its best weights. Long after the first (largest) step, short after "
              "each small later step; the last value repeats.")
        w.key("monitor", "val_accuracy")
        w.key("min_delta", 0.1, "Accuracy points that count as an improvement.")
        w.key("eval_every", 10 if small else 100, "Optimizer steps between validation "
              "evaluations.")
        w.key("max_epochs", 10, "Most epochs any one step may fine-tune.")
    else:
        w.key("epochs", 3 if small else 5, "One fixed budget after the single step; more "
              "epochs recover more accuracy.")


def _results(w: StarterWriter, target: float, by_macs: bool, imagenet_input: bool,
             tokens: bool = False) -> None:
    w.section("export", "ONNX is written only after onnxruntime matched torch on real inputs.")
    w.key("safetensors", True)
    w.key("onnx", True)
    w.key("steps", "last", "`all` also exports every step's model (steps/NN/).")

    w.section("report", "Latency before and after: medians of interleaved A/B rounds.")
    if tokens:
        w.key("engines", ["onnxruntime"])
        w.key("batch_sizes", [1, 8])
        w.key("sample_shape", [128], "Tokens per row timed (the ONNX sequence axis is "
              "dynamic).")
    else:
        w.key("batch_sizes", [1, 32] if imagenet_input else [1, 64])

    w.section("gates", "Checked at the end; a failing gate makes `compress apply` exit 1, "
              "so CI can fail on it.")
    w.key("max_accuracy_drop", 2.0 if target < ONE_SHOT_BELOW else 5.0, "Top-1 accuracy may "
          "drop by at most this many points.")
    if by_macs:
        w.key("min_macs_reduction", round(max(target - 0.02, 0.0), 4), "The target less the "
              "search's default tolerance (pruning.target.tolerance: 0.02).")
    elif tokens:
        w.key("min_macs_reduction", round(target / 2, 4), "Heads and neurons cut by a ratio r "
              "remove about r of the blocks' MACs; this floor only catches a run that pruned "
              "far less than asked.")
    else:
        w.key("min_macs_reduction", round(target / 2, 4), "A channel ratio r removes about "
              "1-(1-r)^2 of the MACs of layers between two pruned ones; this floor only "
              "catches a run that pruned far less than asked.")
    w.key("require_proof", True, "Every pruning step must be proven exact (its outputs "
          "checked against the model before it); a run with pruning.verify: false fails.")


def render_starter_recipe(model: str, data: str, target_macs: float | None = None,
                          target_sparsity: float | None = None,
                          architecture_hint: str | None = None, *,
                          checkpoint: str | None = None, num_classes: int | None = None,
                          image_size: int | None = None,
                          recipe_dir: str | os.PathLike[str] | None = None) -> str:
    """A commented, valid YAML recipe (what ``compress init`` prints).

    ``model`` is ``SOURCE:NAME`` (``torchvision:resnet50``, ``cifar_resnet:resnet56``,
    ``python:pkg.mod:fn``, ``python:file.py:fn``); ``data`` is ``SOURCE[:ARG]``
    (``imagefolder:PATH``, ``torchvision:CIFAR10``, ``digits``). Give at most one target: a
    fraction of MACs (default 0.5) or of channels to remove. ``architecture_hint`` is ``cnn``
    or ``transformer`` (default: guessed from the model name). ``checkpoint`` is your trained
    weights; ``num_classes`` defaults to what the data says (the class folders of a local
    imagefolder's ``train/``); ``image_size`` is the side images are resized to (default: 224
    for torchvision models, else the images' own size). Paths are given relative to the
    current folder; ``recipe_dir`` is the folder the recipe will be saved in (default: the
    current one), and the recipe names them relative to it, as it resolves them.

    Example:
        >>> text = render_starter_recipe("cifar_resnet:resnet20", "digits", target_sparsity=0.3)
        >>> text.splitlines()[1]
        '#   compress init --model cifar_resnet:resnet20 --data digits --target-sparsity 0.3'
    """
    from compress.data import DATASETS, check_data_spec
    from compress.models import MODEL_SOURCES
    from compress.recipe.load import parse_recipe
    from compress.schedules import plan_targets

    if target_macs is not None and target_sparsity is not None:
        raise InputError("give one target, either target_macs or target_sparsity, not both")
    by_macs = target_sparsity is None
    target = (0.5 if target_macs is None else target_macs) if target_sparsity is None \
        else target_sparsity
    if not 0 < target < 1:
        raise InputError(f"{'target_macs' if by_macs else 'target_sparsity'} must be a fraction "
                         f"between 0 and 1, e.g. 0.5 (got {target})")
    # An unknown source is reported when its section is written, after the checks below.
    source_defaults = _defaults(MODEL_SOURCES, model.partition(":")[0])
    by_macs = by_macs and source_defaults.get("macs_target", True)  # transformers: fractions
    transformer = (source_defaults.get("transformer", False)
                   or looks_like_transformer(model.partition(":")[2], architecture_hint))
    regime = choose_regime(target, transformer)
    patience = regime.kind != "one-shot"
    flag = "--target-macs" if by_macs else "--target-sparsity"
    extra = {"--architecture": architecture_hint, "--checkpoint": checkpoint,
             "--num-classes": num_classes, "--image-size": image_size}
    flags = "".join(f" {k} {v}" for k, v in extra.items() if v is not None)
    for what, value in (("num_classes", num_classes), ("image_size", image_size)):
        if value is not None and value < 1:
            raise InputError(f"{what} must be a positive whole number (got {value})")

    w = StarterWriter(recipe_dir)
    # The command on a line of its own, unwrapped, so it can be copied back.
    w.lines += ["# Starter recipe, written by",
                f"#   compress init --model {model} --data {data} {flag} {target:g}{flags}"]
    w.comment("Every key is described in docs/recipes.md; check an edited copy with `compress "
              "validate`, run it with `compress apply`. Relative paths resolve against the "
              "folder this file is in.")
    w.lines.append("version: 1")
    data_source, _, data_arg = data.partition(":")
    data_cls = DATASETS.get(data_source) if data_source in DATASETS else None
    data_classes = (data_cls().starter_classes(data_arg) if hasattr(data_cls, "starter_classes")
                    else None)
    request = StarterRequest(model=model, data=data, num_classes=num_classes,
                             data_classes=data_classes, checkpoint=checkpoint,
                             image_size=image_size, patience=patience,
                             imagenet_input=source_defaults.get("imagenet_input", False))
    body = StarterWriter(recipe_dir)
    short, source = _model(body, request)
    _data(body, request, source_defaults["inputs"])
    data_defaults = _defaults(DATASETS, data_source)
    measure = "macs" if by_macs else source_defaults["unit"]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{short}-{measure}{target * 100:g}")
    w.lines.append(f"name: {inline_yaml(name)}")
    w.lines += body.lines

    _pruning(w, target, by_macs, source)
    _schedule(w, target, regime)
    _training(w, transformer=transformer, patience=patience, small=data_defaults["small"])
    _results(w, target, by_macs, request.imagenet_input,
             tokens=data_defaults["inputs"] == "tokens")
    text = "\n".join(w.lines) + "\n"

    recipe = parse_recipe(yaml.safe_load(text), source="starter recipe", base_dir=recipe_dir)
    plan_targets(recipe.schedule, recipe.pruning.final_target())
    check_data_spec(recipe.data)
    return text


def save_starter_recipe(text: str, path: str | os.PathLike[str]) -> Path:
    """Write a rendered starter recipe to ``path`` (its folder is created); an existing file
    is never replaced (it may hold the user's edits).

    Example:
        >>> save_starter_recipe("version: 1\\n", "recipes/quickstart.yaml")
        Traceback (most recent call last):
        compress.errors.InputError: 'recipes/quickstart.yaml' exists; remove it or choose another -o
    """
    from compress.fsutil import write_text_atomic

    target = Path(path)
    if target.exists() or target.is_symlink():
        raise InputError(f"{str(path)!r} exists; remove it or choose another -o")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the folder of {str(path)!r} ({err.strerror or err}); "
                         f"choose another -o") from None
    write_text_atomic(target, text)
    return target
