"""Structured pruning through torch-pruning's dependency graph, with a proof for every step.

This is the only module that imports ``torch_pruning``. A pruning step:

1. asks torch-pruning's pruner for the groups it wants to remove (nothing is removed yet);
2. zeroes every group (producer rows, norm scales and shifts, consumer columns) and runs a fixed
   probe batch: the reference output;
3. removes the groups one at a time, running the probe after each removal; the output must stay
   equal to the reference. The first group that breaks it is named in :class:`CheckFailed`.

Zeroed entries all belong to channels that are removed, so zeroing in place costs no copy of the
model. A dependency graph that wires channels wrongly (e.g. an unknown op treated as
element-wise) makes the removed model compute something else, and the check catches it.

Example:
    >>> import torch
    >>> from compress.models.cifar_resnet import cifar_resnet
    >>> from compress.recipe import PruningSpec
    >>> model = cifar_resnet("resnet20").eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> pruner = StructuredPruner(model, x[:1], PruningSpec(ratio=0.5))
    >>> record = pruner.step_(0.5, probe=x)
    >>> record.max_abs_diff < 1e-4
    True
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.evaluate import task_loss
from compress.pruners import PRUNING_KINDS, StepRecord, prove_removals_
from compress.recipe import PruningSpec
from compress.registry import Registry

__all__ = [
    "IMPORTANCE",
    "Criterion",
    "StepRecord",
    "StructuredPruner",
    "build_structured",
    "count_macs_params",
    "resolve_ignored",
    "default_round_to",
    "gradient_free",
    "solve_ratio_for_macs",
    "solve_ratios_for_macs",
    "list_groups",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Criterion:
    """An importance criterion: a factory of torch-pruning importance objects."""

    factory: Callable[[], Any]
    needs_grad: bool = False
    per_sample: bool = False  # needs squared per-sample gradients (Hessian diagonal estimate)
    description: str = ""


IMPORTANCE: Registry[Criterion] = Registry("importance criterion")
IMPORTANCE.register("l1")(Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=1),
                                    description="L1 norm of the group's weights"))
IMPORTANCE.register("l2")(Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=2),
                                    description="L2 norm of the group's weights"))
IMPORTANCE.register("taylor")(Criterion(lambda: tp.importance.GroupTaylorImportance(),
                                        needs_grad=True,
                                        description="first-order Taylor |w * dL/dw|"))
IMPORTANCE.register("hessian")(Criterion(lambda: tp.importance.GroupHessianImportance(),
                                         needs_grad=True, per_sample=True,
                                         description="optimal brain damage: diagonal Hessian "
                                                     "from squared per-sample gradients"))
IMPORTANCE.register("lamp")(Criterion(lambda: tp.importance.LAMPImportance(p=2),
                                      description="layer-adaptive magnitude (LAMP)"))
IMPORTANCE.register("fpgm")(Criterion(lambda: tp.importance.FPGMImportance(p=2),
                                      description="geometric median (FPGM)"))
IMPORTANCE.register("random")(Criterion(lambda: tp.importance.RandomImportance(),
                                        description="random baseline"))


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs for ``example_inputs`` (use batch 1) and the parameter count.

    A model with its own ``count_macs`` (transformers: attention matmuls included) counts
    itself; the rest goes through torch-pruning's counter.
    """
    if hasattr(model, "count_macs"):
        return int(model.count_macs(example_inputs)), sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs), int(params)


def default_round_to(model: nn.Module) -> int | None:
    """8 for models with convolutions (SIMD conv kernels work in blocks of 8), else None."""
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return 8 if has_conv else None


def resolve_ignored(model: nn.Module, patterns: Sequence[str]) -> dict[str, list[str]]:
    """Map each ``ignored`` pattern to the module names it matches; no match is an error.

    A pattern is an exact module name, or ``re:`` followed by a regular expression that must
    match the whole name.
    """
    names = [n for n, _ in model.named_modules() if n]
    matched: dict[str, list[str]] = {}
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as err:
                raise InputError(f"pruning.ignored: {pattern!r} is not a valid regular "
                                 f"expression ({err})") from None
            hits = [n for n in names if rx.fullmatch(n)]
        else:
            hits = [n for n in names if n == pattern]
        if not hits:
            sample = ", ".join(names[:6])
            raise InputError(f"pruning.ignored: {pattern!r} matches no module; module names "
                             f"look like: {sample}, ...")
        matched[pattern] = hits
    return matched


def _output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of the layers whose outputs are the model's outputs (never pruned)."""
    with torch.no_grad():
        out = model(example_inputs)
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() > 0 else None
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == width:
            last = name
        elif isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == width:
            last = name
    return [last] if last is not None else []


class _ChannelProtocolPruner(tp.pruner.function.BasePruningFunc):
    """Lets torch-pruning prune any module that implements compress's channel protocol.

    The protocol (see ``compress.models.cifar_resnet.ChannelMapShortcut``): ``in_channels``,
    ``out_channels``, ``prune_in_channels_``, ``prune_out_channels_``, ``zero_out_channels_``.
    In and out channels are independent (no intra-layer dependency).
    """

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.prune_out_channels_(idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.prune_in_channels_(idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


def _protocol_types(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    needed = ("prune_in_channels_", "prune_out_channels_", "zero_out_channels_")
    types = {type(m) for m in model.modules() if all(hasattr(m, a) for a in needed)}
    return {t: _ChannelProtocolPruner() for t in types}


def _zero_dep_(dep: Any, idxs: list[int], is_out: bool) -> None:
    """Zero what ``dep`` will remove, so the zeroed model computes what the pruned one will."""
    m = dep.target.module
    if isinstance(m, nn.Parameter):
        with torch.no_grad():
            m.index_fill_(dep.target.pruning_dim, torch.as_tensor(idxs, device=m.device), 0.0)
        return
    if not isinstance(m, nn.Module):
        return  # a functional op node: no weights of its own
    idx = torch.as_tensor(idxs, dtype=torch.long)
    with torch.no_grad():
        if hasattr(m, "zero_out_channels_"):
            if is_out:
                m.zero_out_channels_(idxs)
        elif isinstance(m, nn.modules.conv._ConvNd):
            out_dim, in_dim = (1, 0) if m.transposed else (0, 1)
            if is_out:
                if m.groups > 1 and m.transposed:
                    return _unprovable(dep)
                m.weight.index_fill_(out_dim, idx.to(m.weight.device), 0.0)
                if m.bias is not None:
                    m.bias.index_fill_(0, idx.to(m.bias.device), 0.0)
            elif m.groups == 1:
                m.weight.index_fill_(in_dim, idx.to(m.weight.device), 0.0)
            # grouped/depthwise inputs: the producer channel is already zero
        elif isinstance(m, nn.Linear):
            dim = 0 if is_out else 1
            m.weight.index_fill_(dim, idx.to(m.weight.device), 0.0)
            if is_out and m.bias is not None:
                m.bias.index_fill_(0, idx.to(m.bias.device), 0.0)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                            nn.modules.instancenorm._InstanceNorm)):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.index_fill_(-1 if isinstance(m, nn.LayerNorm) else 0,
                                  idx.to(p.device), 0.0)
        elif isinstance(m, nn.Embedding):
            m.weight.index_fill_(1, idx.to(m.weight.device), 0.0)
        elif isinstance(m, nn.PReLU) or not any(True for _ in m.parameters(recurse=False)):
            return  # prelu(0) == 0; parameter-free modules pass zeros through
        else:
            _unprovable(dep)


def _unprovable(dep: Any) -> None:
    raise CheckFailed(f"cannot prove the pruning of {type(dep.target.module).__name__} "
                      f"({dep.target.name}): compress does not know how to zero its channels; "
                      f"add the layer to pruning.ignored")


def _group_name(group: Any, dg: Any) -> str:
    dep = group[0].dep
    return dg._module2name.get(dep.target.module, str(dep.target.name))


@PRUNING_KINDS.register("structured")
def build_structured(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec, *,
                     cumulative_ratios: Sequence[float] | None = None) -> Any:
    """Heads and FFN neurons for transformers models, torch-pruning's graph for the rest."""
    from compress.transformer_pruning import TransformerPruner, is_transformer

    if is_transformer(model):
        return TransformerPruner(model, example_inputs, spec, cumulative_ratios=cumulative_ratios)
    if spec.heads is not None or spec.ffn is not None or spec.hidden is not None:
        raise InputError("pruning.heads, pruning.ffn and pruning.hidden apply to transformers "
                         "models only; remove them")
    return StructuredPruner(model, example_inputs, spec, cumulative_ratios=cumulative_ratios)


class StructuredPruner:
    """Drives one torch-pruning pruner over a run's steps; each :meth:`step_` is proven exact.

    ``cumulative_ratios`` are channel ratios of the ORIGINAL model after each step.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec, *,
                 cumulative_ratios: Sequence[float] | None = None) -> None:
        self.model = model
        self.spec = spec
        self.example_inputs = example_inputs
        ratios = list(cumulative_ratios) if cumulative_ratios else [spec.ratio or 0.5]
        assert all(0 <= r < 1 for r in ratios), ratios
        self.criterion = IMPORTANCE.get(spec.importance)
        was_training = model.training
        model.eval()
        ignored_names = sorted({n for hits in resolve_ignored(model, spec.ignored).values()
                                for n in hits} | set(_output_layers(model, example_inputs)))
        self.ignored_names = ignored_names
        modules = dict(model.named_modules())
        self.round_to = default_round_to(model) if spec.round_to == "auto" else spec.round_to
        global_scope = spec.scope == "global"
        self._pruner = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=self.criterion.factory(),
            pruning_ratio=ratios[-1],
            iterative_steps=len(ratios),
            iterative_pruning_ratio_scheduler=lambda _r, _n: [0.0, *ratios],
            global_pruning=global_scope,
            max_pruning_ratio=spec.max_layer_ratio if global_scope else 1.0,
            ignored_layers=[modules[n] for n in ignored_names],
            round_to=self.round_to,
            customized_pruners=_protocol_types(model),
        )
        self._ratios = ratios
        self.history: list[list[list[Any]]] = []  # per step: [root name, is_out, indices]
        model.train(was_training)

    @property
    def steps_done(self) -> int:
        return self._pruner.current_step

    def widths(self) -> dict[str, int]:
        """Output width of every prunable layer (conv/linear), by module name."""
        out = {}
        for name, m in self.model.named_modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                out[name] = m.out_channels
            elif isinstance(m, nn.Linear):
                out[name] = m.out_features
        return out

    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device) -> None:
        """Fill ``.grad`` for gradient-based criteria from a few training batches."""
        was_training = self.model.training
        self.model.eval()  # frozen BN statistics: gradients of the model being pruned
        self.model.zero_grad(set_to_none=True)
        n = 0
        squares: dict[nn.Parameter, torch.Tensor] = {}
        for x, y in batches:
            if self.criterion.per_sample:
                n += self._accumulate_squares(x.to(device), y.to(device), squares)
                continue
            loss = task_loss(self.model(x.to(device)), y.to(device))
            loss.backward()
            n += 1
        if self.criterion.per_sample and n:
            # torch-pruning's own accumulate_grad keys by parameter but tests by name, so it
            # keeps only the last sample; fill its accumulators directly instead.
            imp = self._pruner.importance
            imp.zero_grad()
            imp._accu_grad = squares
            imp._counter = {p: n for p in squares}
        if n == 0:
            raise InputError(f"importance {self.spec.importance!r} needs training batches; "
                             f"configure data with a training split")
        self.model.train(was_training)

    def _accumulate_squares(self, x: torch.Tensor, y: torch.Tensor,
                            squares: dict[nn.Parameter, torch.Tensor]) -> int:
        losses = task_loss(self.model(x), y, reduction="none")
        for i, loss in enumerate(losses):
            self.model.zero_grad(set_to_none=True)
            loss.backward(retain_graph=i < len(losses) - 1)
            for p in self.model.parameters():
                if p.grad is not None:
                    g2 = p.grad.detach().pow(2)
                    squares[p] = squares[p] + g2 if p in squares else g2
        return len(losses)

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        """Prune to the next scheduled ratio in place and prove the result on ``probe``."""
        assert self.steps_done < len(self._ratios), "more steps than scheduled"
        assert abs(self._ratios[self.steps_done] - target_ratio) < 1e-12
        was_training = self.model.training
        self.model.eval()
        dg = self._pruner.DG
        with torch.no_grad():
            groups = list(self._pruner.step(interactive=True))
            removed = 0
            for group in groups:
                for dep, idxs in group:
                    _zero_dep_(dep, tp._helpers.to_plain_idxs(idxs),
                               dg.is_out_channel_pruning_fn(dep.handler))
                removed += len(group[0].idxs)
            history: list[list[Any]] = []

            def removal(group: Any) -> tuple[str, Callable[[], None]]:
                name = _group_name(group, dg)

                def remove() -> None:
                    history.append([name, bool(dg.is_out_channel_pruning_fn(group[0].dep.handler)),
                                    [int(i) for i in tp._helpers.to_plain_idxs(group[0].idxs)]])
                    group.prune()
                return name, remove

            max_diff = prove_removals_(self.model, probe, [removal(g) for g in groups],
                                       verify=self.spec.verify, atol=self.spec.verify_atol)
        self.history.append(history)
        self.model.train(was_training)
        self.model.zero_grad(set_to_none=True)
        log.info("step %d: removed %d channels in %d groups, max |zeroed - removed| = %.2e",
                 self.steps_done, removed, len(groups), max_diff)
        return StepRecord(target_ratio, len(groups), removed, "channels", max_diff,
                          self.widths())

    def finalize_(self) -> None:
        """Nothing to do: removed channels are gone physically."""

    def get_state(self) -> dict[str, Any]:
        """JSON-safe state from which :meth:`restore_` rebuilds this pruner after a crash."""
        return {"kind": "structured", "steps_done": self.steps_done, "history": self.history,
                "scope_initial": dict(self._pruner._scope_initial_channels)}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """None: :meth:`get_state` holds everything (the removed channels' indices)."""
        return {}

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Replay the recorded steps on the freshly built (unpruned) model.

        The model's architecture then matches the checkpoint of the last finished step, and the
        pruner continues with the same schedule state as the interrupted run.
        """
        assert self.steps_done == 0 and state["kind"] == "structured"
        dg = self._pruner.DG
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for step in state["history"]:
                for name, is_out, idxs in step:
                    module = modules[name]
                    fn_owner = dg.get_pruner_of_module(module)
                    fn = fn_owner.prune_out_channels if is_out else fn_owner.prune_in_channels
                    dg.get_pruning_group(module, fn, idxs).prune(record_history=False)
        self._pruner.current_step = state["steps_done"]
        self._pruner._scope_initial_channels.update(state["scope_initial"])
        self.history = [list(h) for h in state["history"]]


def gradient_free(spec: PruningSpec, what: str) -> PruningSpec:
    """``spec`` for pruning copies that have no gradients: the widths, not the choice, matter.

    With local scope every layer loses the same share whatever the criterion, so a gradient
    criterion (taylor, hessian) is replaced by l2, which gives exactly the same widths. With
    global scope the criterion decides the widths: :class:`InputError` naming ``what``.

    Example:
        >>> gradient_free(PruningSpec(ratio=0.5, importance="taylor"), "x").importance
        'l2'
    """
    if not IMPORTANCE.get(spec.importance).needs_grad:
        return spec
    if spec.scope != "local":
        raise InputError(f"{what} with importance {spec.importance!r} needs scope: local (the "
                         f"pruned copies have no gradients); with scope: global give a ratio "
                         f"and use compress apply")
    return spec.model_copy(update={"importance": "l2"})


def solve_ratio_for_macs(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec,
                         macs_reduction: float, *, tolerance: float = 0.0,
                         iterations: int = 7, precision: float = 0.002,
                         cache: dict[float, float] | None = None) -> tuple[float, float]:
    """Find the channel ratio whose pruning removes ``macs_reduction`` of the MACs.

    Prunes throw-away copies (no proof needed: nothing is kept). With ``round_to`` the
    reduction is a step function of the ratio; the closest achievable ratio is returned as
    ``(ratio, achieved_reduction)``. When the target itself is out of reach, the largest
    reduction is accepted if it falls short by at most ``tolerance``. The bisection stops early
    once a trial lands within ``precision`` of the target. ``cache`` (ratio -> reduction) may be
    shared between searches on the same model and spec: the steps of a schedule then start
    from what earlier searches measured.
    """
    base_macs, _ = count_macs_params(model, example_inputs)
    cache = {} if cache is None else cache
    trial_spec = gradient_free(spec.model_copy(update={"verify": False}),
                               "pruning.target.macs (its search prunes copies)")

    def reduction(r: float) -> float:
        if r not in cache:
            trial = copy.deepcopy(model).eval()
            pruner = build_structured(trial, example_inputs, trial_spec, cumulative_ratios=[r])
            pruner.step_(r, example_inputs)
            cache[r] = 1.0 - count_macs_params(trial, example_inputs)[0] / base_macs
        return cache[r]

    # Coarse scan first: with round_to, very high ratios can round a layer to zero width, which
    # torch-pruning refuses, so the reduction is not monotone near 1. Bracket from below.
    # (Each trial rebuilds the dependency graph, ~1-2 s for a ResNet-56: keep trials few.)
    cache[0.0] = 0.0
    above = [r for r in cache if cache[r] >= macs_reduction]
    hi = min(above) if above else None
    lo = max((r for r in cache if cache[r] < macs_reduction and (hi is None or r < hi)),
             default=0.0)
    if hi is None:
        for r in (0.2, 0.4, 0.6, 0.8):
            if r <= lo:
                continue
            if reduction(r) >= macs_reduction:
                hi = r
                break
            lo = r
    if hi is None:
        best = max(cache, key=cache.__getitem__)
        if macs_reduction - cache[best] > tolerance:
            raise InputError(f"pruning.target.macs={macs_reduction} cannot be reached: at most "
                             f"{cache[best]:.1%} of the MACs can be removed with these "
                             f"settings; lower the target, lower round_to, use scope: global "
                             f"or ignore fewer layers")
        hi = best  # within tolerance: refine between the best ratio and the one below it
        lo = max((r for r in cache if r < best), default=0.0)
    for _ in range(iterations):
        if min(abs(cache[hi] - macs_reduction), abs(cache[lo] - macs_reduction)) <= precision:
            break
        mid = (lo + hi) / 2
        if reduction(mid) < macs_reduction:
            lo = mid
        else:
            hi = mid
    # Closest reachable reduction, but never more than `tolerance` short of the target.
    allowed = [r for r in cache if r > 0 and cache[r] >= macs_reduction - tolerance]
    assert allowed, cache
    best = min(allowed, key=lambda r: abs(cache[r] - macs_reduction))
    log.info("ratio %.4f removes %.2f%% of MACs (target %.2f%%)", best, 100 * cache[best],
             100 * macs_reduction)
    return best, cache[best]


def solve_ratios_for_macs(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec,
                          targets: Sequence[float]) -> list[float]:
    """The channel ratio of each cumulative MACs target of a schedule, sharing one cache."""
    assert spec.target is not None
    cache: dict[float, float] = {}
    return [solve_ratio_for_macs(model, example_inputs, spec, t, tolerance=spec.target.tolerance,
                                 cache=cache)[0] for t in targets]


def list_groups(model: nn.Module, example_inputs: torch.Tensor,
                spec: PruningSpec) -> list[dict[str, Any]]:
    """The prunable channel groups: root layer, channel count and coupled layers.

    Nothing is pruned; the model is only traced.
    """
    from compress.transformer_pruning import is_transformer, list_transformer_groups

    if is_transformer(model):
        return list_transformer_groups(model)
    probe_spec = spec.model_copy(update={"ratio": 0.5, "target": None, "verify": False})
    pruner = StructuredPruner(model, example_inputs, probe_spec, cumulative_ratios=[0.5])
    dg = pruner._pruner.DG
    out = []
    for group in dg.get_all_groups(ignored_layers=pruner._pruner.ignored_layers,
                                   root_module_types=pruner._pruner.root_module_types):
        members = []
        for dep, _ in group:
            name = dg._module2name.get(dep.target.module)
            if name is not None:
                side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                members.append(f"{name} ({side})")
        out.append({"root": _group_name(group, dg), "channels": len(group[0].idxs),
                    "members": sorted(set(members))})
    return out
