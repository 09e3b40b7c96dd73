"""``report.html``: one self-contained page (no external URLs) with the Markdown report as
HTML and three plots embedded as PNG data URIs.

The plots: accuracy against sparsity per step (baseline at 0), latency baseline vs compressed
per engine and batch size, and per-layer kept width (steps that removed channels) or kept
weights (steps that masked weights: unstructured, n:m). Matplotlib draws on its Agg canvas
without pyplot, so nothing global changes and no window ever opens.

Example:
    >>> from compress.report.build import load_report
    >>> page = render_html(load_report("runs/quickstart")[0])  # doctest: +SKIP
    >>> page.count('<img src="data:image/png;base64,')  # doctest: +SKIP
    3
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any

from compress.report.figures import key_figures
from compress.report.markdown import render_markdown, zeroes_weights

__all__ = ["render_html", "markdown_to_html", "report_plots"]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.45}
h1{border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}
td:not(:first-child){font-variant-numeric:tabular-nums}
blockquote{margin:.8em 0;padding:.2em 1em;border-left:4px solid #d0d7de;color:#57606a}
code{background:#f6f8fa;padding:0 .25em;border-radius:3px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.9em}
.pass,.fail{font-weight:600;padding:0 .45em;border-radius:3px}
.pass{color:#1a7f37;background:#dafbe1}.fail{color:#cf222e;background:#ffebe9}
.status{padding:.55em 1em;border-radius:6px;font-weight:600;font-size:1.15em;color:#fff;
margin:.6em 0}
.status.passed{background:#1a7f37}.status.gate_failed{background:#cf222e}
.status.other{background:#6e7781}
.strip{display:flex;flex-wrap:wrap;gap:.7em;margin:.8em 0 1.2em}
.fig{flex:1 1 210px;border:1px solid #d0d7de;border-radius:6px;padding:.5em .9em}
.fig.ok{border-left:6px solid #1a7f37}.fig.bad{border-left:6px solid #cf222e}
.fig .label{color:#57606a;font-size:.85em}.fig .value{font-size:1.3em;font-weight:600}
.fig .detail{color:#57606a;font-size:.85em}
"""
_BASE, _COMP = "#8c959f", "#1f77b4"


def _inline(text: str) -> str:
    """Escape, then the inline Markdown our reports use: **bold** and `code`."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    # Gate verdicts: emoji in Markdown (GitHub), coloured words here (no emoji font needed).
    out = out.replace("✅ pass", '<span class="pass">PASS</span>')
    return out.replace("❌ FAIL", '<span class="fail">FAIL</span>')


_RULE = re.compile(r"\s*\|?[\s:|-]+\|?\s*")  # a table's |---|---| line
_ITEM = re.compile(r"\s*[-*]\s+")


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    # Split on pipes that are not escaped (\|), then unescape them.
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)]


def markdown_to_html(md: str) -> str:
    """Render the Markdown subset compress writes: headings, tables, lists, quotes, paragraphs.

    Example:
        >>> print(markdown_to_html("# T\\n\\n| a | b |\\n|---|---|\\n| 1 | **2** |"))
        <h1>T</h1>
        <table>
        <tr><th>a</th><th>b</th></tr>
        <tr><td>1</td><td><strong>2</strong></td></tr>
        </table>
    """
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_cells(r) for r in block if not _RULE.fullmatch(r)]
            head = len(block) > 1 and _RULE.fullmatch(block[1])
            html_rows = []
            for n, cells in enumerate(rows):
                tag = "th" if head and n == 0 else "td"
                html_rows.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells)
                                 + "</tr>")
            out.append("<table>\n" + "\n".join(html_rows) + "\n</table>")
        elif _ITEM.match(line):
            items = []
            while i < len(lines) and _ITEM.match(lines[i]):
                items.append(f"<li>{_inline(_ITEM.sub('', lines[i], count=1))}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif line.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].startswith(">"):
                quote.append(_inline(lines[i][1:].strip()))
                i += 1
            out.append("<blockquote><p>" + "<br>\n".join(quote) + "</p></blockquote>")
        else:
            para = []
            while (i < len(lines) and lines[i].strip() and not _ITEM.match(lines[i])
                   and not lines[i].lstrip().startswith(("#", "|", ">"))):
                para.append(_inline(lines[i].strip()))
                i += 1
            out.append("<p>" + "\n".join(para) + "</p>")
    return "\n".join(out)


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no pyplot, no GUI backend
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#57606a")
    ax.set_axis_off()


def _accuracy_plot(report: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    steps = report.get("steps") or []
    base = (report.get("baseline") or {}).get("accuracy")
    masked = zeroes_weights(steps)
    # Removing channels removes MACs; masked weights keep them, so plot weight sparsity then.
    xs = [0.0] + [float((s.get("target") if masked else s.get("macs_reduction")) or 0)
                  for s in steps]
    ys = [base] + [s.get("accuracy") for s in steps]
    if base is None or not steps:
        _note(ax, "no accuracy per step in this report")
        return _png(fig)
    ax.plot(xs, ys, "-o", color=_COMP)
    ax.annotate("baseline", (xs[0], ys[0]), textcoords="offset points", xytext=(6, -12))
    for s, x, y in zip(steps, xs[1:], ys[1:]):
        ax.annotate(f"step {s.get('step')}", (x, y), textcoords="offset points", xytext=(6, -12))
    ax.axhline(base, color=_BASE, linestyle=":", linewidth=1)
    ax.set_xlabel("weight sparsity (cumulative target)" if masked
                  else "MACs removed (cumulative fraction)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs sparsity per step")
    ax.set_xlim(-0.02, max(1.0, max(xs) + 0.05))
    # The whole 0-100 % scale: a zoomed axis would make a 1-point change look like a cliff.
    ax.set_ylim(0, 1.03 * max([100.0, *(y for y in ys if y is not None)]))
    ax.grid(alpha=0.3)
    return _png(fig)


def _batch_key(bs: str) -> int:
    return int(bs) if str(bs).isdigit() else 0


def _latency_plot(report: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    lat_b = (report.get("baseline") or {}).get("latency_ms") or {}
    lat_c = (report.get("compressed") or {}).get("latency_ms") or {}
    speedup = report.get("speedup") or {}
    cells = [(e, bs) for e in lat_b if e in lat_c
             for bs in sorted(lat_b[e] or {}, key=_batch_key) if bs in (lat_c[e] or {})]
    if not cells:
        fig = Figure(figsize=(7, 2))
        _note(fig.add_subplot(), "latency was not measured (report.latency: false)")
        return _png(fig)
    # One small panel per engine and batch size: latencies differ by orders of magnitude
    # between them, so a shared axis would flatten the small ones to nothing.
    engines = list(dict.fromkeys(e for e, _ in cells))
    cols = max(sum(e == engine for e, _ in cells) for engine in engines)
    grid = (len(engines), cols) if cols > 1 else (1, len(engines))  # one batch size: one row
    fig = Figure(figsize=(2.6 * grid[1] + 0.6, 2.7 * grid[0] + 0.5), layout="constrained")
    for row, engine in enumerate(engines):
        for col, bs in enumerate(b for e, b in cells if e == engine):
            ax = fig.add_subplot(*grid, row * cols + col + 1)
            b, c = lat_b[engine][bs].get("median"), lat_c[engine][bs].get("median")
            ax.bar([0, 1], [b or 0, c or 0], 0.6, color=[_BASE, _COMP])
            # The report's speedup is the median of interleaved per-round ratios, not the
            # ratio of the two medians drawn here: label with the reported one.
            ratio = (speedup.get(engine) or {}).get(bs) or (b / c if b and c else None)
            if ratio:
                ax.annotate(f"{ratio:.2f}x", (1, c or 0), textcoords="offset points",
                            xytext=(0, 3), ha="center", fontsize=9, fontweight="bold")
            ax.set_xticks([0, 1], ["baseline", "compressed"], fontsize=8)
            ax.set_title(f"{engine}, batch {bs}", fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.margins(y=0.18)
            if col == 0:
                ax.set_ylabel("median latency (ms)", fontsize=8)
    fig.suptitle("Latency, baseline vs compressed (label: measured speedup)", fontsize=10)
    return _png(fig)


def _layers(step: dict[str, Any]) -> dict[str, Any]:
    # Older reports called the per-layer widths "widths".
    return step.get("layers") or step.get("widths") or {}


def _width_plot(report: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    steps = report.get("steps") or []
    last = _layers(steps[-1]) if steps else {}
    n = len(last)
    fig = Figure(figsize=(8, min(max(2.0, 0.24 * n + 1.4), 18)), layout="constrained")
    ax = fig.add_subplot()
    if not last:
        _note(ax, "no per-layer data in this report")
        return _png(fig)
    names = list(last)[::-1]  # barh draws bottom-up; keep the model's order top-down
    pos = range(len(names))
    if zeroes_weights(steps):  # layers hold each layer's weight sparsity, not its width
        kept = [1.0 - float(last[k]) for k in names]
        ax.barh(pos, [1.0] * len(names), color="#eaeef2", label="dense")
        ax.barh(pos, kept, color=_COMP, label="kept weights")
        ax.set_xlabel("fraction of weights kept (last step)")
        ax.set_title("Per-layer kept weights")
    else:
        original = report.get("baseline_widths") or {}
        reference = "original"
        if not original and len(steps) > 1:
            original, reference = _layers(steps[0]), "after step 1"
        if original:
            ax.barh(pos, [original.get(k, 0) for k in names], color="#eaeef2", label=reference)
        ax.barh(pos, [last[k] for k in names], color=_COMP, label="kept (last step)")
        for p, k in zip(pos, names):
            text = f"{last[k]}/{original[k]}" if k in original else f"{last[k]}"
            ax.annotate(text, (max(last[k], original.get(k, 0)), p), textcoords="offset points",
                        xytext=(3, 0), va="center", fontsize=8)
        ax.set_xlabel("output channels")
        note = {"original": "", "after step 1": " (vs. step 1; original widths unknown)"}
        ax.set_title("Per-layer kept width" + note.get(reference, "") if original
                     else "Per-layer kept width (original widths unknown)")
        ax.margins(x=0.12)
    ax.set_yticks(list(pos), names, fontsize=8 if n > 25 else 9)
    ax.set_ylim(-0.7, n - 0.3)  # the default 5 % margin is several empty rows on deep nets
    # Below the axes, never over a bar or its label.
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return _png(fig)


def report_plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The three plots as (caption, base64 PNG) pairs; a plot without data says so."""
    return [("Top-1 accuracy after each pruning step; the first point is the unpruned model.",
             _accuracy_plot(report)),
            ("Median latency per engine and batch size; the label is the reported speedup "
             "(median of interleaved A/B rounds).", _latency_plot(report)),
            ("Per-layer size after the last step.", _width_plot(report))]


_STATUS = {"passed": "Passed", "gate_failed": "Gate failed"}


def _status_banner(report: dict[str, Any]) -> str:
    status = str(report.get("status", "unknown"))
    gates = report.get("gates") or []
    failed = sum(not g.get("passed") for g in gates)
    detail = (f"{failed} of {len(gates)} gates failed" if failed else
              f"all {len(gates)} gates passed" if len(gates) > 1 else
              "the gate passed" if gates else "no gates set")
    css = status if status in _STATUS else "other"
    return (f'<div class="status {css}">{html.escape(_STATUS.get(status, status))}: '
            f"{html.escape(detail)}</div>")


def _figure_strip(report: dict[str, Any]) -> str:
    cards = []
    for f in key_figures(report):
        css = "" if f.passed is None else " ok" if f.passed else " bad"
        cards.append(f'<div class="fig{css}"><div class="label">{html.escape(f.label)}</div>'
                     f'<div class="value">{html.escape(f.value)}</div>'
                     f'<div class="detail">{html.escape(f.detail)}</div></div>')
    return '<div class="strip">' + "".join(cards) + "</div>"


def render_html(report: dict[str, Any]) -> str:
    """The whole page: title, coloured status, a strip of the key figures, the gates, the
    summary table, plots, then the rest of the Markdown report."""
    # The title and the status line are drawn as the banner and the strip here.
    md = "\n".join(line for line in render_markdown(report).splitlines()
                   if not line.startswith(("# compress report:", "**Status:**")))
    body = markdown_to_html(md)
    figures = "\n".join(f'<figure><img src="data:image/png;base64,{png}" alt="{html.escape(cap)}">'
                        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
                        for cap, png in report_plots(report))
    plots = f"<h2>Plots</h2>\n{figures}\n"
    # Plots go after the summary table and the gates, before the first detailed section.
    cut = next((m.start() for m in re.finditer("<h2>", body)
                if not body.startswith("<h2>Gates</h2>", m.start())), -1)
    body = body + "\n" + plots if cut < 0 else body[:cut] + plots + body[cut:]
    title = html.escape(f"compress report: {report.get('name', 'run')}")
    head = f"<h1>{title}</h1>\n{_status_banner(report)}\n{_figure_strip(report)}\n"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{head}{body}\n"
            f"</body>\n</html>\n")
