"""Per-group widths for a latency budget: the channels that cost least importance per
millisecond saved go first (a greedy knapsack, as HALP, arXiv 2110.10811, does).

Every prunable channel group (a root layer and the layers whose inputs or outputs follow it)
gets its own width. A group's candidate widths are the multiples of its rounding step down to
``1 - max_layer_ratio`` of its channels; its cost at a width is what the caller says
(:func:`~compress.pruning.latency_groups.keep_cost`: minus the log of the share of the
group's importance kept, counted once for every timed layer the group narrows).
The latency of a set of widths is the sum of the latency table's times of every timed layer at
the widths the groups leave it. From the full model, the move that saves the most predicted
milliseconds per unit of importance lost (a group narrowed by up to :data:`LOOKAHEAD` candidate
widths at once, so a flat stretch of the hardware's staircase is crossed to the next drop) is
taken until a move meets the budget; the one of those losing the least ends the plan (no
overshoot by a long jump), unless it costs more than the move with the most milliseconds per
cost (a jump that finishes at once may cost more than the few good steps it spares). A move that
saves no time is never taken. The widths
passed on the way give the earlier steps of an iterative schedule, so they nest.

Example:
    >>> a = GroupCut("a", 4, [4, 2], [0.0, 0.1], [("a", "out")])
    >>> b = GroupCut("b", 4, [4, 2], [0.0, 5.0], [("b", "out")])
    >>> layer_ms = lambda many: [w["a"][1] + w["b"][1] for w in many]  # ms = output channels
    >>> plan = plan_widths([a, b], {"a": (1, 4), "b": (1, 4)}, set(), layer_ms, [6.0])
    >>> plan.widths, plan.predicted_ms  # a is cheap to cut, b is not
    ([{'a': 2, 'b': 4}], [6.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["GroupCut", "WidthPlan", "GroupRatios", "Unreachable", "plan_widths", "LOOKAHEAD"]

# Candidate widths a group may skip in one move: enough to cross a flat stretch of the
# staircase (a vector block of 16 channels at round_to 1) to where the time drops.
LOOKAHEAD = 16

Widths = dict[str, tuple[int, int]]  # timed layer -> (in, out) widths
# The predicted ms of the timed layers at each of several widths (one table look-up for all).
LayerMs = Callable[[Sequence[Widths]], list[float]]


@dataclass
class GroupCut:
    """One channel group: its root layer, its width, the widths it may take (descending,
    the full width first), the importance lost at each and the timed layers it narrows
    (``(name, "in" | "out")``)."""

    root: str
    channels: int
    candidates: list[int]
    lost: list[float]
    members: list[tuple[str, str]] = field(default_factory=list)
    # removed[m][j]: the channels members[m] loses at candidates[j]; None: all the group's
    # (a producer of a concatenation loses only part of them).
    removed: list[list[int]] | None = None

    def loses(self, member: int, at: int) -> int:
        if self.removed is None:
            return self.channels - self.candidates[at]
        return self.removed[member][at]


@dataclass
class WidthPlan:
    """Each budget's widths (root -> channels kept), predicted ms and importance lost."""

    widths: list[dict[str, int]]
    predicted_ms: list[float]
    lost: list[float]


class Unreachable(ValueError):
    """No widths meet a budget; ``ms``: the fastest the groups' narrowest widths predict."""

    def __init__(self, ms: float, budget: float) -> None:
        super().__init__(f"the narrowest widths are predicted at {ms:.4g} ms, over the budget "
                         f"of {budget:.4g} ms")
        self.ms = ms


class GroupRatios(float):
    """A step's channel ratio (the float: channels removed over all planned groups' channels)
    with each group's own ratio (root layer -> fraction of its channels removed).

    >>> r = GroupRatios.of_widths({"conv": 8}, {"conv": 6})
    >>> float(r), r.groups, GroupRatios.from_json(r.to_json()) == r
    (0.25, {'conv': 0.25}, True)
    """

    groups: dict[str, float]

    def __new__(cls, value: float, groups: dict[str, float]) -> GroupRatios:
        self = super().__new__(cls, value)
        self.groups = dict(groups)
        return self

    @classmethod
    def of_widths(cls, channels: dict[str, int], kept: dict[str, int]) -> GroupRatios:
        removed = sum(channels[n] - kept[n] for n in channels)
        return cls(removed / max(1, sum(channels.values())),
                   {n: (channels[n] - kept[n]) / channels[n] for n in sorted(channels)})

    def to_json(self) -> dict[str, object]:
        return {"ratio": float(self), "groups": self.groups}

    @classmethod
    def from_json(cls, data: object) -> float:
        """A plain ratio, or a :class:`GroupRatios` from :meth:`to_json`; ValueError else."""
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
        if isinstance(data, dict) and set(data) == {"ratio", "groups"}:
            ratio, groups = data["ratio"], data["groups"]
            if (isinstance(ratio, (int, float)) and isinstance(groups, dict)
                    and all(isinstance(k, str) and isinstance(v, (int, float))
                            and not isinstance(v, bool) and 0 <= v < 1
                            for k, v in groups.items()) and 0 <= ratio < 1):
                return cls(float(ratio), {k: float(v) for k, v in groups.items()})
        raise ValueError("not a channel ratio")

    def __reduce__(self) -> tuple[object, ...]:  # copy/deepcopy keep the groups
        return (GroupRatios, (float(self), self.groups))


def _io(groups: Sequence[GroupCut], full: Widths, depthwise: set[str],
        at: dict[str, int]) -> Widths:
    """The (in, out) width of every timed layer when each group is at its ``at[root]``-th
    candidate width."""
    cut = {name: [0, 0] for name in full}
    for g in groups:
        for m, (name, side) in enumerate(g.members):
            if name in cut:
                cut[name][side == "out"] += g.loses(m, at[g.root])
    io = {}
    for name, (i, o) in full.items():
        out = o - cut[name][1]
        io[name] = (out, out) if name in depthwise else (i - cut[name][0], out)
    return io


def plan_widths(groups: Sequence[GroupCut], full: Widths, depthwise: set[str],
                layer_ms: LayerMs, budgets_ms: Sequence[float]) -> WidthPlan:
    """The widths meeting each of ``budgets_ms`` (descending) with the least importance lost.

    ``full``: each timed layer's unpruned ``(in, out)``; ``depthwise``: those whose input
    width is their output width; ``layer_ms([widths, ...])``: their predicted total ms at
    each (every move of a round is looked up at once, so missing timings are measured in one
    batch). Raises :class:`Unreachable` when no widths reach a budget.
    """
    assert list(budgets_ms) == sorted(budgets_ms, reverse=True), budgets_ms
    at = {g.root: 0 for g in groups}  # index into each group's candidates
    width = {g.root: g.candidates[0] for g in groups}
    ms, lost = float(layer_ms([_io(groups, full, depthwise, at)])[0]), 0.0
    plan = WidthPlan([], [], [])
    for budget in budgets_ms:
        while ms > budget:
            moves = [(g, j) for g in groups
                     for j in range(at[g.root] + 1,
                                    min(at[g.root] + 1 + LOOKAHEAD, len(g.candidates)))]
            trials = layer_ms([_io(groups, full, depthwise, {**at, g.root: j})
                               for g, j in moves])
            best: tuple[float, GroupCut, int, float, float] | None = None
            last: tuple[GroupCut, int, float, float] | None = None
            for (g, j), after in zip(moves, trials, strict=True):
                saved, cost = ms - after, g.lost[j] - g.lost[at[g.root]]
                if saved <= 1e-9 * max(ms, 1.0):
                    continue
                value = saved / max(cost, 1e-12)
                if best is None or value > best[0]:
                    best = (value, g, j, after, cost)
                if after <= budget and (last is None or cost < last[3]):
                    last = (g, j, after, cost)
            if best is None:
                raise Unreachable(ms, budget)
            # The last move: the cheapest that meets the budget, when it costs no more than
            # the best step (a long jump that finishes at once may cost far more than a few
            # good steps would).
            g, j, after, _ = last if last is not None and last[3] <= best[4] else best[1:]
            ms = float(after)
            lost += g.lost[j] - g.lost[at[g.root]]
            at[g.root], width[g.root] = j, g.candidates[j]
        plan.widths.append(dict(width))
        plan.predicted_ms.append(ms)
        plan.lost.append(lost)
    return plan

