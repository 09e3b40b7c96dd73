"""compress.data: every source on tiny offline data, the common pipeline, caches and bad input."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import DATASETS, build_data, imagefolder
from compress.data import archive as archive_module
from compress.data.archive import COMPLETE
from compress.data.imagefolder import LazyImages
from compress.errors import InputError
from compress.recipe.sources import DataSpec
from tests.conftest import shared_path

COLORS = {"dog": (0, 255, 0), "cat": (255, 0, 0)}  # not sorted: indices must follow sorted names


def make_folder(root: Path, splits: tuple[str, ...] = ("train", "test"), per_class: int = 3,
                sizes: list[tuple[int, int]] | None = None) -> Path:
    """split/class/*.png|.jpg with one solid colour per class."""
    for split in splits:
        for cls, color in COLORS.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                size = sizes[i % len(sizes)] if sizes else (8, 8)
                ext = ".png" if cls == "cat" else ".jpg"  # both formats are read
                Image.new("RGB", size, color).save(root / split / cls / f"{i:04d}{ext}")
    return root


def make_archive(tmp_path: Path) -> Path:
    """A .tar.gz whose members start with './', like the shared cifar10-jpg archive."""
    folder = make_folder(tmp_path / "src")
    archive = tmp_path / "input" / "tiny.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    return archive


def write_fake_mnist(root: Path, n_train: int = 12, n_test: int = 6) -> Path:
    """MNIST's raw idx files, which torchvision reads offline without checksums."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (np.arange(n * 28 * 28) % 256).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def tiny(source: str, tmp_path: Path) -> tuple[dict[str, Any], tuple[int, ...], int]:
    """(DataSpec kwargs, sample shape, number of classes) for a tiny offline copy of a source."""
    if source == "digits":
        return {"train_subset": 64, "eval_subset": 32}, (1, 8, 8), 10
    if source == "imagefolder":
        return {"path": str(make_folder(tmp_path / "folder"))}, (3, 8, 8), 2
    if source == "torchvision":
        return {"name": "MNIST", "path": str(write_fake_mnist(tmp_path / "mnist"))}, (1, 28, 28), 10
    pytest.fail(f"dataset source {source!r} has no tiny test data; add it to tiny()")


# Token sources (text, text_lm) yield int64 ids, not images: tests/data/test_text.py covers them.
TOKEN_SOURCES = {"text", "text_lm"}


def test_token_sources_have_their_own_tests() -> None:
    from tests.data import test_text as test_data_text

    assert TOKEN_SOURCES <= set(DATASETS.names())
    assert hasattr(test_data_text, "test_text_source_tokenises_pads_and_labels")
    assert hasattr(test_data_text, "test_text_lm_cuts_blocks")


@pytest.mark.parametrize("source", [n for n in DATASETS.names() if n not in TOKEN_SOURCES])
def test_every_source_builds_loaders(source: str, tmp_path: Path) -> None:
    kwargs, shape, classes = tiny(source, tmp_path)
    data = build_data(DataSpec(source=source, batch_size=4, eval_batch_size=5, **kwargs))
    assert data.sample_shape == shape
    assert data.num_classes == classes == len(data.class_names)
    assert data.train is not None
    x, y = next(iter(data.train))
    assert x.shape == (4, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and 0 <= y.min() and y.max() < classes
    seen = sum(len(yb) for _, yb in data.eval)
    assert seen == len(data.eval.dataset)
    probe = data.probe_batch(3)
    assert probe.shape == (3, *shape) and torch.equal(probe, data.probe_batch(3))
    assert torch.equal(probe, next(iter(data.eval))[0][:3])


def test_digits_split_is_fixed_and_stratified() -> None:
    a = build_data(DataSpec(source="digits"), seed=0)
    b = build_data(DataSpec(source="digits"), seed=5)
    assert (len(a.train.dataset), len(a.eval.dataset)) == (1437, 360)
    assert torch.equal(a.probe_batch(360), b.probe_batch(360))  # the recipe seed never moves it
    counts = torch.bincount(torch.cat([y for _, y in a.eval]), minlength=10)
    assert counts.min() >= 35 and a.class_names == [str(i) for i in range(10)]


def test_imagefolder_labels_follow_sorted_class_folders(tmp_path: Path) -> None:
    data = build_data(DataSpec(source="imagefolder", path=str(make_folder(tmp_path / "in"))))
    assert data.class_names == ["cat", "dog"]
    for x, y in data.eval.dataset:
        red, green = x[0].mean().item(), x[1].mean().item()
        assert (red > 0.9 and green < 0.1) if y == 0 else (green > 0.9 and red < 0.1)
    assert not list((tmp_path / "in").rglob("*.pt"))  # caches never go next to the input


def test_imagefolder_archive_is_extracted_once_outside_the_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_archive(tmp_path)
    with tarfile.open(archive) as tar:
        assert any(n.startswith("./train/cat/") for n in tar.getnames())
    spec = DataSpec(source="imagefolder", path="input/tiny.tar.gz", cache_dir="cache")
    resolve = lambda p: tmp_path / p  # noqa: E731  (as Recipe.resolve_path does)
    first = build_data(spec, resolve=resolve)
    assert sorted(p.name for p in archive.parent.iterdir()) == ["tiny.tar.gz"]
    done = list((tmp_path / "cache").rglob(COMPLETE))
    assert len(done) == 1 and list(done[0].parent.glob("decoded-*.pt"))

    def boom(*_: Any) -> None:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(archive_module, "_safe_extract", boom)
    monkeypatch.setattr(imagefolder, "_decode_all", boom)
    second = build_data(spec, resolve=resolve)
    assert second.class_names == first.class_names == ["cat", "dog"]
    assert torch.equal(second.probe_batch(6), first.probe_batch(6))
    assert [y for _, y in second.eval.dataset] == [0, 0, 0, 1, 1, 1]


def test_interrupted_extraction_is_never_trusted(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_archive(tmp_path)
    real = archive_module._safe_extract

    def crash(*args: Any) -> None:
        real(*args)
        raise KeyboardInterrupt  # after the files are out, before the marker

    monkeypatch.setattr(archive_module, "_safe_extract", crash)
    spec = DataSpec(source="imagefolder", path=str(archive), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(KeyboardInterrupt):
        build_data(spec)
    assert list((tmp_path / "cache" / "imagefolder").iterdir()) == []  # nothing half-done left
    monkeypatch.setattr(archive_module, "_safe_extract", real)
    assert build_data(spec).num_classes == 2


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_archives_are_rejected(kind: str, tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo({"dotdot": "train/../../evil.png", "absolute": "/tmp/evil.png",
                                "symlink": "train/cat/link.png"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(InputError, match="unsafe member|pointing outside the archive"):
        build_data(DataSpec(source="imagefolder", path=str(archive),
                            cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "evil.png").exists()


def test_mixed_sizes_decode_lazily_and_resize(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "in", sizes=[(8, 8), (12, 10)])
    spec = DataSpec(source="imagefolder", path=str(folder), image_size=6, batch_size=6)
    data = build_data(spec)
    assert isinstance(data.eval.dataset.base, LazyImages)
    assert data.sample_shape == (3, 6, 6)
    assert next(iter(data.train))[0].shape == (6, 3, 6, 6)
    monkeypatch.setattr(imagefolder, "_decode_all", None)  # remembered: not tried again
    assert isinstance(build_data(spec).eval.dataset.base, LazyImages)


@pytest.mark.parametrize("too_big", [False, True], ids=["decoded", "headers"])
def test_mixed_sizes_without_image_size_are_refused_where_data_enters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, too_big: bool) -> None:
    # Too big to hold decoded, the sizes are compared from the file headers.
    if too_big:
        monkeypatch.setattr(imagefolder, "MAX_DECODED_BYTES", 10)
    folder = make_folder(tmp_path / "in", sizes=[(8, 8), (12, 10)])
    spec = DataSpec(source="imagefolder", path=str(folder), cache_dir=str(tmp_path / "c"))
    sentence = (f"data.path '{folder}': the images of split 'test' differ in size (0000.png "
                "is 8x8, 0001.png is 12x10); set data.image_size to resize them all to one "
                "square size")
    with pytest.raises(InputError) as err:
        build_data(spec)
    assert str(err.value) == sentence
    decode_all = imagefolder._decode_all
    monkeypatch.setattr(imagefolder, "_decode_all", None)  # the marker remembers the sizes
    with pytest.raises(InputError) as err:
        build_data(spec)
    assert str(err.value) == sentence
    monkeypatch.setattr(imagefolder, "_decode_all", decode_all)  # the train split's first time
    resized = build_data(spec.model_copy(update={"image_size": 6}))
    assert next(iter(resized.eval))[0].shape == (6, 3, 6, 6)


def test_pil_fallback_gives_the_same_pixels(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "in")
    fast = build_data(DataSpec(source="imagefolder", path=str(folder),
                               cache_dir=str(tmp_path / "c1")))
    monkeypatch.setattr(imagefolder, "_fast_decoder", lambda: None)
    pil = build_data(DataSpec(source="imagefolder", path=str(folder),
                              cache_dir=str(tmp_path / "c2")))
    assert torch.equal(fast.probe_batch(6), pil.probe_batch(6))


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "in")
    (folder / "test" / "cat" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot decode image .*broken.jpg"):
        build_data(DataSpec(source="imagefolder", path=str(folder)))


def test_imagefolder_tolerates_a_wrapping_folder_and_eval_only(tmp_path: Path) -> None:
    make_folder(tmp_path / "in" / "wrapped", splits=("val",))
    data = build_data(DataSpec(source="imagefolder", path=str(tmp_path / "in"),
                               eval_split="val"), train=False)
    assert data.train is None and data.class_names == ["cat", "dog"]


def test_same_seed_same_subset_order_and_augmentation() -> None:
    spec = DataSpec(source="digits", train_subset=200, eval_subset=50, batch_size=50,
                    augment=["random_crop", "horizontal_flip"], crop_padding=2)
    a, b, c = (build_data(spec, seed=s) for s in (7, 7, 8))
    assert a.train.dataset.indices == b.train.dataset.indices != c.train.dataset.indices
    assert a.eval.dataset.indices == b.eval.dataset.indices != c.eval.dataset.indices
    for (xa, ya), (xb, yb) in zip(a.train, b.train):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    first, second = ([y for _, y in a.train] for _ in range(2))
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new order every epoch


def test_eval_is_never_augmented() -> None:
    plain = build_data(DataSpec(source="digits", eval_subset=64))
    augmented = build_data(DataSpec(source="digits", eval_subset=64, crop_padding=3,
                                    augment=["random_crop", "horizontal_flip"]))
    for (xp, _), (xa, _) in zip(plain.eval, augmented.eval):
        assert torch.equal(xp, xa)
    xp, xa = next(iter(plain.train))[0], next(iter(augmented.train))[0]
    assert not torch.equal(xp, xa)  # same order (same seed), so only augmentation differs


def test_val_subset_is_held_out_before_train_subset() -> None:
    spec = DataSpec(source="digits", val_subset=100, train_subset=200, eval_batch_size=32)
    data = build_data(spec, seed=3)
    val, train = data.val.dataset.indices, data.train.dataset.indices
    assert len(val) == 100 and len(train) == 200 and not set(val) & set(train)
    assert data.val.batch_size == 32 and len(data.eval.dataset) == 360  # eval untouched
    whole = build_data(DataSpec(source="digits", val_subset=100), seed=3)
    assert whole.val.dataset.indices == val  # train_subset picks after the hold-out
    assert sorted(whole.val.dataset.indices + whole.train.dataset.indices) == list(range(1437))
    assert build_data(DataSpec(source="digits")).val is None
    assert build_data(DataSpec(source="digits", val_subset=100), train=False).val is None


def test_val_subset_is_seeded_fixed_in_order_and_never_augmented() -> None:
    spec = DataSpec(source="digits", val_subset=64, eval_batch_size=16)
    augmented = spec.model_copy(update={"augment": ["random_crop", "horizontal_flip"],
                                        "crop_padding": 2})
    a, b, c = build_data(spec, seed=7), build_data(augmented, seed=7), build_data(spec, seed=8)
    assert a.val.dataset.indices == b.val.dataset.indices != c.val.dataset.indices
    first, again, aug = (torch.cat([x for x, _ in d.val]) for d in (a, a, b))
    assert torch.equal(first, again) and torch.equal(first, aug)  # no shuffle, no augmentation
    raw = a.train.dataset.base  # the training split, untransformed
    assert torch.equal(first[0], raw[a.val.dataset.indices[0]][0])
    assert not torch.equal(next(iter(a.train))[0], next(iter(b.train))[0])  # train still is


def test_normalize_and_resize_are_applied() -> None:
    data = build_data(DataSpec(source="digits", image_size=16,
                               normalize={"mean": [0.5], "std": [0.25]}))
    raw = build_data(DataSpec(source="digits", image_size=16))
    assert data.sample_shape == (1, 16, 16)
    assert torch.allclose(data.probe_batch(4), (raw.probe_batch(4) - 0.5) / 0.25)


def _empty_split(tmp_path: Path) -> dict[str, Any]:
    for split in ("train", "test"):
        (tmp_path / "in" / split / "cat").mkdir(parents=True)
    return {"source": "imagefolder", "path": str(tmp_path / "in")}


def _other_classes(tmp_path: Path) -> dict[str, Any]:
    make_folder(tmp_path / "in")
    (tmp_path / "in" / "train" / "cow").mkdir()
    return {"source": "imagefolder", "path": str(tmp_path / "in")}


def _not_archive(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "notes.txt").write_text("hi")
    return {"source": "imagefolder", "path": str(tmp_path / "notes.txt")}


def _garbage(tmp_path: Path) -> Path:
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b garbage, not gzip")
    return tmp_path / "bad.tar.gz"


BAD = {
    "missing path": (lambda t: {"source": "imagefolder", "path": str(t / "nope")},
                     "data.path .* does not exist"),
    "no path": (lambda t: {"source": "imagefolder"}, "needs data.path"),
    "empty split": (_empty_split, "has no images"),
    "missing split": (lambda t: {"source": "imagefolder", "path": str(make_folder(t / "in")),
                                 "eval_split": "val"}, "no 'val' split folder"),
    "different classes": (_other_classes, r"different class folders \(only in train: \['cow'\]"),
    "not an archive": (_not_archive, "not a .tar.gz"),
    "corrupt archive": (lambda t: {"source": "imagefolder", "path": str(_garbage(t)),
                                   "cache_dir": str(t / "cache")}, "not a readable tar archive"),
    "unused key": (lambda t: {"source": "digits", "path": "x"},
                   "data.path is not used by dataset source 'digits'"),
    "padding without crop": (lambda t: {"source": "digits", "crop_padding": 2},
                             "crop_padding is only used by the random_crop"),
    "subset too large": (lambda t: {"source": "digits", "train_subset": 5000},
                         "data.train_subset is 5000 but the training split has only 1437"),
    "val subset too large": (lambda t: {"source": "digits", "val_subset": 1437},
                             "data.val_subset is 1437 but the training split has only 1437 "
                             "samples and at least one must remain"),
    "train subset after val": (lambda t: {"source": "digits", "val_subset": 100,
                                          "train_subset": 1400},
                               "data.train_subset is 1400 but the training split left after "
                               "data.val_subset has only 1337"),
    "normalize channels": (lambda t: {"source": "digits",
                                      "normalize": {"mean": [0.5] * 3, "std": [0.2] * 3}},
                           r"data.normalize has 3 channel\(s\) but the images have 1"),
    "unknown torchvision name": (lambda t: {"source": "torchvision", "name": "Nope",
                                            "path": str(t)}, "is not a torchvision dataset"),
    "unsupported torchvision": (lambda t: {"source": "torchvision", "name": "EMNIST",
                                           "path": str(t)}, "'EMNIST' is not supported; supported"),
    "torchvision files missing": (lambda t: {"source": "torchvision", "name": "MNIST",
                                             "path": str(t)}, "set data.download: true"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_input_error(case: str, tmp_path: Path) -> None:
    make_kwargs, fragment = BAD[case]
    with pytest.raises(InputError, match=fragment):
        build_data(DataSpec(**make_kwargs(tmp_path)))


def test_unknown_source_lists_the_available_ones() -> None:
    with pytest.raises(InputError, match="unknown dataset 'nope'; available: digits"):
        DATASETS.get("nope")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):  # via the recipe validator
        DataSpec(source="nope")


@pytest.mark.slow
def test_shared_cifar10_jpg_archive() -> None:
    # Slow on the first run of a session: extracting and decoding 60,000 JPEGs. The cache is
    # the default one, which conftest points at the session's temp folder unless
    # $COMPRESS_CACHE is set (set it to reuse the extraction across runs).
    archive = shared_path("data", "cifar10-jpg", "cifar10-jpg.tar.gz")
    data = build_data(DataSpec(source="imagefolder", path=str(archive), eval_subset=64))
    assert data.num_classes == 10 and data.class_names[0] == "airplane"
    assert data.sample_shape == (3, 32, 32)
    assert len(data.eval.dataset) == 64 and len(data.train.dataset) == 50_000
    assert data.probe_batch(8).shape == (8, 3, 32, 32)
