"""Test doubles for the collector's tests and benchmark: v1 upload headers for a body, and
an admin with a personal API token (the read side is closed: every reader logs in).

Bundles come from tests/bundle/kit.py.
"""

from __future__ import annotations

import re

import requests

from agent.upload import protocol
from agent.upload.protocol import content_digest
from collector.access import Role
from collector.accounts import tokens, users
from collector.accounts.errors import AccountExists
from collector.config import CollectorConfig
from collector.storage import open_store
from collector.storage.sql import database

ADMIN = "test-admin"
ADMIN_PASSWORD = "test-admin-password-1"


def upload_headers(bundle_id: str, data: bytes, token: str, device: str) -> dict[str, str]:
    """Every header of a v1 upload of `data` (the protocol module's, with the body's digest)."""
    return protocol.upload_headers(bundle_id, content_digest(data), device, token)


def admin_token(cfg: CollectorConfig, name: str = ADMIN) -> str:
    """A new API token of the admin `name` (made with ADMIN_PASSWORD on first use), written
    straight into cfg's store (a PostgreSQL index must be migrated already)."""
    store = open_store(cfg)
    try:
        db = database(store)
        try:
            users.add_user(
                db, name, Role.ADMIN, password=ADMIN_PASSWORD, actor="test", address="local"
            )
        except AccountExists:
            pass
        return tokens.create(db, name, "tests", actor="test", address="local")[1]
    finally:
        store.close()


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a personal API token."""
    return {"Authorization": f"Bearer {token}"}


def form_csrf(html: str) -> str:
    """The hidden csrf field of the first form of a page."""
    m = re.search(r"name='csrf' value='([^']*)'", html)
    assert m is not None, "no csrf field on the page"
    return m.group(1)


def login(
    http: requests.Session, url: str, name: str, password: str, next_url: str = "/"
) -> requests.Response:
    """The login form as a browser sends it (GET for its token and cookie, then POST);
    the answer is not followed (303 on success)."""
    page = http.get(f"{url}/login", timeout=10)
    return http.post(
        f"{url}/login",
        data={"name": name, "password": password, "next": next_url, "csrf": form_csrf(page.text)},
        allow_redirects=False,
        timeout=30,
    )
