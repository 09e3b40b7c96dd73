"""compress.finetune.checkpoint: a fine-tune killed or stopped at a snapshot and continued from it
ends
bitwise equal to one never interrupted (fixed budget, patience, after a divergence, mid-pass)."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compress.finetune.checkpoint as checkpoint
from compress.finetune.checkpoint import FinetuneCheckpoint, latest_snapshot, latest_snapshot_dir
from compress.finetune.finetune import finetune_
from compress.finetune.stats import FinetuneStats
from compress.measure.evaluate import evaluate
from compress.recipe.stages import FinetuneSpec
from compress.signals import stop_on_signals
from tests.conftest import Killed, tiny_cnn
from tests.finetune.test_finetune import Faulty, same_state, state

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("single_thread")


def shuffled_loader(n: int = 48, batch: int = 8) -> DataLoader:
    """Random 3x8x8 images, 4 classes, reshuffled each pass by its own generator."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch.Generator().manual_seed(2))


def dropout_cnn() -> nn.Module:
    """tiny_cnn plus dropout, so the global random state matters too."""
    return nn.Sequential(tiny_cnn(), nn.Dropout(0.3))


def run(make_model: Callable[[], nn.Module], spec: FinetuneSpec, folder: Path | None, *,
        kill_after: int | None = None, resume: bool = False, every: int = 1,
        **kw: Any) -> tuple[nn.Module, FinetuneStats | None]:
    """One fine-tune from the same start (seeds, loader, weights): uninterrupted without
    ``folder``, killed after the ``kill_after``-th snapshot, or continued from the latest."""
    torch.manual_seed(0)
    model, loader = make_model(), shuffled_loader()
    ckpt = None
    if folder is not None:
        snapshot = latest_snapshot(folder) if resume else None
        if snapshot is not None:
            model.load_state_dict(snapshot.model)
        ckpt = FinetuneCheckpoint(folder, every=every, resume=snapshot)
    written = []

    def write(*args: Any) -> Path:
        written.append(real_write(*args))
        if len(written) == kill_after:
            raise Killed
        return written[-1]

    real_write = checkpoint.write_snapshot
    checkpoint.write_snapshot = write
    try:
        stats = finetune_(model, loader, spec, CPU, checkpoint=ckpt, **kw)
    except Killed:
        return model, None
    finally:
        checkpoint.write_snapshot = real_write
    return model, stats


def comparable(stats: FinetuneStats) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(stats).items() if k != "seconds"}


def val_fn() -> Callable[[nn.Module], dict[str, float]]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return lambda m: evaluate(m, loader, CPU)


CASES = {
    "fixed budget": (dropout_cnn, dict(epochs=4, lr_schedule="cosine", momentum=0.9), {}),
    "adamw": (dropout_cnn, dict(epochs=4, optimizer="adamw", lr=0.01), {}),
    # stops early after 28 steps and restores evaluation 3's weights
    "patience": (dropout_cnn, dict(patience=4, max_epochs=6, eval_every=4, lr=0.2), "val"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kill_after", [1, 2])
def test_a_killed_fine_tune_continues_to_the_uninterrupted_result(tmp_path: Path, case: str,
                                                                  kill_after: int) -> None:
    make, fields, extra = CASES[case]
    spec = FinetuneSpec(**fields)
    kw = {"validate_fn": val_fn()} if extra == "val" else {}
    reference, expected = run(make, spec, None, **kw)
    assert expected is not None and expected.steps > 6 * (kill_after + 1)  # 6 batches a pass
    assert extra != "val" or (expected.stopped_early and expected.restored)
    killed, stats = run(make, spec, tmp_path, kill_after=kill_after, **kw)
    assert stats is None and latest_snapshot(tmp_path).position.passes == kill_after
    resumed, stats = run(make, spec, tmp_path, resume=True, **kw)
    assert same_state(state(resumed), state(reference))
    assert comparable(stats) == comparable(expected)


def test_a_fine_tune_killed_after_its_divergence_continues_the_restart(tmp_path: Path) -> None:
    spec = FinetuneSpec(epochs=4, lr=0.1, lr_schedule="cosine", momentum=0.9)
    reference, expected = run(lambda: Faulty(nan_at={9}), spec, None)  # in pass 2 of 4
    assert expected is not None and expected.divergences == 1
    run(lambda: Faulty(nan_at={9}), spec, tmp_path, kill_after=2)
    snapshot = latest_snapshot(tmp_path)
    assert snapshot.position.divergence is not None and snapshot.initial is not None
    # The forward passes before the kill are not repeated: no NaN is left to come.
    resumed, stats = run(Faulty, spec, tmp_path, resume=True)
    assert same_state(state(resumed), state(reference))
    assert comparable(stats) == comparable(expected)


def test_a_signal_stops_after_the_current_batch_and_the_run_continues_mid_pass(
        tmp_path: Path) -> None:
    spec = FinetuneSpec(epochs=3, lr_schedule="cosine", momentum=0.9)
    reference, expected = run(dropout_cnn, spec, None)

    def interrupting() -> nn.Module:  # Ctrl-C in training forward 9: pass 2, batch 3 of 6
        model, calls = dropout_cnn(), [0]

        def hook(module: nn.Module, args: Any) -> None:
            calls[0] += module.training
            if calls[0] == 9:
                os.kill(os.getpid(), signal.SIGINT)

        model.register_forward_pre_hook(hook)
        return model

    with stop_on_signals(), pytest.raises(KeyboardInterrupt):
        run(interrupting, spec, tmp_path, every=0)
    position = latest_snapshot(tmp_path).position
    assert (position.step, position.passes, position.batch) == (9, 1, 3)
    resumed, stats = run(dropout_cnn, spec, tmp_path, resume=True)
    assert same_state(state(resumed), state(reference))
    assert comparable(stats) == comparable(expected)


def test_snapshots_replace_each_other_and_half_written_ones_are_ignored(tmp_path: Path) -> None:
    spec = FinetuneSpec(epochs=4)
    run(dropout_cnn, spec, tmp_path, kill_after=3)
    assert [p.name for p in tmp_path.iterdir()] == ["finetune-000018"]  # 6 batches a pass
    half = tmp_path / "finetune-000024"  # a folder without state.json is never trusted
    half.mkdir()
    (tmp_path / ".finetune-1.abc.tmp").mkdir()  # what a kill mid-write leaves
    assert latest_snapshot_dir(tmp_path).name == "finetune-000018"
    run(dropout_cnn, spec, tmp_path, kill_after=1)
    assert [p.name for p in tmp_path.iterdir()] == ["finetune-000006"]
