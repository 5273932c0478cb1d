"""Rendering a report in headless Chromium and reading the screenshot back (a small PNG decoder:
8-bit RGB/RGBA, every filter type; no imaging library needed)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome", "headless_shell")
                 if shutil.which(c)), None)  # fmt: skip
MISSING = "chromium is not installed (Debian/Ubuntu package: chromium)"
WIDTH, HEIGHT, SCALE = 960, 2000, 0.5


def screenshot(page: Path, out: Path) -> Path:
    assert CHROMIUM is not None, MISSING
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", f"--force-device-scale-factor={SCALE}",
         f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={out.parent / 'chromium-profile'}",
         f"--screenshot={out}", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            head = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head)
    assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, line, prev, bpp)
        rows.append(bytes(line) if bpp == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + pred) & 0xFF


def colour_counts(path: Path) -> dict[str, int]:
    """Pixels that are clearly blue (the baseline bars), clearly orange (the current bars) and
    not white, in the screenshot."""
    _, _, rows = read_png(path)
    counts = {"blue": 0, "orange": 0, "ink": 0}
    for row in rows:
        for i in range(0, len(row), 3):
            r, g, b = row[i], row[i + 1], row[i + 2]
            if r + g + b < 720:
                counts["ink"] += 1
            if b > r + 60 and b > 120:
                counts["blue"] += 1
            elif r > b + 80 and g > 80:
                counts["orange"] += 1
    return counts


class Charts(HTMLParser):
    """The charts of a report: per ``svg.chart`` its feature and how many bars it draws."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, int]] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and "chart" in (a.get("class") or ""):
            self._open = a.get("data-feature") or "?"
            self.charts[self._open] = {"ref": 0, "cur": 0, "vol": 0}
        elif tag == "rect" and self._open is not None:
            for cls in ("ref", "cur", "vol"):
                if cls in (a.get("class") or "").split() and float(a.get("height") or 0) > 0:
                    self.charts[self._open][cls] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._open = None


def problems(page: Path, png: Path, features: list[str]) -> list[str]:
    """What is wrong with a rendered report (empty: it shows what it should)."""
    parser = Charts()
    parser.feed(page.read_text())
    found = []
    for name in [*features, "prediction"]:
        chart = parser.charts.get(name)
        if chart is None or not chart["ref"] or not chart["cur"]:
            found.append(f"chart of {name}: {chart}")
    if not parser.charts.get("capture volume", {}).get("vol"):
        found.append("no capture volume bars")
    counts = colour_counts(png)
    if counts["ink"] < 5000:
        found.append(f"the screenshot is (nearly) blank: {counts}")
    if counts["blue"] < 1500 or counts["orange"] < 1500:
        found.append(f"the bars are not on the screenshot: {counts}")
    return found
