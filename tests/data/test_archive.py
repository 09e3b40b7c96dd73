"""compress.data.archive: crafted tar files, each refused in one sentence before it costs much.

The archives are built here with tarfile (headers written by hand where tarfile would refuse
to write them: a 50 GiB size with no data, a sparse member); every refusal leaves nothing in
the cache, and a malformed archive is never blamed on the cache.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import random
import re
import tarfile
from pathlib import Path

import pytest

from compress.data import archive as archive_module
from compress.data.archive import COMPLETE, extract_once
from compress.errors import InputError
from compress.recipe.sources import ArchiveLimits

GIB = 1 << 30


def entry(name: str, size: int = 0, type: bytes = tarfile.REGTYPE, link: str = "",
          pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    """A member header, whatever it claims (a size with no data behind it, a device...)."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, type, link
    info.pax_headers = pax or {}
    return info


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
              fmt: int = tarfile.GNU_FORMAT) -> Path:
    """A tar (gzipped when ``path`` ends in .gz) of ``members``; data None: header only."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is None:  # what tarfile will not write: a header without its data
                buf.write(info.tobuf(fmt))
            else:
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)
    return path


def image(name: str = "test/cat/0.png", data: bytes = b"png") -> tuple[tarfile.TarInfo, bytes]:
    """A regular member with its data (the name says where; the bytes need not be an image)."""
    return entry(name, len(data)), data


def _extract(tmp_path: Path, archive: Path, **caps: float) -> Path:
    return extract_once(archive, tmp_path / "cache" / "key", ArchiveLimits(**caps))


def _refused(tmp_path: Path, archive: Path, match: str, **caps: float) -> str:
    """Refused with one sentence matching ``match``; nothing at all left in the cache."""
    with pytest.raises(InputError, match=match) as err:
        _extract(tmp_path, archive, **caps)
    message = str(err.value)
    assert "\n" not in message and "free space" not in message, message
    assert list((tmp_path / "cache").iterdir()) == []
    return message


def test_a_plain_archive_is_extracted_with_its_marker(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ok.tar.gz", [(entry("./", type=tarfile.DIRTYPE), b""),
                                              image(), image("train/dog/1.png", b"x" * 5000)])
    out = _extract(tmp_path, archive)
    assert (out / COMPLETE).is_file()
    assert (out / "files" / "train" / "dog" / "1.png").read_bytes() == b"x" * 5000
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["key"]  # no temp left


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_a_50_gib_header_without_data_is_refused_before_reading(tmp_path: Path,
                                                                suffix: str) -> None:
    archive = write_tar(tmp_path / f"huge{suffix}", [(entry("test/cat/0.png", 50 * GIB), None)])
    message = _refused(tmp_path, archive, "declaring 50.0 GiB, over data.archive.max_member_mb")
    assert "'test/cat/0.png'" in message


def test_a_50_gib_header_within_raised_caps_streams_and_ends_truncated(tmp_path: Path) -> None:
    # Trusted with huge caps, the member is streamed in chunks: no 50 GiB read, no MemoryError.
    archive = write_tar(tmp_path / "huge.tar.gz", [(entry("test/cat/0.png", 50 * GIB), None)])
    _refused(tmp_path, archive, "not a readable tar archive \\(truncated or malformed",
             max_member_mb=1 << 20, max_total_mb=1 << 20)


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_50_gib_name_or_pax_header_is_refused(tmp_path: Path, kind: bytes) -> None:
    # tarfile reads these headers whole: without the cap, one 50 GiB allocation.
    archive = write_tar(tmp_path / "meta.tar.gz", [(entry("x", 50 * GIB, type=kind), None)])
    _refused(tmp_path, archive, "has a name or pax header of 50.0 GiB")


def test_a_gnu_sparse_member_is_refused(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "sparse.tar",
                     [image(), (entry("test/cat/1.png", type=tarfile.GNUTYPE_SPARSE), None)])
    _refused(tmp_path, archive, "has a sparse member 'test/cat/1.png'.*without --sparse")


def test_a_pax_sparse_member_is_refused(tmp_path: Path) -> None:
    pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "test/a.png",
           "GNU.sparse.realsize": str(50 * GIB)}
    member = entry("test/a.png", 512, pax=pax), b"1\n0\n512\n".ljust(512, b"\0")
    _refused(tmp_path, write_tar(tmp_path / "pax.tar", [member], tarfile.PAX_FORMAT),
             "has a sparse member 'test/a.png'")


@pytest.mark.parametrize("link, kind, fragment", [
    ("/etc/passwd", tarfile.SYMTYPE, "pointing outside the archive \\('/etc/passwd'\\)"),
    ("../../../../etc/passwd", tarfile.SYMTYPE, "pointing outside the archive"),
    ("sub/../../../../x", tarfile.SYMTYPE, "pointing outside the archive"),
    ("sub/../../../x", tarfile.SYMTYPE, "links are not extracted"),
    ("../../outside.png", tarfile.LNKTYPE, "pointing outside the archive"),
    ("0.png", tarfile.SYMTYPE, "links are not extracted, re-create the archive with tar "
     "--dereference"),
    ("test/cat/0.png", tarfile.LNKTYPE, "links are not extracted"),
], ids=["abs-symlink", "dotdot-symlink", "nested-dotdot", "nested-dotdot-inside",
        "dotdot-hardlink", "inner-symlink",
        "inner-hardlink"])
def test_links_are_refused_saying_where_they_point(tmp_path: Path, link: str, kind: bytes,
                                                  fragment: str) -> None:
    archive = write_tar(tmp_path / "links.tar",
                     [image(), (entry("test/cat/link.png", type=kind, link=link), b"")])
    _refused(tmp_path, archive, f"has a link 'test/cat/link.png'( |; ){fragment}")
    assert not (tmp_path / "outside.png").exists()


@pytest.mark.parametrize("kind, word", [(tarfile.CHRTYPE, "character device"),
                                        (tarfile.BLKTYPE, "block device"),
                                        (tarfile.FIFOTYPE, "fifo")])
def test_special_members_are_refused(tmp_path: Path, kind: bytes, word: str) -> None:
    archive = write_tar(tmp_path / "dev.tar", [(entry("test/cat/null", type=kind), b"")])
    _refused(tmp_path, archive, f"has a {word} 'test/cat/null'; only regular files and folders")


@pytest.mark.parametrize("name", ["/tmp/evil.png", "train/../../evil.png", "../evil.png"])
def test_absolute_and_dotdot_paths_are_refused(tmp_path: Path, name: str) -> None:
    _refused(tmp_path, write_tar(tmp_path / "p.tar", [image(name)]), "unsafe member")
    assert not (tmp_path / "evil.png").exists()


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, read in whatever chunks the writer asks for (no 300 MB in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def write_bomb(tmp_path: Path, mib: int) -> Path:
    """A .tar.gz of one member of ``mib`` MiB of zeros: about 1 KB per MiB."""
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=9) as tar:
        tar.addfile(entry("test/cat/0.png", mib << 20), _Zeros(mib << 20))
    assert archive.stat().st_size < mib * 1100
    return archive


@pytest.mark.parametrize("mib", [30, pytest.param(300, marks=pytest.mark.slow)])
def test_a_gzip_bomb_is_refused_after_a_few_mib(tmp_path: Path, mib: int) -> None:
    # 300: the 300 KB that inflates to 300 MB (7 s to build); 30 runs in make test.
    message = _refused(tmp_path, write_bomb(tmp_path, mib), "inflates more than data.archive."
                       "max_ratio \\(100\\) times: .* read \\(at member 'test/cat/0.png'\\), "
                       "like a compression bomb")
    written = re.search(r"times: ([\d.]+) MiB out of", message)
    assert written and float(written.group(1)) < 16  # stopped long before the end


def test_a_low_ratio_cap_refuses_a_merely_compressible_archive(tmp_path: Path) -> None:
    two_letters = bytes(random.Random(0).choices(b"ab", k=3 << 20))  # gzip: about 6 to 1
    text = write_tar(tmp_path / "text.tar.gz", [image("test/a.png", two_letters)])
    _refused(tmp_path, text, "max_ratio \\(2\\)", max_ratio=2)
    assert (_extract(tmp_path, text) / COMPLETE).is_file()  # the default cap extracts it


def test_member_total_and_count_caps(tmp_path: Path) -> None:
    two_mib = [image(f"test/cat/{i}.png", bytes(2 << 20)) for i in range(3)]
    archive = write_tar(tmp_path / "caps.tar", two_mib)
    _refused(tmp_path, archive, "declaring 2.0 MiB, over data.archive.max_member_mb \\(1\\)",
             max_member_mb=1)
    _refused(tmp_path, archive, "holds more than data.archive.max_total_mb \\(5\\) \\(reached "
             "at member 'test/cat/2.png'\\)", max_total_mb=5)
    _refused(tmp_path, archive, "has more than data.archive.max_files \\(2\\) members",
             max_files=2)
    assert (_extract(tmp_path, archive, max_member_mb=2, max_total_mb=6,
                     max_files=3) / COMPLETE).is_file()  # exactly at every cap: accepted


def truncated_tar(tmp_path: Path) -> Path:
    full = write_tar(tmp_path / "full.tar", [image("test/cat/0.png", b"x" * 4000)])
    (tmp_path / "cut.tar").write_bytes(full.read_bytes()[:2000])
    return tmp_path / "cut.tar"


def truncated_gz(tmp_path: Path) -> Path:
    data = random.Random(0).randbytes(20_000)  # incompressible: the cut falls inside it
    full = write_tar(tmp_path / "full.tar.gz", [image("test/cat/0.png", data)])
    (tmp_path / "cut.tar.gz").write_bytes(full.read_bytes()[:12_000])
    return tmp_path / "cut.tar.gz"


def garbage_tar(tmp_path: Path) -> Path:
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive\n" * 100)
    return tmp_path / "junk.tar"


def bad_gzip(tmp_path: Path) -> Path:
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 600)
    return tmp_path / "junk.tar.gz"


def bad_checksum(tmp_path: Path) -> Path:
    raw = bytearray(write_tar(tmp_path / "ok.tar", [image()]).read_bytes())
    raw[148:156] = b"0000000\0"  # the header checksum no longer matches
    (tmp_path / "sum.tar").write_bytes(bytes(raw))
    return tmp_path / "sum.tar"


MALFORMED = {"truncated-tar": truncated_tar, "truncated-gz": truncated_gz,
             "garbage": garbage_tar, "bad-gzip": bad_gzip, "bad-checksum": bad_checksum}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_archive_is_not_blamed_on_the_cache(tmp_path: Path, case: str) -> None:
    _refused(tmp_path, MALFORMED[case](tmp_path), "is not a readable tar archive \\(truncated "
             "or malformed")


def test_a_file_and_a_folder_of_the_same_name_is_a_malformed_archive(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "clash.tar", [image("test/cat"), image("test/cat/0.png")])
    _refused(tmp_path, archive, "is a malformed tar archive: a member cannot be written")


@pytest.mark.parametrize("code, blamed, not_blamed", [
    (errno.ENOSPC, "free space or set data.cache_dir", "malformed"),
    (errno.EROFS, "free space or set data.cache_dir", "malformed"),
    (errno.EISDIR, "is a malformed tar archive", "free space"),
    (errno.ENAMETOOLONG, "is a malformed tar archive", "free space")])
def test_write_errors_blame_the_cache_only_when_it_is_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, blamed: str,
        not_blamed: str) -> None:
    def fail(*_: object) -> None:
        raise OSError(code, os.strerror(code), "x.png")

    archive = write_tar(tmp_path / "ok.tar", [image()])
    monkeypatch.setattr(archive_module, "_safe_extract", fail)
    with pytest.raises(InputError, match=blamed) as err:
        _extract(tmp_path, archive)
    assert not_blamed not in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []
