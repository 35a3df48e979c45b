"""`halpc plan --report`: the Gantt geometry, the page the real CLI writes, and that page rendered.

- the geometry function on hand-made events (positions, lanes, merging of crowded charts);
- `halpc plan --report` on a 64x64 VGG-16 in a subprocess: one self-contained HTML file with an
  SVG chart per strategy, all on one time scale, nothing fetched from anywhere;
- the page rendered by headless Chromium (`make system-deps` installs it) to a PNG, decoded with
  a small PNG reader (standard library + numpy) to check that the charts are really drawn.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest

import models  # examples/models.py (conftest puts examples/ on sys.path)
from bundles import save
from halpc.present.charts import (COMPUTE_H, COMPUTE_Y, GAP, MIN_WIDTH, ROW_HEIGHT, SEND_H, SEND_Y, gantt_rects,
                                  time_ticks)
from halpc.planner.cost import Event

# Speeds and one slower link differ on purpose, so the charts are not all alike.
CLUSTER = """\
[network]
bandwidth_mbps = 100
latency_ms = 2

[[device]]
name = "host"
host = true
address = "127.0.0.1:5701"
gmacs = 8.0

[[device]]
name = "dev-1"
address = "127.0.0.1:5702"
gmacs = 12.0

[[device]]
name = "dev-2"
address = "127.0.0.1:5703"
gmacs = 6.0

[[link]]
between = ["host", "dev-2"]
bandwidth_mbps = 50
"""

# Characters that must be escaped in HTML: the model's file name is shown on the page.
MODEL_NAME = "vgg16<b>&.onnx"

# Colours of the stylesheet (templates/plan_report.html.j2), as RGB.
COMPUTE_RGB = (0x2F, 0x6F, 0xBF)
SEND_RGB = (0xE0, 0x7B, 0x24)


# -- (a) geometry ---------------------------------------------------------------------------------


def test_gantt_rects_hand_made_events():
    ms = 1e-3
    events = [
        Event("host", "compute", 0 * ms, 10 * ms, "block00_strip0.onnx"),
        Event("host", "send", 10 * ms, 12 * ms, "pool1", "dev-1"),
        Event("dev-1", "wait", 0 * ms, 12 * ms, "pool1", "host"),
        Event("dev-1", "compute", 12 * ms, 20 * ms, "block01_strip1.onnx"),
        Event("host", "compute", 20 * ms, 20.001 * ms, "tail.onnx"),
    ]
    # 20 ms over 200 px: 10 px per ms. Bars end GAP px early, so back-to-back ones stay apart.
    rects = gantt_rects(events, ["host", "dev-1"], 20 * ms, 200.0)
    got = [(r.css, r.x, r.y, r.width, r.height) for r in rects]
    assert got == [
        # waits first (drawn behind), then compute bars, then sends; by row, then by time.
        ("wait", 0.0, ROW_HEIGHT + COMPUTE_Y, 120.0, COMPUTE_H),  # waits: no gap
        ("compute", 0.0, COMPUTE_Y, 100.0 - GAP, COMPUTE_H),
        ("tail", 200.0, COMPUTE_Y, MIN_WIDTH, COMPUTE_H),  # too short to see: minimum width
        ("compute-alt", 120.0, ROW_HEIGHT + COMPUTE_Y, 80.0 - GAP, COMPUTE_H),  # odd block
        ("send", 100.0, SEND_Y, 20.0 - GAP, SEND_H),  # the thin lane under the host's compute lane
    ]
    titles = {r.css: r.title for r in rects}
    assert titles["send"] == "host → dev-1: sends pool1, 10.00–12.00 ms (2.00 ms)"
    assert "waits for pool1 from host" in titles["wait"]
    assert "block00_strip0.onnx" in titles["compute"]

    with pytest.raises(ValueError, match="unknown device"):
        gantt_rects(events, ["host"], 20 * ms, 200.0)
    with pytest.raises(ValueError, match="positive"):
        gantt_rects(events, ["host", "dev-1"], 0.0, 200.0)


def test_gantt_rects_merges_only_crowded_charts():
    # 5000 sends 0.1 px apart (1 px = 1 ms here) and a compute bar: over max_events, so the
    # sends become one bar; the compute bar (another kind) stays as it is.
    sends = [Event("dev-1", "send", i * 1e-4, i * 1e-4 + 5e-5, "t", "host") for i in range(5000)]
    compute = Event("dev-1", "compute", 0.1, 0.2, "block00_strip1.onnx")
    rects = gantt_rects(sends + [compute], ["host", "dev-1"], 1.0, 1000.0, max_events=4000)
    assert [(r.css, r.x, r.width) for r in rects] == [("compute", 100.0, 100.0 - GAP), ("send", 0.0, 499.95 - GAP)]
    assert rects[1].title.startswith("dev-1: 5000 sends (host), 0.00–499.95 ms (merged")

    # Bars 1.5 px apart are not merged, however many there are.
    spaced = [Event("host", "compute", i * 2e-3, i * 2e-3 + 0.5e-3, "x") for i in range(5000)]
    assert len(gantt_rects(spaced, ["host"], 10.0, 10000.0, max_events=4000)) == 5000

    # Under max_events nothing is merged.
    assert len(gantt_rects(sends[:3000], ["host", "dev-1"], 1.0, 1000.0, max_events=4000)) == 3000


def test_time_ticks_are_round():
    ticks = time_ticks(0.3617, 1100.0)
    assert [label for _, label in ticks] == [str(v) for v in range(0, 351, 50)]
    assert ticks[0][0] == 0.0 and ticks[1][0] == pytest.approx(50 / 361.7 * 1100, abs=0.01)
    assert [label for _, label in time_ticks(0.0042, 1000.0)] == [f"{v / 2:.1f}" for v in range(9)]


# -- (b) the page the real CLI writes -------------------------------------------------------------


class _Page(HTMLParser):
    """Collects what the checks need; HTMLParser raises on nothing, so also track nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.svg_titles: dict[str, str] = {}
        self._svg: str | None = None
        self._in_title = False
        self.text: list[str] = []

    VOID = {"meta", "br", "hr", "img", "link", "input", "rect", "line", "path"}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "svg":
            self._svg = attrs.get("id")
        if tag == "title" and self._svg and self.stack[-1] == "svg":
            self._in_title = True
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()
        if tag == "svg":
            self._svg = None
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title and self._svg:
            self.svg_titles[self._svg] = self.svg_titles.get(self._svg, "") + data


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("report")
    model = save(models.build("vgg16", 64, 64), folder, MODEL_NAME)
    cluster = folder / "cluster.toml"
    cluster.write_text(CLUSTER)
    out = folder / "out" / "plan.html"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "halpc.cli", "plan", model, "--cluster", cluster, "--report", out],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    latency = {}
    for line in proc.stdout.splitlines():
        cells = line.split()
        if len(cells) > 2 and re.fullmatch(r"[0-9.]+", cells[1]):
            latency[cells[0]] = float(cells[1])
    best = re.search(r"^best: (\S+)$", proc.stdout, re.M).group(1)
    return {"path": out, "latency": latency, "best": best}


def test_report_is_one_self_contained_page(report):
    path = report["path"]
    # Written atomically: nothing but the page in its folder (no temporary file left over).
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    html = path.read_text(encoding="utf-8")
    assert len(html) < 1_000_000, f"{len(html)} bytes"
    page = _Page()
    page.feed(html)
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"

    # Nothing is fetched: the only URL is the SVG namespace, and there is nothing that loads.
    assert set(re.findall(r"https?://[^\s\"'<>)]*", html)) == {"http://www.w3.org/2000/svg"}
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert not any("src" in attrs or ("href" in attrs and not attrs["href"].startswith("#"))
                   for _, attrs in page.tags)
    assert "url(" not in html and "@import" not in html

    # The title names the model, its input shape and the cluster; the file name is escaped.
    text = "".join(page.text)
    assert "halpc plan: vgg16<b>&.onnx" in text
    assert "<b>&.onnx" not in html and "vgg16&lt;b&gt;&amp;.onnx" in html
    assert "1×3×64×64" in text and "host ↔ dev-2: 50 Mbit/s, 2 ms" in text
    for name, speed in (("host", "8"), ("dev-1", "12"), ("dev-2", "6")):
        assert f"{speed} GMAC/s" in text and name in text

    # One chart per strategy the CLI printed, and the best one highlighted in the summary.
    strategies = report["latency"]
    assert set(strategies) >= {"local", "even", "modnn", "ftp", "dpfp", "halp"}
    svgs = [attrs for tag, attrs in page.tags if tag == "svg"]
    assert [s["id"] for s in svgs] == [f"svg-{name}" for name in strategies]
    best_rows = re.findall(r'<tr class="best"><td><a href="#gantt-([\w-]+)"', html)
    assert best_rows == [report["best"]]
    assert report["best"] == min(strategies, key=strategies.get)

    # Every chart has its devices' bars, and all charts share one time scale: the dashed
    # latency line sits at the same px per ms in each.
    for name in strategies:
        title = page.svg_titles[f"svg-{name}"]
        shown = float(re.search(r"([0-9.]+) ms", title).group(1))
        assert shown == pytest.approx(strategies[name], abs=0.051), title
    latency_x = dict(re.findall(
        r'id="svg-([\w-]+)".*?<line class="latency" x1="([0-9.]+)"', html, re.S))
    px_per_ms = {name: float(latency_x[name]) / strategies[name] for name in strategies}
    assert max(px_per_ms.values()) / min(px_per_ms.values()) < 1.005, px_per_ms
    assert len({s["width"] for s in svgs}) == 1
    sends = re.findall(r'<rect class="send"[^>]*><title>([^<]*)</title>', html)
    assert sends and all("→" in t for t in sends)
    assert html.count('<rect class="wait"') > 0


def test_write_plan_report_replaces_atomically_or_fails_in_one_line(tmp_path):
    from bundles import local_cluster, trunk_of
    from halpc.errors import HalpcError
    from halpc.present.plan_report import write_plan_report
    from halpc.planner.context import context
    from halpc.planner.strategies import make_plan

    ctx = context(trunk_of(save(models.build("vgg16", 32, 32), tmp_path)), local_cluster(2))
    plans = {"local": make_plan(ctx, "local"), "even": make_plan(ctx, "even")}
    out = tmp_path / "reports" / "plan.html"  # the folder is made
    write_plan_report(out, ctx, plans)
    write_plan_report(out, ctx, plans)  # replaces the page
    assert sorted(p.name for p in out.parent.iterdir()) == ["plan.html"]
    assert out.read_text(encoding="utf-8").count("<svg") == 2

    with pytest.raises(HalpcError, match="cannot write the report"):
        write_plan_report(out.parent, ctx, plans)  # a folder: os.replace fails
    assert sorted(p.name for p in out.parent.iterdir()) == ["plan.html"]
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


# -- (c) the page rendered -----------------------------------------------------------------------


def read_png(data: bytes) -> np.ndarray:
    """Pixels of an 8-bit, non-interlaced PNG (grey, grey+alpha, RGB or RGBA): height x width x channels.

    Undoing the row filters is sequential along a row and down the columns, but each pixel only
    needs its left, upper and upper-left neighbours, so all pixels on one anti-diagonal are done
    at once with numpy.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (0, 2, 4, 6), header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), np.uint8).reshape(height, 1 + width * channels)
    filters = raw[:, 0].astype(np.int16)
    assert filters.max() <= 4, "bad filter type"
    filtered = raw[:, 1:].reshape(height, width, channels).astype(np.int16)
    out = np.zeros((height + 1, width + 1, channels), np.int16)  # a zero row on top, column on the left
    for d in range(height + width - 1):
        r = np.arange(max(0, d - width + 1), min(height, d + 1))
        c = d - r
        a, b, ab = out[r + 1, c], out[r, c + 1], out[r, c]  # left, up, up-left
        p = a + b - ab
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ab)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ab))
        f = filters[r][:, None]
        predictor = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) // 2, paeth], 0)
        out[r + 1, c + 1] = (filtered[r, c] + predictor) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def _write_png(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A PNG of RGB `pixels` with the given filter per row (to test read_png against)."""
    height, width, _ = pixels.shape
    x = pixels.astype(np.int16)
    rows = []
    for i in range(height):
        up = x[i - 1] if i else np.zeros_like(x[0])
        left = np.vstack([np.zeros((1, 3), np.int16), x[i, :-1]])
        up_left = np.vstack([np.zeros((1, 3), np.int16), up[:-1]])
        p = left + up - up_left
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        pred = [0, left, up, (left + up) // 2, paeth][filters[i]]
        rows.append(bytes([filters[i]]) + ((x[i] - pred) & 0xFF).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def test_read_png_undoes_every_filter():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 23, 3), dtype=np.uint8)
    pixels[10:20] = pixels[10:20] // 16 * 16  # some smooth rows too
    data = _write_png(pixels, [i % 5 for i in range(40)])
    np.testing.assert_array_equal(read_png(data), pixels)


def _near(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 8) -> int:
    distance = np.abs(pixels[..., :3].astype(np.int16) - np.array(rgb, np.int16)).max(axis=-1)
    return int((distance <= tolerance).sum())


def test_report_renders_in_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (the Debian package `chromium`; `make system-deps` "
                    "installs it as root): cannot render the HTML report")
    png = tmp_path / "plan.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png}",
         "--window-size=1400,2000", report["path"].as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0 and png.exists(), proc.stderr[-3000:]
    data = png.read_bytes()
    assert len(data) > 10_000, f"{len(data)} bytes: an empty page?"
    pixels = read_png(data)
    assert pixels.shape[:2] == (2000, 1400)
    rgb = pixels[..., :3].astype(np.int32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 50, f"only {len(colours)} colours"
    white = _near(pixels, (255, 255, 255), 2) / pixels[..., 0].size
    assert 0.2 < white < 0.95, f"{white:.0%} of the page is white"
    # The SVG bars are drawn: plenty of compute-blue and some send-orange pixels.
    assert _near(pixels, COMPUTE_RGB) > 20_000
    assert _near(pixels, SEND_RGB) > 1_000


# -- (d) `halpc run --report`: measured beside predicted, from a hand-made run ---------------------


def _run_inputs(tmp_path):
    """A Manifest of 3 devices and a RunSummary of 3 tasks, made by hand (no cluster runs)."""
    from bundles import local_cluster
    from halpc.planner.cost import Prediction
    from halpc.host.run import RunSummary
    from halpc.host.verify import OutputCheck
    from halpc_stub.host import TaskResult
    from halpc_stub.manifest import Manifest

    cluster = local_cluster(3)
    data = {
        "strategy": "halp",
        "model": {"name": "tiny<i>&.onnx", "file": "reference/model.onnx"},
        "devices": [{"name": d.name, "host": d.host, "address": d.address, "threads": d.threads}
                    for d in cluster.devices],
        "cluster": cluster.to_dict(),
        "cost": {"host": {"gmacs": 8.0, "run_overhead_ms": 0.1}, "dev-1": {"gmacs": 12.5, "run_overhead_ms": 0.1},
                 "dev-2": {"gmacs": 6.0, "run_overhead_ms": 0.1}},
    }
    manifest = Manifest(tmp_path, data)

    def task(i: int, start: float, latency: float) -> TaskResult:
        ev = lambda device, kind, a, b, label, peer=None: {  # noqa: E731
            "device": device, "kind": kind, "start": start + a, "end": start + b, "label": label, "peer": peer}
        return TaskResult(task=i, outputs={}, start=start, end=start + latency, events=[
            ev("host", "send", 0.0, 0.004, "block00/x", "dev-1"),
            ev("host", "compute", 0.004, 0.02, "block00_strip0.onnx"),
            ev("dev-1", "wait", 0.0, 0.005, "block00/x", "host"),
            ev("dev-1", "compute", 0.005, 0.025, "block00_strip1.onnx"),
            ev("dev-1", "send", 0.025, 0.03, "block00/y", "host"),
            ev("dev-2", "compute", 0.002, 0.022, "block01_strip2.onnx"),
            ev("dev-2", "send", 0.022, 0.027, "block01/y", None),  # a peer nobody named
            ev("host", "compute", 0.03, latency, "tail.onnx"),
        ])

    # Latencies 50, 70, 60 ms: the median is task 2's.
    results = [task(0, 100.0, 0.05), task(1, 100.05, 0.07), task(2, 100.12, 0.06)]
    predicted = Prediction(0.04, 0.045, (
        Event("host", "compute", 0.0, 0.015, "block00_strip0.onnx"),
        Event("host", "send", 0.0, 0.003, "block00/x", "dev-1"),
        Event("dev-1", "wait", 0.0, 0.003, "block00/x", "host"),
        Event("dev-1", "compute", 0.003, 0.02, "block00_strip1.onnx"),
        Event("dev-1", "send", 0.02, 0.024, "block00/y", "host"),
        Event("dev-2", "compute", 0.0, 0.045, "block01_strip2.onnx"),
        Event("host", "compute", 0.025, 0.04, "tail.onnx"),
    ))
    summary = RunSummary(results=results, predicted=predicted, started=100.0, ended=100.18,
                         checks=[OutputCheck(f"task {i}", "out", (1, 10), True, 0.0) for i in range(3)],
                         local_s=[0.09, 0.1, 0.11])
    return manifest, summary


def test_run_report_shows_measured_beside_predicted(tmp_path):
    from halpc.present.charts import PLOT_WIDTH
    from halpc.present.run_report import render_run_report, write_run_report

    manifest, summary = _run_inputs(tmp_path)
    assert summary.median_task() == 2
    out = tmp_path / "reports" / "run.html"
    write_run_report(out, manifest, summary)
    html = out.read_text(encoding="utf-8")
    assert html == render_run_report(manifest, summary)
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.html"]
    page = _Page()
    page.feed(html)
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"

    # Self-contained: nothing to fetch.
    assert set(re.findall(r"https?://[^\s\"'<>)]*", html)) == {"http://www.w3.org/2000/svg"}
    assert not {tag for tag, _ in page.tags} & {"script", "link", "img", "iframe", "object", "embed"}
    assert not any("src" in attrs or ("href" in attrs and not attrs["href"].startswith("#"))
                   for _, attrs in page.tags)
    assert "url(" not in html and "@import" not in html

    text = " ".join("".join(page.text).split())
    assert "halpc run: tiny<i>&.onnx, halp plan on 3 devices" in text
    assert "<i>&.onnx" not in html
    # The summary: 3 tasks, median/min/max, predicted and the ratio, throughput, speedup, verdict.
    for shown in ("60.00 ms", "50.00 – 70.00 ms", "40.00 ms", "1.50×", "16.67 tasks/s",
                  "100.00 ms", "1.67×", "3/3 bit-exact to the unsplit model", "12.5"):
        assert shown in text, shown

    # Two charts, predicted first, the measured one of the median task, on one time scale.
    svgs = [attrs for tag, attrs in page.tags if tag == "svg"]
    assert [s["id"] for s in svgs] == ["svg-predicted", "svg-measured"]
    assert "predicted (cost model)" in text and "measured, task 2" in text
    assert "receiver took the rows" in text
    latency_x = dict(re.findall(r'id="svg-(\w+)".*?<line class="latency" x1="([0-9.]+)"', html, re.S))
    scale_ms = 60.0  # the longest timeline: task 2's measured latency
    assert float(latency_x["measured"]) == pytest.approx(PLOT_WIDTH, abs=0.01)
    assert float(latency_x["predicted"]) == pytest.approx(40 / scale_ms * PLOT_WIDTH, abs=0.01)
    # One row per device, in manifest order, the host marked.
    dev_rows = re.findall(r'<text class="dev( host)?" [^>]*><title>([^<]*)</title>', html)
    assert dev_rows == [(" host", "host (host)"), ("", "dev-1"), ("", "dev-2")] * 2
    # Measured sends end when the receiver took the rows; a send without a peer is drawn too.
    measured = html[html.index('id="svg-measured"'):]
    sends = re.findall(r'<rect class="send"[^>]*><title>([^<]*)</title>', measured)
    assert "dev-2 → ?: sends block01/y, 22.00–27.00 ms (5.00 ms)" in sends and len(sends) == 3


def test_write_run_report_fails_in_one_line(tmp_path):
    from halpc.errors import HalpcError
    from halpc.present.run_report import write_run_report

    manifest, summary = _run_inputs(tmp_path)
    folder = tmp_path / "reports"
    folder.mkdir()
    with pytest.raises(HalpcError, match="cannot write the report") as info:
        write_run_report(folder, manifest, summary)  # a folder: os.replace fails
    assert "\n" not in str(info.value)
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_run_report_renders_in_chromium(tmp_path):
    from halpc.present.run_report import write_run_report

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (the Debian package `chromium`): cannot render the run report")
    manifest, summary = _run_inputs(tmp_path)
    page, png = tmp_path / "run.html", tmp_path / "run.png"
    write_run_report(page, manifest, summary)
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png}",
         "--window-size=1400,1000", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0 and png.exists(), proc.stderr[-3000:]
    pixels = read_png(png.read_bytes())
    assert pixels.shape[:2] == (1000, 1400)
    assert _near(pixels, COMPUTE_RGB) > 5_000
    assert _near(pixels, SEND_RGB) > 200
