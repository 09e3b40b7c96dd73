"""Who writes a run folder: its owner (pid, host, process start time) and the folder's lock.

A run holds an exclusive ``fcntl.flock`` on ``.lock`` inside its folder from the moment the
folder is opened until the run ends; the kernel drops it when the process dies, ``kill -9``
included, so a free lock means nobody is writing. ``status.json`` records the owner, so a
refusal can say whom it waits for, and so a folder that says ``running`` while its owner is gone
(the lock is free, or its pid is dead or belongs to a newer process on this host) reads as
``interrupted (owner gone)``.

The lock file stays in the folder after the run (removing it would let a second writer lock a
new file while a first still holds the old one). It is opened close-on-exec; worker processes
forked by a data loader share it and release it when they exit.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> lock = RunLock(folder)
    >>> lock.acquire(), RunLock(folder).acquire(), lock_is_free(folder)
    (True, False, False)
    >>> describe_state(folder, {"state": "running", "owner": this_process().to_dict()})[:12]
    'running (pid'
    >>> lock.release(); lock_is_free(folder), describe_state(folder, {"state": "running"})
    (True, 'interrupted (owner gone)')
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compress.errors import InputError
from compress.fsutil import write_failure

__all__ = ["LOCK_NAME", "Owner", "RunLock", "claim", "entries", "lock_is_free", "this_process",
           "owner_of", "owner_gone", "describe_state"]

LOCK_NAME = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


@dataclass(frozen=True)
class Owner:
    """The process that opened a run: ``start_ticks`` and ``boot_id`` tell a reused pid apart."""

    pid: int
    host: str
    started: str | None = None  # the process's start time, ISO 8601 UTC
    start_ticks: int | None = None  # /proc/<pid>/stat field 22 (clock ticks after boot)
    boot_id: str | None = None

    def describe(self) -> str:
        since = f", started {self.started}" if self.started else ""
        return f"pid {self.pid} on host {self.host}{since}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def alive(self) -> bool | None:
        """Whether this process still runs; None when that cannot be told from here (another
        host)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        if self.boot_id is not None and self.boot_id != _boot_id():
            return False  # the machine restarted since: every process of that boot is gone
        ticks = _start_ticks(self.pid)
        return self.start_ticks is None or ticks is None or ticks == self.start_ticks


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def _start_ticks(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def this_process() -> Owner:
    """The calling process as an :class:`Owner`."""
    ticks = _start_ticks(os.getpid())
    started = None
    uptime = _read("/proc/uptime")
    if ticks is not None and uptime is not None:
        seconds_ago = float(uptime.split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
        when = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=seconds_ago)
        started = when.isoformat(timespec="seconds")
    return Owner(os.getpid(), socket.gethostname(), started, ticks, _boot_id())


def owner_of(status: dict[str, Any] | None) -> Owner | None:
    """The owner ``status.json`` records, or None (an older folder, or damaged)."""
    raw = (status or {}).get("owner")
    if not isinstance(raw, dict):
        return None
    pid, host = raw.get("pid"), raw.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(host, str):
        return None
    ticks = raw.get("start_ticks")
    return Owner(pid, host, _str_or_none(raw.get("started")),
                 ticks if isinstance(ticks, int) and not isinstance(ticks, bool) else None,
                 _str_or_none(raw.get("boot_id")))


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class RunLock:
    """The exclusive lock on a run folder (the folder must exist)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock without waiting: False when another open holds it. A file system
        without locks counts as free (the owner's pid is then all there is to go by)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise InputError(write_failure(self.path, err)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                os.close(fd)
                return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def entries(folder: Path) -> list[Path]:
    """What ``folder`` holds besides its lock file (nothing when it does not exist)."""
    return [p for p in folder.iterdir() if p.name != LOCK_NAME] if folder.is_dir() else []


def claim(folder: Path, lock: RunLock, read_status: Callable[[Path], dict[str, Any] | None], *,
          create: bool = False) -> None:
    """Take ``folder``'s ``lock`` (``create``: making the folder first), or refuse naming the
    process that holds it (the owner its status, as ``read_status`` reads it, records)."""
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"--out {str(folder)!r} cannot be created ({err.strerror}); "
                             f"choose another --out") from None
    if lock.acquire():
        return
    try:
        owner = owner_of(read_status(folder))
    except InputError:  # a damaged status.json: still refused, without a name
        owner = None
    if owner is not None and owner.alive() is False:
        # flock is shared with forked children: a data loader worker outlives its run briefly.
        raise InputError(f"{str(folder)!r} is still locked by a process that its run "
                         f"({owner.describe()}, now gone) started; wait for it to exit, then "
                         f"resume with --resume")
    who = owner.describe() if owner else "another process"
    raise InputError(f"{str(folder)!r} is in use by a running compress ({who}); wait for it "
                     f"to end or stop it, then resume with --resume, or choose another --out")


def lock_is_free(folder: Path) -> bool | None:
    """Whether nobody holds ``folder``'s lock now (no lock file: True); None when its file
    system has no locks."""
    if not (folder / LOCK_NAME).is_file():
        return True
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return None if err.errno in _NO_LOCKS else False
    finally:
        os.close(fd)  # also drops the probe's own lock
    return True


def owner_gone(folder: Path, status: dict[str, Any] | None) -> bool:
    """Whether the process that last marked ``folder`` running is gone: its lock is free (or,
    on a file system without locks, the recorded owner is not running). Writes nothing."""
    free = lock_is_free(folder)
    if free is None:
        owner = owner_of(status)
        return owner is None or owner.alive() is False
    return free


def describe_state(folder: Path, status: dict[str, Any] | None) -> str:
    """A run's state as readers show it (``status``: its status.json, as read): ``running (pid
    N on host H, started T)`` while its owner writes, ``interrupted (owner gone)`` when that
    owner died (kill -9, power loss), else the recorded state. Writes nothing."""
    if status is None:
        return "not a run folder"
    if status.get("state") != "running":
        return str(status.get("state"))
    if owner_gone(folder, status):
        return "interrupted (owner gone)"
    owner = owner_of(status)
    return f"running ({owner.describe()})" if owner else "running"
