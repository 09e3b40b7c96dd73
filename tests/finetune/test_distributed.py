"""compress.finetune.distributed: multi-process runs on the CPU (gloo).

Two processes under ``torchrun`` must finish one run folder, written by rank 0 alone, with the
pruned architecture a single process gets; the hooks that keep ranks in step (one decision,
one writer, one set of weights) are tested on a real two-process gloo group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.finetune.distributed import (
    AcceleratedProcesses,
    Processes,
    architecture_digest,
    processes,
)
from compress.recipe.load import load_recipe
from compress.run.owner import lock_is_free
from compress.run.pipeline import run_recipe
from tests.conftest import ROOT, tiny_cnn, tiny_recipe
from tests.run.test_live_runs import HOLD


def test_one_process_is_the_default_and_calls_straight_through(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = processes(torch.device("cpu"))
    assert type(dist) is Processes and dist.is_main and dist.describe() is None
    model = tiny_cnn()
    loader = [(torch.zeros(1), torch.zeros(1))]
    assert dist.prepare(model, loader) == (model, loader)  # type: ignore[arg-type]
    loss = torch.tensor(float("nan"))
    assert dist.agree_loss(loss) is loss
    with pytest.raises(InputError, match="boom"):
        dist.on_main(lambda: (_ for _ in ()).throw(InputError("boom")))


def test_architecture_digest_sees_shapes_not_values() -> None:
    a, b = tiny_cnn(width=16), tiny_cnn(width=16)
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert architecture_digest(a) == architecture_digest(b)
    assert architecture_digest(a) != architecture_digest(tiny_cnn(width=8))


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    """One rank of a gloo group: exercise every hook and write what it saw."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world)
    fake = SimpleNamespace(num_processes=world, process_index=rank, free_memory=lambda: None,
                           device=torch.device("cpu"), distributed_type="MULTI_CPU")
    dist = AcceleratedProcesses(fake)
    seen: dict[str, Any] = {}
    try:
        dist.check_same("pruned architecture", "aaaa" if rank == 0 else "bbbb")
    except CheckFailed as err:
        seen["mismatch"] = str(err)
    dist.check_same("pruned architecture", "same")  # equal: no error
    seen["on_main"] = dist.on_main(lambda: f"computed by rank {rank}")
    try:
        dist.on_main(lambda: (_ for _ in ()).throw(InputError("bad input on rank 0")))
    except InputError as err:
        seen["on_main_error"] = str(err)
    seen["nan_anywhere"] = bool(torch.isfinite(
        dist.agree_loss(torch.tensor(float("nan") if rank == 1 else 1.0, requires_grad=True))))
    seen["finite"] = float(dist.agree_loss(torch.tensor(2.0 + rank)))
    seen["validate"] = dist.agreed(lambda m: {"accuracy": 10.0 * rank})(nn.Identity())
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(rank + 1)
        model[1].running_mean.fill_(rank + 1)
    dist.sync_(model)
    seen["synced"] = [model[0].weight.tolist(), model[1].running_mean.tolist()]
    torch.distributed.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(seen))


def test_ranks_agree_on_errors_losses_evaluations_and_weights(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for rank, s in enumerate(seen):
        assert "pruned architecture differs between processes" in s["mismatch"]
        assert "rank 1 bbbb" in s["mismatch"]
        assert s["on_main"] == "computed by rank 0"  # run once, shared
        assert s["on_main_error"] == "bad input on rank 0"  # same error, same exit code
        assert s["nan_anywhere"] is False  # rank 1's NaN is everyone's divergence
        assert s["finite"] == 2.0 + rank  # a finite loss is left alone
        assert s["validate"] == {"accuracy": 0.0}  # rank 0's evaluation decides
        assert s["synced"] == [[[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]]  # rank 0's weights


def _recipe(tmp_path: Path) -> Path:
    data = tiny_recipe(
        tmp_path, name="dist",
        model={"checkpoint": str(ROOT / "examples/quickstart/digits_cnn.safetensors"),
               "kwargs": {}},
        data={"batch_size": 32, "train_subset": 128, "eval_subset": 64},
        pruning={"importance": "l2", "target": {"macs": 0.5}, "round_to": 8},
        schedule={"kind": "iterative", "steps": 2},
        finetune={"epochs": 1},
        export={"onnx": False}, report={"latency": False})
    data["pruning"].pop("ratio")
    data["finetune"].pop("max_steps")
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _launch(launcher: list[str], recipe: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HOME": str(out.parent / "home")}  # accelerate looks for a config under ~/.cache
    env.pop("WORLD_SIZE", None)
    cmd = [*launcher, "-m", "compress", "apply", str(recipe), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent,
                          timeout=600)


def test_two_processes_finish_one_run_with_the_single_process_architecture(tmp_path: Path
                                                                           ) -> None:
    recipe = _recipe(tmp_path)
    proc = _launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2"], recipe, tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report.html") == 1  # rank 0 speaks for the run
    one = run_recipe(load_recipe(recipe), tmp_path / "one")

    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == \
        ["dist.yaml", "one", "two"]
    two = tmp_path / "two"
    status = json.loads((two / "status.json").read_text())
    assert status["state"] == "done" and status["owner"]["pid"] != os.getpid()  # rank 0's
    assert lock_is_free(two) is True  # released when rank 0 ended
    report = json.loads((two / "report.json").read_text())
    assert report["distributed"]["world_size"] == 2
    assert report["distributed"]["backend"] == "gloo"
    layers = json.loads((two / "model.json").read_text())["layers"]
    assert layers == json.loads((one.out_dir / "model.json").read_text())["layers"]
    assert [s["macs"] for s in report["steps"]] == [s["macs"] for s in one.report["steps"]]
    assert sorted(p.name for p in (two / "steps").iterdir()) == ["01", "02", "ratios.json"]
    # Each rank took half the batches of an epoch: the data was sharded, not duplicated.
    assert [s["finetune_steps"] for s in report["steps"]] == \
        [s["finetune_steps"] // 2 for s in one.report["steps"]]


def test_two_processes_on_a_folder_in_use_are_all_refused_and_none_waits(tmp_path: Path
                                                                          ) -> None:
    """Only rank 0 takes the folder's lock; its refusal reaches every rank (no deadlock)."""
    recipe, out = _recipe(tmp_path), tmp_path / "two"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out),
                               json.dumps(load_recipe(recipe).to_dict())],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdin=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not Path(f"{out}.held").exists():
            assert holder.poll() is None and time.time() < deadline
            time.sleep(0.01)
        proc = _launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2"], recipe, out)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0, proc.stderr[-3000:]
    # One sentence from a rank (torchrun stops the other ranks once one has failed).
    assert proc.stderr.count(f"error: {str(out)!r} is in use") >= 1
    assert f"is in use by a running compress (pid {holder.pid} on host" in proc.stderr
    assert json.loads((out / "status.json").read_text())["owner"]["pid"] == holder.pid


@pytest.mark.slow
def test_accelerate_launch_gives_the_torchrun_result(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    runs = {"torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node", "2"],
            "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                           "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                           "no", "--dynamo_backend", "no", "--main_process_port", "0"]}
    reports = {}
    for name, launcher in runs.items():
        proc = _launch(launcher, recipe, tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert reports["accelerate"]["distributed"]["world_size"] == 2
    # Same seeded shards, same CPU arithmetic: the same fine-tuned model, not just its shape.
    assert reports["accelerate"]["steps"] == [
        {**s, "checkpoint": str(tmp_path / "accelerate" / "steps" / f"{s['step']:02d}"),
         "finetune_s": a["finetune_s"]}
        for s, a in zip(reports["torchrun"]["steps"], reports["accelerate"]["steps"])]
