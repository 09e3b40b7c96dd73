"""ONNX: the dynamo exporter with dynamic axes and ``onnx.checker``, staged and committed
whole, an onnxruntime session, and the parity check every export must pass.

Example:
    >>> check_parity(torch.ones(2), torch.ones(2), what="demo", atol=1e-6, rtol=0.0)
    0.0
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.export.onnx_layout import channel_maps_as_convs
from compress.fsutil import fs_fault, temp_path_for, write_failure, writing
from compress.measure.tolerance import Tolerance, scaled_tolerance

__all__ = ["export_onnx", "stage_onnx", "onnx_size", "commit_onnx", "onnx_session", "check_parity",
           "parity"]


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor,
                opset: int | None = None, *, layout_rewrites: bool = True) -> Path:
    """Export with the dynamo exporter, a dynamic batch axis, and ``onnx.checker``.

    The file is built in a staging folder beside ``path`` and moved into place whole; models
    over ~1.8 GB keep their weights in ``<name>.data`` next to it (the protobuf limit is 2 GB).
    """
    staged = stage_onnx(model, path.parent, path.name, example, opset,
                        layout_rewrites=layout_rewrites)
    return commit_onnx(staged, path)


def stage_onnx(model: nn.Module, folder: Path, name: str, example: torch.Tensor,
               opset: int | None = None, *, layout_rewrites: bool = True) -> Path:
    """Export into a fresh hidden staging folder inside ``folder``; return the staged file.

    ``layout_rewrites``: channel maps become 1x1 convs (:mod:`compress.export.onnx_layout`).
    """
    import onnx

    with writing(folder / name):
        stage = temp_path_for(folder / name)
        stage.mkdir()
    staged = stage / name
    model = channel_maps_as_convs(model.eval()) if layout_rewrites else model.eval()
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8e9
    # Models may declare more dynamic axes (transformers: the sequence) and their input name.
    dims = getattr(model, "dynamic_dims", {0: "batch"})
    dynamic = {axis: torch.export.Dim(label, min=1 if axis == 0 else 2)
               for axis, label in dims.items()}
    kwargs: dict[str, Any] = {"dynamo": True, "dynamic_shapes": (dynamic,),
                              "input_names": [getattr(model, "input_name", "input")],
                              "output_names": ["output"], "external_data": big}
    if opset is not None:
        kwargs["opset_version"] = opset
    # The exporter logs progress through warnings and prints; keep the library quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(model, (example.cpu(),), str(staged), verbose=False, **kwargs)
            onnx.checker.check_model(str(staged))
        except onnx.checker.ValidationError as err:
            shutil.rmtree(stage, ignore_errors=True)
            raise CheckFailed(f"exported ONNX model is invalid: {err}") from err
        except Exception as err:
            shutil.rmtree(stage, ignore_errors=True)
            if (fault := fs_fault(err)) is not None:  # the disk, not the model
                raise InputError(write_failure(folder / name, fault)) from None
            raise CheckFailed(f"ONNX export failed: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return staged


def onnx_size(path: Path) -> int:
    """Bytes of an ONNX model, its external weight file included."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def commit_onnx(staged: Path, path: Path) -> Path:
    """Move a staged export (and its external data, if any) to ``path``; data first. When a
    move fails, the stage and the data files already moved are removed: no model half there."""
    moved: list[Path] = []
    try:
        with writing(path):
            for extra in sorted(staged.parent.iterdir()):
                if extra != staged:
                    extra.replace(path.parent / extra.name)
                    moved.append(path.parent / extra.name)
            staged.replace(path)
    except BaseException:
        for done in moved:
            done.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
    return path


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime session on CUDA when torch sees a GPU, else on the CPU."""
    import onnxruntime as ort

    from compress.measure.latency import ort_providers

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return ort.InferenceSession(str(path), sess_options=opts, providers=ort_providers(device))


def check_parity(expected: torch.Tensor, actual: np.ndarray | torch.Tensor, *, what: str,
                 atol: float, rtol: float) -> float:
    """:func:`parity`'s max |diff| alone."""
    return parity(expected, actual, what=what, atol=atol, rtol=rtol)[0]


def parity(expected: torch.Tensor, actual: np.ndarray | torch.Tensor, *, what: str,
           atol: float, rtol: float) -> tuple[float, Tolerance]:
    """(max |diff|, tolerance used); :class:`CheckFailed` unless, everywhere,
    ``|actual - expected| <= tol + rtol * |expected|``.

    ``tol`` is ``atol`` scaled to the output
    (:func:`~compress.measure.tolerance.scaled_tolerance`: ``atol`` times the peak
    ``|expected|``, floored by the dtype's precision), the same rule as the pruning proof's.

    Example:
        >>> parity(torch.full((2,), 1e-3), torch.full((2,), 1e-3), what="x", atol=1e-4,
        ...        rtol=0)[1].describe()
        '1e-04 × max|output| 1.0e-03 = 1.0e-07 (float32)'
    """
    ref = expected.detach()
    exp = ref.float().cpu().numpy()
    act = actual.detach().float().cpu().numpy() if isinstance(actual, torch.Tensor) \
        else np.asarray(actual, dtype=np.float32)
    if exp.shape != act.shape:
        raise CheckFailed(f"{what}: output shape {act.shape} differs from torch's {exp.shape}")
    tol = scaled_tolerance(ref, atol)
    diff = np.abs(act - exp)
    bad = diff > tol.value + rtol * np.abs(exp)
    max_diff = float(diff.max()) if diff.size else 0.0
    if bad.any() or not np.isfinite(act).all():
        raise CheckFailed(f"{what}: parity check failed, max |diff| {max_diff:.3g} exceeds "
                          f"{tol.describe()} + rtol {rtol:g}·|ref| at {int(bad.sum())} of "
                          f"{bad.size} outputs")
    return max_diff, tol
