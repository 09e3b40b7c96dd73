"""Live runs are known: the run folder's lock refuses a second writer, naming the owner, and a
folder whose owner died reads ``interrupted (owner gone)`` and resumes.

The owner is a real second process: a helper that opens the folder as a run does and holds it
(fast), and a real run paused inside its second step, then killed with SIGKILL (its resume must
end bitwise equal to an uninterrupted run). Files are polled for, never slept on.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from compress.recipe.load import load_recipe
from compress.run.folder import read_status
from compress.run.owner import Owner, RunLock, describe_state, lock_is_free, owner_of, this_process
from tests.conftest import ROOT
from tests.hostile import Tree, assert_refused, hostile, invoke
from tests.run import test_folder
from tests.run.test_folder import CHILD_ENV, _metrics, _recipe, _start, _wait_for

pytestmark = pytest.mark.usefixtures("single_thread")
references = test_folder.references  # the uninterrupted runs to compare with (a fixture)

# The helper: opens OUT as `compress apply` would (lock, owner, status running), says so by
# creating OUT.held, then waits for its stdin to close (or a SIGKILL).
HOLD = """
import json, sys
from pathlib import Path
from compress.run.folder import RunFolder
out, recipe = Path(sys.argv[1]), json.loads(sys.argv[2])
RunFolder(out).open_(recipe, overwrite=False, resume=False)
Path(f"{out}.held").touch()
sys.stdin.read()
"""


def _poll(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def held(tmp_path: Path) -> tuple[Path, Path, subprocess.Popen]:
    """(recipe, run folder, helper process holding the folder)."""
    recipe = _recipe(tmp_path)
    out = tmp_path / "runs" / "tiny"  # where `compress inspect` looks for the recipe's run
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out),
                             json.dumps(load_recipe(recipe).to_dict())],
                            cwd=ROOT, env=CHILD_ENV, stdin=subprocess.PIPE, text=True)
    _poll(Path(f"{out}.held"), proc)
    yield recipe, out, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@hostile
@pytest.mark.parametrize("flags", [(), ("--resume",), ("--overwrite",)],
                         ids=["apply", "resume", "overwrite"])
def test_a_second_writer_is_refused_naming_the_owner(
        held: tuple[Path, Path, subprocess.Popen], tmp_path: Path, flags: tuple[str, ...]) -> None:
    recipe, out, proc = held
    before = sorted(p.name for p in out.iterdir())
    status = (out / "status.json").read_text()
    tree = Tree(tmp_path)
    line = assert_refused(invoke(["apply", recipe, "--out", out, *flags], cwd=tmp_path),
                          "is in use by a running compress", f"pid {proc.pid} on host "
                          f"{socket.gethostname()}")
    assert "\n" not in line
    # The live run's folder is untouched: same files, same status, still its owner's.
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / "status.json").read_text() == status
    assert tree.new_files() == []
    assert describe_state(out, read_status(out)).startswith(f"running (pid {proc.pid} on host ")
    assert lock_is_free(out) is False


@hostile
def test_a_killed_owner_reads_interrupted_owner_gone_and_frees_the_folder(
        held: tuple[Path, Path, subprocess.Popen], tmp_path: Path) -> None:
    recipe, out, proc = held
    inspect = ["inspect", recipe, "--json"]
    live = json.loads(invoke(inspect, cwd=tmp_path).stdout)["run_folder"]
    assert live == {"path": "runs/tiny", "state": describe_state(out, read_status(out))}
    assert live["state"].startswith(f"running (pid {proc.pid} on host ")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_status(out)["state"] == "running"  # nobody could say otherwise
    gone = json.loads(invoke(inspect, cwd=tmp_path).stdout)["run_folder"]
    assert gone["state"] == "interrupted (owner gone)"
    assert describe_state(out, read_status(out)) == "interrupted (owner gone)"
    result = invoke(["apply", recipe, "--out", out], cwd=tmp_path)
    assert_refused(result, "holds an unfinished run (interrupted (owner gone)); pass --resume")
    result = invoke(["report", out], cwd=tmp_path)
    assert_refused(result, "interrupted (owner gone)", "--resume")
    # No longer refused as in use: the resume itself goes on (and finds no finished step).
    result = invoke(["apply", recipe, "--out", out, "--resume"], cwd=tmp_path)
    assert_refused(result, "no pruning step finished")
    assert lock_is_free(out) is True  # the refused resume let go of the lock


# A run that forked a worker (as a data loader does) and was killed before the worker exited.
FORKED = """
import json, os, sys, time
from pathlib import Path
from compress.run.folder import RunFolder
out, recipe = Path(sys.argv[1]), json.loads(sys.argv[2])
RunFolder(out).open_(recipe, overwrite=False, resume=False)
if os.fork() == 0:
    Path(f"{out}.worker").write_text(str(os.getpid()))
    time.sleep(600)
    os._exit(0)
sys.stdin.read()
"""


@hostile
def test_a_worker_that_outlives_its_killed_run_is_named_as_such(tmp_path: Path) -> None:
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", FORKED, str(out),
                             json.dumps(load_recipe(recipe).to_dict())],
                            cwd=ROOT, env=CHILD_ENV, stdin=subprocess.PIPE, text=True)
    marker = Path(f"{out}.worker")
    try:
        _poll(marker, proc)
        while not marker.read_text():
            time.sleep(0.01)
        worker = int(marker.read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        result = invoke(["apply", recipe, "--out", out, "--resume"], cwd=tmp_path)
        assert_refused(result, f"is still locked by a process that its run (pid {proc.pid} ",
                       "now gone")
    finally:
        if marker.is_file() and marker.read_text():
            os.kill(int(marker.read_text()), signal.SIGKILL)
        proc.kill()
    deadline = time.time() + 60
    while lock_is_free(out) is not True:  # the worker's death frees the folder
        assert time.time() < deadline
        time.sleep(0.01)
    assert describe_state(out, read_status(out)) == "interrupted (owner gone)"
    assert worker != proc.pid


def test_the_owner_is_recorded_and_a_reused_pid_is_not_mistaken_for_it(tmp_path: Path) -> None:
    me = this_process()
    assert me.pid == os.getpid() and me.host == socket.gethostname()
    assert me.started is not None and me.start_ticks is not None
    assert me.alive() is True
    assert owner_of({"owner": me.to_dict()}) == me
    # Same pid, another process start (the pid was reused) or another boot: not the owner.
    assert Owner(me.pid, me.host, None, me.start_ticks + 1, me.boot_id).alive() is False
    assert Owner(me.pid, me.host, None, me.start_ticks, "another-boot").alive() is False
    assert Owner(me.pid, "some-other-host").alive() is None  # cannot be told from here
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert Owner(proc.pid, me.host).alive() is False
    for damaged in [None, {}, {"owner": 3}, {"owner": {"pid": "1", "host": "h"}},
                    {"owner": {"pid": True, "host": "h"}}, {"owner": {"pid": 1}}]:
        assert owner_of(damaged) is None


def test_the_lock_is_released_when_the_run_ends_in_any_way(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    assert lock.acquire() and lock.held
    assert RunLock(tmp_path).acquire() is False  # another open file, even in this process
    lock.release()
    assert lock_is_free(tmp_path) is True and RunLock(tmp_path).acquire() is True


def test_kill_9_with_a_second_writer_refused_while_live_then_resume_is_bitwise_equal(
        references: Callable[[str], tuple[Path, dict]], tmp_path: Path) -> None:
    recipe, expected = references("structured")
    out = tmp_path / "run"
    proc = _start(recipe, out, pause="snapshot:02:8")  # step 1 checkpointed, inside step 2
    _wait_for(proc, Path(f"{out}.paused"), out)
    assert (out / "steps" / "01" / "state.json").is_file()
    for flags in [(), ("--resume",)]:
        assert_refused(invoke(["apply", recipe, "--out", out, *flags], cwd=tmp_path),
                       f"is in use by a running compress (pid {proc.pid} on host ")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert describe_state(out, read_status(out)) == "interrupted (owner gone)"
    result = invoke(["apply", recipe, "--out", out, "--resume", "--quiet"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    status = read_status(out)
    assert status["state"] == "done" and owner_of(status) == this_process()
    assert _metrics(out) == expected  # model.safetensors bytes included


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "compress", "apply", *map(str, args)]


@pytest.mark.slow
def test_compress_apply_killed_after_its_first_step_resumes_bitwise_equal_from_the_cli(
        references: Callable[[str], tuple[Path, dict]], tmp_path: Path) -> None:
    """The real command, SIGKILLed as soon as step 1's checkpoint is whole (polled for)."""
    recipe, expected = references("structured")
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(recipe, "--out", out, "--quiet"), cwd=tmp_path, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _poll(out / "steps" / "01" / "state.json", proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    status = read_status(out)
    # Two more steps with their fine-tunes were left: the kill lands well before the end.
    assert status["state"] == "running", "the run ended before the kill reached it"
    assert describe_state(out, status) == "interrupted (owner gone)"
    assert owner_of(status).pid == proc.pid
    resumed = subprocess.run(_cli(recipe, "--out", out, "--resume", "--quiet"), cwd=tmp_path,
                             env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_status(out)["state"] == "done"
    assert _metrics(out) == expected  # model.safetensors bytes included
