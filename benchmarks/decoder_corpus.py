"""The English corpus the small trained decoder learns from: Jane Austen's six novels.

No pretrained decoder and no dataset hub can be reached on these machines; the package
registries can. Debian's package ``r-cran-janeaustenr`` (version pinned in :data:`VERSION`, its
SHA-256 in :data:`SHA256`) ships the six novels as Project Gutenberg transcribed them: about
4 MB of English narrative prose and dialogue, the novels in the public domain, the package
MIT-licensed. It is an R package, so the text sits in R's lazy-load database
(``data/Rdata.rdx`` + ``Rdata.rdb``: zlib blobs of R's XDR serialisation); :func:`unserialize`
reads the part of that format the package uses (character vectors, lists, attributes), so no R
is needed.

The ``.deb`` is fetched with ``apt-get download`` (no root needed) into the cache folder
(``$COMPRESS_BENCH_CACHE``, default ``~/.cache/compress-bench``), checked against the pinned
SHA-256 and unpacked in Python. Lines are joined into paragraphs; each novel is cut into its
chapters (a line ``CHAPTER I`` / ``Chapter 1``; the title page goes with the first), and the
chapters are numbered across the novels in a fixed order (:data:`BOOKS`): chapter ``k`` is
held out when ``k % 10 == 9``, calibration when ``k % 10 == 4``, training otherwise
(:func:`split_of`). The splits are written as a ``text_lm`` folder: ``train.txt``,
``heldout.txt``, ``calibration.txt``.

Example:
    >>> [split_of(k) for k in (0, 4, 9, 19)]
    ['train', 'calibration', 'heldout', 'heldout']
    >>> unwrap(["It is a truth", "universally acknowledged.", "", "", "Yes."])
    'It is a truth universally acknowledged.\\n\\nYes.'
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any

__all__ = ["PACKAGE", "VERSION", "SHA256", "LICENCE", "BOOKS", "SPLITS", "cache_root",
           "fetch_deb", "read_books", "unserialize", "unwrap", "chapters", "split_of",
           "split_books", "prepare_corpus"]

PACKAGE = "r-cran-janeaustenr"
VERSION = "1.0.0-1"
SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
LICENCE = ("the novels are in the public domain (Project Gutenberg transcriptions); the R "
           "package janeaustenr (Julia Silge) and its Debian packaging are MIT-licensed")
# Publication order: a chapter's number, and so its split, never depends on a dict's order.
BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey",
         "persuasion")
SPLITS = ("train", "heldout", "calibration")
DATA = "./usr/lib/R/site-library/janeaustenr/data/"
_CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.I)


def cache_root() -> Path:
    """Where the corpus and the trained decoder are cached, outside the repository."""
    return Path(os.environ.get("COMPRESS_BENCH_CACHE", Path.home() / ".cache" / "compress-bench"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_deb(folder: Path) -> Path:
    """The pinned ``.deb`` in ``folder``, downloaded with ``apt-get download`` when missing."""
    deb = folder / f"{PACKAGE}_{VERSION}_all.deb"
    if not deb.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=folder,
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            sys.exit(f"cannot run apt-get download {PACKAGE}={VERSION}: {err}; place the "
                     f".deb (sha256 {SHA256}) at {deb}")
        if done.returncode != 0 or not deb.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            sys.exit(f"apt-get download {PACKAGE}={VERSION} failed ({tail}); run apt-get "
                     f"update, or place the .deb (sha256 {SHA256}) at {deb}")
    if (digest := _sha256(deb)) != SHA256:
        sys.exit(f"{deb} has sha256 {digest}, not the pinned {SHA256}: remove it to fetch again")
    return deb


def _deb_data(deb: bytes) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive), opened."""
    assert deb[:8] == b"!<arch>\n", "not an ar archive"
    at = 8
    while at < len(deb):
        name, size = deb[at:at + 16].decode().strip(), int(deb[at + 48:at + 58])
        body = deb[at + 60:at + 60 + size]
        if name.rstrip("/").startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body))
        at += 60 + size + size % 2
    raise AssertionError("the .deb has no data.tar member")


class _Reader:
    """R's XDR serialisation (format 2 or 3), the item types a data package holds."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at, self.refs = data, 0, []  # type: tuple[bytes, int, list[Any]]

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.at)
        self.at += 4
        return value

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & 1 << 9, flags & 1 << 10
        if kind in (242, 254):  # empty environment, NULL
            return None
        if kind == 255:  # a reference to an earlier symbol
            return self.refs[(flags >> 8 or self.int()) - 1]
        if kind == 1:  # symbol: its name
            self.refs.append(self.item())
            return self.refs[-1]
        if kind == 9:  # one string (CHARSXP); bit 3 = UTF-8, else latin-1 or ASCII
            n = self.int()
            if n == -1:
                return None
            text = self.data[self.at:self.at + n].decode("utf-8" if flags & 1 << 3 else "latin-1")
            self.at += n
            return text
        if kind == 2:  # pairlist: (tag, value) cells until NULL
            cells = {}
            while kind == 2:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else len(cells)
                cells[tag] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & 1 << 9, flags & 1 << 10
            assert kind == 254, f"pairlist ends in type {kind}"
            return cells
        if kind in (10, 13, 14, 16, 19):  # logical, integer, double, character, list
            n = self.int()
            if kind in (10, 13, 14):
                fmt = "d" if kind == 14 else "i"
                value: Any = list(struct.unpack_from(f">{n}{fmt}", self.data, self.at))
                self.at += n * struct.calcsize(fmt)
            else:
                value = [self.item() for _ in range(n)]
            attrs = self.item() if has_attr else {}
            names = attrs.get("names")
            return dict(zip(names, value)) if names is not None and kind == 19 else value
        raise ValueError(f"R serialisation type {kind} is not read here (at byte {self.at})")


def unserialize(data: bytes) -> Any:
    """An R object from its XDR serialisation: lists with names become dicts.

    Example:
        >>> head = b"X\\n" + struct.pack(">3i", 2, 0, 0)
        >>> one = struct.pack(">ii", 16, 1) + struct.pack(">ii", 9 | 1 << 3, 2) + b"hi"
        >>> unserialize(head + one)
        ['hi']
    """
    assert data[:2] == b"X\n", "not R's XDR serialisation"
    reader = _Reader(data)
    reader.at = 2
    version = reader.int()
    reader.int(), reader.int()  # the writer's R version, the oldest that reads it
    if version == 3:
        length = reader.int()  # the native encoding's name follows
        reader.at += length
    return reader.item()


def read_books(deb: Path) -> dict[str, list[str]]:
    """Each novel's lines, from the package's lazy-load database."""
    with _deb_data(deb.read_bytes()) as tar:
        index, blobs = (tar.extractfile(DATA + name).read()  # type: ignore[union-attr]
                        for name in ("Rdata.rdx", "Rdata.rdb"))
    books = {}
    for name, (offset, length) in unserialize(gzip.decompress(index))["variables"].items():
        blob = blobs[offset:offset + length]
        books[name] = unserialize(zlib.decompress(blob[4:]))
    assert sorted(books) == sorted(BOOKS), sorted(books)
    return books


def unwrap(lines: list[str | None]) -> str:
    """Paragraphs (runs of non-blank lines) as one line each, separated by a blank line."""
    paragraphs, current = [], []
    for line in lines + [""]:
        if line and line.strip():
            current.append(" ".join(line.split()))
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return "\n\n".join(paragraphs)


def chapters(lines: list[str | None]) -> list[str]:
    """A novel's chapters (heading included), the title page joined to the first."""
    starts = [i for i, line in enumerate(lines) if line and _CHAPTER.match(line)]
    assert starts, "no chapter heading"
    bounds = [0, *starts[1:], len(lines)]
    return [unwrap(lines[a:b]) for a, b in zip(bounds, bounds[1:])]


def split_of(k: int) -> str:
    """The split of chapter ``k`` (numbered from 0 across the novels in :data:`BOOKS` order)."""
    return {9: "heldout", 4: "calibration"}.get(k % 10, "train")


def split_books(books: dict[str, list[str | None]]) -> tuple[dict[str, str], dict[str, Any]]:
    """The text of each split, and the chapter count of each split per novel."""
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    counts: dict[str, dict[str, int]] = {}
    k = 0
    for name in BOOKS:
        counts[name] = dict.fromkeys(SPLITS, 0)
        for chapter in chapters(books[name]):
            split = split_of(k)
            parts[split].append(chapter)
            counts[name][split] += 1
            k += 1
    return {s: "\n\n".join(p) + "\n" for s, p in parts.items()}, counts


def prepare_corpus(root: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The ``text_lm`` folder of the splits (made once) and its manifest."""
    folder = (root or cache_root()) / "corpus" / f"janeausten-{VERSION}"
    manifest_path = folder / "corpus.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if all(_sha256(folder / f"{s}.txt") == manifest["splits"][s]["sha256"] for s in SPLITS):
            return folder, manifest
    deb = fetch_deb(folder)
    texts, counts = split_books(read_books(deb))
    manifest = {"name": "Jane Austen's six novels", "source": f"Debian package {PACKAGE}",
                "version": VERSION, "deb_sha256": SHA256, "licence": LICENCE,
                "split_rule": "chapters numbered from 0 across the novels in publication "
                              "order: k % 10 == 9 held out, k % 10 == 4 calibration, the rest "
                              "training", "books": list(BOOKS), "chapters": counts,
                "splits": {}}
    for split, text in texts.items():
        path = folder / f"{split}.txt"
        path.write_text(text, encoding="utf-8")
        manifest["splits"][split] = {"chars": len(text), "words": len(text.split()),
                                     "sha256": _sha256(path)}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder, manifest
