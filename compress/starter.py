"""Starter recipes: a commented YAML recipe for a model, a dataset and a target.

The schedule follows Janusz et al., "One Shot vs. Iterative: Rethinking Pruning Strategies for
Model Compression" (arXiv 2508.13836), and the recipe says why in a comment above it. The text
is parsed and checked before it is returned, so what ``compress init`` prints always validates.

Example:
    >>> text = render_starter_recipe("cifar_resnet:resnet56", "digits", target_macs=0.5)
    >>> "kind: one-shot" in text and "below ~80 %" in text
    True
    >>> choose_regime(0.85).kind, choose_regime(0.85).first_step, choose_regime(0.85).step_rate
    ('hybrid', 0.595, 0.02)
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compress.docs import inline_yaml
from compress.errors import InputError

__all__ = ["ARCHITECTURES", "TRANSFORMER_MARKERS", "Regime", "choose_regime", "is_transformer",
           "render_starter_recipe"]

ARCHITECTURES = ("cnn", "transformer")
TRANSFORMER_MARKERS = ("vit", "bert", "swin", "deit", "llama", "gpt")
ONE_SHOT_BELOW = 0.8     # the paper: one-shot is as good as iterative below ~80 %
ITERATIVE_ABOVE = 0.9    # ... and iterative wins above ~90 %; hybrid in between
FIRST_STEP_SHARE = 0.7   # hybrid's first step: 60-80 % of the target, the middle of it
_PAPER = 'Janusz et al., "One Shot vs. Iterative" (arXiv 2508.13836)'
_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_TV_GRAY = frozenset({"MNIST", "FashionMNIST", "KMNIST", "QMNIST", "USPS"})
_TV_NO_FLIP = frozenset({"MNIST", "KMNIST", "QMNIST", "USPS", "SVHN"})  # digits, letters


@dataclass(frozen=True)
class Regime:
    """A schedule choice and the sentence that justifies it."""

    kind: str
    reason: str
    first_step: float | None = None
    step_rate: float | None = None


def _step_rate(target: float) -> float:
    # The paper's geometric step: ~10 % of what is left below an 80 % target, ~2 % above.
    return 0.1 if target < ONE_SHOT_BELOW else 0.02


def choose_regime(target: float, transformer: bool = False) -> Regime:
    """The paper's regime for a cumulative ``target`` (a fraction of MACs or channels).

    Below 0.8 one-shot; 0.8 to 0.9 hybrid (first step 0.7 x target, then geometric steps);
    above 0.9 iterative geometric; transformers always iterative.
    """
    pct = f"{target * 100:g} %"
    if transformer:
        return Regime("iterative", f"the model is a transformer, and large structured cuts "
                      f"to attention heads and MLP widths are hard to recover from: this "
                      f"starter treats transformers conservatively and prunes them in small "
                      f"geometric steps at any target ({pct} here), each followed by a "
                      f"patience-based fine-tune.", step_rate=_step_rate(target))
    if target < ONE_SHOT_BELOW:
        return Regime("one-shot", f"the target ({pct}) is below ~80 %, where {_PAPER} find "
                      f"one-shot pruning as accurate as iterative pruning at a fraction of the "
                      f"cost: one prune, one fine-tune.")
    if target <= ITERATIVE_ABOVE:
        return Regime("hybrid", f"the target ({pct}) is between ~80 % and ~90 %: {_PAPER} find "
                      f"one-shot losing accuracy above ~80 % and a hybrid doing best across "
                      f"rates: one big step to ~70 % of the target, then small geometric steps "
                      f"with patience-based fine-tuning.",
                      first_step=round(FIRST_STEP_SHARE * target, 4), step_rate=_step_rate(target))
    return Regime("iterative", f"the target ({pct}) is above ~90 %, where {_PAPER} find "
                  f"iterative pruning ahead of one-shot: small steps let fine-tuning recover "
                  f"between them.", step_rate=_step_rate(target))


def is_transformer(name: str, architecture_hint: str | None = None) -> bool:
    """``architecture_hint`` (cnn, transformer) when given, else: does ``name`` look like one?"""
    if architecture_hint is not None:
        if architecture_hint not in ARCHITECTURES:
            raise InputError(f"unknown architecture {architecture_hint!r}; allowed: "
                             f"{', '.join(ARCHITECTURES)}")
        return architecture_hint == "transformer"
    return any(marker in name.lower() for marker in TRANSFORMER_MARKERS)


class _Writer:
    """YAML lines with wrapped comments above keys (yaml.dump would drop the comments)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str, indent: int = 0) -> None:
        pad = " " * indent + "# "
        # No breaks at hyphens: they would split flags such as --target-macs.
        self.lines += textwrap.wrap(text, width=96, initial_indent=pad, subsequent_indent=pad,
                                    break_on_hyphens=False)

    def key(self, name: str, value: Any, note: str | None = None, indent: int = 2) -> None:
        if note:
            self.comment(note, indent)
        self.lines.append(f"{' ' * indent}{name}: {inline_yaml(value)}")

    def section(self, name: str, note: str | None = None) -> None:
        self.lines.append("")
        if note:
            self.comment(note)
        self.lines.append(f"{name}:")


def _split(spec: str, what: str, registry: Any, example: str) -> tuple[str, str]:
    source, _, arg = spec.partition(":")
    if source not in registry:
        raise InputError(f"unknown {what} source {source!r} in {spec!r}; available: "
                         f"{', '.join(registry.names())} (write SOURCE:ARG, e.g. {example})")
    return source, arg


def _model(w: _Writer, spec: str, classes: int | None, checkpoint: str | None = None,
           explicit_classes: bool = False) -> tuple[str, bool]:
    """Write the model section; return (short name, is a torchvision model).

    ``explicit_classes``: ``classes`` came from ``--num-classes``, not from the data.
    """
    from compress.models import MODEL_SOURCES, check_model_spec
    from compress.recipe import ModelSpec

    source, arg = _split(spec, "model", MODEL_SOURCES, "torchvision:resnet50")
    if not arg:
        raise InputError(f"model {spec!r} names no model after the source; e.g. "
                         f"torchvision:resnet50, cifar_resnet:resnet56, python:pkg.mod:fn or "
                         f"python:file.py:fn")
    w.section("model", "The network to compress.")
    w.key("source", source)
    fields: dict[str, Any] = {"source": source}
    if source == "python":
        fields["factory"] = arg
        w.key("factory", arg, "'package.module:function' or 'file.py:function' (relative to "
              "this file) returning the nn.Module.")
        if explicit_classes and classes is not None:
            fields["num_classes"] = classes
            w.key("num_classes", classes, "Passed to the factory as a keyword argument.")
        else:
            w.comment("num_classes: 10   # passed to the factory as a keyword argument", 2)
    elif source in ("torchvision", "cifar_resnet"):
        fields["name"] = arg
        w.key("name", arg)
        if source == "torchvision" and classes not in (None, 1000):
            fields["num_classes"] = classes
            why = (f"torchvision's ImageNet weights have 1000 classes and the data has "
                   f"{classes}: give weights trained on your data in checkpoint (without them "
                   f"the model starts from random weights).")
            if checkpoint:
                why = "The data's classes, which your checkpoint was trained for."
            w.key("num_classes", classes, why)
        elif source == "torchvision" and checkpoint is None:
            w.key("weights", "DEFAULT", "ImageNet weights from torchvision (downloaded on first "
                  "use): the data needs ImageNet's 1000 classes. For other data, drop this, set "
                  "num_classes and give your trained weights in checkpoint.")
        elif classes is not None:
            fields["num_classes"] = classes
            w.key("num_classes", classes)
    else:
        raise InputError(f"compress init has no template for model source {source!r} yet; "
                         f"write the model section by hand (see docs/recipes.md)")
    if checkpoint:
        fields["checkpoint"] = checkpoint
        w.key("checkpoint", checkpoint, "Your trained weights (.safetensors, or .pt/.pth/.th "
              "loaded with weights_only=True).")
    else:
        w.comment("checkpoint: path/to/trained.safetensors   # or .pt/.pth/.th; pruning needs "
                  "trained weights", 2)
    check_model_spec(ModelSpec(**fields))  # unknown torchvision/cifar_resnet names, bad factory
    name = arg.rpartition(":")[2] if source == "python" else arg
    return name, source == "torchvision"


def _data(w: _Writer, spec: str, patience: bool, tv_model: bool,
          image_size: int | None = None) -> None:
    from compress.data import DATASETS
    from compress.data.torchvision_datasets import SUPPORTED

    source, arg = _split(spec, "data", DATASETS, "imagefolder:./data")
    w.section("data", "Data for fine-tuning, and for accuracy before and after.")
    w.key("source", source)
    rgb, flip = True, True
    if source == "digits":
        if arg:
            raise InputError(f"data source 'digits' takes no argument (got {spec!r}); use digits")
        rgb, flip = False, False
    elif source == "imagefolder":
        if not arg:
            raise InputError("data source 'imagefolder' needs a path: imagefolder:PATH")
        w.key("path", arg, "A folder or .tar.gz laid out split/class/*.jpg; the splits are "
              "train/ and test/ unless train_split/eval_split say otherwise.")
    elif source == "torchvision":
        if arg not in SUPPORTED:
            raise InputError(f"data {spec!r}: torchvision dataset {arg!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED)}")
        w.key("name", arg)
        w.key("path", "./data", "Root folder torchvision reads the dataset from.")
        w.key("download", False, "Nothing is downloaded unless this is true: set it for the "
              "first run if ./data does not hold the files yet.")
        rgb, flip = arg not in _TV_GRAY, arg not in _TV_NO_FLIP
    else:
        raise InputError(f"compress init has no template for data source {source!r} yet; "
                         f"write the data section by hand (see docs/recipes.md)")
    if image_size is not None:
        w.key("image_size", image_size, "Images are resized to the input size the model was "
              "trained at.")
    elif tv_model:
        w.key("image_size", 224, "Images are resized to the input size torchvision's "
              "ImageNet models expect.")
    w.key("batch_size", 64)
    if patience:
        w.key("val_subset", 200 if source == "digits" else 1000, "Training samples held out "
              "as validation data for patience-based fine-tuning (about a tenth of the "
              "training split is plenty).")
    augment = ["random_crop", "horizontal_flip"] if flip else ["random_crop"]
    w.key("augment", augment, "Training augmentations." + ("" if flip else " No "
          "horizontal_flip: mirrored digits and letters are different classes."))
    if source == "digits":
        w.key("crop_padding", 1, "8x8 images: pad random crops by one pixel.")
    if rgb:
        w.key("normalize", _IMAGENET, "Use the statistics the model was trained with "
              "(these are ImageNet's, which the CIFAR ResNet checkpoints also use).")


def _pruning(w: _Writer, target: float, by_macs: bool) -> None:
    pct = f"{target * 100:g}"
    w.section("pruning", "Structured: whole channels go, the only kind that makes the dense "
              "model faster (unstructured and n:m only shrink the compressed file).")
    w.key("kind", "structured")
    w.key("importance", "l2", "L2 norm of each channel group: needs no gradients or "
          "calibration data. `compress list` shows the other criteria (taylor, lamp, ...).")
    if by_macs:
        w.key("target", {"macs": target}, f"Remove {pct} % of the multiply-accumulates; the "
              f"channel ratio that does it is found by search.")
    else:
        w.key("ratio", target, f"Remove {pct} % of every prunable layer's channels.")
    w.key("round_to", "auto", "Channel counts stay multiples of 8 for convolutional models, "
          "so onnxruntime's CPU kernels keep the speedup.")


def _schedule(w: _Writer, target: float, regime: Regime) -> None:
    from compress.recipe import ScheduleSpec
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


def _training(w: _Writer, *, transformer: bool, patience: bool, small: bool) -> None:
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


def _results(w: _Writer, target: float, by_macs: bool, tv_model: bool,
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
        w.key("batch_sizes", [1, 32] if tv_model else [1, 64])

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


def _imagefolder_classes(path: str) -> int | None:
    """Class folders under a local imagefolder's ``train/`` (None for archives, absent paths)."""
    train = Path(path) / "train"
    if not train.is_dir():
        return None
    return sum(1 for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")) or None


def render_starter_recipe(model: str, data: str, target_macs: float | None = None,
                          target_sparsity: float | None = None,
                          architecture_hint: str | None = None, *,
                          checkpoint: str | None = None, num_classes: int | None = None,
                          image_size: int | None = None) -> str:
    """A commented, valid YAML recipe (what ``compress init`` prints).

    ``model`` is ``SOURCE:NAME`` (``torchvision:resnet50``, ``cifar_resnet:resnet56``,
    ``python:pkg.mod:fn``, ``python:file.py:fn``); ``data`` is ``SOURCE[:ARG]``
    (``imagefolder:PATH``, ``torchvision:CIFAR10``, ``digits``). Give at most one target: a
    fraction of MACs (default 0.5) or of channels to remove. ``architecture_hint`` is ``cnn``
    or ``transformer`` (default: guessed from the model name). ``checkpoint`` is your trained
    weights; ``num_classes`` defaults to what the data says (the class folders of a local
    imagefolder's ``train/``); ``image_size`` is the side images are resized to (default: 224
    for torchvision models, else the images' own size).
    """
    from compress.data import check_data_spec
    from compress.recipe import parse_recipe
    from compress.schedules import plan_targets

    if target_macs is not None and target_sparsity is not None:
        raise InputError("give one target, either target_macs or target_sparsity, not both")
    by_macs = target_sparsity is None
    target = (0.5 if target_macs is None else target_macs) if target_sparsity is None \
        else target_sparsity
    if not 0 < target < 1:
        raise InputError(f"{'target_macs' if by_macs else 'target_sparsity'} must be a fraction "
                         f"between 0 and 1, e.g. 0.5 (got {target})")
    hf = model.partition(":")[0] == "huggingface"
    by_macs = by_macs and not hf  # transformers are pruned by fractions of heads and neurons
    transformer = hf or is_transformer(model.partition(":")[2], architecture_hint)
    regime = choose_regime(target, transformer)
    patience = regime.kind != "one-shot"
    flag = "--target-macs" if by_macs else "--target-sparsity"
    extra = {"--architecture": architecture_hint, "--checkpoint": checkpoint,
             "--num-classes": num_classes, "--image-size": image_size}
    flags = "".join(f" {k} {v}" for k, v in extra.items() if v is not None)
    for what, value in (("num_classes", num_classes), ("image_size", image_size)):
        if value is not None and value < 1:
            raise InputError(f"{what} must be a positive whole number (got {value})")

    w = _Writer()
    # The command on a line of its own, unwrapped, so it can be copied back.
    w.lines += ["# Starter recipe, written by",
                f"#   compress init --model {model} --data {data} {flag} {target:g}{flags}"]
    w.comment("Every key is described in docs/recipes.md; check an edited copy with `compress "
              "validate`, run it with `compress apply`. Relative paths resolve against the "
              "folder this file is in.")
    w.lines.append("version: 1")
    body = _Writer()
    data_source, _, data_arg = data.partition(":")
    classes = {"digits": 10, "torchvision": 100 if data_arg == "CIFAR100" else 10}
    if data_source == "imagefolder" and data_arg:
        classes["imagefolder"] = _imagefolder_classes(data_arg)
    if hf:
        from compress.starter_hf import write_hf_model, write_text_data

        name_arg = model.partition(":")[2]
        if not name_arg:
            raise InputError("model huggingface: needs a folder, hub id or module:function "
                             "after the source, e.g. huggingface:./my-bert")
        write_hf_model(body, name_arg, data_source, num_classes)
        module, colon, _ = name_arg.partition(":")
        short = module.replace(".", "-") if colon else Path(name_arg).name or "model"
        tv_model = True
        if data_source in ("text", "text_lm"):
            write_text_data(body, data_source, data_arg, patience)
        else:
            _data(body, data, patience, tv_model, image_size)
    else:
        short, tv_model = _model(body, model, num_classes or classes.get(data_source),
                                 checkpoint, explicit_classes=num_classes is not None)
        _data(body, data, patience, tv_model, image_size)
    measure = "macs" if by_macs else "heads" if hf else "channels"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{short}-{measure}{target * 100:g}")
    w.lines.append(f"name: {inline_yaml(name)}")
    w.lines += body.lines

    if hf:
        from compress.starter_hf import write_hf_pruning

        write_hf_pruning(w, target)
    else:
        _pruning(w, target, by_macs)
    _schedule(w, target, regime)
    _training(w, transformer=transformer, patience=patience, small=data_source == "digits")
    _results(w, target, by_macs, tv_model, tokens=data_source in ("text", "text_lm"))
    text = "\n".join(w.lines) + "\n"

    recipe = parse_recipe(yaml.safe_load(text), source="starter recipe")
    plan_targets(recipe.schedule, recipe.pruning.final_target())
    check_data_spec(recipe.data)
    return text
