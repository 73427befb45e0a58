"""One email attempt: the outbox row's event as a plain-text message, sent through the
configured SMTP server to one recipient.

The subject names the event, the fault, the site and the device:
``[posagent] Opened: printer.paper_end at Store 12 (T-0001)``; the text carries every
field of the incident and its link. ``Message-ID`` is made from the delivery id
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

from collector.notify.channels import Mail
from collector.notify.outbox import Outcome
from collector.notify.webhook import one_line

VERBS = {
    "incident.opened": "Opened",
    "incident.reopened": "Reopened",
    "incident.escalated": "Escalated",
    "incident.resolved": "Resolved",
}


def subject(event: str, incident: dict[str, Any]) -> str:
    """The subject line (one line, no control characters, at most 200 characters)."""
    site = str(incident.get("site") or "no site")
    text = (
        f"[posagent] {VERBS.get(event, event)}: {incident.get('fault_key', '?')} at {site} "
        f"({incident.get('device', '?')})"
    )
    return one_line(text, 200)


def compose(mail: Mail, to: str, delivery_id: str, event: str, body: str) -> EmailMessage:
    """The message for one recipient from the outbox body (the JSON envelope)."""
    doc = json.loads(body)
    inc: dict[str, Any] = doc.get("incident", {})
    msg = EmailMessage()
    msg["From"] = mail.mail_from
    msg["To"] = to
    msg["Subject"] = subject(event, inc)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{delivery_id}@posagent>"
    msg["X-Posagent-Delivery"] = delivery_id
    msg["X-Posagent-Event"] = event
    lines = [
        f"Incident {inc.get('id')} {VERBS.get(event, event).lower()}: "
        f"{inc.get('fault_key')} ({inc.get('severity')})",
        "",
        f"Site:     {inc.get('site') or '-'}",
        f"Device:   {inc.get('device')}",
        f"Status:   {inc.get('status')}",
        f"Opened:   {inc.get('opened_at')}",
        f"Cleared:  {inc.get('cleared_at') or '-'}",
        f"Repeats:  {inc.get('repeats')}",
        f"Summary:  {inc.get('summary')}",
        "",
        str(inc.get("url") or ""),
        "",
        f"Event {event} at {doc.get('at')}, delivery {delivery_id}",
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
