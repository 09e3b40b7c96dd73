"""Recipes: the YAML a user writes, as validated pydantic models.

Every section forbids unknown keys, and every error names the YAML path of the bad key.

Example:
    >>> from compress.recipe.spec import parse_recipe
    >>> r = parse_recipe({"version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
    ...                   "data": {"source": "digits"}, "pruning": {"ratio": 0.5}})
    >>> r.schedule.kind, r.pruning.importance
    ('one-shot', 'l2')
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress.errors import InputError

__all__ = [
    "Recipe",
    "ModelSpec",
    "DataSpec",
    "PruningSpec",
    "ScheduleSpec",
    "FinetuneSpec",
    "Distill",
    "ExportSpec",
    "ReportSpec",
    "GatesSpec",
    "load_recipe",
    "parse_recipe",
    "apply_overrides",
    "recipe_json_schema",
]

RECIPE_VERSION = 1


def _registered(field: str, module: str, registry: str) -> Any:
    """A validator of ``field``: its value must name an entry of ``module.registry``.

    The registry is imported when a recipe is validated, not with this module (registries
    import torch).
    """

    def check(name: str) -> str:
        getattr(importlib.import_module(module), registry).get(name)
        return name

    return field_validator(field)(check)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    """Where the model comes from. Which fields a source uses is checked by the source."""

    source: str = Field(description="Model source: torchvision, cifar_resnet, python or "
                        "huggingface.",
                        examples=["cifar_resnet"])
    name: str | None = Field(None, description="Architecture name (torchvision model name, or "
                             "resnet20/32/44/56/110 for cifar_resnet); huggingface: a model "
                             "folder, a hub id, or 'module:function' returning a folder.",
                             examples=["resnet56"])
    factory: str | None = Field(None, description="python source: 'package.module:function' or "
                                "'path/to/file.py:function' returning an nn.Module.",
                                examples=["my_models.nets:small_cnn"])
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the "
                                   "factory or architecture constructor.",
                                   examples=[{"width": 32}])
    num_classes: int | None = Field(None, gt=0, description="Number of output classes.",
                                    examples=[10])
    weights: str | None = Field(None, description="torchvision pretrained weights name "
                                "(downloads on first use), e.g. DEFAULT.", examples=["DEFAULT"])
    checkpoint: str | None = Field(None, description="Local checkpoint: .safetensors, or "
                                   ".pt/.pth/.th loaded with weights_only=True.",
                                   examples=["../shared/models/resnet-cifar10/resnet56.th"])
    task: str | None = Field(None, description="huggingface: sequence-classification, "
                             "feature-extraction, causal-lm or image-classification.",
                             examples=["sequence-classification"])
    trust_remote_code: bool = Field(False, description="huggingface: run the model repository's "
                                    "own Python code (only for sources you trust).",
                                    examples=[False])
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="huggingface: dtype the weights are loaded in.",
        examples=["bfloat16"])
    head: Literal["pretrained", "train", "finetune"] = Field(
        "pretrained", description="huggingface classification, for models shipped without a "
        "classification head: before the baseline is measured, 'train' trains the new head "
        "(body frozen) and 'finetune' trains the new head and the body together, on the "
        "training data with the finetune settings.", examples=["finetune"])
    head_epochs: int = Field(1, gt=0, description="huggingface with head train/finetune: "
                             "epochs of that training.", examples=[2])

    _known_source = _registered("source", "compress.models", "MODEL_SOURCES")


class Normalize(_Section):
    mean: list[float] = Field(min_length=1, description="Per-channel mean (0..1 pixel scale).",
                              examples=[[0.485, 0.456, 0.406]])
    std: list[float] = Field(min_length=1, description="Per-channel standard deviation "
                             "(0..1 pixel scale), one per mean.", examples=[[0.229, 0.224, 0.225]])

    @model_validator(mode="after")
    def _same_length(self) -> Normalize:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same number of channels")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class DataSpec(_Section):
    """Training and evaluation data."""

    source: str = Field(description="Dataset source: digits, imagefolder or torchvision.",
                        examples=["imagefolder"])
    name: str | None = Field(None, description="torchvision dataset class name.",
                             examples=["CIFAR10"])
    path: str | None = Field(None, description="imagefolder: a folder or .tar.gz of "
                             "split/class/*.jpg; torchvision: the dataset root folder.",
                             examples=["data/cifar10-jpg.tar.gz"])
    download: bool = Field(False, description="torchvision: allow downloading the dataset "
                           "into data.path.", examples=[True])
    train_split: str = Field("train", description="imagefolder: split folder used for "
                             "fine-tuning.", examples=["train"])
    eval_split: str = Field("test", description="imagefolder: split folder used for accuracy "
                            "before and after.", examples=["val"])
    batch_size: int = Field(64, gt=0, description="Training batch size.", examples=[128])
    eval_batch_size: int = Field(256, gt=0, description="Evaluation batch size.",
                                 examples=[500])
    train_subset: int | None = Field(None, gt=0, description="Use a fixed random subset of this "
                                     "many training samples (seeded).", examples=[5000])
    eval_subset: int | None = Field(None, gt=0, description="Evaluate on a fixed random subset "
                                    "of this many samples (seeded).", examples=[2000])
    val_subset: int | None = Field(None, gt=0, description="Hold this many training samples "
                                   "out of training (seeded) as the validation data that "
                                   "patience-based fine-tuning monitors.", examples=[1000])
    image_size: int | None = Field(None, gt=0, description="Resize images to this square size.",
                                   examples=[224])
    augment: list[Literal["random_crop", "horizontal_flip"]] = Field(
        default_factory=list, description="Training augmentations, applied in order.",
        examples=[["random_crop", "horizontal_flip"]])
    crop_padding: int = Field(4, ge=0, description="Padding (pixels) for random_crop.",
                              examples=[1])
    normalize: Normalize | None = Field(None, description="Input normalisation: per-channel "
                                        "mean and std, applied after scaling pixels to 0..1.",
                                        examples=[{"mean": [0.485, 0.456, 0.406],
                                                   "std": [0.229, 0.224, 0.225]}])
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.", examples=[4])
    text_column: str | None = Field(None, description="text: column holding the text "
                                    "(default: 'sentence' or 'text', whichever exists).",
                                    examples=["sentence"])
    label_column: str = Field("label", description="text: column holding the integer label.",
                              examples=["label"])
    max_length: int = Field(128, gt=1, description="text: tokens per sample (padded or cut); "
                            "text_lm: tokens per block.", examples=[128])
    tokenizer: str | None = Field(None, description="text, text_lm: tokenizer folder or hub id "
                                  "(default: the huggingface model's).", examples=["./my-model"])
    cache_dir: str | None = Field(None, description="Where archives are extracted "
                                  "(default: $COMPRESS_CACHE or ~/.cache/compress).",
                                  examples=["/scratch/compress-cache"])

    _known_source = _registered("source", "compress.data", "DATASETS")


class Target(_Section):
    macs: float = Field(gt=0, lt=1, description="Fraction of MACs to remove (0.5 halves them).",
                        examples=[0.5])
    tolerance: float = Field(0.02, ge=0, lt=1, description="How far below the target the "
                             "closest reachable reduction may fall (channel rounding makes "
                             "the reduction a step function); beyond it the run is refused.",
                             examples=[0.01])


class PruningSpec(_Section):
    """What to prune and how much."""

    kind: str = Field(
        "structured", description="structured removes channels (dense speedup); unstructured "
        "zeroes single weights (smaller compressed file, no dense speedup); n:m keeps n of "
        "every m consecutive input weights (e.g. 2:4).", examples=["structured"])
    importance: str = Field("l2", description="Importance criterion that ranks channels "
                            "(structured) or weights (unstructured: l1, l2, random).",
                            examples=["l2", "taylor"])
    ratio: float | None = Field(None, gt=0, lt=1, description="Fraction of channels (weights "
                                "for unstructured) to remove from each prunable group (local) "
                                "or overall (global).", examples=[0.5])
    target: Target | None = Field(None, description="Reach a resource target instead of a "
                                  "ratio; the channel ratio is found by search.",
                                  examples=[{"macs": 0.5}])
    ignored: list[str] = Field(default_factory=list, description="Module names whose output "
                               "channels are kept; 're:' prefixes a regular expression.",
                               examples=[["linear", "re:layer\\d\\.\\d+\\.conv2"]])
    round_to: int | Literal["auto"] = Field("auto", description="Keep channel counts multiples "
                                            "of this; auto = 8 for models with convolutions "
                                            "(onnxruntime's CPU block on AVX2; AVX-512 CPUs "
                                            "block by 16, see BENCHMARKS.md).",
                                            examples=[8, "auto"])
    scope: Literal["local", "global"] = Field("local", description="Rank channels (or "
                                              "weights) within each layer (local) or across "
                                              "all layers (global).", examples=["global"])
    n: int = Field(2, gt=0, description="n:m kind: weights kept in each block.", examples=[2])
    m: int = Field(4, gt=1, description="n:m kind: block size along the input dimension.",
                   examples=[4])
    prune_biases: bool = Field(False, description="unstructured: also prune biases.",
                               examples=[True])
    prune_norms: bool = Field(False, description="unstructured: also prune normalisation "
                              "weights.", examples=[True])
    max_layer_ratio: float = Field(0.9, gt=0, le=1, description="Global scope: most any one "
                                   "layer may lose.", examples=[0.8])
    calibration_batches: int = Field(4, gt=0, description="Training batches used by "
                                     "gradient-based criteria (taylor, hessian).", examples=[8])
    verify: bool = Field(True, description="Prove each step: zeroed group == removed group on a "
                         "probe batch. A mismatch fails the run.", examples=[True])
    verify_atol: float = Field(1e-4, gt=0, description="Absolute tolerance of the proof.",
                               examples=[0.001])
    probe_batch: int = Field(8, gt=0, description="Samples in the probe batch.", examples=[16])
    heads: float | None = Field(None, ge=0, lt=1, description="Transformers: fraction of "
                                "attention heads removed by the end of the schedule (default: "
                                "ratio; 0 keeps all heads). Needs ratio, not target.",
                                examples=[0.5])
    ffn: float | None = Field(None, ge=0, lt=1, description="Transformers: fraction of FFN "
                              "neurons removed by the end of the schedule (default: ratio).",
                              examples=[0.5])
    hidden: float | None = Field(None, ge=0, lt=1, description="Transformers (BERT-family and "
                                 "DistilBERT sequence classifiers): fraction of the hidden size "
                                 "removed by the end of the schedule (default: 0, kept). These "
                                 "configs derive the head size from hidden / heads, so the same "
                                 "fraction as heads keeps the result loadable by stock "
                                 "from_pretrained.", examples=[0.5])

    _known_kind = _registered("kind", "compress.pruning", "PRUNING_KINDS")
    _known_importance = _registered("importance", "compress.pruning.criteria", "IMPORTANCE")

    @field_validator("round_to")
    @classmethod
    def _positive_round(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("round_to must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _kind_accepts(self) -> PruningSpec:
        kind = _pruning_kind(self.kind)
        if self.importance not in kind.criteria:
            raise ValueError(f"{self.kind} pruning supports importance "
                             f"{', '.join(kind.criteria)} (got {self.importance!r})")
        kind.check(self)
        return self

    def final_target(self) -> float:
        """The cumulative target the schedule must reach (MACs fraction, ratio or 1 - n/m)."""
        return _pruning_kind(self.kind).final_target(self)


def _pruning_kind(name: str) -> Any:
    """The registered kind; imported when a recipe is validated (the kinds import torch)."""
    return importlib.import_module("compress.pruning").pruning_kind(name)


class ScheduleSpec(_Section):
    """How the pruning is spread over steps."""

    kind: str = Field("one-shot", description="Pruning schedule: one-shot, iterative or "
                      "hybrid.", examples=["iterative"])
    steps: int | None = Field(None, ge=1, description="iterative: number of steps; hybrid: "
                              "number of steps after the first.", examples=[5])
    step_rule: Literal["constant", "geometric"] = Field(
        "geometric", description="iterative: constant removes p/n of the original per step; "
        "geometric removes the same fraction s of what remains per step.",
        examples=["geometric"])
    step_rate: float | None = Field(None, gt=0, lt=1, description="Instead of steps: the "
                                    "geometric per-step rate s; the last step is trimmed to "
                                    "land exactly on the target.", examples=[0.1])
    first_step: float | None = Field(None, gt=0, lt=1, description="hybrid: the cumulative "
                                     "target of the first (one-shot) step, about 60-80 % of "
                                     "the final target.", examples=[0.6])

    _known_schedule = _registered("kind", "compress.schedules", "SCHEDULES")


class Distill(_Section):
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term; the "
                         "task loss gets 1 - alpha.", examples=[0.5])
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KL term.",
                               examples=[4.0])


def _device_name(v: str) -> str:
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError("device must be one of auto, cpu, cuda, cuda:N")


class FinetuneSpec(_Section):
    """Fine-tuning after each pruning step."""

    epochs: int = Field(1, ge=0, description="Fixed budget: epochs after each pruning step "
                        "(0 = none); unused with patience.", examples=[3])
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer "
                                  "steps per pruning step (a step budget).", examples=[500])
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Optimizer.",
                                               examples=["sgd"])
    lr: float = Field(0.01, gt=0, description="Peak learning rate.", examples=[0.01])
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.", examples=[0.9])
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay.", examples=[0.0001])
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="LR schedule "
                                                       "over each step's budget.",
                                                       examples=["constant"])
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision of fine-tuning: auto = bf16 autocast on a CUDA GPU "
        "that supports it (fp16 on one that does not), fp32 on the CPU; bf16 or fp16 force one "
        "(CUDA only; fp16 adds a gradient scaler); off = fp32.", examples=["bf16"])
    channels_last: bool = Field(True, description="On CUDA, keep conv weights in channels-last "
                                "memory layout while fine-tuning (faster convolutions); no "
                                "effect on the CPU or on models without 2-D convolutions.",
                                examples=[True])
    compile: bool = Field(False, description="Fine-tune through torch.compile, compiled again "
                          "after every pruning step (the shapes changed): slower for short "
                          "fine-tunes, faster for long ones.", examples=[False])
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm.",
                                    examples=[1.0])
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.",
                                   examples=[0.1])
    patience: int | list[int] | None = Field(
        None, description="Patience-based fine-tuning: stop a step's fine-tune when the "
        "monitored metric has not improved by more than min_delta for this many evaluations, "
        "then restore the step's best weights. A list gives one value per step, the last "
        "repeating. Unset: a fixed budget of 'epochs'.", examples=[[20, 5]])
    monitor: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="Patience: metric on the validation data (val_accuracy "
        "is maximised, val_loss minimised).", examples=["val_accuracy"])
    min_delta: float = Field(0.0, ge=0, description="Patience: smallest change that counts as "
                             "an improvement (accuracy in points, or loss).", examples=[0.1])
    max_epochs: int = Field(20, gt=0, description="Patience: most epochs per step.",
                            examples=[20])
    eval_every: int | None = Field(None, gt=0, description="Patience: optimizer steps between "
                                   "validation evaluations (default: once per epoch).",
                                   examples=[100])
    divergence_lr_factor: float = Field(
        0.1, gt=0, lt=1, description="After a divergence (a non-finite training loss, or with "
        "patience a collapse of the monitored metric), the step's fine-tune is rolled back to "
        "its best weights so far and restarted once with the learning rate multiplied by this; "
        "a second divergence fails the run.", examples=[0.1])
    collapse_drop: float = Field(30.0, gt=0, description="Patience with val_accuracy: a "
                                 "validation accuracy more than this many points below the "
                                 "just-pruned model's (evaluation 0) is a divergence.",
                                 examples=[20.0])
    collapse_factor: float = Field(10.0, gt=1, description="Patience with val_loss: a "
                                   "validation loss more than this many times the just-pruned "
                                   "model's (evaluation 0), or not a number, is a divergence.",
                                   examples=[5.0])
    checkpoint_every: int = Field(
        1, ge=0, description="Save a resumable checkpoint (weights, optimizer, LR schedule, "
        "random states, patience state) every this many passes over the training data within "
        "a step's fine-tune, so --resume continues a long fine-tune from its last checkpoint "
        "instead of redoing the step (0 = only at the end of each step and when stopped by "
        "Ctrl-C/SIGTERM).", examples=[1])
    distill: Distill | None = Field(None, description="Knowledge distillation from the "
                                    "unpruned model (off unless set).",
                                    examples=[{"alpha": 0.5, "temperature": 4.0}])

    @field_validator("patience")
    @classmethod
    def _patience_positive(cls, v: int | list[int] | None) -> int | list[int] | None:
        values = v if isinstance(v, list) else [v] if v is not None else []
        if isinstance(v, list) and not v:
            raise ValueError("patience list must not be empty")
        if any(p < 1 for p in values):
            raise ValueError("patience values must be >= 1")
        return v

    def patience_for(self, step: int) -> int | None:
        """Patience of 1-based ``step``: a list's last value repeats."""
        if self.patience is None:
            return None
        if isinstance(self.patience, int):
            return self.patience
        return self.patience[min(step, len(self.patience)) - 1]


class ExportSpec(_Section):
    """Artifacts written after pruning."""

    safetensors: bool = Field(True, description="Write model.safetensors + model.json manifest.",
                              examples=[True])
    onnx: bool = Field(True, description="Write model.onnx (dynamic batch axis), after "
                       "onnxruntime matched torch on real inputs.", examples=[True])
    opset: int | None = Field(None, ge=13, description="ONNX opset (default: the exporter's).",
                              examples=[17])
    parity_atol: float = Field(1e-4, gt=0, description="Parity: absolute tolerance.",
                               examples=[0.0001])
    parity_rtol: float = Field(1e-3, ge=0, description="Parity: relative tolerance.",
                               examples=[0.001])
    parity_batch: int = Field(4, gt=0, description="Samples compared in the parity check.",
                              examples=[8])
    steps: Literal["last", "all"] = Field("last", description="Export the last step only, or "
                                          "every step of an iterative run (steps/NN/).",
                                          examples=["last"])


class ReportSpec(_Section):
    """Speed measurement and report."""

    latency: bool = Field(True, description="Measure latency of baseline and compressed.",
                          examples=[True])
    engines: list[Literal["onnxruntime", "torch"]] = Field(
        default_factory=lambda: ["onnxruntime", "torch"], min_length=1,
        description="Engines timed.", examples=[["onnxruntime"]])
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1,
                                   description="Batch sizes timed.", examples=[[1, 64]])
    warmup: int = Field(3, ge=0, description="Untimed runs before timing each block.",
                        examples=[3])
    rounds: int = Field(7, gt=0, description="Interleaved A/B rounds; the median is "
                        "reported.", examples=[7])
    runs_per_round: int = Field(5, gt=0, description="Timed runs in each block.", examples=[5])
    min_block_ms: float = Field(50.0, ge=0, description="Each timed block runs at least this "
                                "long: runs_per_round is raised for fast models, so short "
                                "latencies are not lost in timer and scheduler noise (0 = "
                                "exactly runs_per_round).", examples=[50.0])
    max_block_ms: float = Field(1000.0, ge=0, description="A slow model's timed block stops "
                                "growing past this: runs_per_round is lowered (to one at "
                                "least) and warmup to the runs kept, so timing a large batch "
                                "does not outlast the run it reports on (0 = no cap).",
                                examples=[1000.0])
    sample_shape: list[int] | None = Field(None, min_length=1, description="Input shape "
                                           "(without batch) timed for latency; default: the "
                                           "data's. For sequence models: [tokens].",
                                           examples=[[128]])
    threads: int | None = Field(None, gt=0, description="Intra-op threads (default: all cores).",
                                examples=[4])
    device: str = Field("cpu", description="Where latency is timed: cpu, auto (CUDA when torch "
                        "sees a GPU; onnxruntime then runs on its CUDA provider), cuda or cuda:N.",
                        examples=["cpu", "auto"])

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _device_name(v)

    @model_validator(mode="after")
    def _block_bounds(self) -> ReportSpec:
        if 0 < self.max_block_ms < self.min_block_ms:
            raise ValueError(f"min_block_ms ({self.min_block_ms:g}) must not exceed "
                             f"max_block_ms ({self.max_block_ms:g}); 0 turns either bound off")
        return self

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b <= 0 for b in v):
            raise ValueError("batch sizes must be positive")
        return v


class GatesSpec(_Section):
    """Thresholds checked at the end; a failing gate exits 1."""

    max_accuracy_drop: float | None = Field(None, ge=0, description="Largest allowed top-1 "
                                            "drop in absolute percentage points.",
                                            examples=[2.0])
    max_accuracy_drop_relative: float | None = Field(None, ge=0, le=100, description="Largest "
                                                     "allowed top-1 drop as a percentage of the "
                                                     "baseline accuracy (1.0 = 1 %).",
                                                     examples=[1.0])
    min_speedup: float | None = Field(None, gt=0, description="Smallest allowed onnxruntime "
                                      "speedup at the largest batch size.", examples=[1.5])
    max_size_mb: float | None = Field(None, gt=0, description="Largest allowed ONNX file (MB).",
                                      examples=[25.0])
    min_macs_reduction: float | None = Field(None, ge=0, lt=1, description="Smallest allowed "
                                             "fraction of MACs removed.", examples=[0.45])


class Recipe(_Section):
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
    seed: int = Field(0, ge=0, description="Random seed for data order, subsets and probes.",
                      examples=[0])
    device: str = Field("auto", description="auto (CUDA when torch sees one), cpu, cuda or "
                        "cuda:N.", examples=["auto", "cuda:0"])
    base_dir: str | None = Field(None, exclude=True, description="Folder that relative paths "
                                 "are resolved against (set by the loader: the recipe's folder).")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _device_name(v)

    @model_validator(mode="after")
    def _cross_section(self) -> Recipe:
        if self.finetune.patience is not None and self.data.val_subset is None:
            raise ValueError("finetune.patience monitors validation data: set data.val_subset "
                             "(samples held out of the training split)")
        if _pruning_kind(self.pruning.kind).single_step and self.schedule.kind != "one-shot":
            raise ValueError(f"{self.pruning.kind} pruning has a fixed pattern: use "
                             f"schedule.kind: one-shot")
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


def _format_loc(loc: tuple[Any, ...]) -> str:
    # A key may hold a newline or other control characters: escape them, the message is one line.
    parts = (str(p) if str(p).isprintable() else str(p).encode("unicode_escape").decode("ascii")
             for p in loc)
    return ".".join(parts) or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return [k for k in model.model_fields if k != "base_dir"]


def _validation_message(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = _format_loc(loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            parts.append(f"unknown key '{where}'; allowed keys here: {', '.join(allowed)}")
        elif e["type"] == "missing":
            parts.append(f"missing required key '{where}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            # A check across sections (no location) names its keys itself.
            parts.append(f"'{where}': {msg}{got_s}" if loc else f"{msg}{got_s}")
    return f"{source}: " + "; ".join(parts)


def parse_recipe(data: dict[str, Any], *, source: str = "recipe",
                 base_dir: str | os.PathLike[str] | None = None) -> Recipe:
    """Validate a recipe given as a dict; raise :class:`InputError` naming the bad keys."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a recipe must be a mapping of sections, got "
                         f"{type(data).__name__}")
    if "base_dir" in data:
        raise InputError(f"{source}: unknown key 'base_dir'")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise InputError(_validation_message(err, source)) from None
    if base_dir is not None:
        recipe.base_dir = str(Path(base_dir).resolve())
    return recipe


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML).

    Example:
        >>> apply_overrides({"finetune": {"epochs": 3}}, ["finetune.epochs=1"])
        {'finetune': {'epochs': 1}}
    """
    out = copy.deepcopy(data)
    items: list[tuple[str, Any]]
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise InputError(f"override {item!r} is not of the form a.b.c=value")
            try:
                items.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
            except yaml.YAMLError:
                raise InputError(f"override {item!r}: the value is not valid YAML") from None
    for key, value in items:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"override {key!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_recipe(path: str | os.PathLike[str],
                overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load, override and validate a YAML recipe; relative paths resolve against its folder.

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", ["finetune.epochs=1"])  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"recipe file {str(p)!r} does not exist; pass the path of a YAML recipe")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{p}: not valid YAML{where}; check indentation and quoting") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a UTF-8 text file") from None
    if data is None:
        raise InputError(f"{p}: the recipe is empty")
    if overrides:
        data = apply_overrides(data, overrides)
    recipe = parse_recipe(data, source=str(p), base_dir=p.parent)
    if recipe.name is None:
        recipe.name = p.stem
    return recipe


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe (what ``compress schema`` prints)."""
    schema = Recipe.model_json_schema()
    schema["properties"].pop("base_dir", None)
    return schema
