"""What to do about each fault: a short remedy for the merchant and one for support.

`REMEDIES` is the one table, keyed by fault key: every key of the agent's catalog
(agent/faults/catalog.py, docs/ARCHITECTURE.md §8), including the generated
`<area>.flapping` keys and manual.report, and the keys raised on the fleet side
(`FLEET_KEYS`); tests/bundle/test_remedies.py keeps them in step. A key the table
does not know (from a newer agent, say) gets `GENERIC` from `remedy(key)`, which never
fails.

The table lives in agent.bundle, not agent.faults, because the collector shows it too
and may import only the agent's core, bundle format and upload protocol (the
import-linter contract in pyproject): report.txt (agent.capture), `posagent bundle
show|html` and the collector's pages all read it from here.

The texts are English and are the message ids of the gettext catalogs
(collector/locale/*/LC_MESSAGES/posagent.po): `N_` marks them for `pybabel extract`
(`make i18n`); the collector translates them and applies a fleet's own wording
(collector.remedies.remedy_for). The agent itself writes English.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass


def N_(text: str) -> str:
    """Mark a text for the translation catalogs (`pybabel extract -k N_`); returns it as is."""
    return text


@dataclass(frozen=True)
class Remedy:
    """What to do: `merchant` for the person at the till, `support` for the support team."""

    merchant: str
    support: str


# Keys raised on the fleet side, not by an agent's catalog (an incident from missed
# check-ins): each has a row in REMEDIES too.
FLEET_KEYS: frozenset[str] = frozenset({"device.silent"})

GENERIC = Remedy(
    N_("Call support and tell them the terminal's name and when the problem happened."),
    N_(
        "No remedy is recorded for this fault: read the report, the timeline and the "
        "diagnostics in the bundle."
    ),
)

# One line of a cleared fault's remedy: the fault went away by itself.
CLEARED_NOTE = N_("This fault has cleared; if it comes back:")

REMEDIES: dict[str, Remedy] = {
    # power ----------------------------------------------------------------------------
    "power.ac_lost": Remedy(
        N_(
            "Check that the power adapter is plugged in at both ends and that the socket "
            "has power; the terminal is running on its battery."
        ),
        N_(
            "If the adapter and the socket are fine, swap the adapter or its cable; repeated "
            "losses at one site point to the mains supply."
        ),
    ),
    "power.battery_low": Remedy(
        N_("Put the terminal on its charger or base soon."),
        N_(
            "If it is low while plugged in, see power.not_charging; a battery that drains "
            "within hours needs replacing."
        ),
    ),
    "power.battery_critical": Remedy(
        N_("Put the terminal on its charger now: it will switch off within minutes."),
        N_(
            "If it is critical while on the charger, the adapter, the base contacts or the "
            "battery has failed: arrange a swap."
        ),
    ),
    "power.not_charging": Remedy(
        N_(
            "Reseat the terminal on its base or reconnect the charger; if the battery still "
            "does not charge, call support."
        ),
        N_(
            "Check the adapter's rating and the base contacts; a hot or worn-out battery may "
            "refuse to charge: replace it."
        ),
    ),
    "power.battery_health": Remedy(
        N_("Keep the terminal on its charger and call support: the battery needs replacing."),
        N_(
            "The battery reports a failed health state: schedule a battery replacement; a "
            "swollen battery must not stay in service."
        ),
    ),
    "power.battery_hot": Remedy(
        N_(
            "Move the terminal out of the sun and away from heat and let it cool; unplug it "
            "if it is very hot."
        ),
        N_(
            "If it runs hot in a normal room, the battery or the charger is failing: replace "
            "the battery; critical heat is a safety risk."
        ),
    ),
    "power.unclean_shutdown": Remedy(
        N_(
            "The terminal lost power or restarted unexpectedly: check that it works and that "
            "its power cable is secure."
        ),
        N_(
            "Read the readings before the cut in the timeline (power lost, battery empty or "
            "a crash); repeated cuts call for a site visit."
        ),
    ),
    "power.flapping": Remedy(
        N_(
            "The power keeps cutting in and out: check that the adapter and its cable are "
            "firmly plugged in."
        ),
        N_(
            "Power or battery conditions come and go repeatedly: look for a loose connector, "
            "a worn base contact or an unstable supply."
        ),
    ),
    # network --------------------------------------------------------------------------
    "network.link_down": Remedy(
        N_(
            "Check that the network cable is plugged in at both ends (or that Wi-Fi is on) "
            "and that the router has power."
        ),
        N_(
            "Check the switch port, the cable and the router at the site; if the link is up "
            "there, test the terminal's network port."
        ),
    ),
    "network.no_route": Remedy(
        N_(
            "Restart the router, then the terminal; card payments will not go through until "
            "the network is back."
        ),
        N_(
            "The terminal has no default route: check DHCP or the static network settings "
            "and the router's LAN side."
        ),
    ),
    "network.dns_failure": Remedy(
        N_(
            "Restart the router; if it persists, call support: the terminal cannot look up "
            "the payment service."
        ),
        N_(
            "Name resolution fails for the payment host: check the DNS servers the site "
            "hands out and the host name in the configuration."
        ),
    ),
    "network.host_unreachable": Remedy(
        N_(
            "Card payments may fail: restart the router and check the internet connection; "
            "call support if it continues."
        ),
        N_(
            "TCP or TLS to the payment host fails: check the site's internet access, the "
            "firewall rules and the payment provider's status."
        ),
    ),
    "network.high_latency": Remedy(
        N_(
            "Payments may be slow: avoid heavy use of the shop's internet (video, downloads) "
            "and restart the router if it persists."
        ),
        N_(
            "Connecting to the payment host takes long: check the site's line quality and "
            "bandwidth use, and the provider's status."
        ),
    ),
    "network.flapping": Remedy(
        N_(
            "The network connection keeps dropping: check that the cable is firmly plugged "
            "in, or move the terminal closer to the Wi-Fi router."
        ),
        N_(
            "The link or the payment host goes down and up repeatedly: look for a loose "
            "cable, a failing switch port or a weak Wi-Fi signal."
        ),
    ),
    # printer --------------------------------------------------------------------------
    "printer.absent": Remedy(
        N_(
            "Check that the printer is switched on and its cable is plugged in firmly at both ends."
        ),
        N_(
            "The printer's port is gone: check the USB or serial cable and the port; if it "
            "comes back under another name, update the configuration."
        ),
    ),
    "printer.no_reply": Remedy(
        N_("Switch the printer off and on again and check its cable."),
        N_(
            "The port is there but the printer does not answer status requests: check the "
            "baud rate and the cable, then the printer itself."
        ),
    ),
    "printer.offline": Remedy(
        N_(
            "Close the printer's cover, check the paper and press the feed button; switch "
            "it off and on if it stays offline."
        ),
        N_(
            "Offline with no cause reported: check the printer's panel and error light; if "
            "it recurs, the printer needs service."
        ),
    ),
    "printer.cover_open": Remedy(
        N_("Close the printer cover firmly until it clicks."),
        N_(
            "If it reports open with the cover closed, the cover sensor or the latch is "
            "faulty: the printer needs service."
        ),
    ),
    "printer.paper_end": Remedy(
        N_("Load a new paper roll and close the cover."),
        N_("If it recurs with paper loaded, check the paper-end sensor and the roll size."),
    ),
    "printer.cutter_error": Remedy(
        N_(
            "Switch the printer off, open the cover, remove any paper jammed at the cutter, "
            "close the cover and switch it on again."
        ),
        N_(
            "If the cutter error returns after the jam is cleared, the cutter is worn or "
            "blocked: the printer needs service."
        ),
    ),
    "printer.unrecoverable": Remedy(
        N_(
            "Switch the printer off and on again; if the error stays, stop using it and "
            "call support."
        ),
        N_(
            "The printer reports an unrecoverable error: a power cycle may clear it; "
            "otherwise replace the printer."
        ),
    ),
    "printer.overheat": Remedy(
        N_(
            "Let the printer rest for a few minutes; it prints again once the print head "
            "has cooled."
        ),
        N_(
            "Frequent overheating points to very long receipts, a blocked vent or a worn "
            "head: check where the printer stands and how it is used."
        ),
    ),
    "printer.paper_near_end": Remedy(
        N_("The paper roll is nearly finished: have a new roll ready and change it soon."),
        N_(
            "Nothing to do unless it reports near end with a full roll: then check the "
            "near-end sensor."
        ),
    ),
    "printer.drawer_open_too_long": Remedy(
        N_("Close the cash drawer."),
        N_("If the drawer is closed, check the drawer cable and the configured drawer polarity."),
    ),
    "printer.flapping": Remedy(
        N_(
            "The printer keeps coming and going: check its cable and power, and that the "
            "cover and the paper roll sit properly."
        ),
        N_(
            "The printer's state changes repeatedly: look for a loose cable, a failing power "
            "supply or a faulty sensor in the timeline."
        ),
    ),
    # serial ---------------------------------------------------------------------------
    "serial.missing": Remedy(
        N_(
            "Check that the device (card reader, scanner, customer display) is connected "
            "and switched on."
        ),
        N_(
            "An expected peripheral is gone: check its cable and port; if it was replaced, "
            "update the allow-list and the configuration."
        ),
    ),
    "serial.identity_changed": Remedy(
        N_("Do not use the card reader and call support: a device on the terminal was swapped."),
        N_(
            "Same port, different device identity: treat it as possible tampering and "
            "inspect the terminal before it takes cards again."
        ),
    ),
    "serial.unexpected_device": Remedy(
        N_(
            "Look for an unfamiliar device plugged into the terminal; do not remove "
            "anything yourself, call support."
        ),
        N_(
            "A device not in the allow-list appeared (possibly a skimmer): identify it on "
            "site; add it to the allow-list only if it is legitimate."
        ),
    ),
    "serial.no_reply": Remedy(
        N_("Switch the device off and on again and check its cable."),
        N_(
            "The peripheral does not answer its probe: check the cable, the port settings "
            "and the probe configuration."
        ),
    ),
    "serial.flapping": Remedy(
        N_("A connected device keeps disconnecting: check that its cable is firmly plugged in."),
        N_(
            "A peripheral comes and goes repeatedly: look for a loose cable, a failing USB "
            "hub or a power problem."
        ),
    ),
    # system ---------------------------------------------------------------------------
    "system.disk_low": Remedy(
        N_("Call support: the terminal's storage is nearly full."),
        N_(
            "Free space on the terminal: remove old logs and update files, and find which "
            "directory keeps growing."
        ),
    ),
    "system.memory_low": Remedy(
        N_("Restart the POS application or the terminal at a quiet moment."),
        N_(
            "Memory is short: look in the diagnostics' process list for one that keeps "
            "growing; a leak in the POS application needs a fix from its vendor."
        ),
    ),
    "system.cpu_saturated": Remedy(
        N_("The terminal may be slow; if it persists, restart it at a quiet moment."),
        N_(
            "The CPU has been saturated for minutes: find the busy process in the "
            "diagnostics' process list."
        ),
    ),
    "system.clock_unsynced": Remedy(
        N_("Nothing to do now; call support if receipts show the wrong time."),
        N_(
            "The clock is not synchronised: check NTP access from the site (UDP 123) and "
            "the time service on the terminal."
        ),
    ),
    "system.clock_jump": Remedy(
        N_("Check that the terminal shows the right time."),
        N_(
            "The clock jumped: check for a manual change, a flat clock battery or an NTP "
            "correction; times in the bundle may be off."
        ),
    ),
    "system.flapping": Remedy(
        N_("Restart the terminal at a quiet moment; call support if it continues."),
        N_(
            "A system condition (disk, memory, CPU, clock) comes and goes repeatedly: look "
            "for the pattern in the timeline."
        ),
    ),
    # app ------------------------------------------------------------------------------
    "app.not_running": Remedy(
        N_("Start the POS application again, or restart the terminal."),
        N_(
            "The POS process is gone: find out why it stopped (crash reports and logs in "
            "the diagnostics) and check its service configuration."
        ),
    ),
    "app.crash_loop": Remedy(
        N_("Restart the terminal; if the POS application keeps closing, call support."),
        N_(
            "The POS application restarts again and again: read the crash reports and logs "
            "in the bundle and escalate to the POS vendor."
        ),
    ),
    "app.hung": Remedy(
        N_("Close and reopen the POS application; restart the terminal if it does not respond."),
        N_(
            "The application's heartbeat stopped: look for a blocked operation in the logs; "
            "repeated hangs go to the POS vendor."
        ),
    ),
    "app.crash_report": Remedy(
        N_("If the POS application closed, start it again; call support if it happens again."),
        N_(
            "A crash report was written: read it in the bundle and pass it to the POS "
            "vendor with the application's version."
        ),
    ),
    "app.anr": Remedy(
        N_("If the POS application froze, wait a moment or restart it."),
        N_(
            "Android reported the application not responding: read the ANR trace in the "
            "bundle and pass it to the POS vendor."
        ),
    ),
    "app.log_error": Remedy(
        N_("Nothing to do unless the POS application misbehaves; then call support."),
        N_(
            "A configured error pattern matched the application's log: read the matching "
            "lines in the bundle."
        ),
    ),
    "app.flapping": Remedy(
        N_(
            "The POS application keeps stopping and starting: restart the terminal and call "
            "support if it continues."
        ),
        N_(
            "Application faults come and go repeatedly: read the timeline and the crash "
            "reports and escalate to the POS vendor."
        ),
    ),
    # a person's report ----------------------------------------------------------------
    "manual.report": Remedy(
        N_(
            "Support has your report with the screen and the terminal's state; if you can, "
            "leave the terminal as it is."
        ),
        N_(
            "Read the merchant's note and the screenshot first, then call back on the "
            "contact given and record the call."
        ),
    ),
    # the agent itself -----------------------------------------------------------------
    "device.silent": Remedy(
        N_(
            "Check that the terminal is switched on, charged and connected to the shop's "
            "network; restart it if its screen is frozen."
        ),
        N_(
            "The terminal stopped checking in: read its last summary (battery, power, "
            "link), call the shop, and look for its unclean-shutdown bundle once it is back."
        ),
    ),
    "upload.auth_failed": Remedy(
        N_("Call support: the terminal cannot send its reports."),
        N_(
            "The collector refuses the device's credentials: check the device's token and "
            "key on the collector and enrol the device again if needed."
        ),
    ),
    "upload.flapping": Remedy(
        N_("Nothing to do at the shop."),
        N_(
            "Uploads fail and recover repeatedly: check the collector's log, the device's "
            "token and the site's connection."
        ),
    ),
    "agent.monitor_failed": Remedy(
        N_("Nothing to do at the shop; support will look into it."),
        N_(
            "A posagent monitor keeps failing: read its error in the summary and check the "
            "device path and the configuration it reads."
        ),
    ),
    "agent.flapping": Remedy(
        N_("Nothing to do at the shop."),
        N_(
            "A posagent monitor fails and recovers repeatedly: check its configuration and "
            "the device it reads."
        ),
    ),
    "adb.offline": Remedy(
        N_(
            "Check the USB cable between the Android terminal and its host, and that the "
            "terminal is switched on."
        ),
        N_(
            "adb cannot reach the terminal: check the cable and the USB debugging "
            "authorisation, and run `adb devices` on the host."
        ),
    ),
    "adb.flapping": Remedy(
        N_("Check that the terminal's USB cable is firmly plugged in."),
        N_(
            "The adb connection drops repeatedly: replace the USB cable or port and check "
            "the host's USB power."
        ),
    ),
}


def remedy(key: str) -> Remedy:
    """The remedy of a fault key (English); `GENERIC` for a key the table does not know."""
    return REMEDIES.get(key, GENERIC)


def remedy_lines(key: str, *, cleared: bool = False, width: int = 78) -> list[str]:
    """The "What to do" block of report.txt and `posagent bundle show`, wrapped to width."""
    r = remedy(key)
    lines = [f"  {CLEARED_NOTE}"] if cleared else []
    for label, text in (("Merchant: ", r.merchant), ("Support:  ", r.support)):
        lines += textwrap.wrap(
            text, width, initial_indent="  " + label, subsequent_indent=" " * (2 + len(label))
        )
    return lines
