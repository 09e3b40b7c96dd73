"""Compression gates for CI: thresholds checked against a report, the ``compress gate``
verdict, and JUnit/Markdown outputs."""
