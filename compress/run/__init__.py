"""Running a recipe: preflight checks, the shared prologue, the schedule loop, the run folder,
the end-to-end pipeline and the dry run (``compress inspect``).

Data flows one way: :mod:`~compress.run.preflight` (checks, once) ->
:mod:`~compress.run.prepare` (seed, data, model, probe) -> :mod:`~compress.run.loop`
((prune step -> fine-tune -> eval)*) -> export -> measure -> report -> gates, driven by
:mod:`~compress.run.pipeline`, with :mod:`~compress.run.folder` owning what is on disk.
"""
