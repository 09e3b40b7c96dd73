"""What torch-pruning raises on a pattern it cannot map, turned into one sentence naming the layer.

torch-pruning traces the model into a dependency graph and maps channel indices through every
op. Some patterns break that mapping with a bare Python error: a channel shuffle's reshape
(``ZeroDivisionError`` while the graph is built), ``torch.cat`` of ``chunk``/``split`` outputs
mixed with their product (``TypeError``/``IndexError`` when a group's importance is computed).
A user sees a traceback from a library they never called. Here:

* an error while the graph is built is an :class:`InputError` naming the layer at the failing
  op (:func:`graph_errors`): nothing can be pruned, the sentence says so;
* an error while the groups of a step are chosen is handled: the group's root layer is
  protected (left unpruned, as if in ``pruning.ignored``), the choice is redone without it,
  and the protection is logged and reported with its reason (:func:`choose_groups`). The
  removed channels still go through the proof like any other.

The layer is found in the failing frames' locals (``group``, ``dep``, ``node``, ``layer``): an op
node without a module of its own (a reshape, a cat) is named by the nearest named layer before it.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> try:
    ...     with graph_errors(net, "while building the dependency graph"):
    ...         layer = net[0]; 1 // 0
    ... except InputError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    structured pruning cannot map the channels around '0' (ZeroDivisionError while building ...
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from compress.errors import CompressError, InputError
from compress.pruning.proof import first_line

__all__ = ["graph_errors", "choose_groups", "failing_layer", "graph_state"]

log = logging.getLogger(__name__)

_LOCALS = ("group", "dep", "node", "layer", "module")
MAX_PROTECTED = 32  # choices redone per step before giving up


def graph_state(pruner: Any) -> list[Any]:
    """The objects of torch-pruning's ``pruner`` that removing a group changes besides the model
    (the graph's parameter maps, its nodes, the offsets of its cat/split ops): what a proof's
    bisection restores with the model to redo removals."""
    dg = pruner.DG
    nodes = list(dg.module2node.values())
    ops = [n.module for n in nodes if isinstance(n.module, nn.Module)
           and n.module not in dg._module2name]
    return [pruner, dg, *nodes, *ops]


def _name_of(obj: Any, names: dict[Any, str], depth: int = 0) -> str | None:
    """The model name of a module, tp node, dependency or group (None when none is found)."""
    if depth > 64 or obj is None:
        return None
    if isinstance(obj, nn.Module) or isinstance(obj, nn.Parameter):
        return names.get(obj)
    if hasattr(obj, "_group") and obj._group:  # a tp Group: its root
        return _name_of(obj._group[0].dep, names, depth + 1)
    if hasattr(obj, "target") and hasattr(obj, "handler"):  # a tp Dependency
        return _name_of(obj.target, names, depth + 1)
    if hasattr(obj, "inputs") and hasattr(obj, "module"):  # a tp Node
        own = names.get(obj.module) if isinstance(obj.module, (nn.Module, nn.Parameter)) else None
        if own is not None:
            return own
        op = getattr(getattr(obj, "type", None), "name", "op").lower()
        for before in obj.inputs:  # an op of no module: the nearest named layer upstream
            found = _name_of(before, names, depth + 1)
            if found is not None:
                return found if found.startswith("the ") else f"the {op} after {found!r}"
    return None


def failing_layer(err: BaseException, model: nn.Module) -> str | None:
    """``'name'`` (or ``the reshape after 'name'``) of the layer where ``err`` was raised."""
    names: dict[Any, str] = {m: n for n, m in model.named_modules()}
    names.update({p: n for n, p in model.named_parameters()})
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first: the op being mapped when it failed
        for key in _LOCALS:
            found = _name_of(frame.f_locals.get(key), names)
            if found is not None:
                return found if found.startswith("the ") else repr(found)
    return None


def _sentence(err: BaseException, where: str | None, stage: str) -> str:
    detail = first_line(err)
    return (f"structured pruning cannot map the channels around {where or 'a layer'} "
            f"({type(err).__name__} {stage}: {detail}); torch-pruning's dependency graph does "
            f"not support this pattern (channel shuffle, a cat of split/chunk outputs with "
            f"their products): change the model or use pruning kind unstructured or n:m")


@contextmanager
def graph_errors(model: nn.Module, stage: str) -> Iterator[None]:
    """Inside, an error raised by torch-pruning becomes an :class:`InputError` naming the layer."""
    try:
        yield
    except CompressError:
        raise
    except Exception as err:
        where = failing_layer(err, model)
        refusal = InputError(_sentence(err, where, stage))
        # What the pruning of closed blocks (compress.pruning.local) says when it takes over.
        refusal.untraceable = (f"torch-pruning's dependency graph cannot map the channels "
                               f"around {where or 'a layer'} ({type(err).__name__}: "
                               f"{first_line(err)})")
        raise refusal from None


def choose_groups(pruner: Any, model: nn.Module, protected: dict[str, str]) -> list[Any]:
    """The groups torch-pruning's ``pruner`` chooses for its next step, protecting the root
    layer of any group whose choice fails (recorded in ``protected``: name -> why)."""
    modules = dict(model.named_modules())
    for _ in range(MAX_PROTECTED):
        step = pruner.current_step
        try:
            return list(pruner.step(interactive=True))
        except CompressError:
            raise
        except Exception as err:
            pruner.current_step = step  # the step did not happen
            where = failing_layer(err, model)
            name = where.strip("'") if where and not where.startswith("the ") else None
            if name not in modules or modules[name] in pruner.ignored_layers:
                raise InputError(_sentence(err, where, "while choosing channels to prune")) \
                    from None
            reason = (f"torch-pruning cannot map its channels ({type(err).__name__}: "
                      f"{first_line(err)})")
            log.warning("left %r unpruned: %s", name, reason)
            protected[name] = reason
            pruner.ignored_layers.append(modules[name])
    raise InputError(f"structured pruning cannot map the channels of {len(protected)} layers "
                     f"({', '.join(sorted(protected)[:5])}, ...); change the model or use "
                     f"pruning kind unstructured or n:m")
