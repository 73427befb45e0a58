"""The people pages: admin (users, tokens, devices, sites), audit log, password, settings
(the pages' language), log out. Texts for people are marked `_` (`collector.i18n`).

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
from collector.i18n import N_
from collector.i18n import gettext as _
from collector.pages import ROLE_WORDS, csrf_field, heads, layout, shown_time

# The settings page's choices: '' follows the browser; each language named in itself.
LANGUAGE_CHOICES = (("", N_("as the browser asks")), ("en", "English"), ("zh-Hans", "简体中文"))


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
        head, _sep, secret = notice.partition("\n")
        out += f"<div class='card' id='notice'><p>{esc(head)}</p>"
        if secret:
            out += (
                f"<p><span class='secret' id='secret'>{esc(secret)}</span></p>"
                "<p class='muted'>" + esc(_("Shown once: copy it now.")) + "</p>"
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
        scope = _("all tenants") if u.all_tenants else ", ".join(u.tenants) or "-"
        if u.role.value == "admin":
            scope = _("everything")
        toggle = "enable" if u.disabled else "disable"
        toggle_words = _("enable") if u.disabled else _("disable")
        state = _("disabled") if u.disabled else _("active")
        if u.must_change:
            state += " " + _("(must change password)")
        name_field = _hidden("name", u.name)
        rows.append(
            f"<tr data-user='{esc(u.name)}'><td>{esc(u.name)}</td>"
            f"<td>{esc(_(ROLE_WORDS[u.role.value]))}</td>"
            f"<td>{esc(scope)}</td><td>{esc(state)}</td>"
            f"<td>{_form(f'/admin/users/{toggle}', name_field, toggle_words)}</td>"
            "<td>" + _form("/admin/users/password", name_field, _("new password")) + "</td></tr>"
        )
    role_opts = "".join(
        f"<option value='{r}'>{esc(_(ROLE_WORDS[r]))}</option>"
        for r in ("support", "merchant", "admin")
    )
    add_user = _form(
        "/admin/users/add",
        _input("name", _("Name"))
        + "<label>"
        + esc(_("Role"))
        + f"<select name='role' id='f-role'>{role_opts}</select></label>"
        + _input("tenants", _("Tenants (comma-separated)"))
        + "<label>"
        + esc(_("All tenants"))
        + "<input type='checkbox' name='all_tenants' value='1' "
        "id='f-all_tenants'></label>",
        _("Add user"),
        "add-user",
    )
    token_rows = "".join(
        f"<tr data-token='{t.id}'><td>{t.id}</td><td>{esc(t.user)}</td><td>{esc(t.name)}</td>"
        f"<td>{esc(shown_time(t.created_at))}</td>"
        f"<td>{esc(shown_time(t.last_used_at) if t.last_used_at else '-')}</td>"
        "<td>" + _form("/admin/tokens/revoke", _hidden("id", str(t.id)), _("revoke")) + "</td></tr>"
        for t in tokens
    )
    device_rows = "".join(
        f"<tr data-device='{esc(d)}'><td>{esc(d)}</td><td>{esc(site or '-')}</td>"
        f"<td>{esc(site_tenants.get(site, '-'))}</td></tr>"
        for d, site in devices
    )
    add_device = _form(
        "/admin/devices/add",
        _input("device", _("Device id"))
        + _input("site", _("Site"))
        + _input("tenant", _("Tenant"))
        + "<label>"
        + esc(_("New token for an existing device"))
        + "<input type='checkbox' name='rotate' value='1'></label>",
        _("Register device"),
        "add-device",
    )
    site_rows = "".join(
        f"<tr><td>{esc(s)}</td><td>{esc(t)}</td></tr>" for s, t in sorted(site_tenants.items())
    )
    place = _form(
        "/admin/sites/place",
        _input("site", _("Site")) + _input("tenant", _("Tenant")),
        _("Place site"),
    )
    command = "<code>posagent collector token create USER --name NAME</code>"
    body = (
        "<h1>"
        + esc(_("Admin"))
        + "</h1>"
        + _notice(notice, error)
        + "<h2>"
        + esc(_("Users"))
        + "</h2><table class='list' id='users'><thead><tr>"
        + heads(N_("Name"), N_("Role"), N_("Sees"), N_("State"), "", "")
        + "</tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table><div class='card'>{add_user}</div>"
        + "<h2>"
        + esc(_("API tokens"))
        + "</h2><table class='list' id='tokens'><thead><tr>"
        + heads(N_("Id"), N_("User"), N_("Name"), N_("Created"), N_("Last used"), "")
        + "</tr></thead><tbody>"
        + (token_rows or "<tr><td colspan='6' class='muted'>" + esc(_("None.")) + "</td></tr>")
        + "</tbody></table><p class='muted'>"
        + esc(_("Create one with {command}.")).format(command=command)
        + "</p>"
        + "<h2>"
        + esc(_("Devices"))
        + "</h2><table class='list' id='devices'><thead><tr>"
        + heads(N_("Device"), N_("Site"), N_("Tenant"))
        + "</tr></thead><tbody>"
        + (
            device_rows
            or "<tr><td colspan='3' class='muted'>" + esc(_("None registered.")) + "</td></tr>"
        )
        + f"</tbody></table><div class='card'>{add_device}</div>"
        + "<h2>"
        + esc(_("Sites"))
        + "</h2><table class='list' id='sites'><thead><tr>"
        + heads(N_("Site"), N_("Tenant"))
        + "</tr></thead><tbody>"
        + (
            site_rows
            or "<tr><td colspan='2' class='muted'>" + esc(_("None placed.")) + "</td></tr>"
        )
        + f"</tbody></table><div class='card'>{place}</div>"
    )
    return layout(_("posagent collector: admin"), body, operator_login=True)


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
        + _input("actor", _("Who"), params.get("actor", ""))
        + _input("action", _("Action"), params.get("action", ""))
        + _input("since", _("Since (UTC)"), params.get("since", ""))
        + _input("until", _("Until (UTC)"), params.get("until", ""))
        + "<button type='submit'>"
        + esc(_("Filter"))
        + "</button></form>"
    )
    err = f"<p class='error'>{esc(error)}</p>" if error else ""
    export = esc(_("Export (JSON lines)"))
    body = (
        "<h1>" + esc(_("Audit log")) + "</h1>"
        f"<div class='card'>{form}{err}<p><a href='/v1/audit'>{export}</a></p></div>"
        "<table class='list' id='audit'><thead><tr>"
        + heads(N_("When"), N_("Who"), N_("Action"), N_("Target"), N_("From"), N_("Detail"))
        + "</tr></thead><tbody>"
        + (rows or "<tr><td colspan='6' class='muted'>" + esc(_("No entries.")) + "</td></tr>")
        + "</tbody></table>"
    )
    return layout(_("posagent collector: audit"), body, operator_login=True)


def render_password(error: str = "") -> str:
    """Change one's own password (also the first page after a one-time password)."""
    err = f"<p class='error' id='password-error'>{esc(error)}</p>" if error else ""
    change = _("Change password")
    body = (
        f"<h1>{esc(change)}</h1><div class='card'>"
        + _form(
            "/password",
            _input("current", _("Current password"), kind="password")
            + _input("new", _("New password (12 characters or more)"), kind="password")
            + _input("repeat", _("New password again"), kind="password"),
            change,
            "password-form",
        )
        + f"{err}</div>"
    )
    return layout(_("posagent collector: password"), body, operator_login=True)


def render_settings(language: str, error: str = "") -> str:
    """The user's own settings: the pages' language ('' follows the browser)."""
    err = f"<p class='error' id='settings-error'>{esc(error)}</p>" if error else ""
    opts = "".join(
        f"<option value='{esc(value)}'{' selected' if value == language else ''}>"
        f"{esc(_(words) if not value else words)}</option>"
        for value, words in LANGUAGE_CHOICES
    )
    body = (
        "<h1>"
        + esc(_("Settings"))
        + "</h1><div class='card'>"
        + _form(
            "/settings",
            "<label>"
            + esc(_("Language of the pages"))
            + f"<select name='language' id='f-language'>{opts}</select></label>",
            _("Save"),
            "settings-form",
        )
        + "<p class='muted'>"
        + esc(_("Your choice is kept with your account, on every device."))
        + "</p>"
        + f"{err}</div>"
    )
    return layout(_("posagent collector: settings"), body, operator_login=True)


def render_logout() -> str:
    """A log-out button (GET /logout: logging out is a POST with the CSRF token)."""
    log_out = _("Log out")
    body = f"<h1>{esc(log_out)}</h1><div class='card'>" + _form("/logout", "", log_out) + "</div>"
    return layout(_("posagent collector: log out"), body, operator_login=True)
