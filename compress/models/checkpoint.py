"""Loading checkpoints without executing pickles, refusing what no model can be built from.

Example:
    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_file({"w": torch.tensor([1.0, float("nan")])}, f"{d}/nan.safetensors")
    ...     read_state_dict(Path(d) / "nan.safetensors")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    compress.errors.InputError: non-finite weights in the checkpoint '...' (tensor 'w' holds 1 ...
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from compress.errors import InputError

__all__ = ["read_state_dict", "load_checkpoint_", "load_state_strict_", "check_weights"]

_TORCH_SUFFIXES = {".pt", ".pth", ".th", ".bin", ".ckpt"}


def _one_line(text: str) -> str:
    """The first line of a library's error text, without terminal colour codes."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if ln.strip()]
    return lines[0].rstrip(".") if lines else ""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True`` only).

    Nested ``{'state_dict': ...}``/``{'model': ...}`` wrappers and ``module.`` prefixes from
    DataParallel are unwrapped.
    """
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError as err:  # a name too long, a folder we may not enter
        raise InputError(f"model.checkpoint {str(path)!r} cannot be checked "
                         f"({err.strerror or err}); fix model.checkpoint") from None
    if is_dir:
        raise InputError(f"checkpoint {str(path)!r} is a folder, not a file; point "
                         f"model.checkpoint at a .safetensors or .pt file")
    if not is_file:
        raise InputError(f"checkpoint {str(path)!r} does not exist; fix model.checkpoint")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"checkpoint {str(path)!r} is not a readable safetensors file "
                             f"({_one_line(str(err))})") from None
    elif path.suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's text is several paragraphs (with terminal colours) suggesting
            # weights_only=False; name only what was refused.
            text = str(err)
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if found:
                raise InputError(f"checkpoint {str(path)!r} holds objects other than tensors "
                                 f"({found.group(1)}) and was refused, since unpickling them "
                                 f"could run code; re-save it as a state dict of tensors or as "
                                 f".safetensors") from None
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
            reason = _one_line(detail.group(1) if detail else text)
            raise InputError(f"checkpoint {str(path)!r} is not a torch checkpoint of tensors "
                             f"and was refused by weights_only loading ({reason}); re-save it "
                             f"with torch.save(model.state_dict(), ...) or as "
                             f".safetensors") from None
        except Exception as err:  # noqa: BLE001  arbitrary bytes fail anywhere in the unpickler
            reason = _one_line(str(err))
            raise InputError(f"checkpoint {str(path)!r} could not be read "
                             f"({type(err).__name__}{': ' + reason if reason else ''}); check "
                             f"that it is a torch.save file") from None
    else:
        raise InputError(f"checkpoint {str(path)!r} has an unknown extension; use .safetensors "
                         f"or one of {', '.join(sorted(_TORCH_SUFFIXES))}")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {str(path)!r} does not hold a state dict of tensors")
    check_weights(str(path), state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_weights(shown: str, state: dict[object, torch.Tensor]) -> None:
    """Names are strings; weights are real and finite, so a broken checkpoint is bad input here
    rather than a pruning proof that fails later for no reason of its own.

    ``shown`` names the checkpoint (a file, or a Hugging Face folder or id) in the sentence.
    """
    for key, tensor in state.items():
        if not isinstance(key, str):
            raise InputError(f"checkpoint {shown!r} has a key that is not a parameter name "
                             f"({key!r}, of type {type(key).__name__}); save it with "
                             f"torch.save(model.state_dict(), ...)")
        if tensor.is_complex():
            raise InputError(f"checkpoint {shown!r} holds complex weights ({key!r} is "
                             f"{str(tensor.dtype).removeprefix('torch.')}); only real-valued "
                             f"models can be pruned")
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise InputError(f"non-finite weights in the checkpoint {shown!r} (tensor "
                                 f"{key!r} holds {bad} NaN or infinite values of "
                                 f"{tensor.numel()}); repair or re-train the model")


def load_checkpoint_(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model`` strictly; mismatches become one readable :class:`InputError`."""
    state = read_state_dict(path)
    own = model.state_dict()
    # Checkpoints older than torch 0.4.1 have no BatchNorm step counters; they are unused in eval.
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v.clone()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            details.append(f"{len(wrong)} shape mismatches (first: {wrong[0]})")
        if missing:
            details.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise InputError(f"checkpoint {str(path)!r} does not fit the model: "
                         f"{'; '.join(details)}; check model.name/num_classes")
    load_state_strict_(model, state)


def load_state_strict_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)`` for a state read from a file.

    A state dict from safetensors has no per-module versions (``_metadata``), which some
    modules require (torchvision's MNASNet refuses version None); the model's own versions
    are the right ones, since the tensors were saved from this architecture.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> load_state_strict_(net, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
        >>> net.weight.sum().item()
        2.0
    """
    if getattr(state, "_metadata", None) is None:
        versioned = OrderedDict(state)
        versioned._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore
        state = versioned
    model.load_state_dict(state, strict=True)
