"""What the model sources pruned by channels share: their ``compress init`` defaults.

torchvision, cifar_resnet and python models are pruned by torch-pruning, channel by channel;
a starter recipe for them says so, keeps channel counts rounded and asks for trained weights.
Each source writes its own keys (``starter_keys``); the rest is here, once.

Example:
    >>> from compress.models.cifar_resnet import CifarResNetSource
    >>> from compress.authoring.writer import StarterRequest, StarterWriter
    >>> w = StarterWriter()
    >>> CifarResNetSource().starter(w, "resnet20", StarterRequest(data_classes=10))
    {'name': 'resnet20', 'num_classes': 10}
    >>> w.lines[:2]
    ['  name: resnet20', '  num_classes: 10']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.errors import InputError

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["CHANNEL_STARTER", "ChannelPrunedSource"]

# Read by compress.authoring.starter; a source changes what differs ({**CHANNEL_STARTER, k: v}).
CHANNEL_STARTER: dict[str, Any] = {
    "note": "The network to compress.",
    "transformer": False,       # True: always pruned as a transformer, not guessed from the name
    "imagenet_input": False,    # the model expects ImageNet-sized images (224 px, timed at 32)
    "inputs": ("images",),      # the data it can take: images, tokens
    "macs_target": True,        # a MACs target can be searched for
    "unit": "channels",         # what a ratio removes, in the recipe's name
    "pruning": "Structured: whole channels go, the only kind that makes the dense model faster "
               "(unstructured and n:m only shrink the compressed file).",
    "importance": "L2 norm of each channel group: needs no gradients or calibration data. "
                  "`compress list` shows the other criteria (taylor, lamp, ...).",
    "ratio": "Remove {pct} % of every prunable layer's channels.",
}


class ChannelPrunedSource:
    """Base of the model sources torch-pruning prunes by channels."""

    starter_defaults: dict[str, Any] = CHANNEL_STARTER

    def tokenizer(self, spec: Any) -> str | None:
        """None: these models take images (or whatever tensors their data gives)."""
        return None

    def notes(self, spec: Any, pruning: Any, resolve: Any) -> list[str]:
        """None: torch-pruning's graph handles these models alike, nothing to warn about."""
        return []

    def code(self, spec: Any, resolve: Any) -> list[str]:
        """None: a built-in architecture runs only compress's and torch's code."""
        return []

    def check_pruning(self, spec: Any, pruning: Any, resolve: Any) -> None:
        """Nothing known before the build: torch-pruning's graph decides once it is traced."""

    def starter_keys(self, w: StarterWriter, arg: str, request: StarterRequest) -> dict[str, Any]:
        """Write the keys naming the model (after ``source``); return them as recipe fields."""
        raise NotImplementedError

    def starter(self, w: StarterWriter, arg: str, request: StarterRequest) -> dict[str, Any]:
        """Write the model section's keys after ``source``; return them as recipe fields.

        Example:
            >>> from compress.models.torchvision_source import TorchvisionSource
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> TorchvisionSource().starter(StarterWriter(), "resnet18",
            ...                             StarterRequest(checkpoint="w.safetensors"))
            {'name': 'resnet18', 'checkpoint': 'w.safetensors'}
        """
        if not arg:
            raise InputError(f"model {request.model!r} names no model after the source; e.g. "
                             f"torchvision:resnet50, cifar_resnet:resnet56, python:pkg.mod:fn or "
                             f"python:file.py:fn")
        fields = self.starter_keys(w, arg, request)
        if request.checkpoint:
            fields["checkpoint"] = request.checkpoint
            w.key("checkpoint", w.path(request.checkpoint), "Your trained weights (.safetensors, "
                  "or .pt/.pth/.th loaded with weights_only=True).")
        else:
            w.comment("checkpoint: path/to/trained.safetensors   # or .pt/.pth/.th; pruning "
                      "needs trained weights", 2)
        return fields

    def starter_name(self, arg: str) -> str:
        """The model's short name in the recipe's name.

        Example:
            >>> ChannelPrunedSource().starter_name("resnet56")
            'resnet56'
        """
        return arg

    def starter_pruning(self, w: StarterWriter, target: float) -> None:
        """Write the pruning keys that follow the target: rounded channel counts.

        Example:
            >>> from compress.authoring.writer import StarterWriter
            >>> w = StarterWriter()
            >>> ChannelPrunedSource().starter_pruning(w, 0.5)
            >>> w.lines[-1]
            '  round_to: auto'
        """
        w.key("round_to", "auto", "Channel counts stay multiples of 8 for convolutional models, "
              "so onnxruntime's CPU kernels keep the speedup.")
