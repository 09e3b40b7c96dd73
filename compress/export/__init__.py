"""Writing and loading the pruned model: safetensors with a manifest, ONNX checked for parity
with PyTorch, a stock-loadable Hugging Face folder, and :func:`~compress.export.load.load_model`
that rebuilds a model from a run folder without running code the caller did not name."""
