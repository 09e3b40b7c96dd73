"""The recipe's ``model`` and ``data`` sections: where the model and the data come from.

Which keys a source uses is declared by the source itself (``accepts``/``required`` in
compress/models and compress/data) and checked once by the preflight.

Example:
    >>> DataSpec(source="digits").batch_size, ModelSpec(source="cifar_resnet").name
    (64, None)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from compress.recipe.base import Section, registered, registered_names

__all__ = ["ModelSpec", "Normalize", "ArchiveLimits", "DataSpec"]


class ModelSpec(Section):
    """Where the model comes from. Which fields a source uses is checked by the source."""

    source: str = Field(description="Where the model comes from (a registered "
                        "model source).",
                        examples=["cifar_resnet"],
                        json_schema_extra=registered_names("compress.models", "MODEL_SOURCES"))
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

    _known_source = registered("source", "compress.models", "MODEL_SOURCES")


class Normalize(Section):
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


class ArchiveLimits(Section):
    """What extracting a data archive may cost, whatever its headers claim.

    The defaults admit CIFAR or ImageNet-1k's validation split and refuse a compression bomb or
    a header declaring terabytes; raise them for a larger archive you trust.
    """

    max_member_mb: int = Field(1024, gt=0, description="Largest single file extracted (MiB).",
                               examples=[4096])
    max_total_mb: int = Field(65536, gt=0, description="Most bytes extracted in all (MiB).",
                              examples=[200_000])
    max_files: int = Field(2_000_000, gt=0, description="Most members (files and folders).",
                           examples=[5_000_000])
    max_ratio: float = Field(100.0, ge=1, description="Most bytes extracted per byte of the "
                             "(compressed) archive read; a compression bomb exceeds it.",
                             examples=[200])


class DataSpec(Section):
    """Training and evaluation data."""

    source: str = Field(description="Where the data comes from (a registered dataset).",
                        examples=["imagefolder"],
                        json_schema_extra=registered_names("compress.data", "DATASETS"))
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
    label_names: list[str] | None = Field(None, description="text: the name of each label id "
                                          "(0, 1, ...), for the report, model.json and hf/'s "
                                          "id2label (default: the ids).",
                                          examples=[["negative", "positive"]])
    max_length: int = Field(128, gt=1, description="text: tokens per sample (padded or cut); "
                            "text_lm: tokens per block.", examples=[128])
    tokenizer: str | None = Field(None, description="text, text_lm: tokenizer folder or hub id "
                                  "(default: the huggingface model's).", examples=["./my-model"])
    cache_dir: str | None = Field(None, description="Where archives are extracted "
                                  "(default: $COMPRESS_CACHE or ~/.cache/compress).",
                                  examples=["/scratch/compress-cache"])
    archive: ArchiveLimits = Field(default_factory=ArchiveLimits, description="imagefolder: "
                                   "caps on extracting a .tar.gz/.tgz/.tar data.path.",
                                   examples=[{"max_total_mb": 200_000}])

    _known_source = registered("source", "compress.data", "DATASETS")
