"""The small trained decoder's corpus and script (benchmarks/decoder_corpus.py, decoder_train.py,
decoder_model.py): the .deb and R lazy-load reading against the formats, built here byte by
byte; the chapter split; the pinned checksum; and, slow, the whole script at its tiny setting."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import decoder_corpus as corpus  # noqa: E402

sys.path.remove(str(BENCH))

UTF8 = 1 << 3
HAS_ATTR = 1 << 9
HAS_TAG = 1 << 10


def _xdr_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">ii", 9 | UTF8, len(raw)) + raw


def _xdr_names(names: list[str]) -> bytes:
    """The attribute pairlist ``names = c(...)`` (a tagged cell, then NULL)."""
    symbol = struct.pack(">i", 1) + _xdr_string("names")
    strings = struct.pack(">ii", 16, len(names)) + b"".join(map(_xdr_string, names))
    return struct.pack(">i", 2 | HAS_TAG) + symbol + strings + struct.pack(">i", 254)


def _xdr(obj: object) -> bytes:
    """R's XDR serialisation (format 3) of a str / list of str / int pair / named dict."""
    if isinstance(obj, dict):
        body = b"".join(_xdr(v) for v in obj.values())
        return (struct.pack(">ii", 19 | HAS_ATTR, len(obj)) + body
                + _xdr_names(list(obj)))
    if all(isinstance(x, int) for x in obj):  # type: ignore[union-attr]
        return struct.pack(f">ii{len(obj)}i", 13, len(obj), *obj)  # type: ignore[arg-type]
    out = struct.pack(">ii", 16, len(obj))  # type: ignore[arg-type]
    return out + b"".join(struct.pack(">i", 9) + struct.pack(">i", -1) if x is None
                          else _xdr_string(x) for x in obj)  # type: ignore[union-attr]


def _serialized(obj: object) -> bytes:
    return (b"X\n" + struct.pack(">iiii", 3, 0x40201, 0x30500, 5) + b"UTF-8" + _xdr(obj))


def _deb(books: dict[str, list[str | None]], path: Path) -> Path:
    """A .deb (ar archive) whose data.tar.xz holds an R lazy-load database of ``books``."""
    rdb, offsets = b"", {}
    for name, lines in books.items():
        payload = _serialized(lines)
        blob = struct.pack(">i", len(payload)) + zlib.compress(payload)
        offsets[name] = [len(rdb), len(blob)]
        rdb += blob
    rdx = gzip.compress(_serialized({"variables": offsets, "references": {},
                                     "compressed": [1]}))
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, data in (("Rdata.rdx", rdx), ("Rdata.rdb", rdb)):
            info = tarfile.TarInfo(corpus.DATA + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"),
               ("data.tar.xz", tar_bytes.getvalue())]
    ar = b"!<arch>\n"
    for name, data in members:
        ar += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        ar += b"\n" * (len(data) % 2)
    path.write_bytes(ar)
    return path


def _book(title: str, chapters: int, heading: str = "CHAPTER") -> list[str | None]:
    lines: list[str | None] = [title, "", "by Jane Austen", ""]
    for k in range(1, chapters + 1):
        lines += [f"{heading} {k}", "", f"{title} chapter {k} opens", "and goes on.", "", None,
                  f"Second paragraph {k}."]
    return lines


def test_the_package_is_read_from_its_deb_and_r_lazy_load_database(tmp_path: Path) -> None:
    books = {name: _book(name.upper(), 2) for name in corpus.BOOKS}
    books["emma"].append("Caf\u00e9 \u00e0 la mode.")  # UTF-8 strings survive
    read = corpus.read_books(_deb(books, tmp_path / "x.deb"))
    assert read == books


def test_chapters_are_split_across_the_novels_in_a_fixed_order() -> None:
    # 20 chapters in all: numbers 0..19 in BOOKS order, so 4 and 14 calibrate, 9 and 19 are
    # held out; the first novel's title page goes with its first chapter.
    books = {name: _book(name.upper(), 2 if i else 10, "Chapter" if i % 2 else "CHAPTER")
             for i, name in enumerate(corpus.BOOKS)}
    books["persuasion"] = _book("PERSUASION", 2)
    texts, counts = corpus.split_books(books)
    assert counts["sensesensibility"] == {"train": 8, "heldout": 1, "calibration": 1}
    assert counts["persuasion"] == {"train": 1, "heldout": 1, "calibration": 0}
    assert sum(sum(c.values()) for c in counts.values()) == 20
    held = texts["heldout"].split("\n\n")
    assert held[:2] == ["CHAPTER 10", "SENSESENSIBILITY chapter 10 opens and goes on."]
    assert "PERSUASION chapter 2 opens" in texts["heldout"]
    assert texts["train"].startswith("SENSESENSIBILITY\n\nby Jane Austen\n\nCHAPTER 1\n\n")
    assert "chapter 5 opens" in texts["calibration"] and "chapter 5 " not in texts["train"]
    assert set(texts["train"].split("\n\n")).isdisjoint(held[1::3])


def test_a_deb_with_another_checksum_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESS_BENCH_CACHE", str(tmp_path))
    folder = tmp_path / "corpus" / f"janeausten-{corpus.VERSION}"
    folder.mkdir(parents=True)
    (folder / f"{corpus.PACKAGE}_{corpus.VERSION}_all.deb").write_bytes(b"not the package")
    with pytest.raises(SystemExit, match="not the pinned " + corpus.SHA256):
        corpus.prepare_corpus()
    assert sorted(p.name for p in folder.iterdir()) == [
        f"{corpus.PACKAGE}_{corpus.VERSION}_all.deb"]


@pytest.mark.slow
def test_decoder_script_tiny(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # The .deb of an earlier run, when there is one: the test need not fetch it again.
    known = corpus.cache_root() / "corpus" / f"janeausten-{corpus.VERSION}"
    deb = known / f"{corpus.PACKAGE}_{corpus.VERSION}_all.deb"
    if deb.is_file():
        target = cache / "corpus" / known.name
        target.mkdir(parents=True)
        shutil.copy(deb, target)
    env = {**os.environ, "COMPRESS_BENCH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(BENCH / "decoder_model.py"), "--tiny", "--threads", "1",
           "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "decoder_model-tiny.json").read_text())
    model_dir = Path(r["model_dir"])
    assert model_dir.parent == cache / "decoder" and not r["cached"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model_dir.iterdir()}
    assert r["config"]["num_attention_heads"] == 4 and r["config"]["num_key_value_heads"] == 2
    assert r["training"]["tokens_seen"] == 12 * 4 * 32
    # compress apply measures the same held-out perplexity as the script, before pruning
    check = r["apply_check"]
    assert check["baseline"]["perplexity"] == pytest.approx(r["heldout"]["perplexity"],
                                                            rel=1e-6)
    assert check["compressed"]["params"] < check["baseline"]["params"]
    assert check["proofs"] and all(p == "proven" for p in check["proofs"])
    corpus_dir = Path(r["corpus_dir"])
    assert {f"{s}.txt" for s in corpus.SPLITS} <= {p.name for p in corpus_dir.iterdir()}
    assert r["corpus"]["deb_sha256"] == corpus.SHA256
    # a second run reuses the cached model
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp_path / "decoder_model-tiny.json").read_text())
    assert again["cached"] and again["model_dir"] == r["model_dir"]
    assert again["heldout"] == r["heldout"]
