"""The recipe's later stages: ``finetune``, ``export``, ``report`` and ``gates``.

Example:
    >>> FinetuneSpec().epochs, ExportSpec().onnx, GatesSpec().max_accuracy_drop is None
    (1, True, True)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from compress.recipe.base import Section, device_name

__all__ = ["Distill", "FinetuneSpec", "ExportSpec", "ReportSpec", "GatesSpec"]


class Distill(Section):
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term; the "
                         "task loss gets 1 - alpha.", examples=[0.5])
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KL term.",
                               examples=[4.0])


class FinetuneSpec(Section):
    """Fine-tuning after each pruning step."""

    epochs: int = Field(1, ge=0, description="Fixed budget: epochs after each pruning step "
                        "(0 = none); unused with patience.", examples=[3])
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer "
                                  "steps per pruning step (a step budget).", examples=[500])
    max_tokens: int | None = Field(None, gt=0, description="Stop after this many training "
                                   "tokens per pruning step (text_lm data: every position of "
                                   "every block, over all processes), rounded up to whole "
                                   "optimizer steps; with max_steps, the smaller budget wins.",
                                   examples=[1000000])
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


class ExportSpec(Section):
    """Artifacts written after pruning."""

    safetensors: bool = Field(True, description="Write model.safetensors + model.json manifest.",
                              examples=[True])
    onnx: bool = Field(True, description="Write model.onnx (dynamic batch axis), after "
                       "onnxruntime matched torch on real inputs.", examples=[True])
    opset: int | None = Field(None, ge=13, description="ONNX opset (default: the exporter's).",
                              examples=[17])
    parity_atol: float = Field(1e-4, gt=0, le=1e-2, description="Parity: tolerance, a share "
                               "of the output's largest magnitude (at most 1e-2).",
                               examples=[0.0001])
    parity_rtol: float = Field(1e-3, ge=0, le=0.1, description="Parity: relative tolerance "
                               "(at most 0.1).",
                               examples=[0.001])
    parity_batch: int = Field(4, gt=0, description="Samples compared in the parity check.",
                              examples=[8])
    steps: Literal["last", "all"] = Field("last", description="Export the last step only, or "
                                          "every step of an iterative run (steps/NN/).",
                                          examples=["last"])


class ReportSpec(Section):
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
        return device_name(v)

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


class GatesSpec(Section):
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
    min_baseline_accuracy: float | None = Field(None, ge=0, le=100, description="Smallest "
                                                "allowed top-1 of the model before pruning, in "
                                                "percent: a baseline that never learned the "
                                                "task makes every other figure meaningless.",
                                                examples=[70.0])
    above_chance: bool = Field(False, description="The baseline and the compressed model must "
                               "both score above chance level (100 / classes %, plus two "
                               "standard errors on the evaluation samples); a run at chance "
                               "is also a warning in its report, gate or not.", examples=[True])
    require_proof: bool = Field(False, description="Every pruning step must be proven exact: a "
                                "step whose proof was skipped (pruning.verify: false) fails the "
                                "gate. Steps checked by a pattern count (unstructured, n:m) "
                                "pass, shown as not applicable.", examples=[True])
