"""Extracting a data archive (``.tar.gz``/``.tgz``/``.tar``) safely, within caps, all or nothing.

A hostile or broken archive costs at most what :class:`~compress.recipe.sources.ArchiveLimits`
allows: members are streamed in chunks (a header's declared size is never read into memory),
every member, the total and the compression ratio are capped, and sparse members, links,
devices, fifos, absolute and ``..`` paths are refused. Every refusal is one
:class:`~compress.errors.InputError` sentence naming the archive, the member and the cap. The
files go to a temporary folder renamed into place only once complete, so a failed or
interrupted extraction never leaves a folder that is later trusted.

Example:
    >>> import io, tarfile, tempfile
    >>> from compress.recipe.sources import ArchiveLimits
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "a.tar"
    ...     with tarfile.open(path, "w") as tar:
    ...         info = tarfile.TarInfo("test/cat/0.png")
    ...         info.size = 3
    ...         tar.addfile(info, io.BytesIO(b"abc"))
    ...     out = extract_once(path, Path(d) / "cache" / "a", ArchiveLimits())
    ...     (out / "files" / "test" / "cat" / "0.png").read_bytes()
    b'abc'
"""

from __future__ import annotations

import errno
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from compress.errors import InputError

if TYPE_CHECKING:
    from compress.recipe.sources import ArchiveLimits

__all__ = ["COMPLETE", "extract_once"]

COMPLETE = "COMPLETE"  # written last into an extraction folder: only then is it trusted
_CHUNK = 1 << 20
_MIB = 1 << 20
# Inflating to less than this is harmless whatever the ratio (tiny archives of tiny files).
_RATIO_FLOOR = 1 << 20
# Long names and pax headers are read whole by tarfile; none is ever near this.
_MAX_META_HEADER = 1 << 20
_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
               tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
# Errors the cache's file system causes; any other OSError while writing is the archive's.
_CACHE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_MAGIC = ((b"\x1f\x8b", "r:gz"), (b"BZh", "r:bz2"), (b"\xfd7zXZ\x00", "r:xz"))
_SPECIAL = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
            tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "contiguous file"}


class _Refused(Exception):
    """A member the caps or the rules refuse (the message completes "data.path X ...")."""


class _BoundedInfo(tarfile.TarInfo):
    """A TarInfo whose long-name and pax headers are refused above a sane size.

    tarfile reads those headers whole: a 50 GB declared one would be one 50 GB allocation
    before any member reaches us.
    """

    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in _META_TYPES and self.size > _MAX_META_HEADER:
            raise _Refused(f"has a name or pax header of {_human(self.size)} (at most "
                           f"{_human(_MAX_META_HEADER)}); the archive is malformed or hostile")
        return super()._proc_member(tarfile)  # type: ignore[misc]


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _mode(raw: IO[bytes]) -> str:
    """The tarfile mode for ``raw``'s compression, told by its first bytes.

    An explicit mode gives one reason on failure ("r:*" lists every method it tried).
    """
    head = raw.read(6)
    raw.seek(0)
    return next((mode for magic, mode in _MAGIC if head.startswith(magic)), "r:")


def _check_member(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path parts; raise :class:`_Refused` for what is never extracted."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts:
        raise _Refused(f"has an unsafe member {name!r} (absolute or '..' path); refusing to "
                       "extract it")
    if member.issparse():
        raise _Refused(f"has a sparse member {name!r}, which is refused (its holes expand to "
                       "any size); re-create the archive without --sparse")
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        base = PurePosixPath(*parts[:-1]) if member.issym() else PurePosixPath()
        depth = 0
        for part in (base / link).parts:  # "." parts are already gone
            depth += -1 if part == ".." else 1
            if depth < 0:
                break
        if link.is_absolute() or depth < 0:
            raise _Refused(f"has a link {name!r} pointing outside the archive "
                           f"({member.linkname!r}); refusing to extract it")
        raise _Refused(f"has a link {name!r}; links are not extracted, re-create the archive "
                       "with tar --dereference (-h)")
    if not (member.isfile() or member.isdir()):
        kind = _SPECIAL.get(member.type, f"member of type {member.type!r}")
        raise _Refused(f"has a {kind} {name!r}; only regular files and folders are extracted")
    return parts


def _safe_extract(raw: IO[bytes], dest: Path, limits: ArchiveLimits) -> None:
    """Stream the members of the archive open as ``raw`` into ``dest`` within ``limits``.

    Files are written directly (not with ``TarFile.extract``), which is twice as fast for many
    small files; with links refused and no ``..`` parts every path stays inside ``dest``.
    ``raw.tell()`` is how much of the (compressed) archive was read: the ratio's denominator.
    """
    member_cap, total_cap = limits.max_member_mb * _MIB, limits.max_total_mb * _MIB
    made: set[Path] = set()
    count = total = 0
    with tarfile.open(fileobj=raw, mode=_mode(raw), tarinfo=_BoundedInfo) as tar:
        for member in tar:  # streaming: one pass over a compressed archive
            count += 1
            if count > limits.max_files:
                raise _Refused(f"has more than data.archive.max_files ({limits.max_files}) "
                               "members; raise it if the archive is trusted")
            parts = _check_member(member)
            if member.size > member_cap:
                raise _Refused(f"has a member {member.name!r} declaring {_human(member.size)}, "
                               f"over data.archive.max_member_mb ({limits.max_member_mb}); "
                               "raise it if the archive is trusted")
            if total + member.size > total_cap:
                raise _Refused(f"holds more than data.archive.max_total_mb "
                               f"({limits.max_total_mb}) (reached at member {member.name!r}); "
                               "raise it if the archive is trusted")
            if not parts:  # the archive's own "./" entry
                continue
            target = dest.joinpath(*parts)
            folder = target if member.isdir() else target.parent
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            if not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None, "a regular file has data"
            with source, open(target, "wb") as out:
                left = member.size
                # Exact reads: one per small file, not a 1 MiB buffer for each 2 KB image.
                while left and (chunk := source.read(min(left, _CHUNK))):
                    out.write(chunk)
                    left -= len(chunk)
                    total += len(chunk)
                    if total > _RATIO_FLOOR and total > limits.max_ratio * raw.tell():
                        raise _Refused(
                            f"inflates more than data.archive.max_ratio ({limits.max_ratio:g}) "
                            f"times: {_human(total)} out of {_human(raw.tell())} read (at "
                            f"member {member.name!r}), like a compression bomb; raise it if "
                            "the archive is trusted")


def _extract_into(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    """:func:`_safe_extract`, every failure one :class:`InputError` that blames the right side:
    the archive (refused, malformed) or the cache (full, read-only)."""
    shown = str(archive)
    try:
        raw = open(archive, "rb")
    except OSError as err:
        raise InputError(f"data.path {shown!r} cannot be read ({err.strerror or err}); fix "
                         "data.path or its permissions") from None
    unreadable = f"data.path {shown!r} is not a readable tar archive (truncated or malformed: "
    try:
        with raw:
            _safe_extract(raw, dest, limits)
    except _Refused as err:
        raise InputError(f"data.path {shown!r} {err}") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, UnicodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{unreadable}{reason}); re-create it or extract it "
                         "yourself") from None
    except OSError as err:
        if err.errno is None:  # the decompressor's (gzip, bz2): the archive's bytes are bad
            raise InputError(f"{unreadable}{err}); re-create it or extract it "
                             "yourself") from None
        if err.errno in _CACHE_ERRNOS:  # disk full, permissions: the cache's fault
            raise InputError(f"cannot extract data.path into the cache {str(dest.parent.parent)!r}"
                             f" ({err.strerror or err}); free space or set data.cache_dir to "
                             "another folder") from None
        where = f" at {Path(err.filename).name!r}" if err.filename else ""
        raise InputError(f"data.path {shown!r} is a malformed tar archive: a member cannot be "
                         f"written ({err.strerror or err}{where}); re-create it") from None


def extract_once(archive: Path, final: Path, limits: ArchiveLimits) -> Path:
    """Extract ``archive`` into ``final / "files"`` unless already done; return ``final``.

    The caller keys ``final`` (imagefolder: the archive's path, size and mtime). Extraction
    goes to a temporary sibling renamed into place only after :data:`COMPLETE` is written, so
    an interrupted or refused extraction leaves nothing that is later trusted; a folder
    without the marker is not ours to trust and is replaced.
    """
    if (final / COMPLETE).is_file():
        return final
    cache = final.parent
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache))
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache_dir should stay readable
    except OSError as err:
        raise InputError(f"cannot write the extraction cache {str(cache)!r} "
                         f"({err.strerror or err}); set data.cache_dir or $COMPRESS_CACHE to a "
                         "writable folder") from None
    try:
        _extract_into(archive, tmp / "files", limits)
        (tmp / COMPLETE).write_text(f"{archive.resolve()}\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / COMPLETE).is_file():  # not a concurrent run that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
