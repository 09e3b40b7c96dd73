"""Recipes: the YAML a user writes, as validated pydantic models.

Every section forbids unknown keys, and every error names the YAML path of the bad key. The
sections live beside this module (sources, pruning, stages); loading is in
:mod:`compress.recipe.load`.

Example:
    >>> from compress.recipe.load import parse_recipe
    >>> r = parse_recipe({"version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
    ...                   "data": {"source": "digits"}, "pruning": {"ratio": 0.5}})
    >>> r.schedule.kind, r.pruning.importance
    ('one-shot', 'l2')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compress.errors import InputError
from compress.recipe.base import Section, criterion_of, device_name, pruning_kind_of
from compress.recipe.calibration import CalibrationSpec
from compress.recipe.pruning import PruningSpec, ScheduleSpec
from compress.recipe.sources import DataSpec, ModelSpec
from compress.recipe.stages import ExportSpec, FinetuneSpec, GatesSpec, ReportSpec

__all__ = ["Recipe", "RECIPE_VERSION"]


RECIPE_VERSION = 1


class Recipe(Section):
    """A whole compression recipe."""

    version: Literal[1] = Field(description="Recipe format version; always 1.", examples=[1])
    name: str | None = Field(None, description="Run name (default: the recipe file's stem).",
                             examples=["resnet56-half-macs"])
    model: ModelSpec = Field(description="Where the model comes from.",
                             examples=[{"source": "cifar_resnet", "name": "resnet56"}])
    data: DataSpec = Field(description="Training and evaluation data.",
                           examples=[{"source": "digits"}])
    pruning: PruningSpec = Field(description="What to prune and how much.",
                                 examples=[{"target": {"macs": 0.5}}])
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec, description="Samples "
                                         "run through the model by criteria that measure "
                                         "activations (wanda, sparsegpt, activation); unused "
                                         "otherwise.",
                                         examples=[{"samples": 128, "seq_len": 128}])
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="How the pruning "
                                   "is spread over steps.", examples=[{"kind": "one-shot"}])
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec, description="Fine-tuning "
                                   "after each pruning step.", examples=[{"epochs": 3}])
    export: ExportSpec = Field(default_factory=ExportSpec, description="Artifacts written "
                               "after pruning.", examples=[{"onnx": True}])
    report: ReportSpec = Field(default_factory=ReportSpec, description="Speed measurement and "
                               "report.", examples=[{"batch_sizes": [1, 64]}])
    gates: GatesSpec = Field(default_factory=GatesSpec, description="Thresholds checked at the "
                             "end; a failing gate exits 1.", examples=[{"max_accuracy_drop": 2.0}])
    # numpy seeds only take 32 bits (torch and random take more): refuse here, not mid-run.
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed for data order, subsets "
                      "and probes (0 to 4294967295).", examples=[0])
    device: str = Field("auto", description="auto (CUDA when torch sees one), cpu, cuda or "
                        "cuda:N.", examples=["auto", "cuda:0"])
    base_dir: str | None = Field(None, exclude=True, description="Folder that relative paths "
                                 "are resolved against (set by the loader: the recipe's folder).")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return device_name(v)

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, v: str | None) -> str | None:
        # The name becomes a folder under runs/: a path in it would write elsewhere.
        if v is None:
            return v
        if not v or len(v) > 100:
            raise ValueError("must be 1 to 100 characters")
        if any(c in v for c in "/\\\0") or v.startswith("."):
            raise ValueError("must be a plain folder name (no '/', '\\', NUL or leading dot)")
        return v

    @model_validator(mode="after")
    def _cross_section(self) -> Recipe:
        if self.finetune.patience is not None and self.data.val_subset is None:
            raise ValueError("finetune.patience monitors validation data: set data.val_subset "
                             "(samples held out of the training split)")
        if pruning_kind_of(self.pruning.kind).single_step and self.schedule.kind != "one-shot":
            raise ValueError(f"{self.pruning.kind} pruning has a fixed pattern: use "
                             f"schedule.kind: one-shot")
        if criterion_of(self.pruning.importance).one_shot and self.schedule.kind != "one-shot":
            raise ValueError(f"importance {self.pruning.importance} chooses every weight from "
                             f"one calibration pass: use schedule.kind: one-shot")
        if self.finetune.max_tokens is not None and self.data.source != "text_lm":
            raise ValueError(f"finetune.max_tokens counts the tokens of text_lm data; "
                             f"data.source {self.data.source} has none: use "
                             f"finetune.max_steps")
        seq_len = self.calibration.seq_len
        if seq_len is not None and seq_len > self.data.max_length:
            raise ValueError(f"calibration.seq_len ({seq_len}) exceeds data.max_length "
                             f"({self.data.max_length}), the tokens each sample holds; lower it "
                             f"or raise data.max_length")
        if self.gates.require_proof and not self.pruning.verify:
            # The run could only fail its gate at the end: say so before it starts.
            raise ValueError("gates.require_proof needs the proofs that pruning.verify: false "
                             "skips; set pruning.verify: true or gates.require_proof: false")
        target = self.pruning.target
        if target is not None and target.latency is not None and (
                "onnxruntime" not in self.report.engines or self.report.device != "cpu"):
            # The latency table and the closed loop time onnxruntime on the CPU (for now).
            raise ValueError("pruning.target.latency is timed on onnxruntime's CPU engine: "
                             "list onnxruntime in report.engines and keep report.device: cpu")
        return self

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """Expand ``~``/``$VARS`` and resolve a relative path against the recipe's folder."""
        if "\x00" in str(value):  # os.path.expanduser would raise ValueError on it
            raise InputError(f"the recipe path {str(value)!r} contains a NUL character; "
                             f"remove it")
        p = Path(os.path.expandvars(os.path.expanduser(str(value))))
        if not p.is_absolute() and self.base_dir is not None:
            p = Path(self.base_dir) / p
        return p

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (JSON-safe), as stored in a run folder."""
        return json.loads(self.model_dump_json())
