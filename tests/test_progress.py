"""compress.progress: the library reports progress to a listener and never draws it."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import compress
from compress.errors import CheckFailed
from compress.finetune.finetune import finetune_
from compress.progress import ProgressEvent, progress_to, report_progress
from compress.recipe.stages import FinetuneSpec
from tests.conftest import tiny_cnn

CPU = torch.device("cpu")


def loader(n: int = 96, batch: int = 8, nan: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    if nan:
        x[:] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def test_no_listener_means_nothing_happens_and_listeners_nest() -> None:
    outer: list[ProgressEvent] = []
    inner: list[ProgressEvent] = []
    report_progress("t", 1, 2)  # nobody listening: no error, no output
    with progress_to(outer.append):
        report_progress("a", 1, 2)
        with progress_to(inner.append):
            report_progress("b", 2, 2, done=True)
        with progress_to(None):  # silenced inside
            report_progress("c", 1, 1)
        report_progress("d", 2, 2)
    assert [e.task for e in outer] == ["a", "d"] and [e.task for e in inner] == ["b"]
    assert inner[0].done and inner[0].fraction == 1.0


def test_a_listener_is_per_thread() -> None:
    seen: list[ProgressEvent] = []
    with progress_to(seen.append):
        worker = threading.Thread(target=report_progress, args=("other thread", 1, 1))
        worker.start()
        worker.join()
    assert seen == []


def test_finetune_reports_every_step_block_and_ends_done() -> None:
    events: list[ProgressEvent] = []
    with progress_to(events.append):
        stats = finetune_(tiny_cnn(), loader(), FinetuneSpec(epochs=4), CPU,
                          description="step 1/1 fine-tune")
    total = stats.steps  # 96 / 8 * 4 = 48 optimizer steps
    assert total == 48
    assert {e.task for e in events} == {"step 1/1 fine-tune"}
    assert (events[0].completed, events[0].total) == (0, total)
    assert [e.completed for e in events[1:-1]] == list(range(1, 49))  # every step
    with_loss = [e.completed for e in events[1:-1] if e.message]
    assert with_loss == [20, 40, 48]  # the loss every 20 steps and at the last
    assert all(e.message.startswith("loss ") for e in events[1:-1] if e.message)
    assert events[-1].done and events[-1].completed == total
    assert sum(e.done for e in events) == 1


def test_finetune_ends_its_progress_when_it_fails() -> None:
    events: list[ProgressEvent] = []
    with progress_to(events.append), pytest.raises(CheckFailed):
        finetune_(tiny_cnn(), loader(nan=True), FinetuneSpec(epochs=1), CPU)
    assert events[-1].done


def test_prune_api_passes_progress_to_the_callback() -> None:
    events: list[ProgressEvent] = []
    model = tiny_cnn()
    compress.prune(model, torch.randn(1, 3, 8, 8), ratio=0.5, train_loader=loader(),
                   finetune={"epochs": 1}, progress=events.append)
    tasks = list(dict.fromkeys(e.task for e in events))  # every phase of the step, in order
    assert tasks == ["step 1/1 prune", "step 1/1 fine-tune", "step 1/1 evaluation"]
    for task in tasks:  # each starts at 0 and ends once, done
        mine = [e for e in events if e.task == task]
        assert mine[0].completed == 0 and mine[-1].done and sum(e.done for e in mine) == 1
