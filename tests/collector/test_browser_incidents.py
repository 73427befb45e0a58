"""The incident pages in a real headless Chromium (Playwright) against a real uvicorn, as
the people of issue 15 use them: the home page (the fleet at a glance), a fault uploaded
by a terminal followed through the pages by a support user until resolved and exported
for a dispute, the list filtered by status and assignee, and a merchant who sees their
own tenant's incidents and nothing of another's (by URL, in the list and in the counts).

The fleet (`ops`): Acme owns Store 12 (terminals T-0001 and T-0003), Beta owns Store 7
(T-0002); an admin, a support user serving both tenants and Acme's merchant user. Every
bundle is a real sealed one (tests/bundle/kit.py), uploaded over HTTP with its device's
token; the collector holds every device's key, so the export checks each signature.
"""

from __future__ import annotations

import hashlib
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.bundle.remedies import CLEARED_NOTE, remedy
from collector.access import Role
from collector.accounts import users
from collector.accounts.devices import place_device
from collector.config import CollectorConfig
from collector.i18n import translator
from collector.incidents.backlog import Backlog
from collector.server import CollectorThread
from collector.storage import open_store
from collector.storage.sql import database
from tests.bundle.kit import KEY, make_bundle
from tests.collector.browser import EXPECT_MS, chromium, log_in, needs_chromium
from tests.collector.kit import ADMIN, ADMIN_PASSWORD, admin_token, bearer, upload_headers
from tests.conftest import wait_until

pytestmark = needs_chromium

SUPPORT, SUPPORT_PASSWORD = "sam-support", "sam support password"
MERCHANT, MERCHANT_PASSWORD = "acme-owner", "acme owner password"
DEVICES = {"T-0001": ("Store 12", "Acme"), "T-0003": ("Store 12", "Acme"), "T-0002": ("Store 7", "Beta")}  # fmt: skip
# the seeded faults: label -> (device, fault key, severity, seconds ago)
SEED = {
    "paper": ("T-0001", "printer.paper_end", "critical", 900),
    "cover": ("T-0003", "printer.cover_open", "warning", 600),
    "link": ("T-0002", "network.link_down", "critical", 300),
    "battery": ("T-0002", "power.battery_low", "warning", 120),
}
ACME = {"paper", "cover"}


@dataclass
class Ops:
    """A running collector with the fleet above; reads and writes through the API as the
    admin (personal token) where a test prepares a state the pages then show."""

    url: str
    tokens: dict[str, str]
    http: requests.Session
    backlog: Backlog  # the collector's hand-over from ingest to grouping
    incident: dict[str, int] = field(default_factory=dict)  # label -> incident id
    uploaded: dict[str, bytes] = field(default_factory=dict)  # bundle id -> bytes

    def upload(self, device: str, fault: str, severity: str, at: float, **kw: Any) -> str:
        """A real sealed bundle made at `at` uploaded with the device's token, then
        grouped (the upload is answered before); its id."""
        site = DEVICES[device][0]
        b = make_bundle(
            device=device, site=site, fault=fault, severity=severity, created_at=at, **kw
        )
        h = upload_headers(b.bundle_id, b.data, self.tokens[device], device)
        r = self.http.put(
            f"{self.url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=30
        )
        assert r.status_code == 201, r.text
        self.uploaded[b.bundle_id] = b.data
        assert wait_until(lambda: self.backlog.pending == 0, timeout_s=60)
        return b.bundle_id

    def incident_of(self, device: str, fault: str) -> int:
        r = self.http.get(
            f"{self.url}/v1/incidents", params={"device": device, "fault": fault}, timeout=30
        )
        assert r.status_code == 200, r.text
        (row,) = r.json()["incidents"]
        iid: int = row["id"]
        return iid

    def set_status(self, label: str, **body: str) -> None:
        r = self.http.post(
            f"{self.url}/v1/incidents/{self.incident[label]}/status", json=body, timeout=30
        )
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page in its own context (no cookie of another test), console errors kept
    on page.errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(EXPECT_MS)
    p = context.new_page()
    p.errors = []
    p.on("console", lambda m: p.errors.append(m.text) if m.type == "error" else None)
    try:
        yield p
    finally:
        context.close()


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Ops]:
    keys = tmp_path / "keys"
    keys.mkdir()
    cfg = CollectorConfig(
        data_dir=str(tmp_path / "store"),
        tokens_file=str(tmp_path / "tokens"),
        device_keys_dir=str(keys),
        max_body_mib=4,
    )
    api_token = admin_token(cfg)  # makes the admin (ADMIN, ADMIN_PASSWORD)
    store = open_store(cfg)
    try:
        db = database(store)
        tokens = {}
        for dev, (site, tenant) in DEVICES.items():
            tokens[dev] = place_device(
                db, cfg.tokens_file, dev, site=site, tenant=tenant, actor="test", address="local"
            )
            (keys / f"{dev}.key").write_bytes(KEY)
        for name, role, password, tenants in (
            (SUPPORT, Role.SUPPORT, SUPPORT_PASSWORD, ["Acme", "Beta"]),
            (MERCHANT, Role.MERCHANT, MERCHANT_PASSWORD, ["Acme"]),
        ):
            users.add_user(
                db, name, role, password=password, tenants_=tenants, actor="test", address="local"
            )
    finally:
        store.close()
    with CollectorThread(cfg) as server, requests.Session() as http:
        http.headers.update(bearer(api_token))
        o = Ops(
            server.url, tokens, http, server.server.config.app.state.collector.incidents.backlog
        )
        for label, (dev, fault, sev, ago) in SEED.items():
            o.upload(dev, fault, sev, time.time() - ago, seed=len(o.uploaded))
            o.incident[label] = o.incident_of(dev, fault)
        yield o


def _expect() -> Any:
    from playwright.sync_api import expect  # lazy: only the browser tests

    return expect


def _login_at(page: Any, url: str, path: str, name: str, password: str) -> None:
    """Open path, be sent to the login, log in and land back on path."""
    page.goto(url + path)
    page.wait_for_url("**/login?next=**")
    log_in(page, name, password)
    page.wait_for_url(url + path)


def _shown_incidents(page: Any) -> set[int]:
    rows = page.locator("#incidents tbody tr[data-incident]")
    return {int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.incident)")}


def _filter(page: Any, **fields: str) -> None:
    """Set the list's filters as a person does (a select or a text field each) and apply."""
    for name, value in fields.items():
        target = page.locator(f"#f-{name}")
        if target.evaluate("e => e.tagName") == "SELECT":
            target.select_option(value)
        else:
            target.fill(value)
    with page.expect_navigation():
        page.click("#apply")


def _post_form(page: Any, action: str, **fields: str) -> int:
    """A form the page does not offer, made in the page and sent with the session's CSRF
    token (the log-out form's) as a browser sends any form; the answer's status."""
    with page.expect_navigation() as nav:
        page.evaluate(
            """([action, fields]) => {
                const f = document.createElement("form");
                f.method = "post";
                f.action = action;
                const csrf = document.querySelector("#logout-form input[name=csrf]").value;
                for (const [k, v] of Object.entries({...fields, csrf})) {
                    const i = document.createElement("input");
                    i.type = "hidden"; i.name = k; i.value = v;
                    f.appendChild(i);
                }
                document.body.appendChild(f);
                f.submit();
            }""",
            [action, fields],
        )
    status: int = nav.value.status
    return status


# --------------------------------------------------------------------------- the home page


def test_home_page_shows_the_fleet_at_a_glance(ops: Ops, page: Any, tmp_path: Path) -> None:
    """Unresolved incidents by severity, the sites and terminals in trouble, the top fault
    keys of 7 and 30 days as a chart; a tile leads to the matching incidents."""
    expect, url = _expect(), ops.url
    ops.set_status("battery", status="acknowledged")
    _login_at(page, url, "/", ADMIN, ADMIN_PASSWORD)
    expect(page.locator("h1")).to_have_text("The fleet at a glance")

    def tile(sev: str) -> Any:
        return page.locator(f"#tile-{sev}")

    expect(tile("critical").locator("b")).to_have_text("2")
    expect(tile("critical")).to_contain_text("2 open, 0 acknowledged; 2 still raised")
    expect(tile("warning").locator("b")).to_have_text("2")
    expect(tile("warning")).to_contain_text("1 open, 1 acknowledged")
    expect(tile("error").locator("b")).to_have_text("0")

    sites = page.locator("#trouble-sites tbody tr")
    expect(sites).to_have_count(2)
    assert {sites.nth(i).locator("td").first.inner_text() for i in range(2)} == {
        "Store 12",
        "Store 7",
    }
    terminals = page.locator("#trouble-terminals tbody tr")
    expect(terminals).to_have_count(3)
    t2 = page.locator("#trouble-terminals tr", has_text="T-0002")
    expect(t2).to_contain_text("network.link_down")
    expect(t2).to_contain_text("power.battery_low")

    for chart in ("#top-7", "#top-30"):
        bars = page.locator(f"{chart} .bars [data-fault]")
        expect(bars).to_have_count(4)
        assert set(bars.evaluate_all("rs => rs.map(r => r.dataset.fault)")) == {
            f for _, f, _, _ in SEED.values()
        }
        paper = bars.filter(has_text="printer.paper_end")
        expect(paper).to_contain_text("1 incident, 1 terminal, 1 site")
        box = paper.locator(".bar").bounding_box()
        assert box is not None and box["width"] > 100  # drawn, at a readable size
        # every word shown whole: nothing of the chart is cut off or hidden by its card
        clipped = page.locator(chart).evaluate(
            "c => [c, ...c.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth"
            " && getComputedStyle(e).display !== 'inline').map(e => e.outerHTML.slice(0, 80))"
        )
        assert clipped == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    spilled = page.locator("main").evaluate(
        "m => [...m.querySelectorAll('.cols > div')].filter(d => d.scrollWidth > d.clientWidth"
        " && getComputedStyle(d).overflowX !== 'auto').map(d => d.innerText.slice(0, 40))"
    )
    assert spilled == []  # each of the two columns fits, or scrolls within itself

    picture = tmp_path / "home.png"
    page.screenshot(path=str(picture), full_page=True)
    assert picture.stat().st_size > 10_000
    with page.expect_navigation():
        tile("critical").click()
    assert "status=unresolved" in page.url and "severity=critical" in page.url
    assert _shown_incidents(page) == {ops.incident["paper"], ops.incident["link"]}
    page.goto(url + "/")
    with page.expect_navigation():
        page.locator("#trouble-sites a", has_text="Store 7").click()
    assert _shown_incidents(page) == {ops.incident["link"], ops.incident["battery"]}
    assert page.errors == []


# --------------------------------------------------------------------------- the incident flow


def test_a_fault_followed_by_support_until_resolved_and_exported(
    ops: Ops, page: Any, tmp_path: Path
) -> None:
    """A terminal uploads a fault: it is an incident on the list; the support user opens
    it, acknowledges it, takes it, records the call with the merchant, sees it cleared by
    the terminal, resolves it and downloads the dispute export, which holds the page (shown
    offline in the browser, its screenshots readable), the reports and the originals with
    their digests and signature checks; the export is in the audit log."""
    expect, url = _expect(), ops.url
    _login_at(page, url, "/incidents", SUPPORT, SUPPORT_PASSWORD)
    expect(page.locator("#whoami")).to_have_text(f"{SUPPORT} (support)")
    expect(page.locator("#incidents tbody tr[data-incident]")).to_have_count(4)

    t0 = time.time() - 600
    raised = ops.upload("T-0003", "printer.paper_end", "critical", t0, seed=11)
    page.goto(url + "/")  # the home page counts it once grouped
    expect(page.locator("#tile-critical b")).to_have_text("3")
    expect(page.locator("#trouble-terminals tr", has_text="T-0003")).to_contain_text(
        "printer.paper_end"
    )
    page.goto(url + "/incidents")
    row = page.locator("#incidents tbody tr[data-incident]", has_text="T-0003").filter(
        has_text="printer.paper_end"
    )
    expect(row).to_have_count(1)
    expect(row).to_contain_text("open")
    iid = int(row.get_attribute("data-incident") or 0)
    assert iid == ops.incident_of("T-0003", "printer.paper_end")
    with page.expect_navigation():
        row.locator(f"a[href='/incidents/{iid}']").first.click()
    assert page.url == f"{url}/incidents/{iid}"
    h1 = page.locator("h1")
    expect(h1).to_contain_text(f"#{iid} printer.paper_end on T-0003")
    expect(h1.locator(".st")).to_have_text("open")
    facts = page.locator("#facts")
    expect(facts).to_contain_text("site Store 12")
    expect(facts.locator("tr", has_text="Now")).to_contain_text("still raised")
    expect(page.locator(f"#incident-bundles tr[data-bundle='{raised}']")).to_have_count(1)
    expect(page.locator("#notes")).to_contain_text("No notes yet.")
    paper = remedy("printer.paper_end")  # what to do, for the merchant and for support
    expect(page.locator("#remedy-merchant")).to_have_text(paper.merchant)
    expect(page.locator("#remedy-support")).to_have_text(paper.support)
    expect(page.locator("#remedy")).not_to_contain_text("has cleared")

    def submit(selector: str) -> None:
        with page.expect_navigation():
            page.click(selector)
        assert page.url == f"{url}/incidents/{iid}"  # the form answered with its page
        expect(page.locator("#form-error")).to_have_count(0)

    submit("#to-acknowledged")
    expect(h1.locator(".st")).to_have_text("acknowledged")
    expect(page.locator("#to-acknowledged")).to_have_count(0)

    page.fill("#assignee", SUPPORT)
    submit("#assign")
    expect(facts.locator("tr", has_text="Assignee")).to_contain_text(SUPPORT)
    expect(page.locator("#assignee")).to_have_value(SUPPORT)

    called = int(time.time() // 60 * 60) - 1800  # the call took place half an hour ago
    said = "Ana loaded a new paper roll and closed the cover.\nWe call back at 9:00 to check."
    page.select_option("#note-channel", "phone")
    page.fill("#note-contact", "Ana, store manager")
    page.fill("#note-at", "1999-12-31T10:30")  # a slip of the year: refused, nothing lost
    page.fill("#note-text", said)
    with page.expect_navigation() as nav:
        page.click("#add-note")
    assert nav.value.status == 400
    expect(page.locator("#form-error")).to_have_text(
        "at must be between 2000-01-01 and a day from now"
    )
    expect(page.locator("#notes .note")).to_have_count(0)
    expect(page.locator("#note-channel")).to_have_value("phone")
    expect(page.locator("#note-contact")).to_have_value("Ana, store manager")
    expect(page.locator("#note-at")).to_have_value("1999-12-31T10:30")
    expect(page.locator("#note-text")).to_have_value(said)
    page.errors.clear()  # the console reports the 400
    page.fill("#note-at", time.strftime("%Y-%m-%dT%H:%M", time.gmtime(called)))
    submit("#add-note")
    note = page.locator("#notes .note")
    expect(note).to_have_count(1)
    expect(note).to_contain_text(time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(called)))
    expect(note).to_contain_text(f"phone · {SUPPORT} with Ana, store manager")
    expect(note.locator(".note-text")).to_have_text(said)

    cleared = ops.upload("T-0003", "printer.paper_end", "critical", t0 + 150, kind="cleared")
    page.reload()
    expect(facts.locator("tr", has_text="Now")).to_contain_text("cleared at")
    expect(page.locator("#remedy")).to_contain_text(CLEARED_NOTE)
    expect(page.locator(f"#incident-bundles tr[data-bundle='{cleared}']")).to_have_count(1)

    submit("#to-resolved")
    expect(h1.locator(".st")).to_have_text("resolved")
    expect(page.locator("#to-open")).to_have_text("Reopen")
    history = page.locator("#events tbody tr").evaluate_all(
        "rs => rs.map(r => [1, 2, 3].map(i => r.cells[i].innerText))"
    )
    assert history == [
        ["resolved", SUPPORT, "from acknowledged to resolved"],
        ["bundle", "system", f"cleared bundle {cleared}"],
        ["cleared", "system", "cleared after 2 min"],
        ["note", SUPPORT, "phone with Ana, store manager"],
        ["assigned", SUPPORT, f"assigned to {SUPPORT} (was nobody)"],
        ["acknowledged", SUPPORT, "from open to acknowledged"],
        ["bundle", "system", f"fault bundle {raised}"],
        ["opened", "system", f"printer.paper_end on T-0003, raised by fault bundle {raised}"],
    ]  # newest first, in words

    page.screenshot(path=str(tmp_path / "incident.png"), full_page=True)
    with page.expect_download() as dl:
        page.click("#export")
    download = dl.value
    assert re.fullmatch(rf"incident-{iid}-\d{{8}}\.zip", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    top = f"incident-{iid}/"
    with zipfile.ZipFile(saved) as zf:
        files = {n.removeprefix(top): zf.read(n) for n in zf.namelist()}
    assert set(files) >= {
        "index.html",
        "incident.json",
        "SHA256SUMS",
        f"bundles/{raised}.zip",
        f"bundles/{cleared}.zip",
        f"bundles/{raised}/report.txt",
        f"bundles/{raised}/screenshot.png",
        f"bundles/{raised}/timeline.json",
    }
    sums = dict(reversed(line.split("  ", 1)) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(files) - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    for bid in (raised, cleared):
        assert files[f"bundles/{bid}.zip"] == ops.uploaded[bid]  # byte for byte
    assert b"printer.paper_end" in files[f"bundles/{raised}/report.txt"]

    # the page as the bank sees it: opened from the disk, offline, in the browser
    shown = tmp_path / "export"
    with zipfile.ZipFile(saved) as zf:
        zf.extractall(shown)
    page.goto((shown / top / "index.html").as_uri())
    expect(page.locator("h1")).to_have_text(
        f"Incident #{iid}: printer.paper_end on terminal T-0003"
    )
    contact = page.locator("table.list tr", has_text="Ana, store manager")
    expect(contact).to_contain_text("phone")
    expect(contact).to_contain_text(SUPPORT)
    expect(contact).to_contain_text("We call back at 9:00 to check.")
    status = page.locator("table.facts tr", has_text="Status").first
    expect(status).to_contain_text("resolved")
    history = page.locator("table.list tr", has_text="from acknowledged to resolved")
    expect(history).to_contain_text(SUPPORT)  # the history in words, as on the page
    page.locator(f"table.list tr:has-text('opened') a[href='#b-{raised}']").click()
    assert page.url.endswith(f"#b-{raised}")  # to its evidence below
    for bid in (raised, cleared):
        section = page.locator(f"section[id='b-{bid}']")
        expect(section).to_contain_text("matches the digest recorded at receipt")
        expect(section).to_contain_text("verified with the device's key on file")
        expect(section.locator("pre")).to_contain_text("Fault:     printer.paper_end")
        expect(section.locator("svg")).not_to_have_count(0)
        shot = section.locator("img.shot")
        expect(shot).to_have_count(1)
        page.wait_for_function("img => img.complete", arg=shot.element_handle())
        assert shot.evaluate("img => img.naturalWidth") == 480
    picture = tmp_path / "dispute_export.png"
    page.screenshot(path=str(picture), full_page=True)
    assert picture.stat().st_size > 10_000

    audit = ops.http.get(f"{url}/v1/audit", params={"action": "incident.export"}, timeout=30)
    assert audit.status_code == 200, audit.text
    assert f'"target":"{iid}"' in audit.text.replace(" ", "")
    assert SUPPORT in audit.text

    # resolved, it leaves the home page's counts; reopened, it is back
    page.goto(url + "/")
    expect(page.locator("#tile-critical b")).to_have_text("2")
    page.goto(f"{url}/incidents/{iid}")
    submit("#to-open")
    expect(h1.locator(".st")).to_have_text("open")
    expect(page.locator("#events tbody tr").first).to_contain_text("from resolved to open")
    page.goto(url + "/")
    expect(page.locator("#tile-critical b")).to_have_text("3")
    assert page.errors == []


# --------------------------------------------------------------------------- filters


def test_the_list_filters_by_status_and_assignee(ops: Ops, page: Any) -> None:
    """The status select and the assignee field narrow the list (and keep their values
    on the page that answers); the 'taken by' select finds the incidents nobody took and
    one's own. A stale incident page's button answers with the reason and the state now."""
    expect, url, inc = _expect(), ops.url, ops.incident
    ops.set_status("link", status="acknowledged", assignee=SUPPORT)
    ops.set_status("cover", status="resolved")
    ops.set_status("paper", assignee="ana-support")
    _login_at(page, url, "/incidents", SUPPORT, SUPPORT_PASSWORD)
    expect(page.locator("#total")).to_have_text("4 incident(s)")

    def shown(**fields: str) -> set[int]:
        _filter(page, **fields)
        for name, value in fields.items():
            expect(page.locator(f"#f-{name}")).to_have_value(value)
        return _shown_incidents(page)

    assert shown(status="open") == {inc["paper"], inc["battery"]}
    assert "status=open" in page.url
    expect(page.locator("#total")).to_have_text("2 incident(s)")
    assert shown(status="acknowledged") == {inc["link"]}
    assert shown(status="resolved") == {inc["cover"]}
    assert shown(status="unresolved") == {inc["paper"], inc["link"], inc["battery"]}
    assert shown(severity="warning") == {inc["battery"]}
    assert shown(status="", severity="", assignee=SUPPORT) == {inc["link"]}
    assert shown(assignee="ana-support") == {inc["paper"]}
    assert shown(status="acknowledged", assignee="ana-support") == set()
    expect(page.locator("#incidents tbody")).to_contain_text("No incidents match.")
    assert shown(status="", assignee="", taken="nobody") == {inc["cover"], inc["battery"]}
    assert shown(status="unresolved", taken="nobody") == {inc["battery"]}
    assert shown(status="", taken="me") == {inc["link"]}
    assert page.errors == []
    # a name and "nobody" at once: the page says why (400), and keeps the filters
    _filter(page, assignee="ana-support", taken="nobody")
    expect(page.locator(".card .error")).to_have_text(
        "give an assignee or choose 'taken by', not both"
    )
    expect(page.locator("#f-assignee")).to_have_value("ana-support")
    expect(page.locator("#f-taken")).to_have_value("nobody")
    with page.expect_navigation():
        page.click("#clear")
    expect(page.locator("#total")).to_have_text("4 incident(s)")
    expect(page.locator("#f-status")).to_have_value("")

    # a page left open while someone else took the incident: its button answers why
    page.goto(f"{url}/incidents/{inc['battery']}")
    ops.set_status("battery", status="acknowledged", assignee="ana-support")
    with page.expect_navigation() as nav:
        page.click("#to-acknowledged")
    assert nav.value.status == 409
    expect(page.locator("#form-error")).to_have_text(
        f"incident {inc['battery']} is already acknowledged"
    )
    expect(page.locator("h1 .st")).to_have_text("acknowledged")
    expect(page.locator("#assignee")).to_have_value("ana-support")


# --------------------------------------------------------------------------- tenants


def test_a_merchant_sees_their_tenant_and_is_denied_the_other_by_url(
    ops: Ops, page: Any, tmp_path: Path
) -> None:
    """Acme's merchant: the home page counts, the charts, the list and the fleet's faults
    hold Acme's incidents only; Beta's incident page, its JSON, its export and Beta's
    terminal page answer 404 as if they did not exist; Acme's incident reads without a
    form to change it (a status posted with the session's CSRF token is refused 403) and
    exports."""
    expect, url, inc = _expect(), ops.url, ops.incident
    _login_at(page, url, "/", MERCHANT, MERCHANT_PASSWORD)
    expect(page.locator("#whoami")).to_have_text(f"{MERCHANT} (merchant)")
    expect(page.locator("#tile-critical b")).to_have_text("1")
    expect(page.locator("#tile-warning b")).to_have_text("1")
    expect(page.locator("#trouble-sites tbody tr")).to_have_count(1)
    expect(page.locator("#trouble-sites tbody")).to_contain_text("Store 12")
    terminals = page.locator("#trouble-terminals tbody tr td:first-child")
    expect(terminals).to_have_text(["T-0001", "T-0003"], ignore_case=False)
    expect(page.locator("#top-7 .bars [data-fault]")).to_have_count(2)
    expect(page.locator("#top-30 .bars [data-fault]")).to_have_count(2)
    main = page.locator("main").inner_text()
    for beta in ("Store 7", "T-0002", "network.link_down", "power.battery_low"):
        assert beta not in main

    page.goto(url + "/incidents")
    assert _shown_incidents(page) == {inc[x] for x in ACME}
    expect(page.locator("#total")).to_have_text("2 incident(s)")
    page.goto(url + "/incidents?site=Store+7")
    expect(page.locator("#total")).to_have_text("0 incident(s)")

    beta = inc["link"]
    for path in (
        f"/incidents/{beta}",
        f"/v1/incidents/{beta}",
        f"/v1/incidents/{beta}/export",
        "/devices/T-0002",
    ):
        answer = page.goto(url + path)
        assert answer is not None and answer.status == 404, path
    page.goto(f"{url}/incidents/{beta}")
    expect(page.locator("h1")).to_have_text("No such incident.")
    faults = page.goto(url + "/v1/fleet/faults?days=30")
    assert faults is not None and faults.status == 200
    assert {x["fault_key"] for x in faults.json()["faults"]} == {
        "printer.paper_end",
        "printer.cover_open",
    }

    own = inc["paper"]
    page.goto(f"{url}/incidents/{own}")
    expect(page.locator("h1")).to_contain_text(f"#{own} printer.paper_end on T-0001")
    expect(page.locator("#actions")).to_have_count(0)
    expect(page.locator("#note-form")).to_have_count(0)
    for target, refused in ((own, 403), (beta, 404)):
        page.goto(f"{url}/incidents/{own}")
        assert _post_form(page, f"/v1/incidents/{target}/status", status="resolved") == refused
    page.errors.clear()  # the console reports those two refusals
    page.goto(f"{url}/incidents/{own}")
    with page.expect_download() as dl:
        page.click("#export")
    saved = tmp_path / "own.zip"
    dl.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        assert f"incident-{own}/index.html" in zf.namelist()
    assert ops.incident_of("T-0001", "printer.paper_end") == own
    # a merchant whose browser asks for Chinese reads what to do in Chinese
    zh = page.context.browser.new_context(locale="zh-CN")
    try:
        zh_page = zh.new_page()
        _login_at(zh_page, url, f"/incidents/{own}", MERCHANT, MERCHANT_PASSWORD)
        expect(zh_page.locator("#remedy")).to_have_attribute("lang", "zh-Hans")
        said = translator("zh-Hans").gettext(remedy("printer.paper_end").merchant)
        assert said != remedy("printer.paper_end").merchant  # the catalog has it
        expect(zh_page.locator("#remedy-merchant")).to_have_text(said)
    finally:
        zh.close()
    # the own incident leads to its terminal and its bundle, screenshot included
    page.goto(f"{url}/incidents/{own}")
    with page.expect_navigation():
        page.locator("#facts a[href='/devices/T-0001']").click()
    expect(page.locator(f"#incidents tr[data-incident='{own}']")).to_have_count(1)
    page.goto(f"{url}/incidents/{own}")
    with page.expect_navigation():
        page.locator("#incident-bundles tr[data-bundle] a").first.click()
    expect(page.locator("#screenshot")).to_have_count(1)
    r = ops.http.get(f"{url}/v1/incidents/{own}", timeout=30)
    assert r.json()["status"] == "open"  # the refused post changed nothing
    assert page.errors == []
