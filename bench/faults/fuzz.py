"""Fuzzed device bytes and parser inputs: seeded random inputs and mutations of real captures.

A case is one input; a crash is an exception other than the parser's
documented error type (counted as a loss), and so is a printer status that
does not follow from the bytes the printer sent (e.g. "paper end" reported
for a reply that was garbage or silence).
"""

from __future__ import annotations

import os
import pty
import random
import re
import threading
import time
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.faults import Result

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
ODD = "\x00\x1b\x7f\r\t\u00a0\u00e9\u202e\u4e2d\ufffd\U0001f600[]{}():=,;%#\"'\\/-_.|<>"
NUMBERS = ("-1", "0", "99999999999999999999999", "nan", "inf", "-inf", "1e309", "0x1F", "٣", "")


def rand_text(rng: random.Random, vocab: Sequence[str]) -> str:
    """Random text: characters, or tokens of real captures, in random lines."""
    n = rng.choice((0, 1, 5, 40, 400, 3000))
    if vocab and rng.random() < 0.6:
        parts = []
        for _ in range(n // 4 + 1):
            parts.append(rng.choice(vocab))
            parts.append(rng.choice((" ", "\n", ": ", "=", "\t", "", "\r\n", "[", "]")))
        return "".join(parts)
    alphabet = "abcdefxyzABC0123456789 \n:=" + ODD
    return "".join(rng.choice(alphabet) for _ in range(n))


def mutate(text: str, rng: random.Random, vocab: Sequence[str]) -> str:
    """A few random edits of a real capture: cut, duplicate, insert, renumber, swap, truncate."""
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.randint(0, 300))
        op = rng.randrange(8)
        if op == 0:
            text = text[:i] + text[j:]
        elif op == 1:
            text = text[:j] + text[i:j] + text[j:]
        elif op == 2:
            text = text[:i] + "".join(rng.choice(ODD) for _ in range(rng.randint(1, 20))) + text[i:]
        elif op == 3:
            text = re.sub(r"\d+", lambda m: rng.choice(NUMBERS), text, count=rng.randint(1, 50))
        elif op == 4:
            text = text[:i]
        elif op == 5 and vocab:
            text = text[:i] + rng.choice(vocab) + text[i:]
        elif op == 6:
            lines = text.splitlines(True)
            rng.shuffle(lines)
            text = "".join(lines)
        else:
            text = text.replace("\n", rng.choice(("\r\n", "\r", "\n\n", "")), rng.randint(1, 9))
    return text


def _fixtures(*globs: str) -> list[str]:
    out = []
    for g in globs:
        for p in sorted(FIXTURES.glob(g)):
            if p.is_file():
                out.append(p.read_text(encoding="utf-8", errors="replace"))
    return out


Target = tuple[str, Callable[[str], Any], tuple[type[BaseException], ...], list[str]]


def _targets() -> list[Target]:
    from agent.core.redact import Redactor
    from agent.monitors.watch import parse_trigger
    from agent.upload.uploader import parse_retry_after
    from collector.app import parse_content_digest, parse_time
    from collector.auth import TokenFileError, parse_tokens
    from drivers import android, kmsg, network, power, serialports, system
    from drivers.screen import fbdev, ocr, x11

    redactor = Redactor()
    return [
        ("power.parse_dumpsys_battery", power.parse_dumpsys_battery, (), _fixtures("android/dumpsys_battery_*")),
        ("power.parse_power_supply_uevent", power.parse_power_supply_uevent, (), _fixtures("linux/power_supply/*.uevent")),
        ("network.parse_proc_net_route", network.parse_proc_net_route, (), _fixtures("linux/proc_net_route_*")),
        ("network.parse_proc_net_ipv6_route", network.parse_proc_net_ipv6_route, (), _fixtures("linux/proc_net_ipv6_route_*")),
        ("network.parse_ip_route", network.parse_ip_route, (), _fixtures("linux/ip_route_*", "linux/ip_-6_route_*")),
        ("network.parse_route_n", network.parse_route_n, (), _fixtures("linux/route_n_*")),
        ("network.parse_dumpsys_connectivity", network.parse_dumpsys_connectivity, (), _fixtures("android/dumpsys_connectivity_*")),
        ("network.parse_host_port", network.parse_host_port, (ValueError,), ["pay.example.com:443", "[::1]:8443", "10.0.0.1"]),
        ("android.parse_getprop", android.parse_getprop, (), _fixtures("android/getprop_*")),
        ("android.parse_window_focus", android.parse_window_focus, (), _fixtures("android/dumpsys_window_*")),
        ("android.parse_pidof", android.parse_pidof, (), ["1234 5678", "1"]),
        ("kmsg.parse_kmsg", kmsg.parse_kmsg, (), _fixtures("linux/dmesg_*", "linux/kern_log_*")),
        ("serialports.parse_hex", serialports.parse_hex, (ValueError,), ["02 00 35", "1b40"]),
        ("serialports.MatchSpec.parse", serialports.MatchSpec.parse, (ValueError,), ["0403:6001", "067b:2303:ABC123"]),
        ("system.parse_pid_file", system.parse_pid_file, (), ["1234\n", "  42 extra"]),
        ("system.parse_timedatectl_ntp", system.parse_timedatectl_ntp, (), ["NTPSynchronized=yes\n", "no\n"]),
        ("fbdev.parse_fbset_info", fbdev.parse_fbset_info, (), _fixtures("linux/fbset_info_*")),
        ("x11.parse_xwininfo_tree", x11.parse_xwininfo_tree, (), ['     0x1200003 "POS": ("pos" "Pos")  800x600+0+0  +0+0\n']),
        ("x11.parse_xprop_window_id", x11.parse_xprop_window_id, (), ["_NET_ACTIVE_WINDOW(WINDOW): window id # 0x1200003\n"]),
        ("ocr.parse_tesseract_tsv", ocr.parse_tesseract_tsv, (), ["5\t1\t1\t1\t1\t1\t10\t10\t50\t20\t96.5\t4111\n"]),
        ("uploader.parse_retry_after", lambda t: parse_retry_after(t, time.time()), (), ["120", "Wed, 21 Oct 2015 07:28:00 GMT"]),
        ("collector.parse_content_digest", parse_content_digest, (), ["sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"]),
        ("collector.parse_time", parse_time, (ValueError,), ["2026-01-01T00:00:00Z", "1700000000"]),
        ("collector.parse_tokens", parse_tokens, (TokenFileError,), ["T-0001 " + "a" * 64 + "\n# c\n"]),
        ("watch.parse_trigger", parse_trigger, (), ["printer jammed\ncontact: Ann 555-0100\n"]),
        ("redact.Redactor.text", redactor.text, (), _fixtures("redaction/device_outputs/*")),
    ]  # fmt: skip


def parsers(quick: bool, work: Path) -> Result:
    """Every text parser of the drivers and of the agent's and collector's input paths (uevent, dumpsys battery/connectivity/window, getprop, /proc/net/route, ip route, route -n, kernel log, fbset, xwininfo, xprop, tesseract TSV, Retry-After, Content-Digest, tokens file, trigger files, the redaction engine) fed seeded random text and mutations of the real captured outputs in tests/fixtures."""
    res = Result("fuzz_parsers", "fuzzed parser inputs")
    per = 250 if quick else 3000
    rng = random.Random(61)
    crashes: dict[str, int] = {}
    for name, fn, allowed, seeds in _targets():
        vocab = [w for s in seeds for w in re.split(r"(\s+)", s) if w.strip()][:5000]
        for i in range(per):
            if seeds and i % 3:
                text = mutate(rng.choice(seeds), rng, vocab)
            else:
                text = rand_text(rng, vocab)
            res.trials += 1
            try:
                fn(text)
            except allowed:
                pass
            except Exception as e:
                crashes[name] = crashes.get(name, 0) + 1
                res.loss(f"{name} raised {type(e).__name__}: {e} on {text[:80]!r}")
    res.notes.append(
        f"{len(_targets())} parsers × {per} cases (two thirds mutations of real captures); "
        f"crashes: {crashes or 'none'}"
    )
    return res


# --------------------------------------------------------------------------- device bytes


def _expected_state(script: list[Any], ns: Sequence[int]) -> str:
    """The link state query_status must report for a scripted printer (one item per query)."""
    from drivers.escpos import Late, PortAbsent, PortError, PortOpenFailed, Silence, validate_reply

    for k, _n in enumerate(ns):
        item = script[k] if k < len(script) else Silence()
        if isinstance(item, PortAbsent):
            return "absent"
        if isinstance(item, PortOpenFailed):
            return "open_failed"
        if isinstance(item, PortError):
            return "io_error"
        if isinstance(item, Silence | Late) or item == b"":
            return "no_reply"
        if validate_reply(item) is None:
            return "invalid_reply"
    return "ok"


def _random_reply(rng: random.Random) -> Any:
    from drivers.escpos import Late, PortAbsent, PortIOError, PortOpenFailed, Silence

    r = rng.random()
    if r < 0.45:  # a valid status byte with random flag bits
        return bytes([0x12 | (rng.randrange(256) & 0x6C)])
    if r < 0.7:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 1, 1, 2, 3, 17))))
    if r < 0.8:
        return Silence()
    if r < 0.9:
        return Late(bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))))
    return rng.choice((PortAbsent("gone", 19), PortIOError("EIO", 5), PortOpenFailed("busy", 16)))


def _check_status(res: Result, st: Any, expect: str, script: list[Any], label: str) -> None:
    from drivers.escpos import decode_status_byte

    if str(st.state) != expect:
        res.loss(f"{label}: state {st.state} for a printer that should read {expect}: {script}")
        return
    if expect != "ok":
        if st.conditions() or st.paper_end is not None or st.online is not None:
            res.loss(f"{label}: flags reported without a valid reply: {st.as_dict()}")
        return
    for k, n in enumerate((1, 2, 3, 4)):
        for flag, value in decode_status_byte(n, script[k][0]).items():
            if getattr(st, flag) != value:
                res.loss(f"{label}: {flag} = {getattr(st, flag)}, byte says {value}")


def device_bytes(quick: bool, work: Path) -> Result:
    """The receipt printer answering DLE EOT 1..4 with random bytes, silence, late replies and port errors: through the in-package RecordingTransport, and over a real pty with a printer that writes random bytes; the reported state must follow from the bytes (no reply is never paper end). Also every (n, byte) pair through decode_status_byte."""
    from drivers.escpos import RecordingTransport, decode_status_byte, query_status, validate_reply

    res = Result("fuzz_device_bytes", "fuzzed device bytes (printer)")
    rng = random.Random(71)
    for n in range(0, 6):
        for v in range(256):
            res.trials += 1
            try:
                decode_status_byte(n, v)
            except ValueError:
                pass
            except Exception as e:
                res.loss(f"decode_status_byte({n}, {v}) raised {type(e).__name__}: {e}")
    for _ in range(2000 if quick else 20000):
        data = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 1, 2, 5))))
        res.trials += 1
        got = validate_reply(data)
        if got is not None and not (len(data) == 1 and (got & 0x93) == 0x12):
            res.loss(f"validate_reply accepted {data.hex()}")
    n_scripts = 1500 if quick else 15000
    for _ in range(n_scripts):
        script = [_random_reply(rng) for _ in range(4)]
        stale = bytes(rng.randrange(256) for _ in range(rng.choice((0, 0, 0, 3))))
        res.trials += 1
        try:
            st = query_status(RecordingTransport(script, stale=stale), timeout_s=0.0)
        except Exception as e:
            res.loss(f"query_status raised {type(e).__name__}: {e} for {script}")
            continue
        _check_status(res, st, _expected_state(script, (1, 2, 3, 4)), script, "scripted")
    n_pty = 40 if quick else 300
    _pty_trials(res, rng, n_pty)
    res.notes.append(
        f"{6 * 256} decode_status_byte pairs; {2000 if quick else 20000} validate_reply inputs; "
        f"{n_scripts} scripted printers (valid bytes, garbage, silence, late replies, port "
        f"errors, stale input); {n_pty} polls over a real pty of a printer writing random bytes"
    )
    return res


def _pty_trials(res: Result, rng: random.Random, n: int) -> None:
    """poll_printer over a pty: the far end answers each DLE EOT with scripted random bytes."""
    from drivers.escpos import poll_printer

    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    script: list[Any] = []
    stop = threading.Event()

    def printer() -> None:
        buf = b""
        while not stop.is_set():
            try:
                import select

                r, _, _ = select.select([master], [], [], 0.05)
                if not r:
                    continue
                buf += os.read(master, 1024)
            except OSError:
                return
            while b"\x10\x04" in buf:
                i = buf.index(b"\x10\x04")
                if len(buf) < i + 3:
                    break
                buf = buf[i + 3 :]
                item = script.pop(0) if script else b""
                if isinstance(item, bytes) and item:
                    os.write(master, item)

    t = threading.Thread(target=printer, daemon=True)
    t.start()
    try:
        for _ in range(n):
            items = [
                bytes([0x12 | (rng.randrange(256) & 0x6C)])
                if rng.random() < 0.6
                else bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 2, 3))))
                for _ in range(4)
            ]
            script[:] = list(items)
            res.trials += 1
            try:
                st = poll_printer("serial", path, timeout_s=0.15, settle_s=0.02, late_drain_s=0.02)
            except Exception as e:
                res.loss(f"poll_printer raised {type(e).__name__}: {e}")
                continue
            _check_status(res, st, _expected_state(items, (1, 2, 3, 4)), items, "pty")
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(2)
        os.close(master)
        os.close(slave)
