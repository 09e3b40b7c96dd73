import math

import pytest

from compress.errors import InputError
from compress.recipe.pruning import ScheduleSpec
from compress.schedules import SCHEDULES, plan_targets, step_increments


def _spec(**kw) -> ScheduleSpec:
    return ScheduleSpec(**kw)


def test_geometric_n5_p08_sums_to_p() -> None:
    targets = plan_targets(_spec(kind="iterative", steps=5, step_rule="geometric"), 0.8)
    inc = step_increments(targets)
    assert len(inc) == 5 and abs(sum(inc) - 0.8) < 1e-9
    s = 1 - (1 - 0.8) ** (1 / 5)
    for j, d in enumerate(inc, start=1):
        assert abs(d - s * (1 - s) ** (j - 1)) < 1e-9


def test_constant_n4_p05() -> None:
    inc = step_increments(plan_targets(_spec(kind="iterative", steps=4, step_rule="constant"), 0.5))
    assert inc == pytest.approx([0.125] * 4, abs=1e-12)


def test_hybrid_first_step_then_geometric() -> None:
    inc = step_increments(plan_targets(_spec(kind="hybrid", first_step=0.6, steps=1), 0.88))
    assert inc == pytest.approx([0.6, 0.28], abs=1e-12)
    targets = plan_targets(_spec(kind="hybrid", first_step=0.6, steps=3), 0.9)
    remaining = [1 - t for t in targets]
    ratios = [b / a for a, b in zip(remaining, remaining[1:])]
    assert ratios == pytest.approx([ratios[0]] * 3) and targets[-1] == 0.9


def test_step_rate_trims_the_last_step() -> None:
    targets = plan_targets(_spec(kind="iterative", step_rate=0.3), 0.8)
    n = math.ceil(math.log(0.2) / math.log(0.7))
    assert len(targets) == n and targets[-1] == 0.8
    assert targets[:-1] == pytest.approx([1 - 0.7**j for j in range(1, n)])
    assert all(b > a for a, b in zip(targets, targets[1:]))
    # exact landing: rate that reaches p in whole steps has no extra step
    assert len(plan_targets(_spec(kind="iterative", step_rate=0.5), 0.75)) == 2


def test_hybrid_with_step_rate() -> None:
    targets = plan_targets(_spec(kind="hybrid", first_step=0.7, step_rate=0.02), 0.9)
    assert targets[0] == 0.7 and targets[-1] == 0.9 and len(targets) > 10


def test_one_shot() -> None:
    assert plan_targets(_spec(), 0.5) == [0.5]


@pytest.mark.parametrize("kind", SCHEDULES.names())
def test_every_schedule_reaches_the_target_monotonically(kind: str) -> None:
    extra = {"iterative": {"steps": 3}, "hybrid": {"first_step": 0.3, "steps": 2}}.get(kind, {})
    targets = plan_targets(_spec(kind=kind, **extra), 0.6)
    assert targets[-1] == 0.6 and all(b > a for a, b in zip([0.0, *targets], targets))


@pytest.mark.parametrize("kw, fragment", [
    ({"kind": "iterative"}, "needs exactly one of schedule.steps or schedule.step_rate"),
    ({"kind": "iterative", "steps": 2, "step_rate": 0.1}, "exactly one of"),
    ({"kind": "hybrid", "steps": 2}, "needs schedule.first_step"),
    ({"kind": "hybrid", "first_step": 0.9, "steps": 2}, "must be below the final target"),
    ({"kind": "one-shot", "steps": 3}, "takes no steps"),
    ({"kind": "iterative", "steps": 2, "first_step": 0.2}, "belongs to kind 'hybrid'"),
])
def test_bad_schedules(kw: dict, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        plan_targets(_spec(**kw), 0.8)
