"""Headless Chromium, for what people see: a page (a URL or a local file) to a PNG or to its rendered DOM.

    screenshot(url_or_file, out.png)          Chromium's --screenshot, after a virtual-time budget
    rendered_dom(url_or_file)                 Chromium's --dump-dom, after the same budget
    interactive_screenshot(url, out.png, …)   over the DevTools protocol: wait for text, click a tab, capture
    png_colours(out.png)                      distinct colours in a PNG: a blank page has one

Chromium is Debian's package (`apt-get install -y chromium`). It runs with networking features off (no component
updates, no sync, no background requests) and a throw-away profile. Used by bench/ui_check.py and the browser tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["find_chromium", "screenshot", "rendered_dom", "interactive_screenshot", "png_colours", "BrowserError"]

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


def _devtools_url(process: subprocess.Popen, timeout: float) -> str:
    """The browser's DevTools websocket, read from the line Chromium prints on stderr when it listens."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen += line
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:
            return found.group(1)
    raise BrowserError(f"Chromium did not open its DevTools port: {seen[-600:]}")


class _Page:
    """One tab of a headless Chromium, driven over the DevTools protocol (what `--screenshot` cannot do: wait for
    a condition, click, then capture)."""

    def __init__(self, socket_url: str) -> None:
        from websockets.sync.client import connect

        self._ws = connect(socket_url, max_size=None, open_timeout=30)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise BrowserError(f"the page did not show {what} within {timeout:.0f} s")
            time.sleep(0.5)

    def close(self) -> None:
        self._ws.close()


def interactive_screenshot(url: str, out: str | Path, *, shows: list[str], click: str | None = None,
                           then_shows: list[str] = (), width: int = 1400, height: int = 1000,
                           timeout: float = 90.0) -> tuple[Path, str]:
    """Load `url` in headless Chromium over the DevTools protocol, wait until its text shows every string of
    `shows`, click the tab or button whose text is `click` (if given), wait for `then_shows`, and save a
    `width` × `height` PNG. Returns the PNG's path and the page's HTML as captured.

    For pages that decide what to show after their data loads: the Prefect UI drops a `?tab=` of a flow run whose
    tabs are still hidden while it loads, so the tab has to be clicked."""
    import base64

    chromium = find_chromium()
    if chromium is None:
        raise BrowserError("no Chromium found: install Debian's package with `apt-get install -y chromium`")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="promptcycle-chromium-") as profile:
        process = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                    "--remote-allow-origins=*", f"--window-size={width},{height}", "about:blank"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            browser = urllib.parse.urlsplit(_devtools_url(process, 60))
            with urllib.request.urlopen(f"http://{browser.netloc}/json/list", timeout=10) as response:
                targets = [t for t in json.load(response) if t.get("type") == "page"]
            page = _Page(targets[0]["webSocketDebuggerUrl"])
            try:
                page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                          mobile=False)
                page.call("Page.navigate", url=url)
                text = "document.body && document.body.innerText.includes({})".format
                page.wait_for(" && ".join(text(json.dumps(s)) for s in shows) or "true", timeout, repr(shows))
                if click:
                    # the innermost element saying exactly `click`, inside a tab bar if there is one (the Prefect
                    # UI's tabs are plain elements, not buttons); the click bubbles up to its handler
                    clicked = page.evaluate(
                        "(() => { const want = " + json.dumps(click) + "; const all = [...document.querySelectorAll("
                        "'*')].filter(e => e.textContent.trim() === want && ![...e.children].some(c => "
                        "c.textContent.trim() === want)); const el = all.find(e => e.closest('[class*=tab]')) || "
                        "all[0]; if (!el) return [...document.querySelectorAll('[class*=tab]')].map(e => "
                        "e.className).slice(0, 20); el.click(); return true; })()")
                    if clicked is not True:
                        raise BrowserError(f"nothing to click that says {click!r} on {url} (tab-like elements: "
                                           f"{clicked})")
                if then_shows:
                    page.wait_for(" && ".join(text(json.dumps(s)) for s in then_shows), timeout, repr(then_shows))
                time.sleep(1.5)  # let the last fetches paint
                html = page.evaluate("document.documentElement.outerHTML") or ""
                shot = page.call("Page.captureScreenshot", format="png")
                out.write_bytes(base64.b64decode(shot["data"]))
            finally:
                page.close()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            process.stderr.close()
    return out, html


def png_colours(path: str | Path) -> int:
    """How many distinct RGB colours the PNG shows: a blank page has one, a drawn one hundreds.

    Decodes the image (8-bit grey, RGB or RGBA, not interlaced: what Chromium writes) with zlib and numpy; rows
    that use the Average or Paeth filter are reconstructed in Python (Chromium uses them for few rows)."""
    import struct
    import zlib

    import numpy as np

    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError(f"{path} is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if header is None or header[2] != 8 or header[3] not in (0, 2, 4, 6) or header[6] != 0:
        raise BrowserError(f"{path}: an 8-bit, non-interlaced grey or RGB(A) PNG was expected, found {header}")
    width, height, bpp = header[0], header[1], {0: 1, 2: 3, 4: 2, 6: 4}[header[3]]
    stride = width * bpp
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(height, stride + 1)
    pixels = np.zeros((height, stride), dtype=np.uint8)
    prev = pixels[0]
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per channel
            cur = (np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint64) % 256).astype(np.uint8).ravel()
        elif kind == 2:  # Up
            cur = line + prev
        else:  # Average (3) or Paeth (4): each byte depends on the one to its left
            cur, up = bytearray(line.tobytes()), prev.tobytes()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 3:
                    cur[i] = (cur[i] + ((left + up[i]) >> 1)) & 255
                    continue
                corner = up[i - bpp] if i >= bpp else 0
                est = left + up[i] - corner
                pa, pb, pc = abs(est - left), abs(est - up[i]), abs(est - corner)
                cur[i] = (cur[i] + (left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner)) & 255
            cur = np.frombuffer(bytes(cur), dtype=np.uint8)
        pixels[y] = cur
        prev = pixels[y]
    image = pixels.reshape(height, width, bpp).astype(np.uint32)
    packed = (image[..., 0] << 16) | (image[..., 1] << 8) | image[..., 2] if bpp >= 3 else image[..., 0]
    return int(len(np.unique(packed)))
