"""Fuzzing the `compress validate` path: random recipes either validate or raise InputError.

Four strategies, none of which builds or trains anything:

* ``assembled_recipe``: sections built from the schema itself (each field's type, reaching its
  edges, or the examples its ``Field`` declares) mixed with random keys, wrong types, random
  registry names, missing sections and nested junk;
* ``mutated_recipe``: a valid combination of sections with one to three keys set, deleted or
  added, so the checks past the schema (sources, paths, schedule plans) are reached;
* ``path_recipe``: odd checkpoint, factory and data paths (too long, NUL bytes, folders);
* ``planned_recipe``: pruning amounts and schedules over their whole ranges (tiny ratios and
  rates, huge step counts).

The only allowed outcomes are success or one :class:`InputError` line (exit 2). The crashes
this found (OSError on long names, a ValueError from a NUL byte, ZeroDivisionError,
AssertionError and a hang while planning) are fixed in ``compress/run/preflight.py`` and are cases
in tests/bad_inputs/.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from compress.cli.app import app
from compress.data import DATASETS
from compress.errors import InputError
from compress.models import MODEL_SOURCES
from compress.pruning.criteria import IMPORTANCE
from compress.recipe.load import parse_recipe
from compress.recipe.spec import Recipe
from compress.run.preflight import check_recipe
from compress.schedules import SCHEDULES
from tests.conftest import ROOT

FACTORY = f"{ROOT}/examples/quickstart/digits_cnn.py:digits_cnn"
CHECKPOINT = f"{ROOT}/examples/quickstart/digits_cnn.safetensors"


def _image_splits() -> str:
    """An image folder holding train/ and val/ class folders (validate checks the splits a
    recipe names exist; nothing in them is read)."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-images-"))
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
    return str(root)


IMAGES = _image_splits()

# Deterministic for CI (derandomize, no example database); about 3 s per 200 examples.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- leaves ---------------------------------------------------------------------------------

ints = st.one_of(st.integers(min_value=-3, max_value=12),
                st.sampled_from([10**3, 10**6, 10**9, 10**30, 2**63, -(2**63)]))
floats = st.one_of(ints, st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.5, 0.5, 0.999999, 1.0, 1.5, 1e-300, 1e-17, 1e-12,
                                    1 - 1e-16, 1e-4, 0.05, 0.3, 0.6, 0.9, 0.99, math.nan,
                                    math.inf, -math.inf]))
numbers = st.one_of(ints, floats)
# Registry names, near misses and paths: a long component (> 255 bytes) and odd characters.
registry_names = sorted({*MODEL_SOURCES.names(), *DATASETS.names(), *IMPORTANCE.names(),
                         *SCHEDULES.names(), "structured", "unstructured", "n:m", "resnet20",
                         "resnet18", "CIFAR10", "MNIST", "auto", "cpu", "cuda", "cuda:0"})
strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(registry_names),
    st.sampled_from(["", " ", "re:(", "re:.*", "~", "~nobody/x", "$HOME/x", "${UNSET_VAR}/x",
                     "x" * 300, "é" * 200, "a\x00b", "/", ".", "..", "../" * 40,
                     "nofile.py:fn", ":", "a:", ":b", "a.py:", "pkg.mod:fn", "os:getcwd",
                     FACTORY, CHECKPOINT, "/dev/null", "/proc/self/root/x",
                     f"{'d' * 300}.py:f", "file.safetensors", "file.pt", "file.onnx"]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(strings, st.integers()), inner,
                                                 max_size=4)), max_leaves=8)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for a in getattr(annotation, "__args__", (annotation,)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, each picked with its integer weight."""
    table = [s for weight, s in options for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def typed(annotation: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of the annotated type, reaching its edges (bounds, odd strings, huge counts)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        return st.one_of(*(typed(a, depth) for a in args))
    if origin is Literal:
        return weighted((4, st.sampled_from(args)), (1, strings))
    if origin is list:
        return st.lists(typed(args[0], depth), max_size=4)
    if origin is dict:
        return st.dictionaries(strings, junk, max_size=3)
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return ints
    if annotation is float:
        return floats
    if annotation is str:
        return strings
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and depth < 2:
        return section(annotation, depth + 1)
    return junk


def field_value(cls: type[BaseModel], name: str, depth: int = 0) -> st.SearchStrategy[Any]:
    """A value for field ``name`` of section ``cls``: mostly of its type, sometimes junk."""
    f = cls.model_fields[name]
    options: list[tuple[int, st.SearchStrategy[Any]]] = [(8, typed(f.annotation, depth)),
                                                         (1, junk)]
    if f.examples:
        options.append((4, st.sampled_from(f.examples)))
    return weighted(*options)


def section(cls: type[BaseModel], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """A dict for section ``cls``: some of its fields, now and then a random key."""
    names = [k for k in cls.model_fields if k != "base_dir"]
    known = st.fixed_dictionaries({}, optional={k: field_value(cls, k, depth) for k in names})
    extra = weighted((6, st.just({})), (1, st.dictionaries(strings, junk, min_size=1,
                                                           max_size=2)))
    return st.builds(lambda a, b: {**a, **b}, known, extra)


SECTIONS: dict[str, type[BaseModel]] = {
    k: m for k, f in Recipe.model_fields.items() if (m := _nested_model(f.annotation))}

# Valid section values: the base recipes are drawn as combinations of these.
POOLS: dict[str, list[dict[str, Any]]] = {
    "model": [{"source": "python", "factory": FACTORY, "checkpoint": CHECKPOINT, "num_classes": 10},
              {"source": "python", "factory": "tests.conftest:tiny_cnn", "kwargs": {"width": 8}},
              {"source": "cifar_resnet", "name": "resnet20", "num_classes": 10},
              {"source": "torchvision", "name": "resnet18", "weights": "DEFAULT"}],
    "data": [{"source": "digits", "train_subset": 64, "val_subset": 32},
             {"source": "digits", "augment": ["random_crop"], "crop_padding": 1,
              "normalize": {"mean": [0.5], "std": [0.25]}, "val_subset": 10},
             {"source": "imagefolder", "path": IMAGES, "eval_split": "val", "val_subset": 5},
             {"source": "torchvision", "name": "CIFAR10", "path": str(ROOT), "val_subset": 5}],
    "pruning": [{"ratio": 0.5}, {"target": {"macs": 0.5}, "ignored": ["conv1", "re:layer\\d"]},
                {"kind": "n:m", "n": 2, "m": 4}, {"kind": "unstructured", "ratio": 0.9,
                                                   "scope": "global", "importance": "l1"},
                {"ratio": 0.95, "importance": "taylor", "round_to": 1}],
    "schedule": [{}, {"kind": "one-shot"}, {"kind": "iterative", "steps": 3},
                 {"kind": "iterative", "steps": 4, "step_rule": "constant"},
                 {"kind": "iterative", "step_rate": 0.2},
                 {"kind": "hybrid", "first_step": 0.3, "steps": 2},
                 {"kind": "hybrid", "first_step": 0.3, "step_rate": 0.1}],
    "finetune": [{}, {"epochs": 1, "max_steps": 3}, {"patience": [2, 1], "monitor": "val_loss"},
                 {"distill": {"alpha": 0.5, "temperature": 4}}],
    "export": [{}, {"onnx": False, "steps": "all"}],
    "report": [{}, {"latency": False}, {"engines": ["onnxruntime"], "batch_sizes": [1]}],
    "gates": [{}, {"max_accuracy_drop": 2.0, "min_macs_reduction": 0.4}],
}


@st.composite
def assembled_recipe(draw: st.DrawFn) -> Any:
    """A recipe built section by section from the schema, any section possibly missing/junk."""
    if draw(st.integers(0, 30)) == 0:
        return draw(junk)  # not even a mapping
    recipe: dict[str, Any] = {}
    if draw(st.integers(0, 10)) > 0:
        recipe["version"] = draw(weighted((9, st.just(1)), (1, scalars)))
    for name, cls in SECTIONS.items():
        choice = draw(st.integers(0, 19))
        if choice == 0:
            continue  # missing section
        if choice == 1:
            recipe[name] = draw(junk)
        elif name in POOLS and choice < 12:
            recipe[name] = copy.deepcopy(draw(st.sampled_from(POOLS[name])))
        else:
            recipe[name] = draw(section(cls))
    for key in ("name", "seed", "device"):
        if draw(st.integers(0, 3)) == 0:
            recipe[key] = draw(field_value(Recipe, key))
    if draw(st.integers(0, 9)) == 0:
        recipe[draw(strings)] = draw(junk)
    return recipe


@st.composite
def mutated_recipe(draw: st.DrawFn) -> dict[str, Any]:
    """A valid combination of sections with one to three keys set, deleted or added."""
    recipe: dict[str, Any] = {"version": 1}
    for name, pool in POOLS.items():
        recipe[name] = copy.deepcopy(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(SECTIONS)))
        cls = SECTIONS[name]
        node = recipe.setdefault(name, {})
        if not isinstance(node, dict):
            continue
        key = draw(st.sampled_from([k for k in cls.model_fields if k != "base_dir"]))
        action = draw(st.integers(0, 9))
        if action == 0:
            node.pop(key, None)
        elif action == 1:
            node[draw(strings)] = draw(junk)
        elif action == 2:
            recipe[name] = draw(junk)
        elif action == 3:
            recipe[draw(st.sampled_from(["seed", "device", "name", "version"]))] = draw(
                field_value(Recipe, "seed"))
        else:
            node[key] = draw(field_value(cls, key))
    return recipe


path_strings = st.one_of(strings, st.sampled_from([
    "x" * 300, "é" * 200, "~a\x00b", "/proc/1/root/x", "/etc", str(ROOT), f"{ROOT}/README.md",
    f"{ROOT}/examples", "examples/quickstart/digits_cnn.safetensors", "no/such/file.pt",
    f"{'d' * 300}.py:f", f"{ROOT}/tests:x", f"{ROOT}/README.md.py:f", "~/x.py:f"]))


@st.composite
def path_recipe(draw: st.DrawFn) -> dict[str, Any]:
    """A valid recipe whose checkpoint, factory file and data path are odd strings."""
    recipe: dict[str, Any] = {"version": 1, "pruning": {"ratio": 0.5},
                              "model": dict(POOLS["model"][0]), "data": {"source": "imagefolder",
                                                                         "path": str(ROOT)}}
    if draw(st.booleans()):
        recipe["model"]["checkpoint"] = draw(path_strings)
    if draw(st.booleans()):
        recipe["model"]["factory"] = draw(path_strings) + draw(st.sampled_from(["", ":f"]))
    if draw(st.booleans()):
        recipe["data"]["path"] = draw(path_strings)
        if draw(st.booleans()):
            recipe["data"].update(source="torchvision", name="MNIST", download=draw(st.booleans()))
    return recipe


# Fractions mostly inside (0, 1), at its edges, where float steps stop being distinct.
fractions = weighted((4, st.sampled_from([1e-300, 1e-17, 1e-12, 1e-6, 0.05, 0.3, 0.5, 0.6,
                                          0.9, 0.99, 0.999999, 1 - 1e-16])),
                     (2, st.floats(0, 1, exclude_min=True, exclude_max=True)), (1, floats))
step_counts = weighted((3, st.integers(1, 12)), (2, st.sampled_from([100, 1000, 1001, 10**6,
                                                                      10**9, 10**30])),
                       (1, ints))


@st.composite
def planned_recipe(draw: st.DrawFn) -> dict[str, Any]:
    """A valid recipe whose pruning amount and schedule are drawn from their whole ranges."""
    pruning: dict[str, Any] = {"kind": draw(weighted((4, st.just("structured")),
                                                     (1, st.just("unstructured")),
                                                     (1, st.just("n:m"))))}
    amount = draw(st.integers(0, 5))
    if amount <= 2:
        pruning["ratio"] = draw(fractions)
    elif amount <= 4:
        pruning["target"] = {"macs": draw(fractions)}
    else:
        pruning.update(n=draw(step_counts), m=draw(step_counts))
    if pruning["kind"] == "unstructured":
        pruning["importance"] = "l1"
    kind = draw(weighted((1, st.just("one-shot")), (3, st.just("iterative")),
                         (3, st.just("hybrid"))))
    schedule: dict[str, Any] = {"kind": kind}
    if draw(st.integers(0, 2)) > 0:
        schedule["steps"] = draw(step_counts)
    if draw(st.integers(0, 2)) == 0 or "steps" not in schedule:
        schedule["step_rate"] = draw(fractions)
    if kind == "hybrid" or draw(st.integers(0, 5)) == 0:
        schedule["first_step"] = draw(fractions)
    if draw(st.integers(0, 3)) == 0:
        schedule["step_rule"] = draw(st.sampled_from(["constant", "geometric"]))
    return {"version": 1, "model": dict(POOLS["model"][2]), "data": {"source": "digits"},
            "pruning": pruning, "schedule": schedule}


recipes = st.one_of(assembled_recipe(), mutated_recipe(), path_recipe(), planned_recipe())


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Turn a hang (e.g. planning 10**9 steps) into a failure instead of a stuck CI job."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"validation took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _validate(data: Any) -> None:
    """The `compress validate` path after YAML loading: schema, then source and path checks."""
    try:
        with _time_limit(10):
            check_recipe(parse_recipe(data, source="fuzz.yaml", base_dir=ROOT))
    except InputError as err:
        message = str(err)
        assert message and "\n" not in message, repr(message)
        assert "Traceback" not in message


def test_pool_sections_are_valid() -> None:
    # Every pooled section is valid on its own, so mutations start from good recipes.
    for name, pool in POOLS.items():
        for value in pool:
            recipe = {"version": 1, "model": POOLS["model"][0], "data": POOLS["data"][0],
                      "pruning": {"ratio": 0.5}, name: copy.deepcopy(value)}
            check_recipe(parse_recipe(recipe, base_dir=ROOT))


@FUZZ
@given(recipes)
def test_random_recipes_validate_or_raise_input_error(data: Any) -> None:
    _validate(data)


@FUZZ
@given(mutated_recipe())
def test_mutated_valid_recipes_validate_or_raise_input_error(data: dict[str, Any]) -> None:
    _validate(data)


@FUZZ
@given(st.one_of(path_recipe(), planned_recipe()))
def test_odd_paths_and_schedule_plans_validate_or_raise_input_error(data: dict[str, Any]) -> None:
    _validate(data)


runner = CliRunner()


@settings(FUZZ, max_examples=15)
@given(recipes)
def test_cli_validate_exits_0_or_2(tmp_path_factory: Any, data: Any) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "recipe.yaml"
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as YAML (cannot reach the CLI)
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code in (0, 2), (result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.output.startswith("error: "), result.output
