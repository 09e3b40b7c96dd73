"""A user's own architecture: ``package.module:factory`` or ``path/to/file.py:factory``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from compress.errors import InputError
from compress.models import MODEL_SOURCES
from compress.models.base import ChannelPrunedSource

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["PythonSource", "import_factory"]


def import_factory(ref: str, resolve: Callable[[str], Path] = Path) -> Callable[..., Any]:
    """Import ``module:attr`` or ``file.py:attr`` (the file resolved with ``resolve``)."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise InputError(f"model.factory {ref!r} must look like 'package.module:function' or "
                         f"'path/to/file.py:function'")
    if target.endswith(".py"):
        path = resolve(target).resolve()
        try:
            is_file = path.is_file()
        except OSError as err:  # a name too long, a folder we may not enter
            raise InputError(f"model.factory {str(path)!r} cannot be checked "
                             f"({err.strerror or err}); fix model.factory") from None
        if not is_file:
            raise InputError(f"model.factory file {str(path)!r} does not exist")
        mod_name = "compress_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise InputError(f"model.factory: cannot import {target!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"model.factory: {target!r} has no callable {attr!r}")
    return fn


@MODEL_SOURCES.register("python")
class PythonSource(ChannelPrunedSource):
    accepts = frozenset({"factory", "num_classes"})
    required = frozenset({"factory"})

    def starter_keys(self, w: StarterWriter, arg: str, request: StarterRequest) -> dict[str, Any]:
        """The factory; ``num_classes`` only when asked for (the factory may not take it).

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> PythonSource().starter_keys(StarterWriter(), "nets.py:cnn",
            ...                             StarterRequest(num_classes=3))
            {'factory': 'nets.py:cnn', 'num_classes': 3}
        """
        fields: dict[str, Any] = {"factory": arg}
        file, colon, function = arg.rpartition(":")
        shown = f"{w.path(file)}:{function}" if colon and file.endswith(".py") else arg
        w.key("factory", shown, "'package.module:function' or 'file.py:function' (relative to "
              "this file) returning the nn.Module.")
        if request.num_classes is not None:
            fields["num_classes"] = request.num_classes
            w.key("num_classes", request.num_classes, "Passed to the factory as a keyword "
                  "argument.")
        else:
            w.comment("num_classes: 10   # passed to the factory as a keyword argument", 2)
        return fields

    def starter_name(self, arg: str) -> str:
        """The factory's function name.

        Example:
            >>> PythonSource().starter_name("models/net.py:build")
            'build'
        """
        return arg.rpartition(":")[2]

    def code(self, spec: Any, resolve: Callable[[str], Path]) -> list[str]:
        """The factory apply would import and call (nothing is imported here).

        Example:
            >>> from compress.recipe.sources import ModelSpec
            >>> PythonSource().code(ModelSpec(source="python", factory="nets.small:cnn"), Path)
            ["apply will import module 'nets.small' and call nets.small.cnn() (model.factory)"]
        """
        target, _, attr = spec.factory.rpartition(":")
        if target.endswith(".py"):
            return [f"apply will run the file {str(resolve(target).resolve())!r} and call its "
                    f"{attr}() (model.factory)"]
        return [f"apply will import module {target!r} and call {target}.{attr}() "
                f"(model.factory)"]

    def check(self, spec: Any) -> None:
        target, sep, attr = spec.factory.rpartition(":")
        if not sep or not target or not attr:
            raise InputError(f"model.factory {spec.factory!r} must look like "
                             f"'package.module:function' or 'path/to/file.py:function'")

    def build(self, spec: Any, resolve: Callable[[str], Path], pretrained: bool) -> nn.Module:
        fn = import_factory(spec.factory, resolve)
        kwargs = dict(spec.kwargs)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        try:
            model = fn(**kwargs)
        except TypeError as err:
            raise InputError(f"model.factory {spec.factory!r} rejected its arguments: "
                             f"{err}") from None
        if not isinstance(model, nn.Module):
            raise InputError(f"model.factory {spec.factory!r} returned {type(model).__name__}, "
                             f"not a torch.nn.Module")
        return model
