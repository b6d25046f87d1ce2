"""`kernelsight analyze --html` in a real headless browser (Debian's chromium): the page
loads without console errors, plotly.js draws the plots (the DOM holds the SVG it creates at
run time), and the screenshot is not blank. A page with a script error is the control that
shows the console check can fail."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat

CONSOLE = re.compile(r":CONSOLE[:(]")


def chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed; run scripts/setup.sh (make setup)")
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--window-size=1280,1800", "--virtual-time-budget=5000", *mode,
         page.as_uri()], capture_output=True, text=True, timeout=120, check=False)


def console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if CONSOLE.search(ln)]


def test_console_check_catches_a_script_error(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    r = chromium(bad, tmp_path, "--dump-dom")
    assert any("undefinedFunction" in ln for ln in console_lines(r.stderr)), r.stderr[-2000:]


def test_html_report_renders_in_chromium(recording, tmp_path):
    page = tmp_path / "analysis.html"
    r = subprocess.run([sys.executable, "-m", "kernelsight", "analyze", "--db",
                        str(recording.db), "--html", str(page)], capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    src = page.read_text()
    assert "<script src=" not in src and "<link" not in src  # nothing fetched
    assert "F1" in src and "sched_events" in src  # a finding and its evidence table
    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_lines(dom.stderr), console_lines(dom.stderr)
    assert 'class="main-svg"' in dom.stdout, "plotly.js did not draw the plots"
    shot = tmp_path / "shot.png"
    s = chromium(page, tmp_path, f"--screenshot={shot}")
    assert s.returncode == 0 and shot.exists(), s.stderr[-2000:]
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 1800)
    assert ImageStat.Stat(img).stddev[0] > 10, "the screenshot is blank"
