"""Save a pruned transformers model so stock ``from_pretrained`` loads it, and prove it.

``out/hf/`` gets ``save_pretrained`` (safetensors) plus the tokenizer or image processor of the
source model. The folder is staged, reloaded with the plain ``transformers.AutoModel*`` class
(no compress code involved), compared with the in-memory model on the probe batch, and only
then renamed into place. When the model's config cannot describe the pruned shapes (per-block
widths, or fewer heads where the config derives the head size), nothing is saved there: the
reason goes to the report and ``compress.load`` rebuilds the model from the manifest instead.

Example:
    >>> info = save_hf_(model, Path("runs/minilm"), probe)  # doctest: +SKIP
    >>> info["saved"], info["parity"] < 1e-5  # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import CheckFailed
from compress.export.onnx import parity
from compress.fsutil import honour_umask_, temp_path_for, write_text_atomic, writing
from compress.measure.tolerance import Tolerance
from compress.pruning.hf_layout import blocks, rewrite_config_

__all__ = ["save_hf_", "write_model_card", "name_labels_", "HF_FOLDER"]

log = logging.getLogger(__name__)

HF_FOLDER = "hf"


def _processor(source: str | None) -> Any:
    """The tokenizer (or image processor) of the source model, if it has one."""
    if source is None:
        return None
    import transformers

    for auto in (transformers.AutoTokenizer, transformers.AutoImageProcessor):
        try:
            # Never a folder's own code, and never a prompt asking whether to run it.
            return auto.from_pretrained(source, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _stage_and_prove(model: nn.Module, stage: Path, probe: torch.Tensor, atol: float,
                     max_shard_size: str) -> tuple[float, Tolerance]:
    """``save_pretrained`` into ``stage``; the stock reload's largest difference on ``probe``
    and the tolerance it was held to."""
    import transformers

    from compress.models.huggingface import TASKS, HFModel

    hf = model.hf
    with writing(stage.parent / HF_FOLDER):
        hf.save_pretrained(str(stage), max_shard_size=max_shard_size)
        processor = _processor(model.source_path)
        if processor is not None:
            processor.save_pretrained(str(stage))
    try:
        auto = getattr(transformers, TASKS[model.task])
        # The proof is of a *stock* reload: no code the folder's config.json may still name.
        stock = auto.from_pretrained(str(stage), dtype=next(hf.parameters()).dtype,
                                     trust_remote_code=False)
        reloaded = HFModel(stock, model.task, pad_token_id=model.pad_token_id).eval()
        with torch.no_grad():
            return parity(model.eval()(probe), reloaded(probe),
                          what=f"stock from_pretrained({HF_FOLDER}/)", atol=atol, rtol=0)
    except CheckFailed:
        raise
    except Exception as err:
        raise CheckFailed(f"stock from_pretrained could not load the saved model: "
                          f"{type(err).__name__}: {str(err).splitlines()[0]}") from err


def name_labels_(config: Any, classes: Sequence[str] | None) -> bool:
    """Set ``id2label``/``label2id`` from the data's class names (an image folder's class
    folders, a text recipe's ``data.label_names``); names that are just the ids, or a count
    that is not the head's, leave transformers' ``LABEL_i``. Returns whether it named them.

    Example:
        >>> from types import SimpleNamespace
        >>> c = SimpleNamespace(num_labels=2, id2label={0: "LABEL_0", 1: "LABEL_1"})
        >>> name_labels_(c, ["0", "1"]), name_labels_(c, ["neg", "pos"]), c.label2id
        (False, True, {'neg': 0, 'pos': 1})
    """
    names = [str(n) for n in classes or []]
    if (len(names) != getattr(config, "num_labels", None) or len(set(names)) != len(names)
            or names == [str(i) for i in range(len(names))]):
        return False
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    return True


def write_model_card(hf_dir: Path, report: dict[str, Any], *, base_path: str | None,
                     revision: str | None, task: str) -> Path:
    """``hf_dir/README.md``, the model card rendered from the run's ``report`` and the base
    folder's config and card (license, tags)."""
    from compress.report.card import base_card_front_matter, read_json_config, render_model_card

    base = Path(base_path) if base_path else None
    text = render_model_card(report, read_json_config(hf_dir / "config.json"),
                             base_config=read_json_config(base / "config.json") if base else {},
                             base_card=base_card_front_matter(base), revision=revision,
                             task=task)
    write_text_atomic(hf_dir / "README.md", text)
    return hf_dir / "README.md"


def save_hf_(model: nn.Module, out_dir: Path, probe: torch.Tensor, *, atol: float = 1e-5,
             max_shard_size: str = "2GB",
             classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``out_dir/hf`` when the config can express the model; prove the stock reload.

    ``classes`` name the labels in the config (see :func:`name_labels_`).
    Returns ``{"saved": bool, "path"?: str, "parity"?: float, "parity_tolerance"?: dict,
    "reason"?: str}`` (the tolerance: ``atol`` scaled to the output, as every parity check's,
    see :func:`~compress.export.onnx.parity`). Raises
    :class:`CheckFailed` when the reloaded model computes something else.
    """
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the library never prints
    hf = model.hf
    problems = rewrite_config_(hf.config, model.layout, blocks(hf, model.layout),
                               model.hidden_width()) if model.layout is not None else []
    if problems:
        reason = "; ".join(problems) + " (load it with compress.load instead)"
        log.info("not writing %s/: %s", HF_FOLDER, reason)
        return {"saved": False, "reason": reason}
    name_labels_(hf.config, classes)
    target = out_dir / HF_FOLDER
    with writing(target):
        stage = temp_path_for(target)
    try:
        diff, tol = _stage_and_prove(model, stage, probe, atol, max_shard_size)
        with writing(target):
            for file in stage.rglob("*"):
                if file.is_file():
                    honour_umask_(file)  # save_pretrained's safetensors shards are created 0600
            if target.exists():
                shutil.rmtree(target)
            stage.replace(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # whatever did not become hf/
    return {"saved": True, "path": str(target), "parity": diff,
            "parity_tolerance": tol.to_dict()}
