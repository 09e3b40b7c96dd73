"""What a source's ``compress init`` hook gets: the writer of commented YAML lines, and the
request (``--model``, ``--data`` and the flags).

Example:
    >>> w = StarterWriter()
    >>> w.key("epochs", 3, "Fine-tuning epochs.")
    >>> w.lines
    ['  # Fine-tuning epochs.', '  epochs: 3']
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.authoring.reference import inline_yaml

__all__ = ["StarterWriter", "StarterRequest"]


class StarterWriter:
    """YAML lines with wrapped comments above keys (yaml.dump would drop the comments).

    Example:
        >>> w = StarterWriter()
        >>> w.section("data", "Where the images are.")
        >>> w.key("batch_size", 64)
        >>> w.key("augment", ["random_crop"], "Training augmentations.")
        >>> w.lines[:3]
        ['', '# Where the images are.', 'data:']
        >>> w.lines[3:]
        ['  batch_size: 64', '  # Training augmentations.', '  augment: [random_crop]']
    """

    def __init__(self, recipe_dir: str | os.PathLike[str] | None = None) -> None:
        self.lines: list[str] = []
        # The folder the recipe will be written to (paths resolve against it); None: the
        # current folder, where the command line's paths already point.
        self.recipe_dir = recipe_dir

    def path(self, given: str) -> str:
        """``given`` (a path relative to the current folder, as typed on the command line)
        as the recipe must write it: relative to the recipe's folder.

        Example:
            >>> StarterWriter("out/recipes").path("data/sst2")
            '../../data/sst2'
            >>> StarterWriter().path("data/sst2"), StarterWriter("out").path("/abs/data")
            ('data/sst2', '/abs/data')
        """
        if self.recipe_dir is None or os.path.isabs(given):
            return given
        return Path(os.path.relpath(os.path.abspath(given),
                                    os.path.abspath(self.recipe_dir))).as_posix()

    def comment(self, text: str, indent: int = 0) -> None:
        """``text`` as ``# `` lines wrapped at 96 columns, indented by ``indent``."""
        pad = " " * indent + "# "
        # No breaks at hyphens: they would split flags such as --target-macs.
        self.lines += textwrap.wrap(text, width=96, initial_indent=pad, subsequent_indent=pad,
                                    break_on_hyphens=False)

    def key(self, name: str, value: Any, note: str | None = None, indent: int = 2) -> None:
        """``name: value`` in flow style, below ``note`` as a comment when given."""
        if note:
            self.comment(note, indent)
        self.lines.append(f"{' ' * indent}{name}: {inline_yaml(value)}")

    def section(self, name: str, note: str | None = None) -> None:
        """A blank line, ``note`` as a comment, and ``name:``."""
        self.lines.append("")
        if note:
            self.comment(note)
        self.lines.append(f"{name}:")


@dataclass(frozen=True)
class StarterRequest:
    """What ``compress init`` was asked for, as a source's ``starter`` hook sees it.

    Example:
        >>> r = StarterRequest(model="torchvision:resnet18", data="imagefolder:./d", num_classes=3)
        >>> r.data_source, r.classes
        ('imagefolder', 3)
    """

    model: str = ""                    # --model as given, SOURCE:ARG
    data: str = ""                     # --data as given, SOURCE[:ARG]
    num_classes: int | None = None     # --num-classes
    data_classes: int | None = None    # what the data says (digits: 10, an imagefolder's train/)
    checkpoint: str | None = None      # --checkpoint
    image_size: int | None = None      # --image-size
    patience: bool = False             # the schedule fine-tunes with patience (validation data)
    imagenet_input: bool = False       # the model expects ImageNet-sized images (224)

    @property
    def data_source(self) -> str:
        return self.data.partition(":")[0]

    @property
    def classes(self) -> int | None:
        """``--num-classes``, else what the data says."""
        return self.num_classes or self.data_classes
