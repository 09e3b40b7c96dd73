"""Export the shrunk model, and prove each export by parity.

* ``model.safetensors`` + ``model.json``: the weights, and a manifest of the architecture
  (model source spec + every resized layer's widths) from which :func:`load_model` rebuilds
  the shrunk model with no pickle.
* ``model.onnx``: ``torch.onnx.export`` (dynamo) with a dynamic batch axis, checked by
  ``onnx.checker`` and run with onnxruntime on real inputs at two batch sizes.

Parity failures raise :class:`CheckFailed`; they never just warn.

Example:
    >>> paths = export_model(model, out_dir, spec, manifest_model, probe)  # doctest: +SKIP
    >>> model2 = load_model(out_dir)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.fsutil import temp_path_for, write_text_atomic
from compress.export.onnx_layout import channel_maps_as_convs
from compress.recipe.spec import ExportSpec, ModelSpec

__all__ = ["export_model", "save_safetensors", "plain_state_dict", "onnx_size", "export_onnx",
           "load_model", "onnx_session", "check_parity", "MANIFEST_FORMAT"]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "compress.model/1"

# Constructor attributes that change when a layer is pruned (the weights carry the shapes).
_WIDTH_ATTRS: list[tuple[type, tuple[str, ...]]] = [
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._BatchNorm, ("num_features",)),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.Embedding, ("num_embeddings", "embedding_dim")),
    (nn.PReLU, ("num_parameters",)),
]


def _layer_attrs(module: nn.Module) -> dict[str, Any] | None:
    if hasattr(module, "manifest_attrs"):
        return dict(module.manifest_attrs())
    for cls, names in _WIDTH_ATTRS:
        if isinstance(module, cls):
            return {n: (list(v) if isinstance(v, tuple) else v)
                    for n in names for v in [getattr(module, n)]}
    return None


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with pruning masks folded in (``w_orig * w_mask`` saved as ``w``)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            out[base] = value * state[base + "_mask"]
        else:
            out[key] = value
    # Tied weights (e.g. embeddings shared with the LM head) share storage, which
    # safetensors refuses: later names get their own copy.
    seen: set[int] = set()
    plain: dict[str, torch.Tensor] = {}
    for key, value in out.items():
        tensor = value.detach().cpu().contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[key] = tensor
    return plain


def save_safetensors(model: nn.Module, out_dir: Path, model_spec: ModelSpec,
                     sample_shape: tuple[int, ...],
                     serving: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``model.safetensors`` and the ``model.json`` manifest atomically.

    ``serving`` adds top-level manifest keys a service needs and the weights do not say (the
    pipeline's: ``classes``, the class names in output order, and ``preprocess``).
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = plain_state_dict(model)
    weights = out_dir / "model.safetensors"
    tmp = temp_path_for(weights)
    save_file(state, str(tmp), metadata={"format": MANIFEST_FORMAT})
    tmp.replace(weights)
    spec = model_spec.model_dump(exclude={"checkpoint", "weights"})
    layers = {name: {"type": type(m).__name__, **attrs} for name, m in model.named_modules()
              for attrs in [_layer_attrs(m)] if attrs is not None}
    manifest = {"format": MANIFEST_FORMAT, "model": spec, "layers": layers,
                "input": {"shape": list(sample_shape), "dtype": "float32"}, **(serving or {})}
    path = out_dir / "model.json"
    write_text_atomic(path, json.dumps(manifest, indent=2))
    return weights, path


def load_model(run_dir: str | os.PathLike[str], *, force: bool = False) -> nn.Module:
    """Rebuild a shrunk model from ``model.json`` + ``model.safetensors`` (no pickle).

    A run folder whose ``status.json`` does not say ``done`` (a crashed, killed or failed run)
    is refused unless ``force``.

    Example:
        >>> model = load_model("runs/quickstart")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from compress.models import build_model

    run_dir = Path(run_dir)
    status_path = run_dir / "status.json"
    if status_path.is_file() and not force:
        try:
            state = json.loads(status_path.read_text(encoding="utf-8")).get("state")
        except json.JSONDecodeError:
            state = "unreadable"
        if state != "done":
            raise InputError(f"{str(run_dir)!r} holds an unfinished run (status {state!r}); "
                             f"finish it with 'compress apply --resume' or load with force=True")
    manifest_path, weights_path = run_dir / "model.json", run_dir / "model.safetensors"
    for p in (manifest_path, weights_path):
        if not p.is_file():
            raise InputError(f"{str(p)!r} does not exist; pass a folder written by "
                             f"'compress apply' with export.safetensors enabled")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{str(manifest_path)!r} is not a compress manifest "
                         f"(format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r})")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{str(weights_path)!r} is not a readable safetensors file "
                         f"({err})") from None
    model = build_model(ModelSpec.model_validate(manifest["model"]), pretrained=False)
    modules = dict(model.named_modules())
    for name, attrs in manifest["layers"].items():
        if name not in modules:
            raise InputError(f"manifest layer {name!r} does not exist in the rebuilt model")
        _reshape_(modules[name], name, {k: v for k, v in attrs.items() if k != "type"}, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _reshape_(module: nn.Module, name: str, attrs: dict[str, Any],
              state: dict[str, torch.Tensor]) -> None:
    """Give ``module`` the widths in ``attrs`` and empty tensors of the saved shapes."""
    if hasattr(module, "load_manifest_attrs_"):
        module.load_manifest_attrs_(attrs)
    else:
        for key, value in attrs.items():
            setattr(module, key, tuple(value) if isinstance(value, list) else value)
    prefix = f"{name}." if name else ""
    for pname, p in list(module.named_parameters(recurse=False)):
        saved = state.get(prefix + pname)
        if saved is not None and saved.shape != p.shape:
            setattr(module, pname, nn.Parameter(torch.empty(saved.shape, dtype=saved.dtype),
                                                requires_grad=p.requires_grad))
    for bname, b in list(module.named_buffers(recurse=False)):
        saved = state.get(prefix + bname)
        if b is not None and saved is not None and saved.shape != b.shape:
            module._buffers[bname] = torch.empty(saved.shape, dtype=saved.dtype)


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
            raise CheckFailed(f"ONNX export failed: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return staged


def onnx_size(path: Path) -> int:
    """Bytes of an ONNX model, its external weight file included."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def commit_onnx(staged: Path, path: Path) -> Path:
    """Move a staged export (and its external data, if any) to ``path``; data first."""
    for extra in sorted(staged.parent.iterdir()):
        if extra != staged:
            extra.replace(path.parent / extra.name)
    staged.replace(path)
    staged.parent.rmdir()
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
    """Raise :class:`CheckFailed` unless ``|actual - expected| <= atol + rtol * |expected|``."""
    exp = expected.detach().float().cpu().numpy()
    act = actual.detach().float().cpu().numpy() if isinstance(actual, torch.Tensor) \
        else np.asarray(actual, dtype=np.float32)
    if exp.shape != act.shape:
        raise CheckFailed(f"{what}: output shape {act.shape} differs from torch's {exp.shape}")
    diff = np.abs(act - exp)
    bad = diff > atol + rtol * np.abs(exp)
    max_diff = float(diff.max()) if diff.size else 0.0
    if bad.any() or not np.isfinite(act).all():
        raise CheckFailed(f"{what}: parity check failed, max |diff| {max_diff:.3g} exceeds "
                          f"atol {atol:g} + rtol {rtol:g}·|ref| at {int(bad.sum())} of "
                          f"{bad.size} outputs")
    return max_diff


def export_model(model: nn.Module, out_dir: Path, spec: ExportSpec, model_spec: ModelSpec,
                 probe: torch.Tensor, serving: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write the enabled artifacts and prove each one on ``probe`` (real eval inputs).

    Returns paths, sizes and the parity differences measured. ``serving``: see
    :func:`save_safetensors`.
    """
    model = model.eval().cpu()
    probe = probe[: spec.parity_batch].cpu()
    with torch.no_grad():
        reference = model(probe)
    result: dict[str, Any] = {"parity": {}}
    if spec.safetensors:
        weights, manifest = save_safetensors(model, out_dir, model_spec, tuple(probe.shape[1:]),
                                             serving)
        with torch.no_grad():
            reloaded = load_model(out_dir, force=True)(probe)
        result["parity"]["safetensors"] = check_parity(
            reference, reloaded, what="reloaded safetensors model", atol=1e-6, rtol=1e-6)
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
                worst = max(worst, check_parity(reference[:n], out, what=f"ONNX (batch {n})",
                                                atol=spec.parity_atol, rtol=spec.parity_rtol))
            if 1 in getattr(model, "dynamic_dims", {}) and probe.shape[1] > 4:
                short = probe[:, : probe.shape[1] // 2]
                with torch.no_grad():
                    expected = model(short)
                out = session.run(None, {session.get_inputs()[0].name: short.numpy()})[0]
                worst = max(worst, check_parity(expected, out, what="ONNX (half length)",
                                                atol=spec.parity_atol, rtol=spec.parity_rtol))
        except CheckFailed:
            (out_dir / "model.onnx").unlink(missing_ok=True)
            commit_onnx(staged, out_dir / "model.onnx.failed-parity")
            raise
        path = commit_onnx(staged, out_dir / "model.onnx")
        result["parity"]["onnx"] = worst
        result["onnx"] = str(path)
        result["onnx_bytes"] = onnx_size(path)
    log.info("exported to %s; parity %s", out_dir, result["parity"])
    return result
