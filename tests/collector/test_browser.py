"""Collector web page in a real headless Chromium (Playwright) against a real uvicorn: the
login, the list and its filters, a bundle page, the log out, and a merchant denied another
tenant's bundle by URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from collector.access import Role
from collector.accounts import users
from collector.accounts.devices import place_device
from collector.config import CollectorConfig
from collector.server import CollectorThread
from collector.storage import open_store
from collector.storage.sql import database
from tests.bundle.kit import make_bundle
from tests.collector.browser import chromium, log_in, needs_chromium
from tests.collector.kit import ADMIN, ADMIN_PASSWORD, admin_token, upload_headers

MERCHANT, MERCHANT_PASSWORD = "acme-owner", "acme owner password"

pytestmark = needs_chromium


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A collector with four uploaded bundles from two terminals of two tenants (T-0001 at
    Store 12 of Acme, T-0002 at Store 7 of Beta), an admin and Acme's merchant user;
    yields (url, ids by label)."""
    cfg = CollectorConfig(
        data_dir=str(tmp_path / "store"), tokens_file=str(tmp_path / "tokens"), max_body_mib=4
    )
    admin_token(cfg)  # makes the admin (ADMIN, ADMIN_PASSWORD)
    store = open_store(cfg)
    db = database(store)
    tokens = {
        d: place_device(
            db, cfg.tokens_file, d, site=site, tenant=tenant, actor="test", address="local"
        )
        for d, site, tenant in (("T-0001", "Store 12", "Acme"), ("T-0002", "Store 7", "Beta"))
    }
    users.add_user(
        db, MERCHANT, Role.MERCHANT, password=MERCHANT_PASSWORD, tenants_=["Acme"],
        actor="test", address="local",
    )  # fmt: skip
    store.close()
    specs = {
        "paper1": ("T-0001", "Store 12", "printer.paper_end", "critical", True),
        "paper2": ("T-0001", "Store 12", "printer.paper_end", "critical", True),
        "link": ("T-0002", "Store 7", "network.link_down", "critical", True),
        "battery": ("T-0002", "Store 7", "power.battery_low", "warning", False),
    }
    ids: dict[str, str] = {}
    with CollectorThread(cfg) as server, requests.Session() as http:
        for i, (label, (dev, site, fault, sev, shot)) in enumerate(specs.items()):
            b = make_bundle(
                device=dev, site=site, fault=fault, severity=sev, screenshot=shot, seed=i
            )
            h = upload_headers(b.bundle_id, b.data, tokens[dev], dev)
            r = http.put(f"{server.url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h)
            assert r.status_code == 201, r.text
            ids[label] = b.bundle_id
        yield server.url, ids


def test_page_lists_filters_and_shows_a_bundle_with_its_screenshot(
    seeded: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The list shows every upload, a fault filter narrows it, a bundle page renders its screenshot."""
    url, ids = seeded
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_url("**/login?next=/")
        log_in(page, ADMIN, "not the password")
        assert "Wrong user name or password" in page.locator("#login-error").inner_text()
        errors.clear()  # the console reports that answer's 401
        log_in(page, ADMIN, ADMIN_PASSWORD)
        page.wait_for_url(url + "/")
        assert page.locator("#whoami").inner_text() == f"{ADMIN} (admin)"
        page.goto(url + "/bundles")
        rows = page.locator("#bundles tbody tr[data-bundle]")
        assert rows.count() == 4
        assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.bundle)")) == set(ids.values())
        assert page.locator("#counts [data-fault='printer.paper_end'] b").inner_text() == "2"

        page.select_option("#f-fault", "network.link_down")
        page.click("#apply")
        page.wait_for_url("**/bundles?*fault=network.link_down*")
        assert rows.count() == 1
        assert rows.first.get_attribute("data-bundle") == ids["link"]

        page.goto(url + "/bundles")
        page.fill("#f-device", "T-0001")
        page.click("#apply")
        page.wait_for_url("**/bundles?device=T-0001*")
        assert rows.count() == 2
        assert page.locator("#total").inner_text() == "2 bundle(s)"

        page.locator(f"tr[data-bundle='{ids['paper1']}'] a").first.click()
        page.wait_for_url(f"**/bundles/{ids['paper1']}")
        shot = page.locator("#screenshot")
        shot.wait_for()
        page.wait_for_function("document.getElementById('screenshot').complete")
        assert shot.evaluate("img => img.naturalWidth") == 480
        # for people: what happened, where and when lead; the screenshot beside them at a
        # readable size (not a thumbnail), a link to its full size; the timeline below
        assert page.locator("#what").inner_text().startswith("Printer: paper end")
        assert "Store 12" in page.locator("#where").inner_text()
        assert "Created" in page.locator("#when").inner_text()
        box, chart = shot.bounding_box(), page.locator("#timeline").bounding_box()
        assert box is not None and chart is not None
        assert box["width"] >= 480 and box["y"] < chart["y"]
        assert page.locator("#what").bounding_box()["y"] < chart["y"]  # type: ignore[index]
        assert page.locator("#screenshot-link").get_attribute("href") == (
            f"/v1/bundles/{ids['paper1']}/screenshot.png"
        )
        assert page.locator("#timeline svg circle").count() == 120
        # the raw parts are folded: the report opens on a click
        assert not page.locator("#report").is_visible()
        assert not page.locator("#manifest pre").is_visible()
        page.locator("#report-details summary").click()
        assert "printer.paper_end" in page.locator("#report").inner_text()
        assert page.locator("#download").get_attribute("href") == (
            f"/v1/bundles/{ids['paper1']}/download"
        )
        page.locator("#diagnostics summary").first.click()
        assert page.locator("#diagnostics pre").first.is_visible()
        out = tmp_path / "collector_bundle_page.png"
        page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 10_000

        page.goto(f"{url}/bundles/{ids['battery']}")
        assert page.locator("#screenshot").count() == 0
        assert "No screenshot" in page.content()

        page.goto(url + "/audit")
        assert page.locator("#audit td", has_text="bundle.screenshot").count() >= 1
        page.click("#logout")
        page.wait_for_url("**/login")
        page.goto(f"{url}/bundles/{ids['paper1']}")
        page.wait_for_url(f"**/login?next=/bundles/{ids['paper1']}")
        assert errors == []


def test_a_merchant_is_denied_another_tenants_bundle_by_url(
    seeded: tuple[str, dict[str, str]],
) -> None:
    """Acme's merchant sees Acme's two bundles; Beta's bundle page and screenshot by URL
    answer 404 as if it did not exist; there is no admin page for them."""
    url, ids = seeded
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{url}/bundles/{ids['link']}")
        log_in(page, MERCHANT, MERCHANT_PASSWORD)
        page.wait_for_url(f"**/bundles/{ids['link']}")
        assert "No such bundle." in page.locator("h1").inner_text()
        shot = page.goto(f"{url}/v1/bundles/{ids['link']}/screenshot.png")
        assert shot is not None and shot.status == 404
        page.goto(url + "/bundles")
        rows = page.locator("#bundles tbody tr[data-bundle]")
        assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.bundle)")) == {
            ids["paper1"],
            ids["paper2"],
        }
        assert page.locator("#nav-admin").count() == 0
        denied = page.goto(url + "/admin")
        assert denied is not None and denied.status == 403
        page.goto(f"{url}/bundles/{ids['paper1']}")
        assert page.locator("#screenshot").count() == 1
