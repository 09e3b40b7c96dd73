"""The recipe's ``pruning`` and ``schedule`` sections: what to prune, how much, in what steps.

A kind's own keys are checked by the kind (its ``PruningKind.check`` in compress/pruning).

Example:
    >>> PruningSpec(target={"macs": 0.5}).final_target(), ScheduleSpec().kind
    (0.5, 'one-shot')
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from compress.recipe.base import Section, pruning_kind_of, registered, registered_names

__all__ = ["Target", "PruningSpec", "ScheduleSpec"]


class Target(Section):
    # Exactly one resource to reduce: macs or params (counted) or latency (measured). No
    # docstring: the schema takes the description of PruningSpec.target.
    macs: float | None = Field(None, gt=0, lt=1, description="Fraction of MACs to remove (0.5 "
                               "halves them).", examples=[0.5])
    latency: float | None = Field(None, gt=0, lt=1, description="Fraction of the measured "
                                  "latency to remove (0.5 = 2x faster), timed on the engine, "
                                  "threads and largest batch size the report times "
                                  "(onnxruntime on the CPU).", examples=[0.5])
    params: float | None = Field(None, gt=0, lt=1, description="Transformers: fraction of "
                                 "the model's parameters to remove (0.5 halves them). A few "
                                 "width/depth candidates that meet it (heads and FFN neurons; "
                                 "FFN neurons only; with the hidden size; whole blocks; blocks "
                                 "and width) are pruned on a copy and scored on the "
                                 "calibration samples (perplexity for causal LMs, else the KL "
                                 "divergence from the unpruned outputs), before any recovery; "
                                 "the best is kept and every candidate is in the report.",
                                 examples=[0.5])
    latency_table: str | None = Field(None, description="With latency: a JSON file of layer "
                                      "timings and the widths planned from them. Missing, it "
                                      "is measured here and written; given, another machine "
                                      "plans the same widths from it.",
                                      examples=["tables/resnet56-avx2.json"])
    tolerance: float = Field(0.02, ge=0, lt=1, description="How far below the target the "
                             "closest reachable reduction may fall (channel rounding makes "
                             "the reduction a step function; measured latency is noisy); "
                             "beyond it the run is refused.", examples=[0.01])

    @model_validator(mode="after")
    def _one_resource(self) -> Target:
        if sum(v is not None for v in (self.macs, self.latency, self.params)) != 1:
            raise ValueError("give exactly one of 'macs' (e.g. 0.5), 'latency' (e.g. 0.5: "
                             "2x faster) or 'params' (e.g. 0.5)")
        if self.latency_table is not None and self.latency is None:
            raise ValueError("'latency_table' goes with a 'latency' target")
        return self

    def value(self) -> float:
        """The fraction to remove, whichever resource it is of.

        Example:
            >>> Target(latency=0.5).value()
            0.5
        """
        value = next((v for v in (self.macs, self.latency, self.params) if v is not None), None)
        assert value is not None, "checked by _one_resource"
        return value


class PruningSpec(Section):
    """What to prune and how much."""

    kind: str = Field(
        "structured", description="structured removes channels (dense speedup); unstructured "
        "zeroes single weights (smaller compressed file, no dense speedup); n:m keeps n of "
        "every m consecutive input weights (e.g. 2:4).", examples=["structured"],
        json_schema_extra=registered_names("compress.pruning", "PRUNING_KINDS"))
    importance: str = Field("l2", description="Importance criterion that ranks channels "
                            "(structured) or weights (unstructured, n:m: l1, l2, random, and "
                            "wanda or sparsegpt, which read the calibration section's samples "
                            "and prune in one step). Transformers also take activation "
                            "(Minitron: heads and FFN neurons ranked by their activations on "
                            "the calibration samples, hidden channels by what they contribute "
                            "to the layers reading them).",
                            examples=["l2", "taylor"],
                            json_schema_extra=registered_names("compress.pruning.criteria",
                                                               "IMPORTANCE"))
    ratio: float | None = Field(None, gt=0, lt=1, description="Fraction of channels (weights "
                                "for unstructured) to remove from each prunable group (local) "
                                "or overall (global).", examples=[0.5])
    target: Target | None = Field(None, description="Reach a resource target (MACs, "
                                  "latency measured on onnxruntime, or transformers' "
                                  "parameters) instead of a ratio; the channel ratio "
                                  "(transformers: the fraction of heads and FFN neurons not "
                                  "given; MACs and latency) is found by search, and a params "
                                  "target also picks the width/depth mix.",
                                  examples=[{"macs": 0.5}, {"latency": 0.5}, {"params": 0.5}])
    ignored: list[str] = Field(default_factory=list, description="Module names whose output "
                               "channels are kept; 're:' prefixes a regular expression.",
                               examples=[["linear", "re:layer\\d\\.\\d+\\.conv2"]])
    round_to: int | Literal["auto"] = Field("auto", description="Keep channel counts multiples "
                                            "of this; auto = 8 for models with convolutions "
                                            "(onnxruntime's CPU block on AVX2; AVX-512 CPUs "
                                            "block by 16, see BENCHMARKS.md).",
                                            examples=[8, "auto"])
    scope: Literal["local", "global", "row"] = Field(
        "local", description="Rank channels (or weights) within each layer (local), across all "
        "layers (global), or, for unstructured magnitude and random, weights within each "
        "output row (row: every row loses the same share, as wanda ranks).",
        examples=["global"])
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
    sparsegpt_damping: float = Field(0.01, gt=0, lt=1, description="sparsegpt: added to the "
                                     "Hessian's diagonal, as a share of its mean diagonal "
                                     "(raise it when a layer's Hessian is refused as not "
                                     "positive definite).", examples=[0.01])
    sparsegpt_block: int = Field(128, gt=0, description="sparsegpt: input columns updated "
                                 "together (memory and speed, not the result); a multiple of m "
                                 "for n:m.", examples=[128])
    verify: bool = Field(True, description="Prove each step: zeroed group == removed group on a "
                         "probe batch. A mismatch fails the run.", examples=[True])
    verify_atol: float = Field(1e-4, gt=0, le=1e-2, description="Tolerance of the proof, a "
                               "share of the probe output's largest magnitude (at most 1e-2: a "
                               "larger one passes anything; never below the dtype's rounding).",
                               examples=[0.001])
    probe_batch: int = Field(8, gt=0, description="Samples in the probe batch.", examples=[16])
    heads: float | None = Field(None, ge=0, lt=1, description="Transformers: fraction of "
                                "attention heads removed by the end of the schedule (default: "
                                "ratio, or with target the fraction its search finds; 0 keeps "
                                "all heads).",
                                examples=[0.5])
    ffn: float | None = Field(None, ge=0, lt=1, description="Transformers: fraction of FFN "
                              "neurons removed by the end of the schedule (default: ratio, or "
                              "with target the fraction its search finds).",
                              examples=[0.5])
    hidden: float | None = Field(None, ge=0, lt=1, description="Transformers (BERT-family and "
                                 "DistilBERT sequence classifiers; Llama, Qwen2, Qwen3, Mistral "
                                 "and GPT-2 decoders, LM head tied or not): fraction of the "
                                 "hidden size removed by the end of the schedule (default: 0, "
                                 "kept). BERT and GPT-2 configs derive the head size from "
                                 "hidden / heads, so the same fraction as heads keeps the result "
                                 "loadable by stock from_pretrained; Llama-style configs keep "
                                 "their head size and k/v heads, and need the hidden size a "
                                 "multiple of the query heads.", examples=[0.5])

    blocks: int | float | None = Field(None, description="Transformers: whole blocks removed "
                                       "by the end of the schedule, an integer count (2) or a "
                                       "fraction of the blocks below 1 (0.25); the blocks that "
                                       "change their hidden state least on the calibration "
                                       "samples (1 - cosine of input and output) go first. "
                                       "Default: none.", examples=[2, 0.25])

    _known_kind = registered("kind", "compress.pruning", "PRUNING_KINDS")
    _known_importance = registered("importance", "compress.pruning.criteria", "IMPORTANCE")

    @field_validator("blocks", mode="before")
    @classmethod
    def _block_count(cls, v: object) -> object:
        if isinstance(v, bool) or (v is not None and not isinstance(v, (int, float))):
            raise ValueError("blocks is a count of blocks (e.g. 2) or a fraction below 1 "
                             "(e.g. 0.25)")
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"blocks as a fraction must lie between 0 and 1 (got {v}); give "
                             f"a count as an integer (e.g. 2)")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"blocks must be at least 1 (got {v}); leave it out to keep "
                             f"every block")
        return v

    @field_validator("round_to")
    @classmethod
    def _positive_round(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("round_to must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _kind_accepts(self) -> PruningSpec:
        kind = pruning_kind_of(self.kind)
        if self.importance not in kind.criteria:
            raise ValueError(f"{self.kind} pruning supports importance "
                             f"{', '.join(kind.criteria)} (got {self.importance!r})")
        if self.scope == "row" and (self.kind != "unstructured"
                                    or self.importance not in ("l1", "l2", "random")):
            raise ValueError("scope: row ranks single weights by magnitude (or at random) "
                             "within each output row; it goes with kind: unstructured and "
                             "importance l1, l2 or random")
        kind.check(self)
        return self

    def final_target(self) -> float:
        """The cumulative target the schedule must reach (MACs fraction, ratio or 1 - n/m)."""
        return pruning_kind_of(self.kind).final_target(self)


class ScheduleSpec(Section):
    """How the pruning is spread over steps."""

    kind: str = Field("one-shot", description="How the pruning is spread over steps (a "
                      "registered schedule).", examples=["iterative"],
                      json_schema_extra=registered_names("compress.schedules", "SCHEDULES"))
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

    _known_schedule = registered("kind", "compress.schedules", "SCHEDULES")
