"""Export the shrunk model, and prove each export by parity.

* ``model.safetensors`` + ``model.json`` (:mod:`compress.export.safetensors`): the weights and
  a manifest from which :func:`~compress.export.load.load_model` rebuilds the shrunk model
  with no pickle; the reload is checked against the model in memory.
* ``model.onnx`` (:mod:`compress.export.onnx`): ``torch.onnx.export`` (dynamo) with a dynamic
  batch axis, checked by ``onnx.checker`` and run with onnxruntime on real inputs at two batch
  sizes.

Parity failures raise :class:`CheckFailed`; they never just warn.

Example:
    >>> paths = export_model(model, out_dir, spec, manifest_model, probe)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import CheckFailed
from compress.export.load import load_model
from compress.export.onnx import commit_onnx, onnx_session, onnx_size, parity, stage_onnx
from compress.export.safetensors import save_safetensors
from compress.recipe.sources import ModelSpec
from compress.recipe.stages import ExportSpec

log = logging.getLogger(__name__)

__all__ = ["export_model"]


def export_model(model: nn.Module, out_dir: Path, spec: ExportSpec, model_spec: ModelSpec,
                 probe: torch.Tensor, serving: Mapping[str, Any] | None = None, *,
                 build: Callable[..., nn.Module] | None = None) -> dict[str, Any]:
    """Write the enabled artifacts and prove each one on ``probe`` (real eval inputs).

    Returns paths, sizes and the parity differences measured. ``serving``: see
    :func:`save_safetensors`. ``build``: the constructor the reload check calls instead of
    the manifest's source (as ``compress.load(..., build=...)`` will).
    """
    model = model.eval().cpu()
    probe = probe[: spec.parity_batch].cpu()
    with torch.no_grad():
        reference = model(probe)
    # max |diff| of each check, and the tolerance it met (the full probe batch's for ONNX)
    result: dict[str, Any] = {"parity": {}, "parity_tolerance": {}}
    if spec.safetensors:
        weights, manifest = save_safetensors(model, out_dir, model_spec, tuple(probe.shape[1:]),
                                             serving)
        with torch.no_grad():
            # The recipe being run (or the caller's build) named this model's source.
            reloaded = load_model(out_dir, force=True, trust_code=True, build=build)(probe)
        result["parity"]["safetensors"], tol = parity(
            reference, reloaded, what="reloaded safetensors model", atol=1e-6, rtol=1e-6)
        result["parity_tolerance"]["safetensors"] = tol.to_dict()
        result["safetensors"] = str(weights)
        result["safetensors_bytes"] = weights.stat().st_size
        result["manifest"] = str(manifest)
    if spec.onnx:
        # Staged where no pipeline looks; moved to model.onnx only once proven.
        staged = stage_onnx(model, out_dir, "model.onnx", probe, spec.opset)
        session = onnx_session(staged)
        worst = 0.0
        try:
            # Two batch sizes (and two lengths for sequences) prove the axes really dynamic.
            for n in sorted({1, len(probe)}):
                out = session.run(None, {session.get_inputs()[0].name: probe[:n].numpy()})[0]
                diff, tol = parity(reference[:n], out, what=f"ONNX (batch {n})",
                                   atol=spec.parity_atol, rtol=spec.parity_rtol)
                worst = max(worst, diff)
                result["parity_tolerance"]["onnx"] = {**tol.to_dict(), "rtol": spec.parity_rtol}
            if 1 in getattr(model, "dynamic_dims", {}) and probe.shape[1] > 4:
                short = probe[:, : probe.shape[1] // 2]
                with torch.no_grad():
                    expected = model(short)
                out = session.run(None, {session.get_inputs()[0].name: short.numpy()})[0]
                worst = max(worst, parity(expected, out, what="ONNX (half length)",
                                          atol=spec.parity_atol, rtol=spec.parity_rtol)[0])
        except CheckFailed:
            (out_dir / "model.onnx").unlink(missing_ok=True)
            commit_onnx(staged, out_dir / "model.onnx.failed-parity")
            raise
        path = commit_onnx(staged, out_dir / "model.onnx")
        result["parity"]["onnx"] = worst
        result["onnx"] = str(path)
        result["onnx_bytes"] = onnx_size(path)
    log.info("exported to %s; parity, max |difference| from PyTorch: %s", out_dir,
             ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in result["parity"].items()) or "not checked")
    return result
