"""The model card (``hf/README.md``) of a run's stock transformers folder, rendered from its
report: base model, what was pruned, the recipe, the measured figures (anything not measured
says so) and the base model's license and tags, read from the base folder's own card.

Example:
    >>> base = front_matter("---\\nlicense: mit\\ntags: [nlp]\\n---\\n# Bert")
    >>> meta = card_metadata({"recipe": {"model": {"name": "org/bert"}}}, base)
    >>> meta["base_model"], meta["license"], meta["tags"]
    ('org/bert', 'mit', ['nlp', 'compress', 'pruned'])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from compress.errors import InputError
from compress.recipe.yamlsafe import read_yaml
from compress.report.markdown import human_count

__all__ = ["render_model_card", "card_metadata", "base_card_front_matter", "front_matter",
           "is_hub_id", "read_json_config"]

# The base card is read this far at most: its front matter is at the top.
CARD_BYTES = 64 * 1024
_CARRIED = ("license", "license_name", "license_link", "language")
_AUTO = {"sequence-classification": "AutoModelForSequenceClassification",
         "image-classification": "AutoModelForImageClassification",
         "causal-lm": "AutoModelForCausalLM"}
_PIPELINE = {"sequence-classification": "text-classification",
             "image-classification": "image-classification", "causal-lm": "text-generation"}


def is_hub_id(name: str) -> bool:
    """``org/name`` as the Hub spells ids (not a local path, not ``module:function``).

    Example:
        >>> is_hub_id("sentence-transformers/all-MiniLM-L6-v2"), is_hub_id("./my-bert")
        (True, False)
        >>> is_hub_id("pkg:get_path"), is_hub_id("/abs/org/name")
        (False, False)
    """
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and ":" not in name and not name.startswith(".")
            and not Path(name).exists())


def base_card_front_matter(folder: str | Path | None) -> dict[str, Any]:
    """The YAML front matter of ``folder/README.md`` (read safely, within bounds); empty when
    there is no card, no front matter, or front matter that is not a mapping.

    Example:
        >>> base_card_front_matter(None), base_card_front_matter("no/such/folder")
        ({}, {})
    """
    if folder is None:
        return {}
    try:
        with open(Path(folder) / "README.md", "rb") as f:
            text = f.read(CARD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return {}
    return front_matter(text)


def front_matter(text: str) -> dict[str, Any]:
    """The YAML between a card's leading ``---`` lines, as a mapping (else empty).

    Example:
        >>> front_matter("---\\nlicense: mit\\n---\\n# Title"), front_matter("# no front matter")
        ({'license': 'mit'}, {})
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
    if end is None:
        return {}
    try:
        meta = read_yaml("\n".join(lines[1:end]), source="the base model's README.md")
    except InputError:
        return {}
    return meta if isinstance(meta, dict) else {}


def card_metadata(report: dict[str, Any], base: dict[str, Any],
                  task: str | None = None) -> dict[str, Any]:
    """The card's front matter: ``library_name``, ``base_model`` (a Hub id only), the base
    card's (``base``) license and language, its tags plus ``compress`` and ``pruned``, the
    pipeline tag."""
    name = str(((report.get("recipe") or {}).get("model") or {}).get("name") or "")
    meta: dict[str, Any] = {"library_name": "transformers"}
    hub = name if is_hub_id(name) else base.get("base_model")
    if isinstance(hub, str) and hub:
        meta["base_model"] = hub
    meta.update({k: base[k] for k in _CARRIED if isinstance(base.get(k), (str, list))})
    tags = [t for t in base.get("tags") or [] if isinstance(t, str)] \
        if isinstance(base.get("tags"), list) else []
    meta["tags"] = list(dict.fromkeys([*tags, "compress", "pruned"]))
    if task in _PIPELINE:
        meta["pipeline_tag"] = _PIPELINE[task]
    return meta


def _pct(x: Any) -> str:
    return f"{x:.2f} %" if isinstance(x, (int, float)) else "not measured"


def _figures(report: dict[str, Any]) -> list[str]:
    b, c = report.get("baseline") or {}, report.get("compressed") or {}
    samples = b.get("eval_samples")
    rows = [f"| top-1 accuracy{f' ({samples} eval samples)' if samples else ''} | "
            f"{_pct(b.get('accuracy'))} | {_pct(c.get('accuracy'))} |",
            f"| MACs | {_count(b.get('macs'))} | {_count(c.get('macs'))} |",
            f"| parameters | {_count(b.get('params'))} | {_count(c.get('params'))} |"]
    lat_b, lat_c = b.get("latency_ms") or {}, c.get("latency_ms") or {}
    speed = report.get("speedup") or {}
    for engine, per_batch in lat_b.items():
        for bs, ms in per_batch.items():
            after = ((lat_c.get(engine) or {}).get(bs) or {}).get("median")
            ratio = (speed.get(engine) or {}).get(bs)
            rows.append(f"| {engine} latency, batch {bs} (median) | {_ms(ms.get('median'))} | "
                        f"{_ms(after)}" + (f" ({ratio:.2f}x)" if ratio else "") + " |")
    if not lat_b:
        rows.append("| latency | not measured | not measured |")
    return ["| | before pruning | this model |", "|---|---|---|", *rows]


def _count(n: Any) -> str:
    return human_count(n) if isinstance(n, (int, float)) else "not measured"


def _ms(x: Any) -> str:
    return f"{x:.2f} ms" if isinstance(x, (int, float)) else "not measured"


def _widths(base_config: dict[str, Any], config: dict[str, Any]) -> list[str]:
    out = []
    for key, what in (("num_attention_heads", "attention heads per block"),
                      ("intermediate_size", "FFN neurons per block"),
                      ("hidden_size", "hidden size")):
        if key in config:
            before = base_config.get(key)
            out.append(f"- {what}: {before if before is not None else 'unknown'} → "
                       f"{config[key]}")
    return out


def render_model_card(report: dict[str, Any], config: dict[str, Any], *,
                      base_config: dict[str, Any] | None = None,
                      base_card: dict[str, Any] | None = None,
                      revision: str | None = None, task: str | None = None) -> str:
    """``README.md`` for ``hf/``: front matter and the body, every figure from ``report``.

    ``config`` is the written ``config.json``, ``base_config`` the base model's (for the
    widths before and after), ``base_card`` the base card's front matter.
    """
    meta = card_metadata(report, base_card or {}, task=task)
    auto = _AUTO.get(task or "", "AutoModel")
    processor = "AutoImageProcessor" if task == "image-classification" else "AutoTokenizer"
    recipe = report.get("recipe") or {}
    name = str((recipe.get("model") or {}).get("name") or "unknown")
    labels = config.get("id2label") or {}
    gates = report.get("gates") or []
    steps = report.get("steps") or []
    proofs = ", ".join(str(s.get("proof", "not proven")) for s in steps) or "no step"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---",
             "", f"# {report.get('name') or 'pruned model'}", "",
             f"A structurally pruned copy of `{name}`"
             + (f" (revision `{revision}`)" if revision else "")
             + ", made with compress from the recipe below. Attention heads, FFN neurons or "
             "hidden channels were removed whole (the widths below), so the model is smaller "
             "and faster as a plain dense transformers model; every pruning step was checked "
             f"against the model before it (proof: {proofs}).", "",
             "## What was pruned", "", *_widths(base_config or {}, config), "",
             "## Measured", "",
             "Measured by the run that wrote this folder, on its evaluation data"
             + (f" ({_env(report)})" if report.get("environment") else "") + ".", "",
             *_figures(report), "",
             (f"Gates: {report.get('status', 'not checked')}"
              + "".join(f"; {g.get('message')}" for g in gates) + "." if gates
              else "No gates were set for this run."), "",
             "## Use", "", "```python", f"from transformers import {auto}, {processor}", "",
             'path = "."  # this folder, or the Hub repository it was pushed to',
             f"model = {auto}.from_pretrained(path)",
             f"{processor.removeprefix('Auto').lower()} = {processor}.from_pretrained(path)",
             "```", ""]
    if labels:
        lines += ["Labels: " + ", ".join(f"{k} = `{v}`" for k, v in labels.items()) + ".", ""]
    lines += ["## Recipe", "", "```yaml",
              yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    if meta.get("license"):
        lines += ["## License", "", f"`{meta['license']}`, carried over from the base model's "
                  "card.", ""]
    return "\n".join(lines)


def _env(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    return ", ".join(str(env[k]) for k in ("cpu", "device") if env.get(k)) + \
        (f", {env['threads']} torch threads" if env.get("threads") else "")


def read_json_config(path: Path) -> dict[str, Any]:
    """A ``config.json`` as a dict (empty when missing or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
