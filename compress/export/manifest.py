"""Reading a ``model.json`` manifest back, and holding it to the weights it came with.

The manifest is input like any other: it may have been edited, truncated or written for other
weights. :func:`read_manifest` reads it with the bounded JSON reader and validates it with a
pydantic model (:class:`Manifest`); :func:`check_weight_shapes` compares every width the
manifest states with the shapes in ``model.safetensors``'s header, before anything is built or
a weight is read. Each problem is one sentence naming the file and the field.

Example:
    >>> layers = {"0": {"type": "Linear", "in_features": 4, "out_features": 2}}
    >>> check_weight_shapes(layers, {"0.weight": (2, 4), "0.bias": (2,)}, "'model.json'")
    >>> check_weight_shapes(layers, {"0.weight": (3, 4)}, "'model.json'")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    compress.errors.InputError: 'model.json': layer '0' (in_features 4, out_features 2) ...
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, StrictStr

from compress.errors import InputError
from compress.export.safetensors import MANIFEST_FORMAT, layer_attrs
from compress.jsonio import read_json_object, validate_json
from compress.recipe.sources import ModelSpec

__all__ = ["Manifest", "read_manifest", "weight_shapes", "check_weight_shapes",
           "check_layer_attrs"]



def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _scalar_or_list(value: Any) -> Any:
    if _is_scalar(value) or (isinstance(value, list) and all(map(_is_scalar, value))):
        return value
    raise ValueError("should be a number, a string, true, false, null or a list of them")


_LayerValue = Annotated[Any, AfterValidator(_scalar_or_list)]


class Manifest(BaseModel):
    """What ``compress.load`` reads from a ``model.json``; other keys (``input``, ``classes``,
    ``preprocess``) are a serving stack's and pass through."""

    model_config = ConfigDict(extra="allow")

    format: StrictStr  # MANIFEST_FORMAT, checked first for a sentence that says so
    model: ModelSpec
    layers: dict[str, dict[str, _LayerValue]]


def read_manifest(path: Path) -> tuple[ModelSpec, dict[str, dict[str, Any]]]:
    """The model spec and the per-layer widths of a ``model.json``, checked (one sentence if bad).

    Example:
        >>> read_manifest(Path("no-such/model.json"))
        Traceback (most recent call last):
        compress.errors.InputError: 'no-such/model.json' does not exist
    """
    where = repr(str(path))
    body = read_json_object(path)
    if body.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{where} is not a compress manifest "
                         f"(format {str(body.get('format'))[:40]!r}, expected {MANIFEST_FORMAT!r})")
    manifest = validate_json(Manifest, body, where)
    return manifest.model, manifest.layers


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise InputError(f"{str(path)!r} is not a readable safetensors file "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                         ) from None


def _width(attrs: Mapping[str, Any], key: str, name: str, where: str) -> int:
    value = attrs[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{where}: 'layers.{name}.{key}' must be a whole number >= 0 "
                         f"(got {str(value)[:40]!r})")
    return value


def _expected(name: str, attrs: Mapping[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """Per tensor of the layer: the leading dimensions its widths give it."""
    def w(key: str) -> int:
        return _width(attrs, key, name, where)

    if {"in_channels", "out_channels"} <= attrs.keys():
        groups = w("groups") if "groups" in attrs else 1
        if groups == 0:
            raise InputError(f"{where}: 'layers.{name}.groups' must be at least 1")
        out, inn = w("out_channels"), w("in_channels")
        # torch stores a transposed convolution's weight as (in, out / groups, *kernel).
        dims = (inn, out // groups) if "Transpose" in str(attrs.get("type")) \
            else (out, inn // groups)
        return {"weight": dims, "bias": (out,)}
    if {"in_features", "out_features"} <= attrs.keys():
        out = w("out_features")
        return {"weight": (out, w("in_features")), "bias": (out,)}
    for key, tensors in (("num_features", ("weight", "bias", "running_mean", "running_var")),
                         ("num_channels", ("weight", "bias")), ("num_parameters", ("weight",))):
        if key in attrs:
            return {t: (w(key),) for t in tensors}
    if {"num_embeddings", "embedding_dim"} <= attrs.keys():
        return {"weight": (w("num_embeddings"), w("embedding_dim"))}
    if "normalized_shape" in attrs:
        shape = attrs["normalized_shape"]
        shape = shape if isinstance(shape, list) else [shape]
        dims = tuple(_width({"normalized_shape": d}, "normalized_shape", name, where)
                     for d in shape)
        return {"weight": dims, "bias": dims}
    return {}


def check_weight_shapes(layers: Mapping[str, Mapping[str, Any]],
                        shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse a manifest whose layer widths disagree with the weights' shapes (``shapes``:
    tensor name -> shape, from :func:`weight_shapes`)."""
    for name, attrs in layers.items():
        prefix = f"{name}." if name else ""
        for tensor, dims in _expected(name, attrs, where).items():
            shape = shapes.get(prefix + tensor)
            if shape is not None and tuple(shape[:len(dims)]) != dims:
                widths = ", ".join(f"{k} {v}" for k, v in attrs.items() if k != "type")
                raise InputError(f"{where}: layer {name!r} ({widths}) does not fit "
                                 f"{prefix + tensor!r} of shape {list(shape)} in the weights; "
                                 f"the manifest and the weights do not belong together")


def _ints(value: Any) -> list[int]:
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


def _fits(new: Any, fresh: Any, bound: int) -> bool:
    """A stored width fits a freshly built one: the same kind, a list no longer, numbers from
    -1 (a layer's own "none" mark) to ``bound`` (pruning only shrinks)."""
    if isinstance(fresh, list):
        return (isinstance(new, list) and len(new) <= len(fresh)
                and all(_fits(n, fresh[0] if fresh else None, bound) for n in new))
    if isinstance(fresh, int) and not isinstance(fresh, bool):
        return isinstance(new, int) and not isinstance(new, bool) and -1 <= new <= bound
    return new is None or new == fresh or fresh is None


def _stock_fits(new: Any, fresh: Any) -> bool:
    if isinstance(fresh, list):
        return (isinstance(new, list) and len(new) == len(fresh)
                and all(_stock_fits(n, f) for n, f in zip(new, fresh)))
    return isinstance(new, int) and not isinstance(new, bool) and 0 <= new <= fresh


def check_layer_attrs(module: Any, name: str, attrs: Mapping[str, Any], where: str) -> None:
    """Refuse manifest widths the freshly built ``module`` cannot take: another layer type, a
    key compress does not write for it (a manifest may set no other attribute), or a width
    larger than the fresh one or of another kind.

    Example:
        >>> from torch import nn
        >>> check_layer_attrs(nn.Linear(4, 2), "0", {"type": "Linear", "out_features": 1}, "m")
        >>> check_layer_attrs(nn.Linear(4, 2), "0", {"forward": 1}, "m")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        compress.errors.InputError: m: 'layers.0.forward' is not a width compress stores for ...
    """
    fresh = layer_attrs(module) or {}
    kind = type(module).__name__
    if "type" in attrs and attrs["type"] != kind:
        raise InputError(f"{where}: layer {name!r} is a {str(attrs['type'])[:40]!r} in the "
                         f"manifest but a {kind!r} in the rebuilt model; the manifest is not "
                         f"this model's")
    for key, value in attrs.items():
        if key == "type":
            continue
        if key not in fresh:
            raise InputError(f"{where}: 'layers.{name}.{key}' is not a width compress stores "
                             f"for a {kind}")
        # A stock layer's widths are each no larger than built (lists: the same length);
        # a layer with its own manifest hook gets the looser check, the weights do the rest.
        hooked = hasattr(module, "manifest_attrs")
        fits = (_fits(value, fresh[key], max(_ints(fresh[key]), default=0)) if hooked
                else _stock_fits(value, fresh[key]))
        if not fits:
            raise InputError(f"{where}: 'layers.{name}.{key}' is {str(value)[:60]}, which a "
                             f"{kind} built as {fresh[key]} cannot be pruned to")
