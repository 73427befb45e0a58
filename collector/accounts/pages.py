"""The people pages: admin (users, tokens, devices, sites), audit log, password, log out.

Server-rendered like `collector.pages` (every value escaped, no scripts); every POST
form carries the session's CSRF token (`collector.pages.csrf_field`). A one-time secret
(a password or token an admin just made) is shown once, in the answer to the form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agent.bundle.style import esc
from collector.accounts.tokens import TokenInfo
from collector.accounts.users import User
from collector.audit import Entry
from collector.pages import csrf_field, layout, shown_time


def json_line(obj: dict[str, Any]) -> str:
    """One line of JSON lines."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _form(action: str, fields: str, button: str, form_id: str = "") -> str:
    ident = f" id='{esc(form_id)}'" if form_id else ""
    return (
        f"<form method='post' action='{esc(action)}' class='filters'{ident}>"
        f"{csrf_field()}{fields}<button type='submit'>{esc(button)}</button></form>"
    )


def _input(name: str, label: str, value: str = "", kind: str = "text") -> str:
    return (
        f"<label>{esc(label)}<input type='{kind}' name='{name}' id='f-{name}' "
        f"value='{esc(value)}'></label>"
    )


def _hidden(name: str, value: str) -> str:
    return f"<input type='hidden' name='{name}' value='{esc(value)}'>"


def _notice(notice: str, error: str) -> str:
    out = ""
    if notice:
        head, _, secret = notice.partition("\n")
        out += f"<div class='card' id='notice'><p>{esc(head)}</p>"
        if secret:
            out += (
                f"<p><span class='secret' id='secret'>{esc(secret)}</span></p>"
                "<p class='muted'>Shown once: copy it now.</p>"
            )
        out += "</div>"
    if error:
        out += f"<p class='error' id='admin-error'>{esc(error)}</p>"
    return out


def render_admin(
    *,
    users: Sequence[User],
    tokens: Sequence[TokenInfo],
    devices: Sequence[tuple[str, str]],
    site_tenants: dict[str, str],
    notice: str = "",
    error: str = "",
) -> str:
    """Users (add, disable/enable, new password), tokens (revoke), devices (add), sites."""
    rows = []
    for u in users:
        scope = "all tenants" if u.all_tenants else ", ".join(u.tenants) or "-"
        if u.role.value == "admin":
            scope = "everything"
        toggle = "enable" if u.disabled else "disable"
        name_field = _hidden("name", u.name)
        rows.append(
            f"<tr data-user='{esc(u.name)}'><td>{esc(u.name)}</td><td>{esc(u.role.value)}</td>"
            f"<td>{esc(scope)}</td><td>{'disabled' if u.disabled else 'active'}"
            f"{' (must change password)' if u.must_change else ''}</td>"
            f"<td>{_form(f'/admin/users/{toggle}', name_field, toggle)}</td>"
            f"<td>{_form('/admin/users/password', name_field, 'new password')}</td></tr>"
        )
    role_opts = "".join(
        f"<option value='{r}'>{r}</option>" for r in ("support", "merchant", "admin")
    )
    add_user = _form(
        "/admin/users/add",
        _input("name", "Name")
        + f"<label>Role<select name='role' id='f-role'>{role_opts}</select></label>"
        + _input("tenants", "Tenants (comma-separated)")
        + "<label>All tenants<input type='checkbox' name='all_tenants' value='1' "
        "id='f-all_tenants'></label>",
        "Add user",
        "add-user",
    )
    token_rows = "".join(
        f"<tr data-token='{t.id}'><td>{t.id}</td><td>{esc(t.user)}</td><td>{esc(t.name)}</td>"
        f"<td>{esc(shown_time(t.created_at))}</td>"
        f"<td>{esc(shown_time(t.last_used_at) if t.last_used_at else '-')}</td>"
        f"<td>{_form('/admin/tokens/revoke', _hidden('id', str(t.id)), 'revoke')}</td></tr>"
        for t in tokens
    )
    device_rows = "".join(
        f"<tr data-device='{esc(d)}'><td>{esc(d)}</td><td>{esc(site or '-')}</td>"
        f"<td>{esc(site_tenants.get(site, '-'))}</td></tr>"
        for d, site in devices
    )
    add_device = _form(
        "/admin/devices/add",
        _input("device", "Device id")
        + _input("site", "Site")
        + _input("tenant", "Tenant")
        + "<label>New token for an existing device<input type='checkbox' name='rotate' "
        "value='1'></label>",
        "Register device",
        "add-device",
    )
    site_rows = "".join(
        f"<tr><td>{esc(s)}</td><td>{esc(t)}</td></tr>" for s, t in sorted(site_tenants.items())
    )
    place = _form(
        "/admin/sites/place", _input("site", "Site") + _input("tenant", "Tenant"), "Place site"
    )
    body = (
        "<h1>Admin</h1>"
        + _notice(notice, error)
        + "<h2>Users</h2><table class='list' id='users'><thead><tr><th>Name</th><th>Role</th>"
        "<th>Sees</th><th>State</th><th></th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table><div class='card'>{add_user}</div>"
        + "<h2>API tokens</h2><table class='list' id='tokens'><thead><tr><th>Id</th><th>User</th>"
        "<th>Name</th><th>Created</th><th>Last used</th><th></th></tr></thead><tbody>"
        + (token_rows or "<tr><td colspan='6' class='muted'>None.</td></tr>")
        + "</tbody></table><p class='muted'>Create one with "
        "<code>posagent collector token create USER --name NAME</code>.</p>"
        + "<h2>Devices</h2><table class='list' id='devices'><thead><tr><th>Device</th>"
        "<th>Site</th><th>Tenant</th></tr></thead><tbody>"
        + (device_rows or "<tr><td colspan='3' class='muted'>None registered.</td></tr>")
        + f"</tbody></table><div class='card'>{add_device}</div>"
        + "<h2>Sites</h2><table class='list' id='sites'><thead><tr><th>Site</th><th>Tenant</th>"
        "</tr></thead><tbody>"
        + (site_rows or "<tr><td colspan='2' class='muted'>None placed.</td></tr>")
        + f"</tbody></table><div class='card'>{place}</div>"
    )
    return layout("posagent collector: admin", body, operator_login=True)


def render_audit(entries: Sequence[Entry], params: dict[str, str], error: str = "") -> str:
    """The audit log, newest first, with filters and the JSON-lines export link."""
    rows = "".join(
        f"<tr><td class='mono'>{esc(shown_time(e.at))}</td><td>{esc(e.actor)}</td>"
        f"<td class='mono'>{esc(e.action)}</td><td class='mono'>{esc(e.target)}</td>"
        f"<td>{esc(e.address)}</td><td class='mono'>"
        f"{esc(json.dumps(e.detail, ensure_ascii=False) if e.detail else '')}</td></tr>"
        for e in entries
    )
    form = (
        "<form class='filters' method='get' action='/audit'>"
        + _input("actor", "Who", params.get("actor", ""))
        + _input("action", "Action", params.get("action", ""))
        + _input("since", "Since (UTC)", params.get("since", ""))
        + _input("until", "Until (UTC)", params.get("until", ""))
        + "<button type='submit'>Filter</button></form>"
    )
    err = f"<p class='error'>{esc(error)}</p>" if error else ""
    body = (
        "<h1>Audit log</h1>"
        f"<div class='card'>{form}{err}<p><a href='/v1/audit'>Export (JSON lines)</a></p></div>"
        "<table class='list' id='audit'><thead><tr><th>When</th><th>Who</th><th>Action</th>"
        "<th>Target</th><th>From</th><th>Detail</th></tr></thead><tbody>"
        + (rows or "<tr><td colspan='6' class='muted'>No entries.</td></tr>")
        + "</tbody></table>"
    )
    return layout("posagent collector: audit", body, operator_login=True)


def render_password(error: str = "") -> str:
    """Change one's own password (also the first page after a one-time password)."""
    err = f"<p class='error' id='password-error'>{esc(error)}</p>" if error else ""
    body = (
        "<h1>Change password</h1><div class='card'>"
        + _form(
            "/password",
            _input("current", "Current password", kind="password")
            + _input("new", "New password (12 characters or more)", kind="password")
            + _input("repeat", "New password again", kind="password"),
            "Change password",
            "password-form",
        )
        + f"{err}</div>"
    )
    return layout("posagent collector: password", body, operator_login=True)


def render_logout() -> str:
    """A log-out button (GET /logout: logging out is a POST with the CSRF token)."""
    body = "<h1>Log out</h1><div class='card'>" + _form("/logout", "", "Log out") + "</div>"
    return layout("posagent collector: log out", body, operator_login=True)
