"""Pages bounded whatever a bundle holds (issue 15 item 9): hostile bundles that ingest accepts
(a timeline of 50,000 sources, 62 entries of 1 MiB that compress to 72 KB, a timeline of
100,000 readings larger than the chart reads) are uploaded to a real collector process and
viewed, two viewers at a time, while another client keeps asking for /healthz and the list:
those answers stay prompt, the heavy answers stay small, and the process's memory stays
bounded. `posagent bundle html` on the same bundles writes a bounded page.

The bounds are loose on purpose (a busy machine); the measured figures are printed
(`pytest -s`)."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests

from agent.bundle.format import BundleReader, SealedBundle
from agent.bundle.html import render_html
from collector.auth import add_device
from collector.config import load_collector_config
from tests.bundle.kit import KEY, big_entries, long_timeline, many_sources
from tests.collector.kit import admin_token, bearer, upload_headers
from tests.collector.test_app import DEV, _free_port
from tests.conftest import posagent_argv, wait_until, write_config

MAX_OTHER_S = 2.0  # any /healthz or list answer while a heavy page renders
MAX_PAGE_BYTES = 2_000_000
MAX_RSS_GROWTH = 200 * 2**20
VIEWERS = 2  # heavy views at once


AUTH: dict[str, str] = {}  # the admin's Authorization header, set by `served`


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    ids: dict[str, str]
    bundles: dict[str, SealedBundle]
    tmp: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`posagent collector serve` in its own process with the hostile bundles uploaded."""
    tmp = tmp_path_factory.mktemp("bounded")
    port = _free_port()
    tokens, keys = tmp / "tokens", tmp / "keys"
    keys.mkdir()
    (keys / f"{DEV}.key").write_bytes(KEY)
    cfg = write_config(
        tmp,
        f'[collector]\nlisten = "127.0.0.1:{port}"\ntokens_file = "{tokens}"\n'
        f'data_dir = "{tmp / "c"}"\ndevice_keys_dir = "{keys}"\n',
    )
    token = add_device(tokens, DEV)
    # the read side is closed: an admin's personal token, made before serve opens the store
    AUTH.update(bearer(admin_token(load_collector_config(str(cfg)))))
    bundles = {"sources": many_sources(), "entries": big_entries(), "long": long_timeline()}
    proc = subprocess.Popen(
        posagent_argv("collector", "serve", "--config", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            assert proc.poll() is None, "collector exited"
            return False

    try:
        assert wait_until(up, timeout_s=30, step_s=0.1)
        for b in bundles.values():
            h = upload_headers(b.bundle_id, b.data, token, DEV)
            r = requests.put(f"{url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=60)
            assert r.status_code == 201, r.text
        yield Served(url, proc, {k: b.bundle_id for k, b in bundles.items()}, bundles, tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Background:
    """Another client asking for /healthz, the list API and the list page in a loop, and
    the collector's RSS sampled meanwhile."""

    url: str
    pid: int
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss_max: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        proc = psutil.Process(self.pid)
        with requests.Session() as http:
            while not self.stop.is_set():
                for path in ("/healthz", "/v1/bundles?limit=5", "/"):
                    t0 = time.monotonic()
                    try:
                        r = http.get(self.url + path, timeout=30, headers=AUTH)
                        if r.status_code != 200:
                            self.failures.append(f"{path}: {r.status_code}")
                    except requests.RequestException as e:
                        self.failures.append(f"{path}: {e}")
                    self.times.append(time.monotonic() - t0)
                    self.rss_max = max(self.rss_max, proc.memory_info().rss)


def _view(served: Served, path: str) -> dict[str, float]:
    """VIEWERS concurrent GETs of path while the background client runs; the figures."""
    rss0 = psutil.Process(served.proc.pid).memory_info().rss
    bg = Background(served.url, served.proc.pid, rss_max=rss0)
    worker = threading.Thread(target=bg.run, daemon=True)
    worker.start()
    assert wait_until(lambda: len(bg.times) >= 3, timeout_s=30)
    results: list[tuple[int, int, float]] = []

    def one() -> None:
        t0 = time.monotonic()
        r = requests.get(served.url + path, timeout=120, headers=AUTH)
        results.append((r.status_code, len(r.content), time.monotonic() - t0))

    n0 = len(bg.times)
    viewers = [threading.Thread(target=one) for _ in range(VIEWERS)]
    for v in viewers:
        v.start()
    for v in viewers:
        v.join(timeout=150)
    during = bg.times[n0:]
    bg.stop.set()
    worker.join(timeout=60)
    assert not bg.failures, bg.failures[:5]
    assert [code for code, _, _ in results] == [200] * VIEWERS, (path, results)
    figures = {
        "view_s": max(t for _, _, t in results),
        "bytes": max(n for _, n, _ in results),
        "others": len(during),
        "other_max_s": max(during, default=0.0),
        "other_median_s": statistics.median(during) if during else 0.0,
        "rss_growth_mb": (bg.rss_max - rss0) / 2**20,
    }
    print(f"\n{path}: " + ", ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    return figures


HEAVY = [
    (which, endpoint)
    for endpoint in ("page", "diagnostics", "manifest", "timeline")
    for which in ("sources", "entries", "long")
    if not (endpoint == "timeline" and which == "entries")  # that bundle has no timeline
]


@pytest.mark.parametrize(("which", "endpoint"), HEAVY)
def test_heavy_answers_leave_the_others_prompt(served: Served, which: str, endpoint: str) -> None:
    """Every per-bundle answer of a hostile bundle is small, leaves /healthz and the list
    answering within MAX_OTHER_S, and grows the process by less than MAX_RSS_GROWTH."""
    bid = served.ids[which]
    path = {
        "page": f"/bundles/{bid}",
        "diagnostics": f"/v1/bundles/{bid}/diagnostics",
        "manifest": f"/v1/bundles/{bid}",
        "timeline": f"/v1/bundles/{bid}/timeline.json",
    }[endpoint]
    f = _view(served, path)
    if endpoint != "timeline":  # the entry itself is the device's bytes, served whole
        assert f["bytes"] < MAX_PAGE_BYTES, f
    assert f["other_max_s"] < MAX_OTHER_S, f
    assert f["rss_growth_mb"] * 2**20 < MAX_RSS_GROWTH, f


def test_the_pages_say_what_they_left_out(served: Served) -> None:
    """The chart names the sources it did not draw; a long entry is cut with a link to the
    whole of it; a timeline longer than the chart reads says so."""

    def get(url: str, timeout: float) -> requests.Response:
        return requests.get(url, timeout=timeout, headers=AUTH)

    page = get(f"{served.url}/bundles/{served.ids['sources']}", timeout=60).text
    assert "49,980 more sources" in page
    assert page.count("<circle") <= 20 * 100
    page = get(f"{served.url}/bundles/{served.ids['entries']}", timeout=60).text
    bid = served.ids["entries"]
    assert f"/v1/bundles/{bid}/entries/diagnostics/big00.txt" in page
    assert "truncated" in page and "download the full entry" in page
    full = get(f"{served.url}/v1/bundles/{bid}/entries/diagnostics/big00.txt", timeout=60)
    assert full.content == b"<" * (1 << 20)
    diag = get(f"{served.url}/v1/bundles/{bid}/diagnostics", timeout=60).json()
    assert len(diag) == 62
    cut = diag["diagnostics/big00.txt"]
    assert cut["truncated"] is True and cut["size"] == 1 << 20
    assert cut["href"] == f"/v1/bundles/{bid}/entries/diagnostics/big00.txt"
    page = get(f"{served.url}/bundles/{served.ids['long']}", timeout=60).text
    assert "the chart reads its first 8.0 MiB" in page
    assert 0 < page.count("<circle") <= 2 * 100


@pytest.mark.parametrize("which", ["sources", "entries", "long"])
def test_bundle_html_command_writes_a_bounded_page(served: Served, which: str) -> None:
    """`posagent bundle html` on each hostile bundle writes a page under MAX_PAGE_BYTES and
    stays bounded in memory (its peak RSS is printed)."""
    b = served.bundles[which]
    src = served.tmp / f"{which}.zip"
    src.write_bytes(b.data)
    key = served.tmp / "device.key.bin"
    key.write_bytes(KEY)
    out = served.tmp / f"{which}.html"
    proc = psutil.Popen(
        posagent_argv("bundle", "html", str(src), "--key-file", str(key), "-o", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak = 0
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 120:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    size = out.stat().st_size
    print(
        f"\nbundle html {which}: {size} bytes, {time.monotonic() - t0:.2f} s, peak {peak >> 20} MiB"
    )
    assert size < MAX_PAGE_BYTES
    with BundleReader(b.data) as r:
        assert render_html(r, True) == out.read_text()
