"""People and tenants on the read side (issue 15 items 1-2), on a real uvicorn over the
embedded SQLite index and over a real PostgreSQL: passwords and throttling, sessions
(expiry, idle, logout on every instance), CSRF, personal tokens, tenants (a merchant
never reaches another tenant's bundle), the audit log and its export, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from collector.access import Role
from collector.accounts import tokens, users
from collector.accounts.devices import place_device
from collector.accounts.web import safe_next
from collector.config import CollectorConfig
from collector.server import CollectorThread
from collector.storage import StorageError, open_store
from collector.storage.sql import Database, database
from tests.bundle.kit import make_bundle
from tests.collector.kit import (
    ADMIN,
    ADMIN_PASSWORD,
    bearer,
    form_csrf,
    login,
    upload_headers,
)
from tests.collector.test_app import DEV, Env
from tests.conftest import posagent_argv, write_config

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> dict[str, str]:
    """[collector] overrides: the embedded index, or a fresh migrated PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("pg_url")
    from collector.storage.postgres import migrate  # lazy: the fleet extra, postgres runs only

    migrate(url)
    return {"index_url": url}


class Fleet(Env):
    """test_app's Env plus two tenants: T-A1 at site A1 of tenant Acme, T-B1 at B1 of Beta,
    and people: a merchant of each, a support user of Acme, a support user of all."""

    def __init__(self, tmp: Path, **overrides: Any):
        super().__init__(tmp, **overrides)
        self.store = open_store(self.cfg)
        self.db: Database = database(self.store)
        self.device_tokens = {
            dev: place_device(
                self.db,
                self.cfg.tokens_file,
                dev,
                site=site,
                tenant=tenant,
                actor="test",
                address="local",
            )
            for dev, site, tenant in (("T-A1", "A1", "Acme"), ("T-B1", "B1", "Beta"))
        }
        for name, role, tl, every in (
            ("acme", Role.MERCHANT, ["Acme"], False),
            ("beta", Role.MERCHANT, ["Beta"], False),
            ("helpdesk", Role.SUPPORT, ["Acme"], False),
            ("allsupport", Role.SUPPORT, [], True),
        ):
            users.add_user(
                self.db,
                name,
                role,
                password=PASSWORD,
                tenants_=tl,
                all_tenants=every,
                actor="test",
                address="local",
            )

    def token_of(self, name: str) -> str:
        return tokens.create(self.db, name, "t", actor="test", address="local")[1]

    def upload_as(self, device: str, **kw: Any) -> str:
        b = make_bundle(device=device, **kw)
        h = upload_headers(b.bundle_id, b.data, self.device_tokens[device], device)
        r = requests.put(f"{self.url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=10)
        assert r.status_code == 201, r.text
        return b.bundle_id

    def audit(self, **params: str) -> list[dict[str, Any]]:
        r = self.http.get(f"{self.url}/v1/audit", params=params, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.text.splitlines()]

    def close(self) -> None:
        super().close()
        self.store.close()


@pytest.fixture
def fleet(tmp_path: Path, engine: dict[str, str]) -> Iterator[Fleet]:
    f = Fleet(
        tmp_path,
        login_failures_per_account=3,
        login_failures_per_address=5,
        trusted_proxies=["127.0.0.1/32"],
        **engine,
    )
    yield f
    f.close()


def _from(address: str) -> dict[str, str]:
    """As if through the trusted proxy on 127.0.0.1 for a client at address."""
    return {"X-Forwarded-For": address}


def _login_from(
    f: Fleet, name: str, password: str, address: str
) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    s.headers.update(_from(address))
    return s, login(s, f.url, name, password)


# --------------------------------------------------------------------------- passwords


def test_wrong_passwords_are_throttled_per_account_and_per_address(fleet: Fleet) -> None:
    """3 failures for one account lock it (from any address, even with the right password,
    429 + Retry-After); 5 failures from one address lock the address for every account;
    each failure is in the audit log with the address past the trusted proxy."""
    for _ in range(3):
        assert _login_from(fleet, "acme", "wrong password!", "203.0.113.1")[1].status_code == 401
    _, locked = _login_from(fleet, "acme", PASSWORD, "198.51.100.7")
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    _, other = _login_from(fleet, "beta", PASSWORD, "198.51.100.7")
    assert other.status_code == 303  # another account from another address is not affected
    for name in ("beta", "nobody-at-all"):
        assert _login_from(fleet, name, "wrong password!", "203.0.113.1")[1].status_code == 401
    _, by_address = _login_from(fleet, "helpdesk", PASSWORD, "203.0.113.1")
    assert by_address.status_code == 429  # 5 failures from .1, whatever the accounts
    s, elsewhere = _login_from(fleet, "helpdesk", PASSWORD, "198.51.100.8")
    assert elsewhere.status_code == 303
    assert s.get(f"{fleet.url}/v1/bundles", timeout=10).status_code == 200
    failed = fleet.audit(action="login.failed")
    assert [(e["actor"], e["address"]) for e in failed] == [
        ("acme", "203.0.113.1"),
        ("acme", "203.0.113.1"),
        ("acme", "203.0.113.1"),
        ("beta", "203.0.113.1"),
        ("nobody-at-all", "203.0.113.1"),
    ]
    ok = [e["actor"] for e in fleet.audit(action="login.ok")]
    assert ok == ["beta", "helpdesk"]


def test_wrong_bearer_tokens_are_throttled_per_address(fleet: Fleet) -> None:
    """A wrong token is a failure of its address: past the limit 429, a right token still works."""
    s = requests.Session()
    s.headers.update(_from("192.0.2.9"))
    for i in range(5):
        r = s.get(f"{fleet.url}/v1/bundles", headers=bearer(f"pat_guess{i}"), timeout=10)
        assert r.status_code == 401
    r = s.get(f"{fleet.url}/v1/bundles", headers=bearer("pat_guess"), timeout=10)
    assert r.status_code == 429 and "retry-after" in r.headers
    good = s.get(f"{fleet.url}/v1/bundles", headers=bearer(fleet.admin_token), timeout=10)
    assert good.status_code == 200
    assert len(fleet.audit(action="token.refused")) == 5


# --------------------------------------------------------------------------- sessions


def test_session_cookie_is_random_httponly_lax_and_secure_behind_tls(fleet: Fleet) -> None:
    """A new random cookie at every login (never the password), HttpOnly, SameSite=Lax;
    Secure when the trusted proxy says the client came over https."""
    cookies = []
    for proto in ("http", "https", "https"):
        headers = {"X-Forwarded-Proto": proto}
        form = requests.get(f"{fleet.url}/login", headers=headers, timeout=10)
        login_cookie = form.cookies.get("posagent_login") or re.search(
            r"posagent_login=([^;]+)", form.headers["set-cookie"]
        ).group(1)  # a Secure cookie: requests keeps it from plain http, a TLS proxy would not
        assert ("Secure" in form.headers["set-cookie"]) == (proto == "https")
        r = requests.post(
            f"{fleet.url}/login",
            data={"name": "acme", "password": PASSWORD, "csrf": form_csrf(form.text)},
            headers={**headers, "Cookie": f"posagent_login={login_cookie}"},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 303
        header = r.headers["set-cookie"]
        assert "posagent_session=" in header and "HttpOnly" in header
        assert "SameSite=lax" in header and PASSWORD not in header
        assert ("Secure" in header) == (proto == "https")
        cookies.append(re.search(r"posagent_session=([^;]+)", header).group(1))
    assert len(set(cookies)) == 3 and len(cookies[0]) >= 40


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    """Without trusted_proxies, X-Forwarded-Proto does not make the cookie Secure and
    X-Forwarded-For does not change the address the audit log records."""
    e = Env(tmp_path)
    try:
        s = requests.Session()
        s.headers.update({"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.50"})
        r = login(s, e.url, ADMIN, ADMIN_PASSWORD)
        assert r.status_code == 303 and "Secure" not in r.headers["set-cookie"]
        lines = e.http.get(f"{e.url}/v1/audit", params={"action": "login.ok"}, timeout=10)
        assert [json.loads(x)["address"] for x in lines.text.splitlines()] == ["127.0.0.1"]
    finally:
        e.close()


def test_expired_and_idle_sessions_are_refused(fleet: Fleet) -> None:
    """A session past its lifetime or idle longer than session_idle_s is refused (the page
    goes to the login, the API answers 401) and its row is gone."""
    for column, value in (("expires_at", time.time() - 1), ("last_seen", time.time() - 7200)):
        s, r = _login_from(fleet, "acme", PASSWORD, "192.0.2.1")
        assert r.status_code == 303
        assert s.get(f"{fleet.url}/v1/bundles", timeout=10).status_code == 200
        with fleet.db.transaction() as tx:
            assert tx.execute(f"UPDATE sessions SET {column} = ?", (value,)) == 1
        assert s.get(f"{fleet.url}/v1/bundles", timeout=10).status_code == 401
        page = s.get(f"{fleet.url}/", allow_redirects=False, timeout=10)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        with fleet.db.transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM sessions") == (0,)


def test_csrf_token_is_required_on_every_cookie_post(fleet: Fleet) -> None:
    """A POST with the session cookie and no or a wrong CSRF token is refused (403) and
    changes nothing; the right token works; Bearer requests need none."""
    s, _ = _login_from(fleet, ADMIN, ADMIN_PASSWORD, "192.0.2.2")
    admin_page = s.get(f"{fleet.url}/admin", timeout=10)
    assert admin_page.status_code == 200
    csrf = form_csrf(admin_page.text)
    form = {"name": "eve", "role": "support", "all_tenants": "1"}
    for extra in ({}, {"csrf": "forged"}):
        r = s.post(f"{fleet.url}/admin/users/add", data={**form, **extra}, timeout=10)
        assert r.status_code == 403 and "CSRF" in r.text
    hold = {"site": "A1", "reason": "dispute 42"}
    assert s.post(f"{fleet.url}/v1/holds", json=hold, timeout=10).status_code == 403
    assert s.post(f"{fleet.url}/logout", timeout=10).status_code == 403
    assert "eve" not in [u.name for u in users.list_users(fleet.db)]
    assert s.get(f"{fleet.url}/v1/bundles", timeout=10).status_code == 200  # still logged in
    r = s.post(f"{fleet.url}/admin/users/add", data={**form, "csrf": csrf}, timeout=10)
    assert r.status_code == 200 and "one-time password" in r.text
    secret = re.search(r"id='secret'>([^<]+)<", r.text)
    assert secret and len(secret.group(1)) >= 12
    r = s.post(f"{fleet.url}/v1/holds", json=hold, headers={"X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 201
    by_token = fleet.http.delete(f"{fleet.url}/v1/holds", params={"site": "A1"}, timeout=10)
    assert by_token.status_code == 200  # Bearer: no CSRF token needed
    # the login form has its own token: a post without the form's cookie is refused
    forged = requests.post(
        f"{fleet.url}/login",
        data={"name": "acme", "password": PASSWORD, "csrf": "x"},
        allow_redirects=False,
        timeout=10,
    )
    assert forged.status_code == 403 and "posagent_session" not in forged.headers.get(
        "set-cookie", ""
    )


def test_logout_ends_the_session_on_every_instance(tmp_path: Path, pg_url: str) -> None:
    """Two collectors on one PostgreSQL: the cookie from a login at A works at B; the
    logout at B ends it at A too (a row, not a signed value)."""
    from collector.storage.postgres import migrate  # lazy: the fleet extra

    migrate(pg_url)
    (tmp_path / "a").mkdir()
    a = Env(tmp_path / "a", index_url=pg_url)
    b = CollectorThread(replace(a.cfg, data_dir=str(tmp_path / "b-store"))).start()
    try:
        s = requests.Session()
        assert login(s, a.url, ADMIN, ADMIN_PASSWORD).status_code == 303
        cookie = s.cookies["posagent_session"]
        at_b = requests.Session()
        at_b.cookies.set("posagent_session", cookie)
        page = at_b.get(f"{b.url}/", timeout=10)
        assert page.status_code == 200 and "test-admin" in page.text
        r = at_b.post(f"{b.url}/logout", data={"csrf": form_csrf(page.text)}, timeout=10)
        assert r.status_code == 200 and r.url.endswith("/login")
        for url in (a.url, b.url):
            again = requests.get(
                f"{url}/v1/bundles", cookies={"posagent_session": cookie}, timeout=10
            )
            assert again.status_code == 401
        assert [e["actor"] for e in _audit(a, "logout")] == [ADMIN]
    finally:
        b.stop()
        a.close()


def _audit(e: Env, action: str) -> list[dict[str, Any]]:
    r = e.http.get(f"{e.url}/v1/audit", params={"action": action}, timeout=10)
    return [json.loads(x) for x in r.text.splitlines()]


# --------------------------------------------------------------------------- tenants


def test_a_merchant_never_reaches_another_tenants_bundle(fleet: Fleet) -> None:
    """Acme's merchant sees Acme's bundles only: the list, counts and search; every
    per-bundle endpoint and page of Beta's bundle answers 404 like a missing one (and the
    attempt is audited); support of Acme the same; support of all tenants sees both."""
    mine = fleet.upload_as("T-A1", fault="printer.paper_end")
    theirs = fleet.upload_as("T-B1", fault="pinpad.tamper", seed=2)
    acme = requests.Session()
    acme.headers.update(bearer(fleet.token_of("acme")))
    listed = acme.get(f"{fleet.url}/v1/bundles", timeout=10).json()
    assert [b["bundle_id"] for b in listed["bundles"]] == [mine]
    assert listed["total"] == 1 and listed["counts_by_fault"] == {"printer.paper_end": 1}
    for q in ({"device": "T-B1"}, {"site": "B1"}, {"fault": "pinpad.tamper"}):
        found = acme.get(f"{fleet.url}/v1/bundles", params=q, timeout=10).json()
        assert found["total"] == 0 and found["bundles"] == []
        assert "pinpad.tamper" not in found["counts_by_fault"]  # counts: their own faults only
    page = acme.get(f"{fleet.url}/", params={"fault": "pinpad.tamper"}, timeout=10).text
    assert theirs not in page and "T-B1" not in page
    missing = "00000000-0000-4000-8000-000000000000"
    for suffix in ("", "/download", "/screenshot.png", "/report.txt", "/diagnostics",
                   "/timeline.json", "/entries/report.txt"):  # fmt: skip
        denied = acme.get(f"{fleet.url}/v1/bundles/{theirs}{suffix}", timeout=10)
        absent = acme.get(f"{fleet.url}/v1/bundles/{missing}{suffix}", timeout=10)
        assert denied.status_code == absent.status_code == 404, suffix
        assert denied.json()["error"] == absent.json()["error"]
        assert acme.get(f"{fleet.url}/v1/bundles/{mine}{suffix}", timeout=10).status_code == 200
    assert acme.get(f"{fleet.url}/bundles/{theirs}", timeout=10).status_code == 404
    assert acme.get(f"{fleet.url}/bundles/{mine}", timeout=10).status_code == 200
    assert acme.get(f"{fleet.url}/admin", timeout=10).status_code == 403
    assert acme.get(f"{fleet.url}/v1/audit", timeout=10).status_code == 403
    assert acme.get(f"{fleet.url}/metrics", timeout=10).status_code == 403
    hold = {"bundle": mine, "reason": "mine"}
    assert acme.post(f"{fleet.url}/v1/holds", json=hold, timeout=10).status_code == 403
    denied_log = fleet.audit(action="bundle.denied")
    assert {e["actor"] for e in denied_log} == {"acme"} and len(denied_log) == 8
    assert {e["target"] for e in denied_log} == {theirs}
    helpdesk = requests.Session()
    helpdesk.headers.update(bearer(fleet.token_of("helpdesk")))
    assert helpdesk.get(f"{fleet.url}/v1/bundles", timeout=10).json()["total"] == 1
    assert helpdesk.get(f"{fleet.url}/v1/bundles/{theirs}", timeout=10).status_code == 404
    every = requests.Session()
    every.headers.update(bearer(fleet.token_of("allsupport")))
    assert every.get(f"{fleet.url}/v1/bundles", timeout=10).json()["total"] == 2
    assert every.get(f"{fleet.url}/metrics", timeout=10).status_code == 200


def test_a_personal_token_works_until_revoked_or_its_user_is_disabled(fleet: Fleet) -> None:
    """`token create` prints a token that works as Bearer; `token revoke` stops it at
    once; a disabled user's tokens and sessions stop too (the CLI, on the same store)."""
    conf = write_config(fleet.tmp / "cli", _collector_toml(fleet.cfg))

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            posagent_argv("collector", *args, "--config", str(conf)),
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
        )

    made = cli("token", "create", "beta", "--name", "nightly export")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pat_") and "shown once" in made.stderr
    fleet.upload_as("T-B1")
    r = requests.get(f"{fleet.url}/v1/bundles", headers=bearer(token), timeout=10)
    assert r.status_code == 200 and r.json()["total"] == 1
    listed = cli("token", "list", "beta", "--json")
    ids = [t["id"] for t in json.loads(listed.stdout) if t["name"] == "nightly export"]
    assert len(ids) == 1
    assert cli("token", "revoke", str(ids[0])).returncode == 0
    r = requests.get(f"{fleet.url}/v1/bundles", headers=bearer(token), timeout=10)
    assert r.status_code == 401
    again = cli("token", "revoke", str(ids[0]))
    assert again.returncode == 66 and again.stderr.count("\n") == 1
    second = fleet.token_of("beta")
    s, _ = _login_from(fleet, "beta", PASSWORD, "192.0.2.3")
    assert cli("user", "disable", "beta").returncode == 0
    assert (
        requests.get(f"{fleet.url}/v1/bundles", headers=bearer(second), timeout=10).status_code
        == 401
    )
    assert s.get(f"{fleet.url}/v1/bundles", timeout=10).status_code == 401
    assert _login_from(fleet, "beta", PASSWORD, "192.0.2.4")[1].status_code == 401
    assert cli("user", "enable", "beta").returncode == 0
    assert (
        requests.get(f"{fleet.url}/v1/bundles", headers=bearer(second), timeout=10).status_code
        == 200
    )
    actions = [e["action"] for e in fleet.audit() if e["target"] == "beta"]
    assert actions.count("token.create") == 2 and "token.revoke" in actions
    assert "user.disable" in actions and "user.enable" in actions
    cli_entry = next(e for e in fleet.audit(action="token.revoke"))
    assert cli_entry["actor"].startswith("cli:") and cli_entry["address"] == "local"


# --------------------------------------------------------------------------- audit


def test_the_audit_log_records_views_and_downloads_and_exports_json_lines(fleet: Fleet) -> None:
    """Page views, screenshot, download and manifest reads are entries (who, when, what,
    target, address); /v1/audit filters by since/until/limit; the log is append-only on
    the engine; the /audit page shows it to admins."""
    bid = fleet.upload_as("T-A1")
    s, _ = _login_from(fleet, "acme", PASSWORD, "192.0.2.77")
    t0 = time.time()
    assert s.get(f"{fleet.url}/bundles/{bid}", timeout=10).status_code == 200
    assert s.get(f"{fleet.url}/v1/bundles/{bid}/screenshot.png", timeout=10).status_code == 200
    assert s.get(f"{fleet.url}/v1/bundles/{bid}/download", timeout=10).status_code == 200
    assert s.get(f"{fleet.url}/v1/bundles/{bid}", timeout=10).status_code == 200
    reads = [e for e in fleet.audit(since=str(t0)) if e["action"].startswith("bundle.")]
    assert [e["action"] for e in reads] == [
        "bundle.view",
        "bundle.screenshot",
        "bundle.download",
        "bundle.manifest",
    ]
    for e in reads:
        assert e["actor"] == "acme" and e["target"] == bid and e["address"] == "192.0.2.77"
        assert e["at_epoch"] >= t0 - 1 and e["at"].endswith("Z")
        assert e["detail"]["via"] == "session"
    assert reads[1]["detail"]["entry"] == "screenshot.png"
    everything = fleet.audit()
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert len(fleet.audit(limit="2")) == 2
    assert fleet.audit(until=str(t0 - 3600)) == []
    assert fleet.http.get(f"{fleet.url}/v1/audit?since=yesterday", timeout=10).status_code == 400
    page = fleet.http.get(f"{fleet.url}/audit", params={"action": "bundle"}, timeout=10)
    assert page.status_code == 200 and "bundle.download" in page.text and "192.0.2.77" in page.text
    for sql in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log"):
        with pytest.raises(StorageError), fleet.db.transaction() as tx:
            tx.execute(sql)
    assert len(fleet.audit()) >= len(everything)


def test_holds_and_user_changes_are_audited(fleet: Fleet) -> None:
    """Hold placed and released, user added, disabled and given a new password on the admin
    page: each an entry naming the admin, with the change's detail."""
    hold = {"device": "T-A1", "reason": "chargeback 7"}
    assert fleet.http.post(f"{fleet.url}/v1/holds", json=hold, timeout=10).status_code == 201
    assert (
        fleet.http.delete(
            f"{fleet.url}/v1/holds", params={"device": "T-A1"}, timeout=10
        ).status_code
        == 200
    )
    s, _ = _login_from(fleet, ADMIN, ADMIN_PASSWORD, "192.0.2.5")
    csrf = form_csrf(s.get(f"{fleet.url}/admin", timeout=10).text)
    steps = [
        ("users/add", {"name": "carol", "role": "merchant", "tenants": "Beta"}),
        ("users/disable", {"name": "carol"}),
        ("users/password", {"name": "acme"}),
        ("sites/place", {"site": "B2", "tenant": "Beta"}),
        ("devices/add", {"device": "T-B2", "site": "B2", "tenant": "Beta"}),
    ]
    for action, form in steps:
        r = s.post(f"{fleet.url}/admin/{action}", data={**form, "csrf": csrf}, timeout=30)
        assert r.status_code == 200, (action, r.text[-300:])
    bad = s.post(f"{fleet.url}/admin/users/add", data={"name": "x", "role": "merchant",
                                                       "csrf": csrf}, timeout=10)  # fmt: skip
    assert bad.status_code == 400 and "merchant user needs --tenant" in bad.text
    got = [(e["action"], e["target"], e["actor"]) for e in fleet.audit() if e["actor"] == ADMIN]
    assert ("hold.place", "device:T-A1", ADMIN) in got
    assert ("hold.release", "device:T-A1", ADMIN) in got
    for action, target in (
        ("user.add", "carol"),
        ("user.disable", "carol"),
        ("user.passwd", "acme"),
        ("site.place", "B2"),
        ("device.add", "T-B2"),
    ):
        assert (action, target, ADMIN) in got
    devices = s.get(f"{fleet.url}/admin", timeout=10).text
    assert "data-device='T-B2'" in devices


# --------------------------------------------------------------------------- CLI


def _collector_toml(cfg: CollectorConfig) -> str:
    lines = [f'tokens_file = "{cfg.tokens_file}"', f'data_dir = "{cfg.data_dir}"']
    if cfg.index_url:
        lines.append(f'index_url = "{cfg.index_url}"')
    return "[collector]\n" + "\n".join(lines) + "\n"


def test_user_commands_and_the_one_time_password(tmp_path: Path) -> None:
    """`user add` prints a one-time password; its first login leads to /password and
    nothing else until changed; refusals are one line with their exit code."""
    cfg = CollectorConfig(data_dir=str(tmp_path / "c"), tokens_file=str(tmp_path / "tokens"))
    conf = write_config(tmp_path, _collector_toml(cfg))

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            posagent_argv("collector", *args, "--config", str(conf)),
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
        )

    first = cli("user", "add", "root-admin", "--role", "admin")
    assert first.returncode == 0, first.stderr
    one_time = first.stdout.strip()
    assert len(one_time) >= 12 and "shown once" in first.stderr
    for args, stdin, code, text in (
        (("user", "add", "weak", "--role", "admin", "--password-stdin"), "short\n", 64, "12"),
        (("user", "add", "root-admin", "--role", "admin"), None, 73, "exists"),
        (("user", "add", "m", "--role", "merchant"), None, 64, "--tenant"),
        (("user", "add", "m", "--role", "merchant", "--all-tenants"), None, 64, "--tenant"),
        (("user", "add", "a", "--role", "admin", "--tenant", "X"), None, 64, "admin"),
        (("user", "add", "s", "--role", "support"), None, 64, "--all-tenants"),
        (("user", "disable", "nobody"), None, 66, "no user"),
        (("token", "create", "nobody"), None, 66, "no user"),
        (("add-device", "T-9", "--tenant", "Acme"), None, 64, "--site"),
    ):
        r = cli(*args, stdin=stdin)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert text in r.stderr and r.stderr.count("\n") == 1 and r.stdout == "", args
    ok = cli("user", "add", "sam", "--role", "support", "--tenant", "Acme", "--tenant",
             "Beta", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert ok.returncode == 0 and ok.stdout == ""
    listed = {u["name"]: u for u in json.loads(cli("user", "list", "--json").stdout)}
    assert listed["sam"]["tenants"] == ["Acme", "Beta"] and listed["sam"]["role"] == "support"
    assert listed["root-admin"]["must_change_password"] is True
    assert cli("add-device", "T-9", "--site", "S9", "--tenant", "Acme").returncode == 0
    taken = cli("add-device", "T-10", "--site", "S9", "--tenant", "Beta")
    assert taken.returncode == 73 and "belongs to tenant 'Acme'" in taken.stderr
    with CollectorThread(cfg) as server:
        s = requests.Session()
        r = login(s, server.url, "root-admin", one_time)
        assert r.status_code == 303 and r.headers["location"] == "/password"
        assert (
            s.get(f"{server.url}/", allow_redirects=False, timeout=10).headers["location"]
            == "/password"
        )
        assert s.get(f"{server.url}/v1/bundles", timeout=10).status_code == 403
        form = s.get(f"{server.url}/password", timeout=10)
        new = "a much better password"
        r = s.post(
            f"{server.url}/password",
            data={"current": one_time, "new": new, "repeat": new, "csrf": form_csrf(form.text)},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 303, r.text
        assert s.get(f"{server.url}/v1/bundles", timeout=10).status_code == 200
        assert login(requests.Session(), server.url, "root-admin", one_time).status_code == 401
        assert login(requests.Session(), server.url, "root-admin", new).status_code == 303


def test_the_old_operator_token_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """operator_token_file set: `collector serve` exits 78 naming `user add` and `token create`."""
    conf = write_config(tmp_path, f'[collector]\noperator_token_file = "{tmp_path / "op"}"\n')
    r = subprocess.run(
        posagent_argv("collector", "serve", "--config", str(conf)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78
    assert (
        "operator_token_file" in r.stderr and "user add" in r.stderr and "token create" in r.stderr
    )


def test_dev_is_still_the_test_app_device(fleet: Fleet) -> None:
    """The Env's own device (no site) uploads as before; only admins and all-tenant
    support see bundles under no site."""
    b = make_bundle(device=DEV)
    assert fleet.upload(b).status_code == 201
    acme = requests.Session()
    acme.headers.update(bearer(fleet.token_of("acme")))
    assert acme.get(f"{fleet.url}/v1/bundles", timeout=10).json()["total"] == 0
    assert fleet.http.get(f"{fleet.url}/v1/bundles", timeout=10).json()["total"] == 1


def test_login_goes_back_only_to_a_local_path() -> None:
    """next= after a login is a path on this collector, never another host."""
    for bad in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/\t/evil", ""):
        assert safe_next(bad) == "/", bad
    assert safe_next("/bundles/x?fault=a") == "/bundles/x?fault=a"
