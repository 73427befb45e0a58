"""One email attempt: the outbox row's event as a plain-text message, sent through the
configured SMTP server to one recipient.

The subject names the event, the fault, the site and the device:
``[posagent] Opened: printer.paper_end at Store 12 (T-0001)``; the text carries every
field of the incident and its link. Both in the channel's language (`[collector.email]
language`, English by default; Simplified Chinese: ``[posagent] 新事件：Store 12（T-0001）的
printer.paper_end``); fault keys, ids, times and the link as they are. ``Message-ID`` is made from the delivery id
(``<delivery-id@posagent>``), the same on every retry, so a mail system or a reader can
drop a copy sent again. With ``starttls`` the session is upgraded before any login and
the server's certificate is checked (against ``ca_file`` when set, else the system's
trust store); a server that does not offer STARTTLS is then a failed attempt.

The server taking the message (250 after DATA) is success. A refused connection, a
timeout, a 4xx or 5xx reply (its code recorded) is a failed attempt, retried by the worker.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from collector.i18n import DEFAULT_LANGUAGE, N_, translator
from collector.notify.channels import Mail
from collector.notify.outbox import Outcome
from collector.notify.webhook import one_line
from collector.pages import WORDS

# per event: the subject and the message's first line (whole phrases: a translation may
# order the words its own way)
SUBJECTS = {
    "incident.opened": N_("Opened: {fault} at {site} ({device})"),
    "incident.reopened": N_("Reopened: {fault} at {site} ({device})"),
    "incident.escalated": N_("Escalated: {fault} at {site} ({device})"),
    "incident.resolved": N_("Resolved: {fault} at {site} ({device})"),
}
LEADS = {
    "incident.opened": N_("Incident {id} opened: {fault} ({severity})"),
    "incident.reopened": N_("Incident {id} reopened: {fault} ({severity})"),
    "incident.escalated": N_("Incident {id} escalated: {fault} ({severity})"),
    "incident.resolved": N_("Incident {id} resolved: {fault} ({severity})"),
}
OTHER_SUBJECT = N_("{event}: {fault} at {site} ({device})")
OTHER_LEAD = N_("Incident {id}, {event}: {fault} ({severity})")


def subject(event: str, incident: dict[str, Any], language: str = DEFAULT_LANGUAGE) -> str:
    """The subject line in the language's words (one line, no control characters, at most
    200 characters)."""
    _ = translator(language).gettext
    text = "[posagent] " + _(SUBJECTS.get(event, OTHER_SUBJECT)).format(
        event=event,
        fault=incident.get("fault_key", "?"),
        site=incident.get("site") or _("no site"),
        device=incident.get("device", "?"),
    )
    return one_line(text, 200)


def compose(mail: Mail, to: str, delivery_id: str, event: str, body: str) -> EmailMessage:
    """The message for one recipient from the outbox body (the JSON envelope), in the
    channel's language (`Mail.language`): the labels and words; values as they are."""
    _ = translator(mail.language).gettext
    doc = json.loads(body)
    inc: dict[str, Any] = doc.get("incident", {})
    msg = EmailMessage()
    msg["From"] = mail.mail_from
    msg["To"] = to
    msg["Subject"] = subject(event, inc, mail.language)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{delivery_id}@posagent>"
    msg["X-Posagent-Delivery"] = delivery_id
    msg["X-Posagent-Event"] = event
    fields = [
        (N_("Site"), inc.get("site") or "-"),
        (N_("Device"), inc.get("device")),
        (N_("Status"), _(WORDS.get(str(inc.get("status")), str(inc.get("status"))))),
        (N_("Opened"), inc.get("opened_at")),
        (N_("Cleared"), inc.get("cleared_at") or "-"),
        (N_("Repeats"), inc.get("repeats")),
        (N_("Summary"), inc.get("summary")),
    ]
    lines = [
        _(LEADS.get(event, OTHER_LEAD)).format(
            id=inc.get("id"),
            event=event,
            fault=inc.get("fault_key"),
            severity=_(str(inc.get("severity"))),
        ),
        "",
        *(_("{label}: {value}").format(label=_(label), value=value) for label, value in fields),
        "",
        str(inc.get("url") or ""),
        "",
        _("Event {event} at {at}, delivery {delivery}").format(
            event=event, at=doc.get("at"), delivery=delivery_id
        ),
    ]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send(mail: Mail, to: str, delivery_id: str, event: str, body: str) -> Outcome:
    """One message to one recipient through the SMTP server."""
    t0 = time.perf_counter()

    def took() -> int:
        return int((time.perf_counter() - t0) * 1000)

    try:
        msg = compose(mail, to, delivery_id, event, body)
        with smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout_s) as smtp:
            smtp.ehlo()
            if mail.starttls:
                ctx = ssl.create_default_context(cafile=mail.ca_file or None)
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if mail.username:
                smtp.login(mail.username, mail.password)
            smtp.send_message(msg, from_addr=mail.mail_from, to_addrs=[to])
        return Outcome(True, 250, "", took())
    except smtplib.SMTPRecipientsRefused as e:
        code, reply = next(iter(e.recipients.values()), (None, b""))
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return Outcome(False, code, one_line(f"recipient refused: {code} {text}"), took())
    except smtplib.SMTPResponseException as e:
        text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else ""
        return Outcome(False, e.smtp_code, one_line(f"SMTP {e.smtp_code} {text}"), took())
    except (smtplib.SMTPException, OSError, ValueError) as e:
        return Outcome(False, None, one_line(f"{type(e).__name__}: {e}"), took())
