"""Text data for transformers models: classification files and language-modelling text.

``text``: ``data.path`` is a folder holding ``<split>.tsv``/``.csv``/``.json``/``.jsonl``
(split names from ``data.train_split`` / ``data.eval_split``), read with the ``datasets``
library; each row gives a text and an integer label. Texts are tokenised once, padded with
the tokenizer's pad id and cut to ``data.max_length`` tokens; each batch is then cut to its
longest row (:class:`TrimPadding`), so short sentences do not pay for ``max_length``.

``text_lm``: ``data.path`` is a folder holding ``<split>.txt``; the text is tokenised and cut
into blocks of ``data.max_length`` tokens (no padding), each its own next-token target.

The tokenizer is ``data.tokenizer``, by default the model's (see :func:`with_default_tokenizer`):
a folder, a hub id or ``module:function``, named as a transformers model is
(:func:`compress.hf_names.resolve_hf_name`).

Example:
    >>> spec = DataSpec(source="text", path="../shared/data/sst2", eval_split="dev",
    ...                 tokenizer="./minilm")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, default_collate

from compress.data import DATASETS
from compress.data.base import RawData
from compress.data.splits import choose_eval_split, split_file, split_names
from compress.errors import InputError
from compress.hf_names import resolve_hf_name

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter
    from compress.data import DataBundle
    from compress.recipe.sources import DataSpec

__all__ = ["TextClassification", "TextLM", "TextSource", "TokenRows", "TrimPadding",
           "with_default_tokenizer"]

_FORMATS = {".tsv": ("csv", {"delimiter": "\t"}), ".csv": ("csv", {}), ".json": ("json", {}),
            ".jsonl": ("json", {})}


class TokenRows(Dataset):
    """Token id rows ``(N, L)`` with one target each: a class id, or a row of token ids."""

    def __init__(self, ids: torch.Tensor, targets: torch.Tensor) -> None:
        assert ids.dim() == 2 and len(ids) == len(targets), "one target per row of ids"
        self.ids, self.targets = ids, targets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        target = self.targets[index]
        return self.ids[index], (int(target) if target.dim() == 0 else target)


class TrimPadding:
    """Collate token rows and drop the trailing columns that are padding in every row.

    The model masks padding (the attention mask comes from the pad id) and a real token never
    attends to a later position's padding, so the outputs are those of the full-length batch;
    only the work on padding is saved. A class, not a closure, so loader workers can pickle it.

    Example:
        >>> rows = [(torch.tensor([5, 6, 0, 0]), 1), (torch.tensor([7, 0, 0, 0]), 0)]
        >>> ids, labels = TrimPadding(pad_id=0)(rows)
        >>> ids.tolist(), labels.tolist()
        ([[5, 6], [7, 0]], [1, 0])
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
        ids, targets = default_collate(items)
        real = (ids != self.pad_id).any(dim=0).nonzero()
        length = int(real[-1]) + 1 if len(real) else 1
        return ids[:, :length], targets


def with_default_tokenizer(spec: DataSpec, model_tokenizer: str | None) -> DataSpec:
    """``spec``, with ``tokenizer`` defaulting to ``model_tokenizer`` where the source takes one.

    ``model_tokenizer`` is the model's own tokenizer (a huggingface model's ``name``), None
    when the model has none; the caller tells it from the model spec.

    Example:
        >>> from compress.recipe.sources import DataSpec
        >>> with_default_tokenizer(DataSpec(source="text", path="d"), "./bert").tokenizer
        './bert'
        >>> with_default_tokenizer(DataSpec(source="digits"), "./bert").tokenizer is None
        True
    """
    if spec.tokenizer is None and "tokenizer" in DATASETS.get(spec.source).accepts:
        if model_tokenizer is None:
            raise InputError(f"data.source {spec.source} needs data.tokenizer (or a "
                             f"huggingface model, whose tokenizer is used)")
        return spec.model_copy(update={"tokenizer": model_tokenizer})
    return spec


def _tokenizer(spec: DataSpec, resolve: Callable[[str], Path]) -> Any:
    from transformers import AutoTokenizer

    if spec.tokenizer is None:
        raise InputError(f"data.source {spec.source} needs data.tokenizer")
    name = resolve_hf_name(spec.tokenizer, resolve)
    try:
        # A tokenizer's own code never runs, whatever the model section says.
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load tokenizer {spec.tokenizer!r}: "
                         f"{str(err).splitlines()[0]}") from None


def _split_files(spec: DataSpec, resolve: Callable[[str], Path], train: bool,
                 suffixes: tuple[str, ...]) -> dict[str, Path]:
    """The file of each role (``eval``, and ``train`` when training)."""
    folder = resolve(spec.path)
    splits = {"eval": spec.eval_split, **({"train": spec.train_split} if train else {})}
    return {role: split_file(folder, split, suffixes, f"{role}_split")
            for role, split in splits.items()}


class TextSource:
    """Base of the text sources: token ids in, and the starter's text keys."""

    starter_defaults: dict[str, Any] = {
        "note": "Local text files, tokenised with the model's tokenizer.",
        "inputs": "tokens", "small": False,
    }
    starter_path_note = ""  # what data.path holds, in the starter recipe
    suffixes: tuple[str, ...] = ()  # the split files' extensions

    def check_files(self, spec: DataSpec, resolve: Callable[[str], Path]) -> None:
        """Every split file the recipe names exists (``compress validate``; nothing is read).

        Example:
            >>> from compress.recipe.sources import DataSpec
            >>> TextLM().check_files(DataSpec(source="text_lm", path="."),
            ...                      Path)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            compress.errors.InputError: data.eval_split 'test': data.path '.' has no test{.txt} ...
        """
        _split_files(spec, resolve, True, self.suffixes)

    def serving_info(self, spec: DataSpec, bundle: DataBundle) -> dict[str, Any]:
        """What model.json tells a service about the classes and the input tokens.

        Example:
            >>> from types import SimpleNamespace
            >>> from compress.recipe.sources import DataSpec
            >>> TextLM().serving_info(DataSpec(source="text_lm", path="d", max_length=64),
            ...                       SimpleNamespace(class_names=[]))["preprocess"]["max_length"]
            64
        """
        return {"classes": list(bundle.class_names),
                "preprocess": {"tokens": "int64 token ids of the model's tokenizer (saved in "
                                         "hf/ when written), padded with its pad id",
                               "max_length": spec.max_length}}

    def starter_classes(self, arg: str) -> int | None:
        """Unknown until the files are read.

        Example:
            >>> TextSource().starter_classes("./sst2") is None
            True
        """
        return None

    def starter(self, w: StarterWriter, arg: str, request: StarterRequest) -> None:
        """Write the data section's keys after ``source``: the folder, splits and lengths.

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> w = StarterWriter()
            >>> TextLM().starter(w, "./corpus", StarterRequest(data="text_lm:./corpus"))
            >>> [line for line in w.lines if not line.lstrip().startswith("#")][:2]
            ['  path: ./corpus', '  train_split: train']
        """
        source = request.data_source
        if not arg:
            raise InputError(f"data source {source!r} needs a folder: {source}:PATH")
        w.key("path", w.path(arg), self.starter_path_note)
        found = split_names(Path(arg), self.suffixes)
        w.key("train_split", "train")
        w.key("eval_split", choose_eval_split(found), "The file accuracy (or perplexity) is "
              "measured on" + (f" (the folder holds: {', '.join(found)})." if found else "."))
        w.key("max_length", 128, "Tokens per row: longer texts are cut; batches are cut to their "
              "longest row, so short texts cost less.")
        w.key("batch_size", 32)
        if request.patience:
            w.key("val_subset", 500, "Training rows held out as validation data for "
                  "patience-based fine-tuning.")


@DATASETS.register("text")
class TextClassification(TextSource):
    """Text classification from local TSV/CSV/JSON files, tokenised with the model's tokenizer."""

    accepts = frozenset({"path", "train_split", "eval_split", "text_column", "label_column",
                         "label_names", "max_length", "tokenizer"})
    required = frozenset({"path"})
    starter_path_note = ("A folder with <split>.tsv/.csv/.json/.jsonl files holding a text "
                         "column (sentence or text) and an integer label column.")
    suffixes = tuple(_FORMATS)

    def load(self, spec: DataSpec, resolve: Callable[[str], Path], train: bool) -> RawData:
        import datasets

        files = _split_files(spec, resolve, train, self.suffixes)
        tokenizer = _tokenizer(spec, resolve)
        out: dict[str, TokenRows] = {}
        labels: set[int] = set()
        for role, path in files.items():
            fmt, extra = _FORMATS[path.suffix]
            try:
                table = datasets.load_dataset(fmt, data_files={"rows": str(path)}, split="rows",
                                              **extra)
            except Exception as err:  # datasets raises many types for unreadable files
                raise InputError(f"cannot read {str(path)!r}: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}") from None
            text_col = spec.text_column or next(
                (c for c in ("sentence", "text") if c in table.column_names), None)
            for col, key in ((text_col, "text_column"), (spec.label_column, "label_column")):
                if col is None or col not in table.column_names:
                    raise InputError(f"{str(path)!r} has no column {col!r} for data.{key}; "
                                     f"columns: {', '.join(table.column_names)}")
            if len(table) == 0:
                raise InputError(f"{str(path)!r} has no rows")
            y = torch.as_tensor(table[spec.label_column])
            if y.is_floating_point() or y.min() < 0:
                raise InputError(f"data.label_column {spec.label_column!r} must hold integer "
                                 f"class ids 0, 1, ...")
            enc = tokenizer([str(t) for t in table[text_col]], padding="max_length",
                            truncation=True, max_length=spec.max_length, return_tensors="pt")
            out[role] = TokenRows(enc["input_ids"], y.long())
            labels |= set(y.tolist())
        n_classes = max(labels) + 1
        names = spec.label_names or [str(i) for i in range(n_classes)]
        if len(names) < n_classes or len(set(names)) != len(names):
            raise InputError(f"data.label_names has {len(names)} distinct names but the labels "
                             f"go up to {n_classes - 1}; give one distinct name per label id")
        # Left padding would shift the real tokens' positions if trimmed: keep full rows.
        trim = tokenizer.padding_side == "right" and tokenizer.pad_token_id is not None
        return RawData(train=out.get("train"), eval=out["eval"],
                       class_names=names,
                       collate=TrimPadding(tokenizer.pad_token_id) if trim else None)


@DATASETS.register("text_lm")
class TextLM(TextSource):
    """Language modelling: a local text file cut into token blocks (perplexity)."""

    accepts = frozenset({"path", "train_split", "eval_split", "max_length", "tokenizer"})
    required = frozenset({"path"})
    starter_path_note = "A folder with <split>.txt files, cut into token blocks."
    suffixes = (".txt",)

    def load(self, spec: DataSpec, resolve: Callable[[str], Path], train: bool) -> RawData:
        files = _split_files(spec, resolve, train, self.suffixes)
        tokenizer = _tokenizer(spec, resolve)
        out: dict[str, TokenRows] = {}
        for role, path in files.items():
            ids = tokenizer(path.read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
            n = len(ids) // spec.max_length
            if n == 0:
                raise InputError(f"{str(path)!r} holds {len(ids)} tokens, fewer than one block "
                                 f"of data.max_length={spec.max_length}")
            blocks = ids[: n * spec.max_length].view(n, spec.max_length)
            out[role] = TokenRows(blocks, blocks.clone())
        return RawData(train=out.get("train"), eval=out["eval"], class_names=[])
