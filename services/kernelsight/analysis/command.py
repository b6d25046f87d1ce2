"""`kernelsight analyze` and `kernelsight ask`: the click commands and the terminal output.

Heavy imports (numpy, ruptures, plotly, google-genai) happen inside the commands, so the CLI
works without the ``analysis`` extra and says how to install it when a command needs it."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kernelsight import window
from kernelsight.exceptions import ConfigError
from kernelsight.safetext import plain

CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXTRA_HINT = "pip install -e 'services[analysis]' (scripts/setup.sh installs it)"


def span(eng: Any, sel: window.Selection) -> tuple[int | None, int | None]:
    """The selection as [since, until] ns (the latest run by default, as `report` does)."""
    from kernelsight.runs import resolve

    w = resolve(eng, sel, default_latest=True)
    return w.since_ns, w.until_ns


def need_extra() -> None:
    try:
        import numpy  # noqa: F401
        import ruptures  # noqa: F401
    except ModuleNotFoundError as e:
        raise ConfigError(f"analysis needs the optional dependency {e.name}: "
                          f"{EXTRA_HINT}") from None


def _ts(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S")


def render(analysis: Any, console: Console) -> None:
    """The findings as a rich table; every string from the database goes through safetext."""
    w = analysis.window
    console.print(Text(f"Window {_ts(w.since_ns)}–{_ts(w.until_ns)} UTC, "
                       f"{w.bins} intervals of {w.step_ns / 1e9:.2f} s, "
                       f"{len(analysis.series)} signals, "
                       f"{sum(len(v) for v in analysis.anomalies.values())} anomalies"))
    if not analysis.findings:
        console.print("No findings: no signal departed from its baseline enough to matter.")
        return
    t = Table(title="Findings (best first)", title_justify="left", show_lines=True)
    for col, j in (("id", "left"), ("score", "right"), ("when (UTC)", "left"),
                   ("finding", "left"), ("processes", "left"), ("evidence rows", "left")):
        t.add_column(col, justify=j, overflow="fold")  # type: ignore[arg-type]
    for f in analysis.findings:
        procs = [plain(f"{p['comm']}[{p['pid']}] {p['share']:.0%}", limit=40)
                 for p in f.processes[:3]]
        ev = [plain(f"{e['table']}#{e['id']}") for e in f.evidence[:6]]
        if len(f.evidence) > 6:
            ev.append(Text(f"…+{len(f.evidence) - 6}"))
        t.add_row(plain(f.id), f"{f.score:.2f}", f"{_ts(f.start_ns)}–\n{_ts(f.end_ns)}",
                  plain(f.summary, limit=600), Text("\n").join(procs), Text("\n").join(ev))
    console.print(t)


@click.command("analyze", context_settings=CTX)
@click.option("--db", "--db-path", "db_path", envvar=["KS_DB_PATH", "KS_DB_URL"], show_envvar=True,
              default=None, help="Database to analyse: a SQLite path or a PostgreSQL URL "
              "(prefer KS_DB_URL) [default: data/kernelsight.db].")
@window.options
@click.option("--json", "as_json", is_flag=True,
              help='Print {"window", "findings", "signals"} as JSON.')
@click.option("--html", "html_path", envvar="KS_HTML", show_envvar=True, default=None,
              type=click.Path(dir_okay=False), help="Also write a self-contained HTML report.")
@click.option("--explain", is_flag=True,
              help="Ask the Gemini agent to explain the findings (needs GEMINI_API_KEY).")
def command(db_path: str | None, run: str | None, since: str | None, until: str | None,
            as_json: bool, html_path: str | None, explain: bool) -> None:
    """Find what went wrong in a window, offline: signals, baselines, cause -> effect findings,
    each with the database rows that prove it. Reads the database only.

    \b
    Examples:
      kernelsight analyze --db data/stress_test.db
      kernelsight analyze --db data/ks.db --run latest
      kernelsight analyze --db data/ks.db --since 2026-11-30T10:30 --until 2026-11-30T10:45
      kernelsight analyze --db data/ks.db --json | jq '.findings[0].evidence'
      kernelsight analyze --db data/ks.db --html data/analysis.html
      KS_DB_URL=postgresql+psycopg://ks:PW@db/kernelsight kernelsight analyze --run latest
    """
    import orjson

    need_extra()
    from kernelsight.analysis.findings import analyze

    path, eng, lo, hi = _open_window(db_path, run, since, until)
    try:
        result = analyze(eng, lo, hi)
    finally:
        eng.dispose()
    if html_path:
        from kernelsight.analysis.render_html import write_html

        write_html(result, html_path, path)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2,
                                             default=float) + b"\n")
    else:
        render(result, Console())
        if html_path:
            click.echo(f"HTML report: {html_path}")
    if explain:
        from kernelsight.analysis.agent.loop import explain_or_fallback

        sys.exit(explain_or_fallback(path, lo, hi, None, Console(), result))


@click.command("ask", context_settings=CTX)
@click.argument("question")
@click.option("--db", "--db-path", "db_path", envvar=["KS_DB_PATH", "KS_DB_URL"], show_envvar=True,
              default=None, help="Database to ask about [default: data/kernelsight.db].")
@window.options
def ask_command(question: str, db_path: str | None, run: str | None, since: str | None,
                until: str | None) -> None:
    """Ask the Gemini agent about the data; it can only call read-only tools.

    Needs GEMINI_API_KEY (and the analysis extra); the model is KS_GEMINI_MODEL. Without a
    key the deterministic findings are printed instead.

    \b
    Examples:
      GEMINI_API_KEY=... kernelsight ask "why were syscalls slow at 10:32?" --db data/ks.db
    """
    need_extra()
    from kernelsight.analysis.agent.loop import explain_or_fallback

    path, eng, lo, hi = _open_window(db_path, run, since, until)
    eng.dispose()
    sys.exit(explain_or_fallback(path, lo, hi, question, Console()))


def _open_window(db_path: str | None, run: str | None, since: str | None,
                 until: str | None) -> tuple[str, Any, int, int]:
    """The database (read-only engine, the caller disposes of it) and the selected window."""
    from kernelsight import defaults
    from kernelsight.db import open_readonly

    sel = window.parse_selection(run, since, until)
    path = db_path or defaults.DB_PATH
    eng = open_readonly(path)
    try:
        lo, hi = span(eng, sel)
    except BaseException:
        eng.dispose()
        raise
    return path, eng, lo, hi


@click.command("baselines", context_settings=CTX)
@click.option("--db", "--db-path", "db_path", envvar=["KS_DB_PATH", "KS_DB_URL"], show_envvar=True,
              default=None, help="Database to read and to store the baselines in "
              "[default: data/kernelsight.db].")
@window.options
def baselines_command(db_path: str | None, run: str | None, since: str | None,
                      until: str | None) -> None:
    """Store each signal's robust baseline (median, MAD) over the host's history in the
    database (table signal_baselines), so `analyze` compares a window with that history
    rather than with the window alone. The only analysis command that writes; run it from
    cron or a timer (e.g. hourly); it is one short transaction beside a running ingester.

    \b
    Examples:
      kernelsight baselines --db data/ks.db                       # all the data
      kernelsight baselines --db data/ks.db --since 2026-11-29T00:00
    """
    need_extra()
    from kernelsight import defaults
    from kernelsight.analysis import history
    from kernelsight.db import open_readonly

    sel = window.parse_selection(run, since, until)
    path = db_path or defaults.DB_PATH
    eng = open_readonly(path)
    try:
        lo, hi = (None, None) if sel.empty else span(eng, sel)
        w, rows = history.compute(eng, lo, hi)
    finally:
        eng.dispose()
    history.write(path, rows)
    usable = sum(r.samples >= history.MIN_SAMPLES for r in rows)
    click.echo(f"stored {len(rows)} signal baselines over {_ts(w.since_ns)}–{_ts(w.until_ns)} "
               f"UTC ({w.bins} intervals of {w.step_ns / 1e9:.2f} s); {usable} have the "
               f"{history.MIN_SAMPLES} intervals `analyze` needs to use them")
