"""compress.pruning's kinds: each one is config dispatched to a registered handler, and a new
kind is one registration away from recipes, validation, the loop and ``compress list``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from compress.authoring.reference import list_registries
from compress.pruning import build_pruner, pruning_kind
from compress.pruning.base import PRUNING_KINDS, PruningKind, StepRecord
from compress.pruning.criteria import IMPORTANCE
from compress.recipe.load import parse_recipe, recipe_json_schema
from compress.recipe.pruning import PruningSpec, ScheduleSpec
from compress.recipe.stages import FinetuneSpec
from compress.run.loop import run_schedule_


@pytest.mark.parametrize("name", PRUNING_KINDS.names())
def test_every_kind_declares_criteria_checks_and_a_target(name: str) -> None:
    kind = pruning_kind(name)
    assert kind.criteria and kind.description
    spec = PruningSpec(kind=name) if kind.single_step else PruningSpec(kind=name, ratio=0.5)
    assert 0 < kind.final_target(spec) < 1
    others = [c for c in IMPORTANCE.names() if c not in kind.criteria]
    for criterion in others:  # a criterion of another kind is refused where the recipe enters
        with pytest.raises(ValueError, match=f"{name} pruning supports importance"):
            PruningSpec(kind=name, importance=criterion,
                        **({} if kind.single_step else {"ratio": 0.5}))


class _HalfZero:
    """A toy kind: zeroes the first half of the last layer's bias, once per step."""

    needs_grad = False

    def __init__(self, model: nn.Module, example: torch.Tensor, spec: Any, *,
                 cumulative_ratios: Any) -> None:
        self.model = model

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        bias = list(self.model.modules())[-1].bias
        with torch.no_grad():
            bias[: bias.numel() // 2] = 0
        return StepRecord(target_ratio, 1, bias.numel() // 2, "weights", 0.0, {})

    def accumulate_gradients(self, batches: Any, device: Any) -> None: ...
    def finalize_(self) -> None: ...
    def get_state(self) -> dict[str, Any]: return {}
    def get_tensors(self) -> dict[str, torch.Tensor]: return {}
    def restore_(self, state: Any, tensors: Any) -> None: ...
    def groups(self) -> list[dict[str, Any]]: return []


@pytest.fixture
def toy_kind() -> Iterator[str]:
    """The one line a new kind's module adds (and its removal afterwards)."""
    def check(spec: PruningSpec) -> None:
        if spec.target is not None:
            raise ValueError("toy pruning takes no target")

    PRUNING_KINDS.register("toy")(PruningKind(_HalfZero, criteria=("random",),
                                              description="a toy kind", check=check,
                                              final_target=lambda spec: 0.25))
    try:
        yield "toy"
    finally:
        del PRUNING_KINDS._entries["toy"]


def test_a_new_kind_is_one_registration(toy_kind: str) -> None:
    spec = PruningSpec(kind=toy_kind, importance="random")
    assert spec.final_target() == 0.25
    with pytest.raises(ValueError, match="toy pruning supports importance random"):
        PruningSpec(kind=toy_kind)  # l2 is not among its criteria
    with pytest.raises(ValueError, match="toy pruning takes no target"):
        PruningSpec(kind=toy_kind, importance="random", target={"macs": 0.5})
    recipe = parse_recipe({"version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
                           "data": {"source": "digits"},
                           "pruning": {"kind": toy_kind, "importance": "random"}})
    assert recipe.pruning.kind == toy_kind
    assert ("toy", "a toy kind") in list_registries()["Pruning kinds (pruning.kind)"]
    kind_schema = recipe_json_schema()["$defs"]["PruningSpec"]["properties"]["kind"]
    assert kind_schema["enum"] == ["n:m", "structured", "toy", "unstructured"]
    net = nn.Sequential(nn.Linear(4, 4))
    assert isinstance(build_pruner(net, torch.randn(1, 4), spec, [0.25]), _HalfZero)
    rows, _ = run_schedule_(net, example=torch.randn(1, 4), probe=torch.randn(2, 4),
                            pruning=spec, schedule=ScheduleSpec(), finetune=FinetuneSpec(),
                            train=None, evaluate_fn=lambda m: {}, device=torch.device("cpu"))
    assert [r["removed"] for r in rows] == [2] and rows[0]["removed_unit"] == "weights"


def test_unknown_kind_is_named_with_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown pruning kind 'sparse'; available: n:m, "
                                         "structured, unstructured"):
        PruningSpec(kind="sparse", ratio=0.5)
