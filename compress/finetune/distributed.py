"""Multi-process runs: data-parallel fine-tuning under ``torchrun`` or ``accelerate launch``.

A plain ``compress apply`` is one process and gets :class:`Processes`, whose hooks all call
straight through: Accelerate is not even imported. Launched with ``WORLD_SIZE`` > 1
(``torchrun --nproc_per_node 2 -m compress apply r.yaml``, ``accelerate launch -m compress
apply r.yaml``), :func:`processes` returns :class:`AcceleratedProcesses` and:

- every rank builds the same model and data from the same seed and prunes it itself (same
  importance, same groups); before each fine-tune and after each step the ranks compare a
  digest of the architecture and fail loudly (:class:`CheckFailed`) when it differs;
- fine-tuning runs through Accelerate's ``prepare``: the model in DistributedDataParallel
  (gradients averaged during backward, rank 0's weights broadcast at the start), the training
  batches sharded (rank r gets batches r, r + N, ... of the same seeded order, so an epoch is
  still one pass over the data; each optimizer step sees N batches);
- control decisions are made once: a non-finite loss on any rank is one on every rank, and
  patience evaluations run on rank 0 and are broadcast; after a fine-tune rank 0's weights and
  buffers (BatchNorm statistics) are broadcast, so the next pruning step starts equal;
- only rank 0 writes: run folder, status, checkpoints, export, latency, report
  (:meth:`Processes.on_main`, which re-raises rank 0's error on every rank).

Precision and compilation stay ``finetune.amp`` and ``finetune.compile``: Accelerate's own
mixed precision and dynamo are turned off, so a launcher's ``--mixed_precision`` or
``--dynamo_backend`` cannot patch the model. Each rank uses its own GPU (``LOCAL_RANK``) whatever
``device`` names; on the CPU the backend is gloo. Resuming needs the run folder on a file system
every rank sees.

Example:
    >>> dist = processes(torch.device("cpu"))  # WORLD_SIZE unset: one process
    >>> dist.world_size, dist.is_main, dist.on_main(lambda: 42)
    (1, True, 42)
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from compress.errors import CheckFailed, CompressError
from compress.finetune.patience import ValidateFn

__all__ = ["Processes", "AcceleratedProcesses", "processes", "architecture_digest",
           "leave_processes"]

T = TypeVar("T")


def architecture_digest(model: nn.Module) -> str:
    """sha256 of every parameter's and buffer's name, shape and dtype (not the values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()


class Processes:
    """One process (the default): every hook is a no-op or calls straight through."""

    world_size = 1
    rank = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """The device this process trains on."""
        return requested

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; its result (or its error) on every rank."""
        return fn()

    def check_same(self, what: str, value: str) -> None:
        """Raise :class:`CheckFailed` on every rank unless all ranks hold the same ``value``."""

    def prepare(self, model: nn.Module, loader: DataLoader) -> tuple[nn.Module, DataLoader]:
        """The module to train through and the loader to train on."""
        return model, loader

    def agree_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss``, made non-finite on every rank when it is on any."""
        return loss

    def agreed(self, validate: ValidateFn) -> ValidateFn:
        """``validate`` made to return rank 0's result on every rank."""
        return validate

    def sync_(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``model``; drop wrappers."""

    def describe(self) -> dict[str, Any] | None:
        """For the report: None for one process."""
        return None


class AcceleratedProcesses(Processes):
    """Several processes joined by Hugging Face Accelerate (see the module doc)."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.world_size = accelerator.num_processes
        self.rank = accelerator.process_index

    def device(self, requested: torch.device) -> torch.device:
        return self.accelerator.device if requested.type == "cuda" else requested

    def on_main(self, fn: Callable[[], T]) -> T:
        outcome: tuple[str, Any] | None = None
        error: Exception | None = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
                error = err
                # The others get the same CompressError (so the same exit code), or a summary.
                sent = err if isinstance(err, CompressError) else \
                    RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")
                outcome = ("error", sent)
        box = [outcome]
        torch.distributed.broadcast_object_list(box, src=0)
        kind, value = box[0]  # type: ignore[misc]
        if error is not None:
            raise error
        if kind == "error":
            raise value
        return value  # type: ignore[no-any-return]

    def check_same(self, what: str, value: str) -> None:
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:
            raise CheckFailed(f"the {what} differs between processes (rank 0 {values[0][:12]}, "
                              f"rank {odd[0]} {values[odd[0]][:12]}): every rank must prune "
                              f"identically (same recipe, seed, data and deterministic "
                              f"importance); rerun in one process to compare")

    def prepare(self, model: nn.Module, loader: DataLoader) -> tuple[nn.Module, DataLoader]:
        # Before DDP, whose own check would only say that shapes differ somewhere.
        self.check_same("pruned architecture", architecture_digest(model))
        # The optimizer is not prepared: with Accelerate's mixed precision and gradient
        # accumulation off its wrapper only forwards calls; DDP averages the gradients.
        net, sharded = self.accelerator.prepare(model, loader)
        return net, sharded

    def agree_loss(self, loss: torch.Tensor) -> torch.Tensor:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        torch.distributed.all_reduce(bad)
        return torch.where(bad[0] > 0, torch.full_like(loss, float("nan")), loss)

    def agreed(self, validate: ValidateFn) -> ValidateFn:
        def on_rank0(model: nn.Module) -> dict[str, float]:
            box = [dict(validate(model)) if self.is_main else None]
            torch.distributed.broadcast_object_list(box, src=0)
            return box[0]  # type: ignore[return-value]
        return on_rank0

    def sync_(self, model: nn.Module) -> None:
        with torch.no_grad():
            for t in itertools.chain(model.parameters(), model.buffers()):
                torch.distributed.broadcast(t.data, src=0)
        self.accelerator.free_memory()  # drops the DDP wrapper and sharded loader it keeps

    def describe(self) -> dict[str, Any] | None:
        return {"world_size": self.world_size, "backend": torch.distributed.get_backend(),
                "distributed_type": str(self.accelerator.distributed_type)}


_ACTIVE: AcceleratedProcesses | None = None  # one process group per process, made once


def leave_processes() -> bool:
    """Leave the process group this process joined, if any; True when there was one.

    Left to interpreter teardown, the backend's threads can still be joinable when C++
    destroys them and std::terminate aborts the rank after a finished run (SIGABRT, seen
    under load), so the CLI calls this and then ends the process without the C++ teardown.
    No barrier: a rank that failed alone must not keep the others waiting.

    Example:
        >>> leave_processes()  # one process: nothing joined
        False
    """
    if _ACTIVE is None:
        return False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return True


def _leave_process_group() -> None:
    leave_processes()  # for API callers under a launcher, whose process ends normally


def processes(device: torch.device) -> Processes:
    """The processes of this run: :class:`Processes` unless launched with ``WORLD_SIZE`` > 1.

    The first call under a launcher joins the process group (gloo on the CPU, NCCL on CUDA).
    """
    global _ACTIVE
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Processes()
    if _ACTIVE is None:
        from accelerate import Accelerator

        # finetune.amp and finetune.compile decide precision and compilation, not the
        # launcher's --mixed_precision / --dynamo_backend (they would patch the model itself).
        _ACTIVE = AcceleratedProcesses(Accelerator(cpu=device.type == "cpu",
                                                   mixed_precision="no", dynamo_backend="no"))
        atexit.register(_leave_process_group)
    return _ACTIVE
