"""Image files laid out ``split/class/*.jpg``, in a folder or a ``.tar.gz``/``.tgz``/``.tar``.

Class indices follow the sorted class folder names, which must be the same in both splits.
An archive is extracted once into the cache (``data.cache_dir``, else ``$COMPRESS_CACHE``, else
``~/.cache/compress``), never next to the input, which may be read-only. When all images of a
split have the same size they are decoded once into a uint8 tensor cached beside the
extraction; otherwise each image is decoded when it is read.

Example:
    >>> from compress.data import build_data
    >>> from compress.recipe.sources import DataSpec
    >>> spec = DataSpec(source="imagefolder", path="../shared/data/cifar10-jpg/cifar10-jpg.tar.gz")
    >>> build_data(spec).class_names[:3]  # doctest: +SKIP
    ['airplane', 'automobile', 'bird']
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from compress.data import DATASETS
from compress.data.base import RawData, TensorImages
from compress.data.images import ImageSource
from compress.errors import InputError

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["ImageFolderSource", "LazyImages", "cache_root", "extract_archive"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
COMPLETE = "COMPLETE"
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


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only; reject absolute paths, ``..`` and links.

    Files are written directly (not with ``TarFile.extract``), which is twice as fast for many
    small files; with links rejected and no ``..`` parts every path stays inside ``dest``.
    """
    made: set[Path] = set()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # streaming: one pass over a compressed archive
            parts = PurePosixPath(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts:
                raise InputError(f"data.path {str(archive)!r} has an unsafe member "
                                 f"{member.name!r} (absolute or '..' path); refusing to extract it")
            if not (member.isfile() or member.isdir()):
                raise InputError(f"data.path {str(archive)!r} has a link or special file "
                                 f"{member.name!r}; only regular files and folders are accepted")
            if not parts:  # the archive's own "./" entry
                continue
            target = dest.joinpath(*parts)
            folder = target if member.isdir() else target.parent
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            if member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())


def extract_archive(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` once into ``cache`` and return the folder holding its files.

    The cache folder is keyed by the archive's resolved path, size and mtime. Extraction goes
    to a temporary folder renamed into place only after a marker is written, so an interrupted
    run never leaves a folder that is later trusted.
    """
    st = archive.stat()
    final = cache / f"{_stem(archive)}-{_digest(archive.resolve(), st.st_size, st.st_mtime_ns)}"
    if (final / COMPLETE).is_file():
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if final.exists():  # no marker: not ours to trust
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache))
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache_dir should stay readable
    except OSError as err:
        raise InputError(f"cannot write the extraction cache {str(cache)!r} ({err}); set "
                         "data.cache_dir or $COMPRESS_CACHE to a writable folder") from err
    try:
        try:
            _safe_extract(archive, tmp / "files")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise InputError(f"data.path {str(archive)!r} is not a readable tar archive "
                             f"({err}); re-create it or extract it yourself") from err
        except OSError as err:  # disk full, permissions: the cache's fault, not the archive's
            raise InputError(f"cannot extract data.path into the cache {str(cache)!r} ({err}); "
                             "free space or set data.cache_dir to another folder") from err
        (tmp / COMPLETE).write_text(f"{archive.resolve()}\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / COMPLETE).is_file():  # not a concurrent run that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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


def _decode_all(files: list[Path]) -> torch.Tensor | None:
    """All images as one uint8 (N, 3, H, W) tensor, or None if sizes differ or it is too big."""
    first = _decode(files[0])
    if len(files) * first.numel() > MAX_DECODED_BYTES:
        return None
    out = torch.empty((len(files), *first.shape), dtype=torch.uint8)
    out[0] = first
    for i, path in enumerate(files[1:], start=1):
        image = _decode(path)
        if image.shape != first.shape:
            return None
        out[i] = image
    return out


def _load_split(files: list[Path], labels: list[int], cache: Path, split: str) -> Dataset[Any]:
    # The listing (names, sizes, mtimes) keys the decoded tensor, so edits invalidate it.
    listing = hashlib.sha256()
    for path, label in zip(files, labels):
        st = path.stat()
        listing.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    cached = cache / f"decoded-{_stem(Path(split))}-{listing.hexdigest()[:16]}.pt"
    lazy_marker = cached.with_suffix(".lazy")  # sizes differ: do not try to stack them again
    if lazy_marker.is_file():
        return LazyImages(files, labels)
    if cached.is_file():
        try:
            saved = torch.load(cached, weights_only=True)
            if len(saved["images"]) == len(files) and saved["labels"].tolist() == labels:
                return TensorImages(saved["images"], saved["labels"])
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    images = _decode_all(files)
    tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if images is None:
            lazy_marker.touch()
        else:  # written under a temporary name, so a crash never leaves a truncated file
            torch.save({"images": images, "labels": torch.tensor(labels)}, tmp)
            os.replace(tmp, cached)
    except OSError as err:  # the cache is an optimisation: work without it
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not cache decoded images in {cache} ({err})", stacklevel=2)
    if images is None:
        return LazyImages(files, labels)
    return TensorImages(images, labels)


@DATASETS.register("imagefolder")
class ImageFolderSource(ImageSource):
    accepts = frozenset({"path", "train_split", "eval_split", "cache_dir"})
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
        w.key("path", arg, "A folder or .tar.gz laid out split/class/*.jpg; the splits are "
              "train/ and test/ unless train_split/eval_split say otherwise.")
        return True, True

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
            work = extract_archive(path, cache)
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

        eval_set = _load_split(*_list_images(root / spec.eval_split, classes, shown), work,
                               spec.eval_split)
        train_set = None
        if train:
            train_set = _load_split(*_list_images(root / spec.train_split, classes, shown), work,
                                    spec.train_split)
        return RawData(train=train_set, eval=eval_set, class_names=classes)
