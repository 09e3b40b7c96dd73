"""Shared fixtures: the repo root, the ../shared folder, tiny models and recipes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (tests that need real files skip without it)")
    return path


# Nothing in the tests may reach a model or dataset hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep tests from writing into the user's ~/.cache unless they opt in.
    if "COMPRESS_CACHE" not in os.environ:
        monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, nothing after it runs (so a run's
    status stays 'running')."""


@contextmanager
def killed_after_writing(path: Path) -> Iterator[None]:
    """Inside the block, the run folder's atomic write of ``path`` raises :class:`Killed`
    right after the file is written (a run killed just after keeping that state)."""
    import compress.run.folder

    real = compress.run.folder.write_text_atomic

    def write(target: Path, text: str) -> None:
        real(target, text)
        if target == path:
            raise Killed(str(target))

    compress.run.folder.write_text_atomic = write
    try:
        yield
    finally:
        compress.run.folder.write_text_atomic = real


class TinyCNN(nn.Module):
    """conv-bn-relu x3 with a residual add and a linear head: enough to exercise groups."""

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.conv_a = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(2 * width)
        self.conv_b = nn.Conv2d(2 * width, width, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)
        with torch.no_grad():  # non-trivial BN statistics so zeroing is really tested
            for bn in (self.stem[1], self.bn_a, self.bn_b):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        h = torch.relu(self.bn_a(self.conv_a(s)))
        h = self.bn_b(self.conv_b(h))
        return self.head(torch.relu(h + s).mean(dim=(2, 3)))


def tiny_cnn(num_classes: int = 4, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(num_classes, width)


def tiny_recipe(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A fast recipe on the digits data and the quickstart CNN (width 16, random weights)."""
    recipe: dict[str, Any] = {
        "version": 1,
        "name": "tiny",
        "model": {"source": "python",
                  "factory": str(ROOT / "examples/quickstart/digits_cnn.py") + ":digits_cnn",
                  "kwargs": {"width": 16}, "num_classes": 10},
        "data": {"source": "digits", "batch_size": 64, "train_subset": 256, "eval_subset": 128},
        "pruning": {"ratio": 0.5},
        "finetune": {"epochs": 1, "max_steps": 3},
        "report": {"batch_sizes": [2], "rounds": 2, "runs_per_round": 1, "warmup": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@pytest.fixture
def single_thread() -> Any:
    """One torch thread for the test: bitwise comparisons between runs need one thread count
    throughout, and one thread is much faster than two that contend on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run folder (digits CNN, every artifact), shared by the whole session.

    Read it, never write into it: copy it first (tests run in any order).
    """
    import compress

    tmp = tmp_path_factory.mktemp("finished-run")
    result = compress.apply(tiny_recipe(tmp, gates={"max_accuracy_drop": 100.0}),
                            out_dir=tmp / "run")
    assert result.ok, result.report.get("gates")
    return result.out_dir
