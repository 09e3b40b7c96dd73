"""`compress init`'s starter recipes: valid by construction, regime chosen as the paper advises."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from compress.authoring.regime import choose_regime, looks_like_transformer
from compress.authoring.starter import render_starter_recipe
from compress.errors import InputError
from compress.models.hf_preflight import hf_notes

# One spec per registered source; test_every_source_has_a_spec keeps the lists complete.
MODELS = {"torchvision": "torchvision:resnet18", "cifar_resnet": "cifar_resnet:resnet56",
          "python": "python:my_models.nets:small_cnn"}
EXTRA_MODELS = ["python:models/net.py:build", "torchvision:vit_b_16"]
DATA = {"imagefolder": "imagefolder:./data", "torchvision": "torchvision:CIFAR10",
        "digits": "digits"}
EXTRA_DATA = ["torchvision:MNIST", "torchvision:CIFAR100"]
TARGETS = [0.3, 0.5, 0.85, 0.95]
HF_DATA = {"text": "sequence-classification", "text_lm": "causal-lm"}


def _check(text: str):
    from compress.data import check_data_spec
    from compress.models import check_model_spec
    from compress.recipe.load import parse_recipe
    from compress.schedules import plan_targets

    recipe = parse_recipe(yaml.safe_load(text), source="starter")
    targets = plan_targets(recipe.schedule, recipe.pruning.final_target())
    check_model_spec(recipe.model)
    check_data_spec(recipe.data)
    return recipe, targets


def _comment_above(text: str, line: str) -> str:
    """The comment block right above ``line`` (the first line equal to it)."""
    lines = text.splitlines()
    i = lines.index(line)
    block = []
    while i > 0 and lines[i - 1].lstrip().startswith("#"):
        i -= 1
        block.insert(0, lines[i].lstrip()[1:].strip())
    return " ".join(block)


def test_every_source_has_a_spec() -> None:
    from compress.data import DATASETS
    from compress.models import MODEL_SOURCES

    # The image grid below; huggingface with text/text_lm has its own tests further down.
    assert sorted(MODELS) == [n for n in MODEL_SOURCES.names() if n != "huggingface"]
    assert sorted(DATA) == [n for n in DATASETS.names() if n not in ("text", "text_lm")]
    assert {"huggingface"} | set(MODELS) == set(MODEL_SOURCES.names())
    assert set(HF_DATA) | set(DATA) == set(DATASETS.names())


@pytest.mark.parametrize("model, data", list(itertools.product(
    [*MODELS.values(), *EXTRA_MODELS], [*DATA.values(), *EXTRA_DATA])))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("by", ["macs", "sparsity"])
def test_starter_is_valid_for_the_grid(model: str, data: str, target: float, by: str) -> None:
    kwargs = {"target_macs": target} if by == "macs" else {"target_sparsity": target}
    text = render_starter_recipe(model, data, **kwargs)
    recipe, targets = _check(text)
    assert targets[-1] == pytest.approx(target)
    assert (recipe.finetune.patience is not None) == (recipe.schedule.kind != "one-shot")
    assert recipe.gates.max_accuracy_drop is not None
    assert recipe.gates.min_macs_reduction is not None
    assert recipe.gates.require_proof and recipe.pruning.verify  # a skipped proof fails CI
    assert recipe.pruning.importance == "l2" and recipe.pruning.round_to == "auto"
    why = _comment_above(text, "schedule:")
    assert why.startswith(recipe.schedule.kind.capitalize() + ", because"), why
    assert f"{target * 100:g} %" in why


@pytest.mark.parametrize("target, kind", [(0.3, "one-shot"), (0.5, "one-shot"),
                                          (0.79, "one-shot"), (0.8, "hybrid"),
                                          (0.85, "hybrid"), (0.9, "hybrid"),
                                          (0.91, "iterative"), (0.95, "iterative")])
def test_regime_follows_the_paper(target: float, kind: str) -> None:
    regime = choose_regime(target)
    assert regime.kind == kind
    recipe, _ = _check(render_starter_recipe("cifar_resnet:resnet56", "digits",
                                             target_macs=target))
    assert recipe.schedule.kind == kind
    if kind == "hybrid":
        assert recipe.schedule.first_step == pytest.approx(0.7 * target)
        assert recipe.schedule.step_rate == 0.02
        assert recipe.finetune.patience == [20, 2] and recipe.data.val_subset
    if kind == "iterative":
        assert recipe.schedule.step_rate == 0.02 and recipe.schedule.step_rule == "geometric"
    if kind == "one-shot":
        assert recipe.finetune.patience is None and recipe.finetune.epochs > 0


def test_regime_comments_explain_the_choice() -> None:
    one = render_starter_recipe("cifar_resnet:resnet56", "digits", target_macs=0.5)
    assert "below ~80 %" in _comment_above(one, "schedule:")
    hybrid = render_starter_recipe("cifar_resnet:resnet56", "digits", target_macs=0.85)
    assert "between ~80 % and ~90 %" in _comment_above(hybrid, "schedule:")
    assert "0.7 x the target" in _comment_above(hybrid, "  first_step: 0.595")
    assert "~2 % above" in _comment_above(hybrid, "  step_rate: 0.02")
    assert "Patience-based" in _comment_above(hybrid, "  patience: [20, 2]")
    it = render_starter_recipe("cifar_resnet:resnet56", "digits", target_macs=0.95)
    assert "above ~90 %" in _comment_above(it, "schedule:")
    assert "arXiv 2508.13836" in _comment_above(it, "schedule:")


@pytest.mark.parametrize("model, hint, expected", [
    ("torchvision:vit_b_16", None, True), ("torchvision:swin_t", None, True),
    ("python:hf.models:bert_base", None, True), ("python:llm.py:tiny_llama", None, True),
    ("torchvision:resnet50", None, False), ("torchvision:resnet50", "transformer", True),
    ("torchvision:vit_b_16", "cnn", False),
])
def test_transformers_prune_iteratively(model: str, hint: str | None, expected: bool) -> None:
    assert looks_like_transformer(model.partition(":")[2], hint) is expected
    text = render_starter_recipe(model, "imagefolder:./data", target_macs=0.3,
                                 architecture_hint=hint)
    recipe, targets = _check(text)
    assert (recipe.schedule.kind == "iterative") is expected
    if expected:
        assert recipe.schedule.step_rate == 0.1 and len(targets) > 1
        assert recipe.finetune.optimizer == "adamw"
        assert "transformer" in _comment_above(text, "schedule:")


def test_data_sources_fill_their_keys() -> None:
    tv, _ = _check(render_starter_recipe("cifar_resnet:resnet56", "torchvision:CIFAR10"))
    assert (tv.data.name, tv.data.path, tv.data.download) == ("CIFAR10", "./data", False)
    assert tv.data.normalize is not None and "horizontal_flip" in tv.data.augment
    text = render_starter_recipe("cifar_resnet:resnet56", "torchvision:CIFAR10")
    assert "download" in _comment_above(text, "  download: false")
    mnist, _ = _check(render_starter_recipe("python:nets:lenet", "torchvision:MNIST"))
    assert mnist.data.normalize is None and mnist.data.augment == ["random_crop"]
    folder, _ = _check(render_starter_recipe("torchvision:resnet50", "imagefolder:./data"))
    assert folder.data.path == "./data" and folder.data.image_size == 224
    assert folder.model.weights == "DEFAULT"
    c100, _ = _check(render_starter_recipe("torchvision:resnet50", "torchvision:CIFAR100"))
    assert c100.model.num_classes == 100 and c100.model.weights is None
    digits, _ = _check(render_starter_recipe("cifar_resnet:resnet20", "digits"))
    assert digits.data.source == "digits" and digits.data.normalize is None


def test_your_own_weights_classes_and_image_size(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cat", "dog", "fox", ".hidden"):
        (tmp_path / "imgs" / "train" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the folder is counted where `compress init` runs
    text = render_starter_recipe("torchvision:resnet18", "imagefolder:imgs",
                                 checkpoint="mine.safetensors", image_size=32)
    own, _ = _check(text)
    assert own.model.checkpoint == "mine.safetensors" and own.model.weights is None
    assert own.model.num_classes == 3  # cat, dog, fox: hidden folders are not classes
    assert own.data.image_size == 32
    assert "--checkpoint mine.safetensors --image-size 32" in text.splitlines()[1]
    assert "checkpoint was trained" in _comment_above(text, "  num_classes: 3")
    given, _ = _check(render_starter_recipe("torchvision:resnet18", "imagefolder:imgs",
                                            num_classes=7))
    assert given.model.num_classes == 7 and given.model.checkpoint is None
    archive, _ = _check(render_starter_recipe("torchvision:resnet18", "imagefolder:d.tar.gz"))
    assert archive.model.num_classes is None and archive.model.weights == "DEFAULT"
    factory, _ = _check(render_starter_recipe("python:nets:lenet", "digits", num_classes=10))
    assert factory.model.num_classes == 10
    plain, _ = _check(render_starter_recipe("python:nets:lenet", "digits"))
    assert plain.model.num_classes is None  # only on request: the factory may not take it


def test_defaults_and_target_kinds() -> None:
    by_default, _ = _check(render_starter_recipe("cifar_resnet:resnet56", "digits"))
    assert by_default.pruning.target is not None and by_default.pruning.target.macs == 0.5
    by_ratio, _ = _check(render_starter_recipe("cifar_resnet:resnet56", "digits",
                                               target_sparsity=0.5))
    assert by_ratio.pruning.ratio == 0.5 and by_ratio.pruning.target is None
    assert by_default.gates.min_macs_reduction == pytest.approx(0.48)


def test_output_is_deterministic_and_loads_from_a_file(tmp_path: Path) -> None:
    from compress.recipe.load import load_recipe

    text = render_starter_recipe("python:models/net.py:build", "imagefolder:./data",
                                 target_macs=0.85)
    assert text == render_starter_recipe("python:models/net.py:build", "imagefolder:./data",
                                         target_macs=0.85)
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    recipe = load_recipe(path)
    assert recipe.model.factory == "models/net.py:build" and recipe.name == "build-macs85"


def test_every_key_line_is_commented_or_plain_yaml() -> None:
    text = render_starter_recipe("torchvision:resnet50", "imagefolder:./data", target_macs=0.85)
    assert text.startswith("# Starter recipe, written by\n#   compress init --model "
                           "torchvision:resnet50 --data imagefolder:./data --target-macs 0.85\n")
    for line in text.splitlines():
        assert len(line) <= 100 and not line.endswith(" ")
    for section in ("schedule", "pruning", "gates", "export", "finetune"):
        assert _comment_above(text, f"{section}:"), section


@pytest.mark.parametrize("data, task", sorted(HF_DATA.items()))
def test_transformers_starter_prunes_heads_and_neurons_where_hf_stays_stock(data: str, task: str,
                                                       tmp_path: Path) -> None:
    from tests.hf_models import save_tiny

    folder, _ = save_tiny("llama" if data == "text_lm" else "bert", tmp_path / "m")
    text = render_starter_recipe(f"huggingface:{folder}", f"{data}:./corpus",
                                 target_sparsity=0.5)
    recipe, targets = _check(text)
    assert recipe.model.task == task and recipe.model.head == "pretrained"
    bert = data != "text_lm"
    # BERT configs derive the head size: the starter keeps every head so hf/ stays stock.
    assert (recipe.pruning.ratio, recipe.pruning.heads, recipe.pruning.ffn) == (
        (0.5, 0, 0.5) if bert else (0.5, 0.5, 0.5))
    assert recipe.schedule.kind == "iterative" and targets[-1] == pytest.approx(0.5)
    assert recipe.report.sample_shape == [128] and recipe.report.engines == ["onnxruntime"]
    assert recipe.finetune.optimizer == "adamw" and recipe.name == "m-heads50"
    assert recipe.gates.require_proof
    assert ("# hidden: 0.5" in text) is not bert
    # compress validate's preflight has nothing to say about hf/ for either
    assert hf_notes(recipe.model, recipe.pruning, lambda p: tmp_path / p) == []


def test_transformers_starter_trains_a_missing_head() -> None:
    from tests.hf_models import minilm_path

    text = render_starter_recipe(f"huggingface:{minilm_path()}", "text:./sst2",
                                 target_macs=0.5, num_classes=2)
    recipe, _ = _check(text)
    assert (recipe.model.head, recipe.model.num_classes) == ("finetune", 2)
    assert "no sequence-classification head" in _comment_above(text, "  head: finetune")
    with pytest.raises(InputError, match="give --num-classes"):
        render_starter_recipe(f"huggingface:{minilm_path()}", "text:./sst2")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"model": "huggingface:x", "data": "digits"}, "huggingface models take data text:PATH"),
    ({"model": "huggingface:", "data": "text:./d"}, "needs a folder, hub id or module:function"),
    ({"model": "huggingface:x", "data": "text"}, "data source 'text' needs a folder"),
    ({"model": "hub:resnet50"}, "unknown model source 'hub' in 'hub:resnet50'; available: "
                                "cifar_resnet, huggingface, python, torchvision"),
    ({"model": "resnet50"}, "unknown model source 'resnet50'"),
    ({"model": "torchvision:"}, "names no model"),
    ({"model": "torchvision:resnet5000"}, "unknown torchvision model 'resnet5000'"),
    ({"model": "cifar_resnet:resnet18"}, "unknown cifar_resnet name 'resnet18'"),
    ({"model": "python:pkg.mod"}, "must look like 'package.module:function'"),
    ({"data": "imagenet:/data"}, "unknown data source 'imagenet' in 'imagenet:/data'; "
                                 "available: digits, imagefolder, text, text_lm, torchvision"),
    ({"data": "imagefolder"}, "needs a path: imagefolder:PATH"),
    ({"data": "digits:x"}, "takes no argument"),
    ({"data": "torchvision:ImageNet"}, "torchvision dataset 'ImageNet' is not supported; "
                                       "supported: MNIST"),
    ({"target_macs": 0.5, "target_sparsity": 0.5}, "not both"),
    ({"target_macs": 1.5}, "target_macs must be a fraction between 0 and 1"),
    ({"target_sparsity": 0.0}, "target_sparsity must be a fraction between 0 and 1"),
    ({"architecture_hint": "rnn"}, "unknown architecture 'rnn'; allowed: cnn, transformer"),
    ({"num_classes": 0}, "num_classes must be a positive whole number"),
    ({"image_size": -1}, "image_size must be a positive whole number"),
])
def test_bad_input_is_one_clear_sentence(kwargs: dict, fragment: str) -> None:
    args = {"model": "cifar_resnet:resnet56", "data": "digits", **kwargs}
    with pytest.raises(InputError) as info:
        render_starter_recipe(**args)
    assert fragment in str(info.value)


# What compress.authoring.starter reads from every source's starter_defaults.
MODEL_DEFAULT_KEYS = {"note", "transformer", "imagenet_input", "inputs", "macs_target", "unit",
                      "pruning", "importance", "ratio"}
DATA_DEFAULT_KEYS = {"note", "inputs", "small"}


@pytest.mark.parametrize("source", sorted({"huggingface", *MODELS}))
def test_every_model_source_writes_its_own_section(source: str) -> None:
    from compress.models import MODEL_SOURCES

    cls = MODEL_SOURCES.get(source)
    assert MODEL_DEFAULT_KEYS <= set(cls.starter_defaults), source
    for hook in ("starter", "starter_name", "starter_pruning"):
        assert callable(getattr(cls, hook)), (source, hook)
    spec = MODELS.get(source, "huggingface:org/tiny-vit")
    recipe, _ = _check(render_starter_recipe(spec, "imagefolder:./data", target_sparsity=0.5))
    assert recipe.model.source == source
    assert recipe.pruning.ratio == 0.5


@pytest.mark.parametrize("source", sorted({*DATA, *HF_DATA}))
def test_every_dataset_writes_its_own_section_and_serving_info(source: str) -> None:
    from types import SimpleNamespace

    from compress.data import DATASETS

    cls = DATASETS.get(source)
    assert DATA_DEFAULT_KEYS <= set(cls.starter_defaults), source
    tokens = cls.starter_defaults["inputs"] == "tokens"
    model = "huggingface:org/tiny" if tokens else "cifar_resnet:resnet20"
    data = DATA.get(source) or f"{source}:./corpus"
    recipe, _ = _check(render_starter_recipe(model, data, target_sparsity=0.5))
    assert recipe.data.source == source
    info = cls().serving_info(recipe.data, SimpleNamespace(class_names=["a", "b"]))
    assert info["classes"] == ["a", "b"]
    assert ("tokens" if tokens else "pixels") in info["preprocess"]


def test_a_new_model_source_brings_its_starter_in_its_own_class(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from compress.models import MODEL_SOURCES
    from compress.models.base import ChannelPrunedSource

    class Mine(ChannelPrunedSource):
        accepts = frozenset({"name"})
        required = frozenset({"name"})

        def starter_keys(self, w, arg, request):
            w.key("name", arg, "My own model.")
            return {"name": arg}

    class Bare:  # registered, but with no starter: compress init says so
        accepts = required = frozenset()

    monkeypatch.setitem(MODEL_SOURCES._entries, "mine", Mine)
    monkeypatch.setitem(MODEL_SOURCES._entries, "bare", Bare)
    text = render_starter_recipe("mine:net7", "digits", target_macs=0.5)
    recipe, _ = _check(text)
    assert (recipe.model.source, recipe.model.name, recipe.name) == ("mine", "net7", "net7-macs50")
    assert _comment_above(text, "  name: net7") == "My own model."
    assert "round_to: auto" in text  # the channel-pruning default, written once for all
    with pytest.raises(InputError, match="compress init has no template for model source 'bare'"):
        render_starter_recipe("bare:x", "digits")


def test_text_data_needs_a_model_that_takes_tokens() -> None:
    with pytest.raises(InputError, match="no template for data source 'text' yet"):
        render_starter_recipe("cifar_resnet:resnet20", "text:./sst2")


def test_target_speedup_writes_a_latency_target_and_a_speedup_gate() -> None:
    text = render_starter_recipe("cifar_resnet:resnet56", "digits", target_speedup=2)
    recipe, _ = _check(text)
    assert recipe.pruning.target.latency == 0.5 and recipe.pruning.target.macs is None
    assert recipe.gates.min_speedup == round(1 / (1 - 0.48), 2)
    assert recipe.gates.min_macs_reduction is None and recipe.name == "resnet56-speedup2x"
    assert text.splitlines()[1].endswith("--data digits --target-speedup 2")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"target_speedup": 2, "target_macs": 0.5}, "target_speedup replaces target_macs"),
    ({"target_speedup": 1.0}, "how many times faster, above 1"),
    ({"target_speedup": 2, "architecture_hint": "transformer"}, "convolutional models"),
])
def test_bad_target_speedup_is_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        render_starter_recipe("cifar_resnet:resnet56", "digits", **kwargs)
