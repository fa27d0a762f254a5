"""What people see, checked in a real browser: headless Chromium renders pages to PNGs and to their DOM.

    .venv/bin/python bench/ui_check.py report --config pipelines.yaml [--pipeline NAME] [--out-dir DIR]
    .venv/bin/python bench/ui_check.py shot URL_OR_FILE OUT.png [--width 1400 --height 1000]

`report` writes the pipeline's HTML report (`promptcycle report --no-artifacts`), loads it in headless Chromium,
checks that every figure the report drew is an SVG chart in the rendered page, and saves a screenshot of the whole
page. `shot` saves a screenshot of any URL or file (e.g. a Prefect UI page).

The pieces (`find_chromium`, `screenshot`, `rendered_dom`, `figures_in_dom`, `check_report`) are what the full UI
check builds on: start a Prefect server, serve the deployments, run a cycle, then screenshot the deployments page,
a monitor flow run with its artifacts, and this report.

Chromium is Debian's package (`apt-get install -y chromium`). It runs with networking features off (no component
updates, no sync, no background requests), a throw-away profile, and a virtual-time budget so that the page's
JavaScript finishes before the capture.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["find_chromium", "screenshot", "rendered_dom", "figures_in_dom", "check_report", "png_colours",
           "BrowserError"]

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--no-first-run", "--no-default-browser-check", "--mute-audio", "--hide-scrollbars")


class BrowserError(RuntimeError):
    """Chromium is missing, or did not render the page."""


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary: $CHROMIUM, else the first of CANDIDATES on PATH; None if none."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _target(url_or_path: str | Path) -> str:
    text = str(url_or_path)
    if re.match(r"^[a-z]+://", text):
        return text
    return Path(text).resolve().as_uri()


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise BrowserError("no Chromium found (tried $CHROMIUM and " + ", ".join(CANDIDATES) + "): install Debian's "
                           "package with `apt-get install -y chromium`")
    with tempfile.TemporaryDirectory(prefix="promptcycle-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"Chromium did not finish within {timeout:g} s: {' '.join(cmd[:3])} …") from exc


def screenshot(url_or_path: str | Path, out: str | Path, *, width: int = 1400, height: int = 1000,
               budget_ms: int = 15000, timeout: float = 120.0) -> Path:
    """Render a URL (or a local file) in headless Chromium and save a `width` × `height` PNG to `out`.

    `budget_ms` is Chromium's virtual-time budget: how long the page's scripts and timers may run before the
    capture (virtual time runs faster than the clock when the page is idle)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    done = _run([f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}",
                 _target(url_or_path)], timeout)
    if not out.exists() or out.stat().st_size == 0:
        raise BrowserError(f"Chromium wrote no screenshot of {url_or_path} (exit {done.returncode}): "
                           f"{done.stderr.strip()[-600:]}")
    return out


def rendered_dom(url_or_path: str | Path, *, budget_ms: int = 15000, timeout: float = 120.0) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom), as HTML text."""
    done = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", _target(url_or_path)], timeout)
    if done.returncode != 0 or "<html" not in done.stdout.lower():
        raise BrowserError(f"Chromium could not render {url_or_path} (exit {done.returncode}): "
                           f"{done.stderr.strip()[-600:]}")
    return done.stdout


def figures_in_dom(dom: str) -> dict[str, dict[str, int]]:
    """Per figure container of a rendered report (`data-chart="…"`): how many SVG charts and drawn marks it holds.

    A figure is drawn when its container holds an `<svg class="marks">` (vega-embed's SVG renderer) with paths or
    shapes in it; a figure whose script failed holds none, and its container says why."""
    out: dict[str, dict[str, int]] = {}
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div[^>]*data-chart="([^"]+)"', dom)]
    for i, (start, key) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(dom)
        chunk = dom[start:end]
        out[key] = {"svg": len(re.findall(r'<svg[^>]*class="marks"', chunk)),
                    "marks": len(re.findall(r"<(?:path|rect|line|circle|text)\b", chunk))}
    return out


def png_colours(path: str | Path, limit: int = 4096) -> int:
    """How many distinct byte values the PNG's pixel data holds (capped by `limit` bytes sampled per row band):
    a blank page decodes to two or three (white, and the row filter bytes), a drawn one to hundreds. Pure Python."""
    import struct
    import zlib

    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError(f"{path} is not a PNG")
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    step = max(1, len(raw) // (64 * limit))
    return len(set(raw[::step]))


def check_report(html_path: str | Path, png_path: str | Path | None = None, *, width: int = 1400,
                 height: int = 4600) -> dict:
    """Load a written report in headless Chromium: every figure container must hold a drawn SVG chart, and the page
    must say it rendered them all (`<body data-rendered="n/n">`). Saves a screenshot when `png_path` is given."""
    dom = rendered_dom(html_path)
    figures = figures_in_dom(dom)
    expected = re.search(r'<body[^>]*data-figures="(\d+)"', dom)
    rendered = re.search(r'<body[^>]*data-rendered="(\d+)/(\d+)"', dom)
    missing = re.findall(r'data-missing="([^"]+)"', dom)
    result = {"figures": figures, "expected": int(expected.group(1)) if expected else None,
              "rendered": None if not rendered else f"{rendered.group(1)}/{rendered.group(2)}",
              "missing": missing, "simulated_label": "SIMULATED" in dom,
              "blank": [k for k, v in figures.items() if v["svg"] == 0 or v["marks"] < 5]}
    if png_path is not None:
        result["screenshot"] = str(screenshot(html_path, png_path, width=width, height=height))
        result["screenshot_colours"] = png_colours(png_path)
    result["ok"] = (result["expected"] == len(figures) and not result["blank"]
                    and result["rendered"] == f"{len(figures)}/{len(figures)}"
                    and result.get("screenshot_colours", 100) > 20)
    return result


def _report(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir).resolve()
    html = out_dir / f"report-{args.pipeline}.html"
    cmd = [sys.executable, "-m", "promptcycle_cli.main", "report", "--no-artifacts", "--json", "--config",
           args.config, "--pipeline", args.pipeline, "--out", str(html)]
    if args.store:
        cmd += ["--store", args.store]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
        return done.returncode
    result = check_report(html, out_dir / f"report-{args.pipeline}.png", width=args.width, height=args.height)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="write a pipeline's report, check its figures in Chromium, screenshot it")
    p.add_argument("--config", default="pipelines.yaml")
    p.add_argument("--store", default=None)
    p.add_argument("--pipeline", default="customer-insights")
    p.add_argument("--out-dir", default="ui-check")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=4600)
    p = sub.add_parser("shot", help="screenshot a URL or file")
    p.add_argument("target")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--budget-ms", type=int, default=15000)
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        print(screenshot(args.target, args.out, width=args.width, height=args.height, budget_ms=args.budget_ms))
        return 0
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
