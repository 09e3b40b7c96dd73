"""Image files laid out ``split/class/*.jpg``, in a folder or a ``.tar.gz``/``.tgz``/``.tar``.

Class indices follow the sorted class folder names, which must be the same in both splits.
An archive is extracted once into the cache (``data.cache_dir``, else ``$COMPRESS_CACHE``, else
``~/.cache/compress``), never next to the input, which may be read-only, within the caps of
``data.archive`` (:mod:`compress.data.archive`). When all images of a split have the same size
they are decoded once into a uint8 tensor cached beside the extraction; otherwise each image is
decoded when it is read, and images of different sizes need ``data.image_size``.

Example:
    >>> from compress.data import build_data
    >>> from compress.recipe.sources import DataSpec
    >>> spec = DataSpec(source="imagefolder", path="../shared/data/cifar10-jpg/cifar10-jpg.tar.gz")
    >>> build_data(spec).class_names[:3]  # doctest: +SKIP
    ['airplane', 'automobile', 'bird']
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from compress.data import DATASETS
from compress.data.archive import extract_once
from compress.data.base import RawData, TensorImages
from compress.data.images import ImageSource
from compress.data.splits import choose_eval_split, split_names
from compress.errors import InputError

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["ImageFolderSource", "LazyImages", "cache_root"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Above this a split is decoded per item instead of held in memory (and on disk) as one tensor.
MAX_DECODED_BYTES = 4 << 30


def cache_root(cache_dir: Path | None) -> Path:
    """Where imagefolder keeps extractions and decoded splits."""
    if cache_dir is None:
        env = os.environ.get("COMPRESS_CACHE")
        cache_dir = Path(env).expanduser() if env else Path.home() / ".cache" / "compress"
    return cache_dir / "imagefolder"


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        name = name.removesuffix(suffix)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "data"


def _find_root(top: Path, splits: list[str]) -> Path:
    """``top``, or its only subfolder when the splits are wrapped in one (``cifar10/train``)."""
    if any((top / s).is_dir() for s in splits):
        return top
    subdirs = [d for d in top.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in splits):
        return subdirs[0]
    return top


def _class_dirs(root: Path, split: str, key: str, shown: str) -> list[str]:
    folder = root / split
    if not folder.is_dir():
        raise InputError(f"data.path {shown!r} has no '{split}' split folder (data.{key}); "
                         f"expected {split}/<class>/*.jpg inside it")
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _list_images(folder: Path, classes: list[str], shown: str) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        with os.scandir(folder / name) as entries:
            found = sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".")
                           and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        files += [folder / name / f for f in found]
        labels += [label] * len(found)
    if not files:
        raise InputError(f"data.path {shown!r}: split folder '{folder.name}' has no images; "
                         f"expected {folder.name}/<class>/*.jpg, *.jpeg or *.png")
    return files, labels


@functools.cache
def _fast_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's libjpeg/libpng decoder, or None where this torchvision has none.

    It gives the same pixels as PIL for JPEG and PNG, about twice as fast; torchvision 0.29
    deprecates it, hence the fallback.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    return functools.partial(decode_image, mode=ImageReadMode.RGB)


def _decode(path: Path) -> torch.Tensor:
    """One image file as a uint8 RGB tensor (3, H, W); PIL handles what torchvision cannot."""
    decoder = _fast_decoder()
    try:
        data = path.read_bytes()
        if decoder is not None and data:
            image = decoder(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            if image.dtype == torch.uint8:  # 16-bit PNGs come back as uint16
                return image
    except (RuntimeError, ValueError):
        pass
    except OSError as err:
        raise InputError(f"data.path: cannot read image {str(path)!r} ({err})") from err
    try:
        with Image.open(path) as pil:
            return torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
    except OSError as err:  # UnidentifiedImageError is an OSError
        raise InputError(f"data.path: cannot decode image {str(path)!r} ({err}); remove or "
                         "replace the file") from err


class LazyImages(Dataset[tuple[torch.Tensor, int]]):
    """Image files decoded when read (splits whose images differ in size, or huge ones)."""

    def __init__(self, files: list[Path], labels: list[int]) -> None:
        self.files = [str(f) for f in files]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _decode(Path(self.files[index])).float().div_(255), self.labels[index]


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, nothing decoded."""
    try:
        with Image.open(path) as pil:
            return pil.size
    except OSError as err:  # UnidentifiedImageError is an OSError
        raise InputError(f"data.path: cannot decode image {str(path)!r} ({err}); remove or "
                         "replace the file") from err


def _describe(a: Path, size_a: tuple[int, int], b: Path, size_b: tuple[int, int]) -> str:
    return f"{a.name} is {size_a[0]}x{size_a[1]}, {b.name} is {size_b[0]}x{size_b[1]}"


def _decode_all(files: list[Path]) -> tuple[torch.Tensor | None, str]:
    """All images as one uint8 (N, 3, H, W) tensor, or None when they differ in size or are too
    big to hold; with how two sizes differ ('' when none do).

    Too big, the sizes are compared from the file headers: a batch of images that differ in
    size must be refused where the data enters, not by the collate of some later batch.
    """
    first = _decode(files[0])
    first_size = (first.shape[2], first.shape[1])
    if len(files) * first.numel() > MAX_DECODED_BYTES:
        first_size = _header_size(files[0])
        for path in files[1:]:
            if (size := _header_size(path)) != first_size:
                return None, _describe(files[0], first_size, path, size)
        return None, ""
    out = torch.empty((len(files), *first.shape), dtype=torch.uint8)
    out[0] = first
    for i, path in enumerate(files[1:], start=1):
        image = _decode(path)
        if image.shape != first.shape:
            return None, _describe(files[0], first_size, path, (image.shape[2], image.shape[1]))
        out[i] = image
    return out, ""


_SAME, _DIFFER = "same size\n", "sizes differ: "


def _load_split(files: list[Path], labels: list[int],
                cache: Path, split: str) -> tuple[Dataset[Any], str]:
    """The split's dataset, and how two of its image sizes differ ('' when none do)."""
    # The listing (names, sizes, mtimes) keys the decoded tensor, so edits invalidate it.
    listing = hashlib.sha256()
    for path, label in zip(files, labels):
        st = path.stat()
        listing.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    cached = cache / f"decoded-{_stem(Path(split))}-{listing.hexdigest()[:16]}.pt"
    # Decoded per item (sizes differ, or too big): the marker says which, so neither the
    # decoding nor the size comparison is repeated. An empty one predates that: redone.
    lazy_marker = cached.with_suffix(".lazy")
    try:
        said = lazy_marker.read_text()
    except (OSError, UnicodeError):
        said = ""
    if said == _SAME or said.startswith(_DIFFER):
        return LazyImages(files, labels), said.removeprefix(_DIFFER).strip()
    if cached.is_file():
        try:
            saved = torch.load(cached, weights_only=True)
            if len(saved["images"]) == len(files) and saved["labels"].tolist() == labels:
                return TensorImages(saved["images"], saved["labels"]), ""
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    images, differ = _decode_all(files)
    tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if images is None:
            lazy_marker.write_text(_DIFFER + differ if differ else _SAME)
        else:  # written under a temporary name, so a crash never leaves a truncated file
            torch.save({"images": images, "labels": torch.tensor(labels)}, tmp)
            os.replace(tmp, cached)
    except OSError as err:  # the cache is an optimisation: work without it
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not cache decoded images in {cache} ({err})", stacklevel=2)
    if images is None:
        return LazyImages(files, labels), differ
    return TensorImages(images, labels), ""


@DATASETS.register("imagefolder")
class ImageFolderSource(ImageSource):
    accepts = frozenset({"path", "train_split", "eval_split", "cache_dir", "archive"})
    required = frozenset({"path"})

    def starter_classes(self, arg: str) -> int | None:
        """Class folders under a local folder's ``train/`` (None for archives, absent paths).

        Example:
            >>> ImageFolderSource().starter_classes("no/such/folder") is None
            True
        """
        train = Path(arg) / "train"
        if not arg or not train.is_dir():
            return None
        return sum(1 for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")) or None

    def starter_keys(self, w: StarterWriter, arg: str,
                     request: StarterRequest) -> tuple[bool, bool]:
        """The folder or archive: colour photos, which mirroring leaves in their class.

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> ImageFolderSource().starter_keys(StarterWriter(), "./data", StarterRequest())
            (True, True)
        """
        if not arg:
            raise InputError("data source 'imagefolder' needs a path: imagefolder:PATH")
        w.key("path", w.path(arg), "A folder or .tar.gz laid out split/class/*.jpg; the splits are "
              "train/ and test/ unless train_split/eval_split say otherwise.")
        found = split_names(Path(arg), None)
        if found and "test" not in found and (split := choose_eval_split(found)) != "test":
            w.key("eval_split", split, f"The folder holds {', '.join(found)}/; accuracy is "
                  f"measured on {split}/.")
        return True, True

    def check_files(self, spec: Any, resolve: Callable[[str], Path]) -> None:
        """A local folder holds the split folders the recipe names (``compress validate``;
        nothing is read; an archive's members are checked when it is extracted).

        Example:
            >>> from compress.recipe.sources import DataSpec
            >>> ImageFolderSource().check_files(DataSpec(source="imagefolder", path="."),
            ...                                 Path)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            compress.errors.InputError: data.path '.' has no 'test' split folder ...
        """
        path = resolve(spec.path)
        if path.is_dir():
            root = _find_root(path, [spec.train_split, spec.eval_split])
            for split, key in ((spec.eval_split, "eval_split"), (spec.train_split, "train_split")):
                _class_dirs(root, split, key, str(spec.path))

    def load(self, spec: Any, resolve: Callable[[str], Path], train: bool) -> RawData:
        path = resolve(spec.path)
        shown = str(spec.path)
        cache = cache_root(resolve(spec.cache_dir) if spec.cache_dir else None)
        try:
            is_file, is_dir = path.is_file(), path.is_dir()
        except OSError as err:  # a name too long, a folder we may not enter
            raise InputError(f"data.path {shown!r} cannot be checked ({err.strerror or err}); "
                             "fix data.path") from None
        if is_file:
            if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
                raise InputError(f"data.path {shown!r} is a file but not a .tar.gz, .tgz or .tar "
                                 "archive; point it at a folder or an archive of split/class/*.jpg")
            st = path.stat()  # the key: a new or edited archive is extracted again
            key = _digest(path.resolve(), st.st_size, st.st_mtime_ns)
            work = extract_once(path, cache / f"{_stem(path)}-{key}", spec.archive)
            top = work / "files"
        elif is_dir:
            work = cache / f"{_stem(path)}-{_digest(path.resolve())}"
            top = path
        else:
            raise InputError(f"data.path {shown!r} does not exist; point it at a folder or a "
                             ".tar.gz of split/class/*.jpg")

        root = _find_root(top, [spec.train_split, spec.eval_split])
        classes = _class_dirs(root, spec.eval_split, "eval_split", shown)
        if train or (root / spec.train_split).is_dir():
            train_classes = _class_dirs(root, spec.train_split, "train_split", shown)
            if train_classes != classes:
                t, e = set(train_classes), set(classes)
                raise InputError(f"data.path {shown!r}: splits '{spec.train_split}' and "
                                 f"'{spec.eval_split}' have different class folders (only in "
                                 f"{spec.train_split}: {sorted(t - e) or 'none'}; only in "
                                 f"{spec.eval_split}: {sorted(e - t) or 'none'}); both need the "
                                 "same classes")
        if not classes:
            raise InputError(f"data.path {shown!r}: split folder '{spec.eval_split}' has no class "
                             f"folders; expected {spec.eval_split}/<class>/*.jpg")

        def load_split(split: str) -> Dataset[Any]:
            dataset, differ = _load_split(*_list_images(root / split, classes, shown), work,
                                          split)
            if differ and spec.image_size is None:
                raise InputError(f"data.path {shown!r}: the images of split '{split}' differ "
                                 f"in size ({differ}); set data.image_size to resize them all "
                                 "to one square size")
            return dataset

        eval_set = load_split(spec.eval_split)
        train_set = load_split(spec.train_split) if train else None
        return RawData(train=train_set, eval=eval_set, class_names=classes)
