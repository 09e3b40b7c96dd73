"""Hostile data for ``compress apply``: crafted archives and image folders, refused where the data
enters with exit 2 and one sentence, no traceback, nothing written outside the run folder and
the cache, and nothing half-extracted left in the cache (a folder without its COMPLETE marker).

The archives come from the builders of tests/data/test_archive.py, which tests the caps and
rules themselves; here the whole command is held to the README's promise.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

from compress.data.archive import COMPLETE
from tests.conftest import ROOT
from tests.data.test_archive import GIB, MALFORMED, entry, image, write_bomb, write_tar
from tests.hostile import Tree, assert_no_marker, assert_refused, hostile, invoke

pytestmark = hostile

FACTORY = f"{ROOT}/examples/quickstart/digits_cnn.py:digits_cnn"


def _pax_sparse(tmp: Path) -> Path:
    pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "test/a.png",
           "GNU.sparse.realsize": str(50 * GIB)}
    return write_tar(tmp / "d.tar", [(entry("test/a.png", 512, pax=pax),
                                      b"1\n0\n512\n".ljust(512, b"\0"))], tarfile.PAX_FORMAT)


def _link(target: str, kind: bytes = tarfile.SYMTYPE) -> Callable[[Path], Path]:
    return lambda tmp: write_tar(tmp / "d.tar", [image(), (entry("test/cat/l.png", type=kind,
                                                                 link=target), b"")])


def _one(member: tuple[tarfile.TarInfo, bytes | None], name: str = "d.tar.gz"):  # type: ignore[no-untyped-def]
    return lambda tmp: write_tar(tmp / name, [member])


def _three_of_2_mib(tmp: Path) -> Path:
    return write_tar(tmp / "d.tar", [image(f"test/cat/{i}.png", bytes(2 << 20)) for i in range(3)])


def _compressible(tmp: Path) -> Path:
    return write_tar(tmp / "d.tar.gz", [image("test/cat/0.png", b"ab" * (2 << 20))])


# name: (builds the data path in the test's folder, recipe data.archive, sentence fragments)
CASES: dict[str, tuple[Callable[[Path], Path], dict[str, float], tuple[str, ...]]] = {
    "50-gib-header": (_one((entry("test/cat/0.png", 50 * GIB), None)), {},
                      ("declaring 50.0 GiB", "data.archive.max_member_mb (1024)")),
    "50-gib-header-plain-tar": (_one((entry("test/cat/0.png", 50 * GIB), None), "d.tar"), {},
                                ("declaring 50.0 GiB",)),
    "50-gib-long-name": (_one((entry("x", 50 * GIB, type=tarfile.GNUTYPE_LONGNAME), None)), {},
                         ("name or pax header of 50.0 GiB",)),
    "50-gib-pax-header": (_one((entry("x", 50 * GIB, type=tarfile.XHDTYPE), None)), {},
                          ("name or pax header of 50.0 GiB",)),
    "gnu-sparse": (_one((entry("test/cat/1.png", type=tarfile.GNUTYPE_SPARSE), None)), {},
                   ("sparse member 'test/cat/1.png'",)),
    "pax-sparse": (_pax_sparse, {}, ("sparse member 'test/a.png'",)),
    "symlink-absolute": (_link("/etc/passwd"), {}, ("pointing outside the archive",)),
    "symlink-dotdot": (_link("../../../../etc/passwd"), {}, ("pointing outside the archive",)),
    "hardlink-dotdot": (_link("../x.png", tarfile.LNKTYPE), {}, ("pointing outside",)),
    "symlink-inside": (_link("0.png"), {}, ("links are not extracted",)),
    "char-device": (_one((entry("test/cat/n", type=tarfile.CHRTYPE), b"")), {},
                    ("character device 'test/cat/n'",)),
    "block-device": (_one((entry("test/cat/n", type=tarfile.BLKTYPE), b"")), {},
                     ("block device",)),
    "fifo": (_one((entry("test/cat/n", type=tarfile.FIFOTYPE), b"")), {}, ("fifo",)),
    "absolute-path": (_one(image("/tmp/evil.png")), {}, ("unsafe member '/tmp/evil.png'",)),
    "dotdot-path": (_one(image("test/../../evil.png")), {}, ("unsafe member",)),
    "gzip-bomb": (lambda tmp: write_bomb(tmp, 30), {},
                  ("inflates more than data.archive.max_ratio (100)", "compression bomb")),
    "low-ratio-cap": (_compressible, {"max_ratio": 2}, ("data.archive.max_ratio (2)",)),
    "member-cap": (_three_of_2_mib, {"max_member_mb": 1}, ("data.archive.max_member_mb (1)",)),
    "total-cap": (_three_of_2_mib, {"max_total_mb": 5}, ("data.archive.max_total_mb (5)",)),
    "files-cap": (_three_of_2_mib, {"max_files": 2}, ("data.archive.max_files (2)",)),
    "file-folder-clash": (lambda tmp: write_tar(tmp / "d.tar", [image("test/cat"),
                                                                image("test/cat/0.png")]), {},
                          ("is a malformed tar archive: a member cannot be written",)),
    **{f"malformed-{name}": (make, {}, ("is not a readable tar archive (truncated or malformed",))
       for name, make in MALFORMED.items()},
}


def _apply(tmp_path: Path, data: dict[str, object]):  # type: ignore[no-untyped-def]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "version": 1,
        "model": {"source": "python", "factory": FACTORY, "num_classes": 2},
        "data": {"source": "imagefolder", "cache_dir": "cache", **data},
        "pruning": {"ratio": 0.5}, "finetune": {"epochs": 1, "max_steps": 1},
        "export": {"onnx": False}, "report": {"latency": False}}))
    tree = Tree(tmp_path)
    result = invoke(["apply", recipe, "--out", tmp_path / "run"], cwd=tmp_path)
    assert tree.new_files(allowed=["run", "cache"]) == []
    assert_no_marker(tmp_path)
    extracted = tmp_path / "cache" / "imagefolder"
    if extracted.is_dir():  # nothing half-extracted: no temporary folder, no unmarked files/
        for folder in extracted.iterdir():
            assert not folder.name.startswith("."), folder
            assert (folder / COMPLETE).is_file() or not (folder / "files").exists(), folder
    return result


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_archive_is_one_sentence_and_exit_2(tmp_path: Path, case: str) -> None:
    make, caps, fragments = CASES[case]
    archive = make(tmp_path)
    data = {"path": archive.name, **({"archive": caps} if caps else {})}
    line = assert_refused(_apply(tmp_path, data), f"data.path '{archive}'", *fragments)
    assert "free space" not in line
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()
    assert not list((tmp_path / "cache").rglob(COMPLETE))  # a refused archive is never cached


def _mixed_sizes(root: Path) -> None:
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i, size in enumerate([(8, 8), (12, 10)]):
                Image.new("RGB", size).save(root / split / cls / f"{i}.png")


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_images_of_mixed_sizes_without_image_size_say_to_set_it(tmp_path: Path,
                                                                packed: bool) -> None:
    _mixed_sizes(tmp_path / "src")
    path = "src"
    if packed:
        with tarfile.open(tmp_path / "mixed.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "src", arcname=".")
        path = "mixed.tar.gz"
    assert_refused(_apply(tmp_path, {"path": path}), "the images of split 'test' differ in "
                   "size (0.png is 8x8, 1.png is 12x10); set data.image_size")


@pytest.mark.parametrize("archive, fragment", [
    ({"max_ratio": 0.5}, "'data.archive.max_ratio'"),
    ({"max_files": 0}, "'data.archive.max_files'"),
    ({"max_member_mb": "big"}, "'data.archive.max_member_mb'"),
    ({"unknown": 1}, "data.archive.unknown"),
])
def test_bad_archive_caps_are_refused_by_validate(tmp_path: Path, archive: dict[str, object],
                                                  fragment: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
        "data": {"source": "imagefolder", "path": "x.tar.gz", "archive": archive},
        "pruning": {"ratio": 0.5}}))
    tree = Tree(tmp_path)
    assert_refused(invoke(["validate", recipe], cwd=tmp_path), fragment)
    assert tree.new_files() == []


def test_archive_caps_are_only_for_imagefolder(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
        "data": {"source": "digits", "archive": {"max_ratio": 10}}, "pruning": {"ratio": 0.5}}))
    assert_refused(invoke(["validate", recipe], cwd=tmp_path),
                   "data.archive is not used by dataset source 'digits'")
