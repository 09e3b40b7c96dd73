"""The run's report: ``report.json`` (``build``), its Markdown and HTML renderings and the
side-by-side comparison of runs."""
