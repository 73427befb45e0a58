"""Redaction engine: card data and secrets out, look-alikes and device identifiers left alone."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.capture.probes import tail_bytes
from agent.core.redact import (
    KINDS,
    RULESET_VERSION,
    Redactor,
    _iin_ok,
    decode_text,
    luhn_ok,
    sensitive_key_kind,
    sniff_encoding,
)
from agent.monitors.watch import LogTailer

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "redaction"


# --------------------------------------------------------------------------- corpora


def _rows(name: str) -> list[list[str]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [ln.split("\t") for ln in lines if ln and not ln.startswith("#")]


PANS: list[tuple[str, str]] = [(r[0], r[1]) for r in _rows("test_pans.tsv")]
FORMATS: list[tuple[str, str, str, int]] = [
    (r[0], r[1], r[2], int(r[3])) for r in _rows("formats.tsv")
]
LOOKALIKES: list[tuple[str, str]] = [
    (r[0], r[1].replace("\\x00", "\x00")) for r in _rows("lookalikes.tsv")
]
ALLOW: list[str] = [ln[0] for ln in _rows("allow.txt")]
CASES: list[dict[str, Any]] = json.loads((DATA / "cases.json").read_text(encoding="utf-8"))
DEVICE_OUTPUTS = sorted(
    p for p in (DATA / "device_outputs").rglob("*") if p.is_file() and p.name != "README.md"
)


def _groups(network: str, pan: str) -> list[str]:
    """The PAN cut the way its network prints it (Amex 4-6-5, Diners 4-6-4, else by 4)."""
    if len(pan) in (14, 15) and network in ("amex", "diners", "uatp"):
        return [pan[:4], pan[4:10], pan[10:]]
    return [pan[i : i + 4] for i in range(0, len(pan), 4)]


def _tlv(tag: str, value_hex: str) -> str:
    if len(value_hex) % 2:
        value_hex += "F"
    return f"{tag}{len(value_hex) // 2:02X}{value_hex}"


def _digits_as(zero: str, pan: str) -> str:
    """The PAN's digits in another Unicode digit block (a masked '*' stays)."""
    return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in pan)


def _each_digit(fmt: str, pan: str) -> str:
    """Every digit of the PAN written with fmt (its code point as the argument)."""
    return "".join(fmt.format(ord(c)) if c.isdigit() else c for c in pan)


def _hx(b: int) -> str:
    """A byte in hex; the '*' of a masked PAN digit as the engine writes it in dumps."""
    return "**" if b == ord("*") else f"{b:02x}"


def _show(row: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in row)


def hexdump_c(data: bytes) -> str:
    """The lines `hexdump -C` prints for data (16 bytes a line, ASCII column)."""
    out = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        left = " ".join(_hx(b) for b in row[:8])
        right = " ".join(_hx(b) for b in row[8:])
        out.append(f"{off:08x}  {left:<23}  {right:<23}  |{_show(row)}|")
    return "\n".join(out)


def xxd(data: bytes) -> str:
    """The lines `xxd` prints for data (16 bytes a line in two-byte words, ASCII column)."""
    out = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        words = " ".join("".join(_hx(b) for b in row[i : i + 2]) for i in range(0, len(row), 2))
        out.append(f"{off:08x}: {words:<39}  {_show(row)}")
    return "\n".join(out)


def is_hex_format(template: str) -> bool:
    """Hex dumps mask every digit of a PAN ("**" a byte), not first 6 / last 4."""
    return any(k in template for k in ("{hex", "{xxd}", "{utf16le_hex}"))


def render(template: str, network: str, pan: str) -> str:
    """Fill a formats.tsv template with one PAN (or a masked one: '*' in place of digits)."""
    groups = _groups(network, pan)
    seps = [" ", "-", ".", "/"]
    mixed = groups[0] + "".join(seps[i % 4] + g for i, g in enumerate(groups[1:]))
    split = 8 if len(pan) == 16 else 6
    values = {
        "{pan}": pan,
        "{spaced}": " ".join(groups),
        "{dashed}": "-".join(groups),
        "{dotted}": ".".join(groups),
        "{plus}": "+".join(groups),
        "{pct20}": "%20".join(groups),
        "{tlv5a}": _tlv("5A", pan),
        "{tlv57}": _tlv("57", f"{pan}D25122011143804400000"),
        "{slashed}": "/".join(groups),
        "{underscored}": "_".join(groups),
        "{spacedash}": " - ".join(groups),
        "{mixed}": mixed,
        "{bin_split}": f"{pan[:split]} {pan[split:]}",
        "{hexspaced}": " ".join(_hx(b) for b in pan.encode()),
        "{hexdump}": hexdump_c(pan.encode()),
        "{hex}": "".join(_hx(b) for b in pan.encode()),
        "{xxd}": xxd(pan.encode()),
        "{utf16le_hex}": " ".join(_hx(b) for b in pan.encode("utf-16-le")),
        "{utf16le}": "".join(c + "\x00" for c in pan),
        "{utf16be}": "".join("\x00" + c for c in pan),
        "{fullwidth}": _digits_as("\uff10", pan),
        "{arabic_indic}": _digits_as("\u0660", pan),
        "{devanagari}": _digits_as("\u0966", pan),
        "{json_u}": _each_digit("\\u{:04x}", pan),
        "{url_pct}": _each_digit("%{:02X}", pan),
    }
    out = template
    for key, value in values.items():
        out = out.replace(key, value)
    return out


def _plain_digits(text: str) -> str:
    """text with other encodings of digits read as ASCII digits: NULs dropped (UTF-16),
    JSON \\u003X and URL %3X escapes decoded, every Unicode decimal digit as 0-9."""
    text = text.replace("\x00", "")
    text = re.sub(r"\\u003(\d)|%3(\d)", lambda m: m.group(1) or m.group(2), text)
    return "".join(str(int(c)) if c.isdecimal() else c for c in text)


def pan_survives(out: str, pan: str) -> bool:
    """True when the PAN's digits are still in out: as one digit run or with separators,
    in any encoding the engine reads, or as the hex of its ASCII or UTF-16 bytes."""
    plain = _plain_digits(out)
    if pan in re.findall(r"\d+", plain, re.ASCII):
        return True
    squeezed = re.sub(r"(?<=\d)(?:[ .+/_-]|%20| [-/] )(?=\d)", "", plain)
    if pan in re.findall(r"\d+", squeezed, re.ASCII):
        return True
    hex_stream = re.sub(r"[^0-9a-f]", "", out.lower())
    return pan.encode().hex() in hex_stream or pan.encode("utf-16-le").hex() in hex_stream


# --------------------------------------------------------------------------- the corpus


def test_corpus_is_luhn_valid_and_covers_every_length_and_network() -> None:
    """The test-PAN corpus passes Luhn and spans 12-19 digits and the major networks."""
    assert all(luhn_ok(pan) for _, pan in PANS)
    assert all(_iin_ok(pan) for _, pan in PANS)  # the looser forms' prefix check keeps all
    assert {len(pan) for _, pan in PANS} == set(range(12, 20))
    networks = {n for n, _ in PANS}
    for needed in ("visa", "mastercard", "mastercard_2series", "amex", "discover", "jcb"):
        assert needed in networks
    assert {"diners", "unionpay", "maestro"} <= networks
    assert {len(p) for n, p in PANS if n == "unionpay"} >= {16, 17, 18, 19}
    assert {len(p) for n, p in PANS if n == "maestro"} >= {12, 13, 14, 16, 18, 19}


@pytest.mark.parametrize("fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_corpus_pan_is_removed_in_this_format(fmt: tuple[str, str, str, int]) -> None:
    """Every published test PAN written in this format is masked and counted under its kind."""
    name, template, kind, count = fmt
    redactor = Redactor()
    missed: list[tuple[str, str, str, object]] = []
    for network, pan in PANS:
        text = render(template, network, pan)
        counts: Counter[str] = Counter()
        out = redactor.text(text, counts)
        if pan_survives(out, pan) or counts != Counter({kind: count}):
            missed.append((network, pan, out, dict(counts)))
            continue
        masked = pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
        if is_hex_format(template):
            masked = "*" * len(pan)
        if kind == "pan" and out != render(template, network, masked):
            missed.append((network, pan, out, "not first6last4 with separators kept"))
    recall = 1 - len(missed) / len(PANS)
    print(f"format={name} recall={recall:.3f} ({len(PANS) - len(missed)}/{len(PANS)})")
    assert not missed, missed[:5]


def test_first6last4_keeps_bin_and_last_four_and_separators() -> None:
    """first6last4 shows the BIN and last four digits, stars the middle and keeps separators."""
    r = Redactor()
    assert r.text("4111 1111 1111 1111") == "4111 11** **** 1111"
    assert r.text("6205500000000000004") == "620550*********0004"
    assert r.text("3782-822463-10005") == "3782-82****-*0005"
    assert r.text("card 501800000009.") == "card 501800**0009."


def test_full_mask_stars_every_digit() -> None:
    """pan_mask='full' replaces every digit of every corpus PAN with '*'."""
    r = Redactor(pan_mask="full")
    for network, pan in PANS:
        out = r.text(render("card {spaced} ok", network, pan))
        assert not any(ch.isdigit() for ch in out), out
        assert out.count("*") == len(pan)


def test_unknown_pan_mask_is_refused() -> None:
    """A pan_mask other than first6last4/full is a ValueError, not a silent default."""
    with pytest.raises(ValueError, match="pan_mask"):
        Redactor(pan_mask="last4")


# --------------------------------------------------------------------------- look-alikes


@pytest.mark.parametrize("case", LOOKALIKES, ids=[f"{i}-{c[0]}" for i, c in enumerate(LOOKALIKES)])
def test_lookalike_survives(case: tuple[str, str]) -> None:
    """Timestamps, epochs, amounts, addresses, ids, allow-listed IMEIs, phones, hashes survive."""
    _category, text = case
    counts: Counter[str] = Counter()
    assert Redactor(allow=ALLOW).text(text, counts) == text
    assert not counts


def test_lookalike_false_positive_rate_is_zero() -> None:
    """Across the whole look-alike corpus nothing is masked (false positives: 0)."""
    r = Redactor(allow=ALLOW)
    changed = [text for _, text in LOOKALIKES if r.text(text) != text]
    print(f"lookalikes={len(LOOKALIKES)} false_positives={len(changed)}")
    assert changed == []


def test_imei_passes_luhn_so_only_the_allow_list_saves_it() -> None:
    """An IMEI is Luhn-valid: masked as a PAN unless allow-listed (bare or grouped)."""
    imei = "356938035643809"
    assert luhn_ok(imei)
    assert Redactor().text(f"dev {imei}") == "dev 356938*****3809"
    assert Redactor(allow=[imei]).text(f"dev {imei}") == f"dev {imei}"
    assert Redactor(allow=["35-693803-564380-9"]).text(f"dev {imei}") == f"dev {imei}"
    labelled = f'{{"imei": "{imei}"}}'
    assert Redactor().text(labelled) == labelled
    # an identifier label never shields an Amex-shaped number or a grouped one
    assert Redactor().text("imei=378282246310005") == "imei=378282*****0005"
    assert Redactor().text("mid=3782-822463-10005") == "mid=3782-82****-*0005"
    assert Redactor().obj({"imei": 378282246310005}) == {"imei": "378282*****0005"}


@pytest.mark.parametrize("path", DEVICE_OUTPUTS, ids=[p.name for p in DEVICE_OUTPUTS])
def test_real_device_output_survives(path: Path) -> None:
    """Real captured device outputs (getprop, dumpsys, dmesg, routes...) carry no false finds."""
    text = path.read_text(encoding="utf-8", errors="replace")
    counts: Counter[str] = Counter()
    assert Redactor().text(text, counts) == text
    assert not counts


# --------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_tricky_case(case: dict[str, Any]) -> None:
    """Each hand-written tricky line redacts to exactly the recorded output and counts."""
    counts: Counter[str] = Counter()
    assert Redactor().text(case["input"], counts) == case["first6last4"]
    assert dict(counts) == case["counts"]
    assert Redactor(pan_mask="full").text(case["input"]) == case["full"]


def test_brief_examples() -> None:
    """The examples named in the issue come out as specified."""
    r = Redactor()
    emv = "5A08476173000000001057134761730000000010D25122011143804400000F"
    assert r.text(emv) == "5A08[REDACTED:emv_tlv]5713[REDACTED:emv_tlv]"
    assert r.text('"pan":"4111111111111111"') == '"pan":"411111******1111"'
    assert r.text("?card=4111-1111-1111-1111&x=1") == "?card=4111-11**-****-1111&x=1"
    assert r.text(";4111111111111111=2512101?") == "[REDACTED:track2]"
    assert r.text("pinblock=0412AC89ABCDEF67") == "pinblock=[REDACTED:pin_block]"
    assert r.text("PIN block: 0412AC89ABCDEF67") == "PIN block: [REDACTED:pin_block]"
    for keep in ("2026-11-23T22:21:57.123Z", "1700000000123", "20261123221957123"):
        assert r.text(keep) == keep
    assert r.text("x94111111111111111119") == "x94111111111111111119"  # digits on both sides


def test_redacted_text_is_left_as_is() -> None:
    """Redacting already redacted text changes nothing and counts nothing."""
    r = Redactor(secrets=["tok_live_8f3b2c1d9e"])
    for case in CASES:
        once = r.text(case["input"])
        counts: Counter[str] = Counter()
        assert r.text(once, counts) == once
        assert not counts


# --------------------------------------------------------------------------- secrets


def test_configured_secrets_are_masked_in_every_encoding() -> None:
    """A configured secret is masked plain, URL-encoded and JSON-escaped, and counted."""
    secret = 'tok/live+8f3b"2c'
    r = Redactor(secrets=[secret, "  ", "abc"])
    text = (
        f"token file says {secret}; url=/x?t=tok%2Flive%2B8f3b%222c "
        f'json={{"t": "tok/live+8f3b\\"2c"}} short abc stays'
    )
    counts: Counter[str] = Counter()
    out = r.text(text, counts)
    assert "8f3b" not in out
    assert counts["config_secret"] == 3
    assert out.endswith("short abc stays")


def test_secret_that_is_part_of_a_marker_does_not_grow_the_text() -> None:
    """A configured secret found inside a marker ("REDACTED") is left out, so passes settle."""
    r = Redactor(secrets=["REDACTED", "hunter22"])
    once = r.text("password=hunter22 cvv=123")
    assert once == "password=[REDACTED:config_secret] cvv=[REDACTED:cvv]"
    assert r.text(once) == once


def test_counted_kinds_are_the_documented_ones() -> None:
    """Every kind the engine counts is one of KINDS (the manifest's vocabulary)."""
    counts: Counter[str] = Counter()
    r = Redactor(secrets=["tok_live_8f3b2c1d9e"])
    for case in CASES:
        r.text(case["input"], counts)
    r.text("tok_live_8f3b2c1d9e", counts)
    assert set(counts) == set(KINDS)


def test_secret_values_in_key_value_json_and_headers() -> None:
    """Passwords, secrets, tokens, API keys and Authorization values are replaced by markers."""
    r = Redactor()
    counts: Counter[str] = Counter()
    text = (
        "password=hunter2 passwd: 'a b' db_password=x newPassword=y client_secret=s "
        'apiKey: "K" x-api-key=K2 refresh_token=R {"hmac_key": "H"}\n'
        "Proxy-Authorization: Basic dXNlcjpwYXNz\n"
        'Authorization: Digest username="u", realm="r", response="abc"\n'
        "then Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"
    )
    out = r.text(text, counts)
    for leaked in ("hunter2", "'a b'", "=x ", "=y ", "=s ", '"K"', "K2", "R ", '"H"', "dXNl"):
        assert leaked not in out, (leaked, out)
    assert "username" not in out and "eyJ" not in out
    assert counts == Counter(password=4, secret=5, authorization=2, bearer=1)


def test_non_secrets_near_secret_words_survive() -> None:
    """Drawer-kick pins, check results, empty or null values and Java object names stay."""
    r = Redactor()
    for text in (
        "drawer pin=2 pin: 5",
        "cvv_result=M cvc_check: pass",
        'password: "" token: null',
        "token=Token{422def98 ActivityRecord{422dee38 u0 com.example/.Main t14}}",
        "token_file=/etc/posagent/token tokens=5 ping 10.0.0.1",
    ):
        assert r.text(text) == text


# --------------------------------------------------------------------------- obj()


def test_obj_deep_redacts_and_replaces_sensitive_keys_whole() -> None:
    """obj() masks PANs in every string (and PAN-sized ints) and replaces sensitive keys whole."""
    r = Redactor(secrets=["s3cr3t-value"])
    data = {
        "trigger": {"note": "card 4111 1111 1111 1111 stuck", "contact": "ops s3cr3t-value"},
        "CVV": "123",
        "Pin_Block": "0412AC89ABCDEF67",
        "txn": [{"pan": 4111111111111111, "amount": 1250, "rrn": 632712345602}],
        "Authorization": "Bearer abc",
        "upload": {"token": {"nested": "x"}, "token_file": "/etc/posagent/token"},
        "password": None,
        "ok": True,
        "ratio": 0.5,
        "4111111111111111": "key holds a PAN",
        "tuple": ("5555555555554444",),
        "raw": b"track2=;4111111111111111=2512?",
        "path": Path("/var/log/4111111111111111.txt"),
        "when": Path("/var/log/pos.log"),
    }
    counts: Counter[str] = Counter()
    out = r.obj(data, counts)
    assert out["trigger"] == {
        "note": "card 4111 11** **** 1111 stuck",
        "contact": "ops [REDACTED:config_secret]",
    }
    assert out["CVV"] == "[REDACTED:cvv]"
    assert out["Pin_Block"] == "[REDACTED:pin_block]"
    assert out["txn"] == [{"pan": "411111******1111", "amount": 1250, "rrn": 632712345602}]
    assert out["Authorization"] == "[REDACTED:authorization]"
    assert out["upload"] == {"token": "[REDACTED:secret]", "token_file": "/etc/posagent/token"}
    assert out["password"] is None and out["ok"] is True and out["ratio"] == 0.5
    assert out["411111******1111"] == "key holds a PAN"
    assert out["tuple"] == ("555555******4444",)
    assert out["raw"] == "track2=[REDACTED:track2]"
    assert out["path"] == "/var/log/411111******1111.txt"  # judged by its str()
    assert out["when"] is data["when"]  # nothing to mask: the object itself
    assert data["CVV"] == "123"  # the input is not modified
    assert counts == Counter(
        pan=5, cvv=1, pin_block=1, authorization=1, secret=1, config_secret=1, track2=1
    )
    json.dumps(out, default=str)


def test_sensitive_key_names() -> None:
    """Key matching is case- and separator-insensitive, with suffixes; look-alike keys are not."""
    for key, kind in (
        ("CVV2", "cvv"),
        ("cvc", "cvv"),
        ("PIN", "pin"),
        ("pin-block", "pin_block"),
        ("Passwd", "password"),
        ("db_password", "password"),
        ("client_secret", "secret"),
        ("deviceToken", "secret"),
        ("API-Key", "secret"),
        ("Authorization", "authorization"),
        ("track1", "track1"),
        ("Track2_Data", "track2"),
    ):
        assert sensitive_key_kind(key) == kind, key
    for key in ("token_file", "pinpad", "spin", "max_tokens", "keyboard", "pan", "imei"):
        assert sensitive_key_kind(key) is None, key


# --------------------------------------------------------------------------- structlog


def test_structlog_processor_redacts_every_event(tmp_path: Path) -> None:
    """Through a real structlog pipeline, events, kwargs and tracebacks reach the log redacted."""
    r = Redactor(secrets=["tok_live_8f3b2c1d9e"])
    sink = io.StringIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            r.processor(),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sink),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger("test")
        log.info("card_read pan=4111111111111111", password="hunter2", token_file="/etc/t")
        log.warning(
            "host_declined",
            card={"pan": "5555 5555 5555 4444", "cvv": 123},
            auth="Authorization: Bearer tok_live_8f3b2c1d9e",
            path=tmp_path / "4111111111111111",
        )
        try:
            raise ValueError("bad track ;4111111111111111=2512101?")
        except ValueError:
            log.exception("reader_failed")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(ln) for ln in sink.getvalue().splitlines()]
    assert len(lines) == 3
    blob = sink.getvalue()
    for leaked in ("4111111111111111", "5555 5555 5555 4444", "hunter2", "tok_live", "2512101"):
        assert leaked not in blob, leaked
    assert lines[0]["event"] == "card_read pan=411111******1111"
    assert lines[0]["password"] == "[REDACTED:password]"
    assert lines[0]["token_file"] == "/etc/t"
    assert lines[1]["card"] == {"pan": "5555 55** **** 4444", "cvv": "[REDACTED:cvv]"}
    assert "[REDACTED:track2]" in lines[2]["exception"]


def test_processor_leaves_exc_info_to_structlog() -> None:
    """The processor does not touch exc_info, so format_exc_info placed after it still works."""
    proc = Redactor().processor()
    exc = ValueError("pan 4111111111111111")
    event: dict[str, Any] = {"event": "x", "exc_info": (ValueError, exc, None)}
    out = proc(None, "error", event)
    assert out is event
    assert out["exc_info"][1] is exc


def test_ruleset_version_is_a_string() -> None:
    """RULESET_VERSION is a non-empty string for the bundle manifest."""
    assert isinstance(RULESET_VERSION, str) and RULESET_VERSION


# --------------------------------------------------------------------------- property tests

_FRAGMENTS = st.sampled_from(
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "3782-822463-10005",
        "5A08",
        "57",
        "13",
        "D2512",
        "=2512101",
        ";",
        "?",
        "%B",
        "^",
        "cvv=",
        "pin: ",
        "password=",
        '"token":',
        "Authorization: ",
        "Bearer ",
        "[REDACTED:pan]",
        '\\"',
        '"',
        "'",
        " ",
        "\n",
        "=",
        "+",
        "-",
        ".",
        "%20",
        "0",
        "1",
        "9",
        "F",
        "imei=",
        "İ",
        "/",
        "_",
        " - ",
        "41111111",
        "\x00",
        "４",
        "٤",
        "\\u0034",
        "\\u0031",
        "%34",
        "%31",
        "34 31 31 31 31 31",
        "31",
        "3431313131313131",
        "00000000  ",
        "00000010: ",
        "|",
    ]
)
_MIXED_TEXT = st.lists(st.one_of(_FRAGMENTS, st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(), _MIXED_TEXT))
def test_text_never_raises_and_is_idempotent(text: str) -> None:
    """On any text redact never raises, returns a str, and a second pass changes nothing."""
    r = Redactor(secrets=["tok_live_8f3b2c1d9e"], allow=["356938035643809"])
    once = r.text(text)
    assert isinstance(once, str)
    assert r.text(once) == once


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _MIXED_TEXT,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.one_of(st.sampled_from(["pan", "cvv", "PIN", "note"]), st.text()),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(data=_JSON)
def test_obj_never_raises_and_is_idempotent(data: Any) -> None:
    """On any JSON-able data obj() never raises and a second pass changes nothing."""
    r = Redactor()
    once = r.obj(data)
    assert r.obj(once) == once


_CONTEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    pan=st.sampled_from(PANS),
    fmt=st.sampled_from(FORMATS),
    prefix=_CONTEXT,
    suffix=_CONTEXT,
    full=st.booleans(),
)
def test_no_corpus_pan_survives_in_any_context(
    pan: tuple[str, str], fmt: tuple[str, str, str, int], prefix: str, suffix: str, full: bool
) -> None:
    """A corpus PAN in any format between arbitrary text never survives as a digit run."""
    network, digits = pan
    text = f"{prefix} | {render(fmt[1], network, digits)} | {suffix}"
    out = Redactor(pan_mask="full" if full else "first6last4").text(text)
    assert not pan_survives(out, digits), out


_ALL_RULES = 1 | 2 | 4 | 8  # _WORDS | _PAN | _TRACK | _VIEW: every rule, no pre-check


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(), _MIXED_TEXT))
def test_prechecks_never_skip_a_match(text: str) -> None:
    """The fast pre-checks change nothing: text() equals running every rule on every line."""
    r = Redactor()
    oracle = "\n".join(r._segment(line, None, _ALL_RULES) for line in text.split("\n"))
    assert r.text(text) == oracle


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(_MIXED_TEXT, st.sampled_from([c["input"] for c in CASES]))))
def test_long_text_equals_line_by_line(lines: list[str]) -> None:
    """A long text (bundle entry) redacts exactly like its lines one by one (log events)."""
    r = Redactor(secrets=["tok_live_8f3b2c1d9e"])
    filler = "2026-11-23T22:21:57.123Z [info] printer_poll_ok port=/dev/ttyS0 " * 10
    lines = [*lines, filler]
    counts_whole: Counter[str] = Counter()
    counts_lines: Counter[str] = Counter()
    whole = r.text("\n".join(lines), counts_whole)
    assert whole == "\n".join(r.text(line, counts_lines) for line in lines)
    assert counts_whole == counts_lines


def test_long_corpus_text_is_fully_redacted() -> None:
    """Every corpus PAN in every format inside one long text is removed, counts add up."""
    r = Redactor()
    lines = [render(t, n, p) for _, t, _, _ in FORMATS for n, p in PANS]
    counts: Counter[str] = Counter()
    out = r.text("\n".join(lines), counts)
    for _, pan in PANS:
        assert not pan_survives(out, pan)
    expected: Counter[str] = Counter()
    for _, _, kind, count in FORMATS:
        expected[kind] += count * len(PANS)
    assert counts == expected


_SAFE_CONTEXT = st.text(alphabet="abcxyz ,;:()[]=\n\t", max_size=30)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(LOOKALIKES), prefix=_SAFE_CONTEXT, suffix=_SAFE_CONTEXT)
def test_lookalike_survives_in_any_context(case: tuple[str, str], prefix: str, suffix: str) -> None:
    """A look-alike between arbitrary words, spaces and punctuation is never changed."""
    text = f"{prefix} {case[1]} {suffix}"
    counts: Counter[str] = Counter()
    assert Redactor(allow=ALLOW).text(text, counts) == text
    assert not counts


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("encoding", "name"),
    [
        ("utf-16", "utf-16-le"),  # with a byte-order mark (little-endian on this machine)
        ("utf-16-le", "utf-16-le"),
        ("utf-16-be", "utf-16-be"),
        ("utf-8-sig", "utf-8"),
        ("utf-8", "utf-8"),
    ],
)
def test_utf16_is_sniffed_and_decoded(encoding: str, name: str) -> None:
    """A BOM or the NUL pattern of UTF-16 text names the encoding; decoding drops the BOM."""
    text = "2026-11-23 ERROR card 4111 1111 1111 1111 declined\nnext\n"
    data = text.encode(encoding)
    assert sniff_encoding(data) == name
    assert decode_text(data) == text
    assert decode_text(data + b"\x00") == text or name == "utf-8"  # half a code unit
    assert Redactor().obj(data) == text.replace("1111 1111 1111", "11** **** 1111")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_log_tail_is_decoded_before_redaction(tmp_path: Path, encoding: str) -> None:
    """A UTF-16 log's tail (cut at an odd offset) comes out as text whose PAN redacts."""
    log_file = tmp_path / "pos.log"
    lines = [f"2026-11-23 line {i} ok" for i in range(200)]
    lines.append("2026-11-23 ERROR card 4111 1111 1111 1111 declined")
    log_file.write_bytes("\n".join(lines).encode(encoding))
    tail = tail_bytes(log_file, 301)
    assert tail.endswith("card 4111 1111 1111 1111 declined")
    assert "\x00" not in tail and "\ufffd" not in tail
    assert Redactor().text(tail).endswith("card 4111 11** **** 1111 declined")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_log_is_tailed_as_text(tmp_path: Path, encoding: str) -> None:
    """The log tailer decodes a UTF-16 file (also written a few bytes at a time), so its
    patterns match and the matched line reaches the callback as redactable text."""
    log_file = tmp_path / "pos.log"
    log_file.write_bytes("start\n".encode(encoding))
    got: list[str] = []
    tailer = LogTailer([log_file], ["ERROR"], lambda _p, line: got.append(line))
    tailer.prime()
    body = "x\r\nERROR card 4111 1111 1111 1111 declined\r\nok\r\n".encode(encoding)
    if encoding == "utf-16":
        body = body[2:]  # the BOM is only at the start of the file
    with log_file.open("ab") as f:
        for i in range(0, len(body), 7):  # odd-sized writes split code units
            f.write(body[i : i + 7])
            f.flush()
            tailer.poll()
    tailer.stop()
    assert got == ["ERROR card 4111 1111 1111 1111 declined"]
    assert Redactor().text(got[0]) == "ERROR card 4111 11** **** 1111 declined"


def test_utf16_log_read_from_its_start(tmp_path: Path) -> None:
    """A UTF-16 log that appears after start is read from its first byte, BOM dropped."""
    log_file = tmp_path / "late.log"
    got: list[str] = []
    tailer = LogTailer([log_file], ["."], lambda _p, line: got.append(line))
    tailer.prime()
    log_file.write_bytes("first 5555 5555 5555 4444\nsecond\n".encode("utf-16"))
    tailer.poll()
    tailer.stop()
    assert got == ["first 5555 5555 5555 4444", "second"]
