"""Run folders: status written last, guarded reuse; a run killed (SIGKILL) or stopped (SIGINT,
SIGTERM) anywhere resumes where it was and ends bitwise equal to an uninterrupted run.

Kills happen in-process (an exception nothing catches, raised at an exact point: fast, and
nothing after it runs, like SIGKILL) and, slower, by real signals to a child process that
pauses at an exact point first.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import compress
import compress.export.model
import compress.export.safetensors
import compress.finetune.checkpoint
import compress.run.folder
from compress.finetune.checkpoint import latest_snapshot
from compress.run.folder import changed_keys, read_status
from compress.signals import deferred_stop, stop_on_signals, stop_requested
from tests.conftest import ROOT, Killed, tiny_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

# The child: compress.apply with logs on stderr; with a pause point it stops there (writing
# OUT.paused) until a signal asks it to stop, so the parent's signal lands at a known place.
RUN = """
import logging, sys, time
from pathlib import Path
import compress, compress.finetune.checkpoint, compress.export.model
from compress.signals import stop_requested
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
recipe, out, mode, pause = sys.argv[1:5]

def pause_here():
    Path(out + ".paused").touch()
    deadline = time.time() + 240
    while not stop_requested() and time.time() < deadline:
        time.sleep(0.01)

def after(module, name, when):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args):
            pause_here()
        return result
    setattr(module, name, wrapper)

if pause.startswith("snapshot:"):  # after writing steps/NN/finetune-SSSSSS
    after(compress.finetune.checkpoint, "write_snapshot", lambda folder, snap: (
        f"{folder.name}:{snap.position.step}" == pause.removeprefix("snapshot:")))
elif pause == "export":  # the compressed model's safetensors written, its parity unchecked
    after(compress.export.model, "save_safetensors", lambda model, folder, *a: folder == Path(out))
compress.apply(recipe, out_dir=out, resume=mode == "resume")
"""
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _recipe(tmp_path: Path, **pruning: Any) -> Path:
    """3 iterative steps, 3 passes of 4 batches each: snapshots after 4 and 8 optimizer steps."""
    kind_schedule = {"kind": "one-shot"} if pruning.get("kind") == "n:m" else \
        {"kind": "iterative", "steps": 3}
    recipe = tiny_recipe(tmp_path, schedule=kind_schedule,
                         pruning=pruning or {"ratio": 0.6, "round_to": 1},
                         finetune={"epochs": 3, "max_steps": None},
                         export={"onnx": False}, report={"latency": False})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


KINDS = {"structured": {},
         "unstructured": {"kind": "unstructured", "ratio": 0.6},
         "n:m": {"kind": "n:m", "ratio": None, "n": 2, "m": 4}}


def _metrics(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {"accuracy": report["compressed"]["accuracy"], "loss": report["compressed"]["loss"],
            "macs": report["compressed"]["macs"],
            "weights": (out / "model.safetensors").read_bytes(),
            "steps": [(s["accuracy"], s["loss"], s["macs"], s["layers"], s["finetune_steps"])
                      for s in report["steps"]]}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict]]:
    """Per pruning kind: the recipe and the metrics of its uninterrupted run (made once)."""
    made: dict[str, tuple[Path, dict]] = {}

    def get(kind: str) -> tuple[Path, dict]:
        if kind not in made:
            import torch

            tmp = tmp_path_factory.mktemp(kind.replace(":", ""))
            recipe = _recipe(tmp, **KINDS[kind])
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as in the tests and the children
            try:
                compress.apply(recipe, out_dir=tmp / "run")
            finally:
                torch.set_num_threads(threads)
            assert read_status(tmp / "run")["state"] == "done"
            made[kind] = recipe, _metrics(tmp / "run")
        return made[kind]

    return get


def _kill_after(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
                when: Callable[..., bool]) -> None:
    real = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if when(*args):
            raise Killed(name)
        return result

    monkeypatch.setattr(module, name, wrapper)


def _stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in out.glob("steps/*/model.safetensors")
            if (p.parent / "state.json").is_file()}


def _resume_in_process(recipe: Path, out: Path, caplog: pytest.LogCaptureFixture) -> str:
    """Resume ``out``; check finished steps were not redone; return the resumed run's log."""
    status = read_status(out)
    assert status["state"] != "done"
    with pytest.raises(compress.InputError, match="unfinished run"):
        compress.load(out)
    stamps = _stamps(out)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="compress"):
        compress.apply(recipe, out_dir=out, resume=True)
    assert read_status(out)["state"] == "done"
    assert {k: v for k, v in _stamps(out).items() if k in stamps} == stamps
    assert not list(out.glob("steps/*/finetune-*"))  # superseded by the finished steps
    return caplog.text


CUTS = [  # (kind, where the run dies, steps finished, optimizer step of the step's snapshot)
    ("structured", "steps/02/finetune-000008", 1, 8),
    ("structured", "steps/02/model.json", 1, 8),  # step 2 finished but not marked finished
    ("structured", "export", 3, None),
    ("unstructured", "steps/02/finetune-000004", 1, 4),
    ("unstructured", "steps/02/state.json", 2, None),
    ("n:m", "steps/01/finetune-000008", 0, 8),
]


@pytest.mark.parametrize(("kind", "cut", "done", "at"), CUTS)
def test_a_killed_run_resumes_where_it_was_and_ends_as_an_uninterrupted_one(
        references: Callable[[str], tuple[Path, dict]], tmp_path: Path, kind: str, cut: str,
        done: int, at: int | None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    recipe, expected = references(kind)
    out = tmp_path / "run"
    if cut == "export":
        _kill_after(monkeypatch, compress.export.model, "save_safetensors",
                    lambda model, folder, *a: folder == out)
    elif "finetune-" in cut:
        _kill_after(monkeypatch, compress.finetune.checkpoint, "write_snapshot",
                    lambda folder, snapshot: (out / cut).is_dir())
    else:
        for module in (compress.run.folder, compress.export.safetensors):
            _kill_after(monkeypatch, module, "write_text_atomic",
                        lambda path, text: path == out / cut)
    with pytest.raises(Killed):
        compress.apply(recipe, out_dir=out)
    monkeypatch.undo()
    assert read_status(out)["state"] == "running"  # killed: nobody could write anything else
    log = _resume_in_process(recipe, out, caplog)
    total = len(expected["steps"])
    inside = f", inside step {done + 1}'s fine-tune after optimizer step {at}" if at else ""
    assert f"resumed after step {done} of {total}{inside}\n" in log
    # Nothing finished is done again: no fine-tune of a finished step (the resumed step's
    # fine-tune goes on and logs its end), no snapshot up to the one resumed from.
    assert all(int(i) > done for i in re.findall(r"step (\d+)/\d+ fine-tune: ", log))
    saved = re.findall(r"checkpoint after .*steps/(\d+)/finetune-(\d+)", log)
    assert all((int(s), int(n)) > (done + 1, at or 0) for s, n in saved)
    assert _metrics(out) == expected


def test_finished_run_is_not_overwritten(references: Callable[[str], tuple[Path, dict]],
                                         tmp_path: Path) -> None:
    recipe, _ = references("structured")
    out = tmp_path / "run"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"state": "done"}))
    # The Python caller is told its arguments, not the CLI's flags (the CLI test checks those).
    with pytest.raises(compress.InputError, match="holds a finished run; pass overwrite=True to "
                       "replace it or choose another out_dir$"):
        compress.apply(recipe, out_dir=out)
    with pytest.raises(compress.InputError, match="nothing to resume"):
        compress.apply(recipe, out_dir=tmp_path / "empty", resume=True)


def test_unfinished_run_needs_resume_or_overwrite_and_the_same_recipe(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    stored = yaml.safe_load(recipe.read_text())
    recipe = compress.recipe.load.parse_recipe(stored)
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    (out / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(compress.InputError, match="unfinished run .*resume=True"):
        compress.apply(recipe, out_dir=out)
    with pytest.raises(compress.InputError, match=r"recipe changed .*finetune\.max_steps"):
        compress.apply(recipe, out_dir=out, resume=True, finetune={"max_steps": 5})
    with pytest.raises(compress.InputError, match="choose one of"):
        compress.apply(recipe, out_dir=out, resume=True, overwrite=True)
    with pytest.raises(compress.InputError, match="no pruning step finished"):
        compress.apply(recipe, out_dir=out, resume=True)


def test_changed_keys() -> None:
    assert changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == ["a.c", "d"]


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(200):  # the Python-level handler runs between bytecodes, soon after
        time.sleep(0.005)


def test_signals_stop_at_once_outside_a_fine_tune_and_after_the_batch_inside_one() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            _signal_self(signal.SIGTERM)
        with deferred_stop():
            _signal_self(signal.SIGINT)  # only asks: the fine-tune polls it after each batch
            assert stop_requested() == signal.SIGINT
            with pytest.raises(KeyboardInterrupt, match="signal 2"):
                _signal_self(signal.SIGINT)  # a second Ctrl-C does not wait
    assert stop_requested() is None
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ---- real signals to a child process -------------------------------------------------------

def _start(recipe: Path, out: Path, mode: str = "fresh", pause: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(recipe), str(out), mode, pause],
                            cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, marker: Path, out: Path, timeout: float = 300) -> None:
    """Until ``marker`` exists; the folder must never look done meanwhile."""
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        status = read_status(out)
        assert status is None or status["state"] != "done"
        assert time.time() < deadline, f"{marker} never appeared"
        time.sleep(0.02)


def test_ctrl_c_stops_a_fine_tune_after_the_batch_with_a_checkpoint_and_resumes_there(
        references: Callable[[str], tuple[Path, dict]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    recipe, expected = references("structured")
    out = tmp_path / "run"
    proc = _start(recipe, out, pause="snapshot:02:4")  # inside step 2's fine-tune
    _wait_for(proc, Path(f"{out}.paused"), out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    status = read_status(out)
    assert status["state"] == "interrupted" and "--resume" in status["reason"]
    assert status["last_finished_step"] == 1
    # Stopped after the next batch, which its snapshot holds: optimizer step 5, batch 1.
    assert "stopped by signal 2 after optimizer step 5" in err
    assert status["finetune_checkpoint"] == str(out / "steps" / "02" / "finetune-000005")
    position = latest_snapshot(out / "steps" / "02").position
    assert (position.step, position.passes, position.batch) == (5, 1, 1)
    log = _resume_in_process(recipe, out, caplog)
    assert "inside step 2's fine-tune after optimizer step 5" in log
    assert _metrics(out) == expected


@pytest.mark.slow
def test_sigterm_outside_a_fine_tune_stops_at_once(references: Callable[[str], tuple[Path, dict]],
                                                   tmp_path: Path) -> None:
    recipe, _ = references("structured")
    out = tmp_path / "run"
    proc = _start(recipe, out, pause="export")
    _wait_for(proc, Path(f"{out}.paused"), out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt: signal 15" in err
    status = read_status(out)
    assert status["state"] == "interrupted" and status["last_finished_step"] == 3
    assert status["finetune_checkpoint"] is None


@pytest.mark.slow
@pytest.mark.parametrize("pause", ["snapshot:02:8", "export"])
def test_sigkill_then_resume_in_a_new_process_equals_uninterrupted(
        references: Callable[[str], tuple[Path, dict]], tmp_path: Path, pause: str) -> None:
    recipe, expected = references("structured")
    out = tmp_path / "run"
    proc = _start(recipe, out, pause=pause)
    _wait_for(proc, Path(f"{out}.paused"), out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_status(out)["state"] == "running"
    stamps = _stamps(out)
    proc = _start(recipe, out, "resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert read_status(out)["state"] == "done"
    assert {k: v for k, v in _stamps(out).items() if k in stamps} == stamps
    where = "inside step 2's fine-tune after optimizer step 8" if pause != "export" \
        else "after step 3 of 3"
    assert where in err and "steps/01/finetune" not in err
    assert _metrics(out) == expected
    assert compress.load(out, trust_code=True) is not None


def test_a_resumed_run_reuses_the_width_search_of_the_interrupted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path, target={"macs": 0.5}, ratio=None)
    out = tmp_path / "run"
    events: list[Any] = []
    _kill_after(monkeypatch, compress.run.folder, "write_text_atomic",
                lambda path, text: path == out / "steps" / "01" / "state.json")
    with pytest.raises(Killed):
        compress.apply(recipe, out_dir=out, progress=events.append)
    monkeypatch.undo()
    searched = [e for e in events if e.task == "width search" and e.done]
    assert len(searched) == 1 and "trial prunes" in searched[0].message
    kept = json.loads((out / "steps" / "ratios.json").read_text())["ratios"]
    assert len(kept) == 3 and kept == sorted(kept)
    events.clear()
    compress.apply(recipe, out_dir=out, resume=True, progress=events.append)
    assert read_status(out)["state"] == "done"
    assert not [e for e in events if e.task == "width search"]  # not searched again
    steps = json.loads((out / "report.json").read_text())["steps"]
    assert [s["ratio"] for s in steps] == kept
