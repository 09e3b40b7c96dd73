"""The recipe: its pydantic schema (``spec``), loading with overrides and YAML limits.

Every key a recipe may hold is a field of a section model here (``extra="forbid"``); what a
section's ``source``/``kind`` names is looked up in the registries of models/, data/,
pruning/ and schedules/.
"""
