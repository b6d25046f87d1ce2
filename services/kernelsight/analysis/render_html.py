"""One self-contained HTML file: time-series plots with the findings shaded, and the evidence.

Renders an :class:`~kernelsight.analysis.findings.Analysis` only (no database access). Plotly
draws the plots, with plotly.js inlined (``include_plotlyjs=True``): the page fetches nothing
from the network. Every string that came from the database (comm, device names) is
HTML-escaped, also in plot labels (plotly renders a subset of HTML in them)."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kernelsight.config import db_label
from kernelsight.exceptions import ConfigError
from kernelsight.safetext import printable

# Always plotted when present, in this order, after the findings' own signals.
KEY_SIGNALS = ("load.running", "sched.runq_p95_us", "sched.involuntary_per_s",
               "syscall.all.slow_per_s", "syscall.all.slow_ms_per_s", "faults.major_per_s",
               "memory.available_mb", "tcp.retrans_per_s")
MAX_PLOTS = 10
SHADES = ("rgba(214,39,40,0.18)", "rgba(255,127,14,0.18)", "rgba(148,103,189,0.18)")


def _e(v: object, limit: int = 200) -> str:
    return html.escape(printable(v, limit))


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def plotted(analysis: Any) -> list[str]:
    names: list[str] = []
    for f in analysis.findings:
        for n in [f.cause["signal"], *(e["signal"] for e in f.effects)]:
            if n not in names:
                names.append(n)
    for n in KEY_SIGNALS:
        if n in analysis.series and n not in names:
            names.append(n)
    for n in sorted(analysis.series):
        if n.startswith("io.") and n.endswith(".p99_us") and n not in names:
            names.append(n)
    return names[:MAX_PLOTS]


def figure(analysis: Any) -> go.Figure:
    w = analysis.window
    names = plotted(analysis)
    fig = make_subplots(rows=max(1, len(names)), cols=1, shared_xaxes=True,
                        vertical_spacing=0.03,
                        subplot_titles=[_e(f"{n} ({analysis.series[n].unit})") for n in names])
    xs = [_dt(w.bin_start(i)) for i in range(w.bins)]
    for row, n in enumerate(names, 1):
        s = analysis.series[n]
        fig.add_trace(go.Scatter(x=xs, y=[None if v != v else float(v) for v in s.values],
                                 mode="lines", name=_e(n), line={"width": 1.5}),
                      row=row, col=1)
        for a in analysis.anomalies.get(n, []):
            fig.add_trace(go.Scatter(x=[xs[a.start], xs[min(a.end, w.bins) - 1]],
                                     y=[a.baseline, a.baseline], mode="lines",
                                     line={"dash": "dot", "color": "grey", "width": 1},
                                     showlegend=False, hoverinfo="skip"), row=row, col=1)
    for i, f in enumerate(analysis.findings):
        fig.add_vrect(x0=_dt(f.start_ns), x1=_dt(f.end_ns), fillcolor=SHADES[i % len(SHADES)],
                      line_width=0, layer="below",
                      annotation_text=_e(f.id), annotation_position="top left")
    fig.update_layout(height=170 * max(1, len(names)) + 80, showlegend=False,
                      margin={"l": 60, "r": 20, "t": 40, "b": 30}, template="plotly_white")
    fig.update_annotations(font_size=11)
    return fig


def _finding_html(f: Any) -> str:
    rows = "".join(
        f"<tr><td>{_e(e['table'])}</td><td>{int(e['id'])}</td><td>{int(e['pid'])}</td>"
        f"<td>{_e(e['comm'], 64)}</td><td>{_e(e['signal'])}</td>"
        f"<td class=n>{float(e['value']):,.1f}</td></tr>" for e in f.evidence)
    procs = ", ".join(f"{_e(p['comm'], 32)} [{int(p['pid'])}] {float(p['share']):.0%}"
                      for p in f.processes) or "—"
    effects = "".join(f"<li>{_e(e['signal'])}: {float(e['baseline']):,.1f} → "
                      f"{float(e['level']):,.1f} {_e(e['unit'])} (r={float(e['corr']):.2f}, "
                      f"lag {float(e['lag_s']):.0f} s)</li>" for e in f.effects)
    return (f"<section class=finding id='{_e(f.id)}'><h3>{_e(f.id)} · {_e(f.kind)} · score "
            f"{float(f.score):.2f}</h3><p>{_e(f.summary, 1000)}</p>"
            f"<p>{_dt(f.start_ns):%H:%M:%S}–{_dt(f.end_ns):%H:%M:%S} UTC. "
            f"Processes: {procs}</p>"
            + (f"<p>Effects:</p><ul>{effects}</ul>" if effects else "")
            + "<table><tr><th>table</th><th>id</th><th>pid</th><th>comm</th><th>signal</th>"
            f"<th>value</th></tr>{rows}</table></section>")


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px}
td.n{text-align:right}section.finding{border-left:4px solid #d62728;padding-left:1em;
margin:1em 0}"""


def to_html(analysis: Any, db_path: str) -> str:
    w = analysis.window
    plot = figure(analysis).to_html(include_plotlyjs=True, full_html=False,
                                    config={"displaylogo": False})
    findings = "".join(_finding_html(f) for f in analysis.findings) or \
        "<p>No findings: no signal departed from its baseline enough to matter.</p>"
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<title>KernelSight analysis</title>"
            f"<style>{CSS}</style></head><body><h1>KernelSight analysis</h1>"
            f"<p>Database {_e(db_label(db_path), 1000)}; "
            f"window {_dt(w.since_ns):%Y-%m-%d %H:%M:%S}–"
            f"{_dt(w.until_ns):%H:%M:%S} UTC, {w.bins} intervals of {w.step_ns / 1e9:.2f} s; "
            f"{len(analysis.series)} signals.</p><h2>Findings</h2>{findings}"
            f"<h2>Signals</h2>{plot}</body></html>")


def write_html(analysis: Any, path: str, db_path: str) -> None:
    try:
        Path(path).write_text(to_html(analysis, db_path), encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--html {printable(path, 300)}: cannot write ({e.strerror}); "
                          "give a writable file path") from None
