"""Writing recipes: ``compress init``'s commented starter recipes and the generated recipe
reference (``compress schema --markdown``, ``compress list``)."""
