"""report.html opened in headless Chromium (Debian's `chromium`; .ci/run installs it).

Chromium renders the page from the file alone (no network), runs its filter script with
the filter given in the address, and the DOM it dumps must show the run's numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_reports import mixed_plan, run_plan

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags Chromium needs as root on a machine with no network and no screen.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium(tmp_path: Path, *args: str) -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_html_report_renders_in_chromium(tmp_path: Path) -> None:
    run_dir, _ = run_plan(tmp_path, mixed_plan())
    page = (run_dir / "report.html").as_uri()

    dom = chromium(tmp_path, "--dump-dom", page)
    assert re.search(r'id="kpi-cases">18<', dom) and re.search(r'id="kpi-pass-rate">27.8%<', dom)
    assert "18 of 18 shown" in dom  # the filter script ran
    assert '<svg id="latency-histogram"' in dom and '<svg id="status-bar"' in dom
    assert "1 flaky of 6 repeated cases" in dom

    # The filter from the address: the failing repeat of the flaky case, and nothing else.
    filtered = chromium(tmp_path, "--dump-dom", page + "#q=flaky&status=failed")
    assert "1 of 18 shown" in filtered
    visible = re.findall(r'<tr data-status="(\w+)">(?:(?!</tr>).)*?<code>([^<]+)</code>', filtered, re.S)
    assert visible == [("failed", "wf/ds/flaky#2")], visible

    screenshot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,1500", page)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
