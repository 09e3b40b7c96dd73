"""Measuring models: accuracy and loss (``evaluate``), MACs, parameters, sparsity and file
sizes (``counts``), and interleaved A/B latency (``latency``)."""
