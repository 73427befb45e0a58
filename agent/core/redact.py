"""Redaction engine: removes card data and secrets from text, JSON-able data and log events.

Every text and JSON entry of a bundle passes :meth:`Redactor.text` / :meth:`Redactor.obj`
before it is written, and :meth:`Redactor.processor` is a structlog processor that does
the same to every log event. What is found, in the order the passes run:

1. the agent's own configured secrets (literal, plus their URL- and JSON-escaped forms)
   → ``[REDACTED:config_secret]``;
2. ``Authorization`` / ``Proxy-Authorization`` values → ``[REDACTED:authorization]``,
   then any other ``Bearer <token>`` → ``Bearer [REDACTED:bearer]``;
3. track 1 (``%B<PAN>^<NAME>^<YYMM>...?``) → ``[REDACTED:track1]``;
4. hex-encoded EMV TLV elements 5A (PAN), 57 and 9F6B (track 2 equivalent) and 56
   (track 1 equivalent): the value is replaced, tag and length kept
   (``5A08[REDACTED:emv_tlv]``);
5. track 2 (``;<PAN>=<YYMM>...?``, bare ``<PAN>=<YYMM>...`` and ``<PAN>D<YYMM>...``)
   → ``[REDACTED:track2]``;
6. labelled values in ``key=value``, ``key: value`` and JSON form (snake, kebab and
   camelCase keys): CVV/CVC, PIN, PIN block, passwords, secrets/tokens/API keys,
   track 1/2 → ``[REDACTED:<kind>]``, quoting kept;
7. PANs in hex dumps of their ASCII or UTF-16 text: unspaced (``3431313131...``), byte
   pairs (``34 31 31 ...``, od), hexdump -C and xxd lines, a PAN running on from one
   dump line to the next (consecutive offsets) → every byte of the PAN ``**`` and its
   character in the dump's ASCII column ``*`` (first 6 / last 4 left in hex would read
   as a number of their own);
8. PANs: 12-19 digits passing Luhn, plain or grouped, not touching other digits (a URL
   escape such as ``%22`` or a JSON ``\\u0022`` before it does not count) → first 6 and
   last 4 digits kept, separators kept (``4111 11** **** 1111``), or every digit masked
   with ``pan_mask="full"``. Groupings: 4-4-4-4..., 4-6-5, 4-6-4 with one separator of
   space, dash, dot, ``+`` or ``%20`` throughout; and, when the number also carries a
   card network's prefix with a length it issues (Visa 4: 13/16/19, Mastercard 51-55
   and 2221-2720: 16, Amex 34/37: 15, ...): two groups of BIN (6 or 8 digits) and rest
   (``41111111 11111111``), ``/`` and ``_`` separators, `` - `` / `` / ``, and mixed
   separators (``4111 1111-1111.1111``);
9. the same PANs written in other encodings of their digits: UTF-16 text read as bytes
   (a NUL beside each digit), every Unicode decimal digit (fullwidth ``４１１１``,
   Arabic-Indic ``٤١١١``, Devanagari...), JSON ``\\u0034`` and URL ``%34`` escapes →
   each masked digit ``*``, whatever its encoding.

Text should be decoded before it gets here: :func:`sniff_encoding` tells UTF-16 log files
(byte-order mark, or the NULs of ASCII text in UTF-16) from UTF-8, and
:func:`decode_text` decodes with it (the log probe and the log tailer do); a UTF-16 text
that was not decoded is still caught by 9.

The passes rerun on what they changed until nothing changes, so redacting twice gives
the same text as redacting once.

Left alone on purpose: numbers that fail Luhn; runs with digits on either side; numbers
starting with 0 (zero-padded counters, amounts); epoch times (a leading 1 outside the
15-digit UATP length); compact timestamps ``YYYYMMDDhhmm[ss[fff...]]`` (years
1970-2099); E.164 phone numbers (``+`` not after a letter or digit); 18-19 digit ICCIDs
(prefix 89, the telecom numbering of ISO 7812); fixed-length identifiers right after
their label (RRN 12 digits; merchant id, IMEI, IMSI 15 digits, unless Amex-shaped);
digits inside UUIDs and hex digests (32/40/56/64/96/128 hex characters); and the
allow-listed identifiers (IMEI, serial) given to the constructor.

Not caught: a PAN cut by a line wrap of plain text (each line is judged alone), digits
spelled out in words, PANs inside base64 or other binary encodings, hex dumps of a PAN
with separators other than spaces.

Speed: every rule matches within one line (or the few lines of a hex dump), so text()
first finds the few lines that can hold a match with C-level searches (label words in
the lower-cased text; 12-digit runs, separated 4-digit groups and runs of hex byte
pairs in a digit-shape copy, each run judged at once; NULs, escapes and non-ASCII
digits) and runs the regular expressions on those lines only.
"""

from __future__ import annotations

import copy
import functools
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Final

from agent.core.config import Config

RULESET_VERSION: Final = "1"

PAN_MASKS: Final = ("first6last4", "full")

# The kinds counted (keys of the counts Counter and of the manifest's redaction counts).
KINDS: Final = (
    "pan",
    "track1",
    "track2",
    "emv_tlv",
    "cvv",
    "pin",
    "pin_block",
    "authorization",
    "bearer",
    "password",
    "secret",
    "config_secret",
)

_MARK = "[REDACTED:{}]"
_MARKERS: Final = tuple(_MARK.format(k) for k in KINDS)

# ----------------------------------------------------------------------------- helpers


_LUHN_DOUBLE: Final = str.maketrans("0123456789", "0246813579")


def luhn_ok(digits: str) -> bool:
    """True when the ASCII decimal string passes the Luhn (mod 10) check."""
    total = sum(map(int, digits[-1::-2])) + sum(map(int, digits[-2::-2].translate(_LUHN_DOUBLE)))
    return total % 10 == 0


def _marker(kind: str) -> str:
    return _MARK.format(kind)


def _bump(counts: Counter[str] | None, kind: str, n: int = 1) -> None:
    if counts is not None and n:
        counts[kind] += n


# ----------------------------------------------------------------------------- sensitive keys

# Normalised key (lower case, no "_", "-", " ", ".") → kind. Used by obj()/processor() for
# dict keys and, through _label_kind(), for labels in free text.
_KEY_KINDS: Final[dict[str, str]] = {
    "cvv": "cvv",
    "cvv2": "cvv",
    "cvc": "cvv",
    "cvc2": "cvv",
    "cvn": "cvv",
    "cvn2": "cvv",
    "cvd": "cvv",
    "csc": "cvv",
    "cav2": "cvv",
    "cid2": "cvv",
    "securitycode": "cvv",
    "cardsecuritycode": "cvv",
    "cardverificationvalue": "cvv",
    "cardverificationcode": "cvv",
    "pin": "pin",
    "pincode": "pin",
    "cardpin": "pin",
    "pinblock": "pin_block",
    "epb": "pin_block",
    "encryptedpinblock": "pin_block",
    "password": "password",
    "passwd": "password",
    "pwd": "password",
    "passphrase": "password",
    "secret": "secret",
    "clientsecret": "secret",
    "secretkey": "secret",
    "privatekey": "secret",
    "token": "secret",
    "accesstoken": "secret",
    "refreshtoken": "secret",
    "idtoken": "secret",
    "authtoken": "secret",
    "apikey": "secret",
    "apitoken": "secret",
    "accesskey": "secret",
    "hmackey": "secret",
    "authorization": "authorization",
    "proxyauthorization": "authorization",
    "track1": "track1",
    "track1data": "track1",
    "track2": "track2",
    "track2data": "track2",
    "track2equivalent": "track2",
    "track2equivalentdata": "track2",
}

# Key suffixes that make any key sensitive ("db_password", "device_token", "upload_secret").
_KEY_SUFFIXES: Final[tuple[tuple[str, str], ...]] = (
    ("password", "password"),
    ("passwd", "password"),
    ("secret", "secret"),
    ("token", "secret"),
    ("apikey", "secret"),
    ("privatekey", "secret"),
    ("pinblock", "pin_block"),
)

_KEY_NORMALISE = str.maketrans("", "", "_- .")


def _word_positions(s: str, raw: bytes | None, words: tuple[str, ...]) -> list[int]:
    """Positions of every occurrence of the lower-case ASCII words in s, ignoring case.
    Searches str.lower() when it keeps positions (str search is the faster), else the
    latin-1 bytes (one byte per character)."""
    out: list[int] = []
    low = s.lower()
    if len(low) == len(s):
        for word in words:
            i = low.find(word)
            while i >= 0:
                out.append(i)
                i = low.find(word, i + 1)
        return out
    low_b = (raw if raw is not None else s.encode("latin-1", "replace")).lower()
    for word in words:
        word_b = word.encode()
        i = low_b.find(word_b)
        while i >= 0:
            out.append(i)
            i = low_b.find(word_b, i + 1)
    return out


@functools.lru_cache(maxsize=4096)
def sensitive_key_kind(key: str) -> str | None:
    """The redaction kind of a dict key ("cvv", "password", ...) or None when not sensitive."""
    k = key.lower().translate(_KEY_NORMALISE)
    kind = _KEY_KINDS.get(k)
    if kind is not None:
        return kind
    for suffix, suffix_kind in _KEY_SUFFIXES:
        if k.endswith(suffix):
            return suffix_kind
    return None


# ----------------------------------------------------------------------------- patterns

_SEP = r"[ _.-]?"
# Labels recognised in free text, most specific first. Each maps to a kind via the
# normalised label (see _label_kind).
_LABELS = "|".join(
    [
        rf"proxy{_SEP}authorization",
        rf"encrypted{_SEP}pin{_SEP}block",
        rf"pin{_SEP}block",
        r"epb",
        rf"card{_SEP}security{_SEP}code",
        rf"card{_SEP}verification{_SEP}(?:value|code)",
        rf"security{_SEP}code",
        r"cvv2?",
        r"cvc2?",
        r"cvn2?",
        r"cvd",
        r"csc",
        r"cav2",
        rf"card{_SEP}pin",
        rf"pin{_SEP}code",
        r"pin",
        r"passphrase",
        r"password",
        r"passwd",
        r"pwd",
        rf"client{_SEP}secret",
        rf"secret{_SEP}key",
        rf"private{_SEP}key",
        r"secret",
        rf"(?:access|refresh|id|auth|api){_SEP}token",
        r"token",
        rf"api{_SEP}key",
        rf"access{_SEP}key",
        rf"hmac{_SEP}key",
        rf"track{_SEP}2{_SEP}equivalent(?:{_SEP}data)?",
        rf"track{_SEP}[12](?:{_SEP}data)?",
    ]
)

# A label ends on an optional quote and a separator. It starts at a word boundary or at
# a camelCase hump ("newPassword", "apiKey"); "db_password" and "x-api-key" qualify
# since "_" and "-" are boundaries. The value follows (_KV_VALUE_RE); values already
# redacted are skipped so that a second pass changes nothing, and so are bare values
# that name a Java object ("token=Token{42af...}" in Android dumpsys is a window handle).
_KV_HEAD_RE: Final = re.compile(
    r"(?i)(?:(?<![A-Za-z0-9])|(?-i:(?<=[a-z0-9])(?=[A-Z])))(?P<label>" + _LABELS + r")"
    r"(?P<kq>\\?[\"']?)[ \t]*(?:=>|[:=])",
    re.ASCII,
)
_KV_VALUE_RE: Final = re.compile(
    r"[ \t]*(?!\\?[\"']?\[REDACTED:)(?P<val>"
    r"(?P<vq>\\?\")(?P<v1>(?:[^\"\\\r\n]|\\[^\"\r\n])*)(?P=vq)"
    r"|'(?P<v2>[^'\r\n]*)'"
    r"|(?![A-Z][A-Za-z0-9_$.]*\{)(?P<v3>[^\s\"'&,;)\]}<>]+))",
    re.ASCII,
)

# Words found in every label: the lower-cased text must contain one for a label to match.
_KV_WORDS: Final = (
    "cv",
    "csc",
    "cav2",
    "security",
    "verification",
    "pin",
    "epb",
    "pass",
    "pwd",
    "secret",
    "key",
    "token",
    "track",
)
_TRIGGER_WORDS_STR: Final = ("authoriz", "bearer", *_KV_WORDS)
_SHORT: Final = 512  # text() of strings up to this length skips the per-line bookkeeping
_WORDS: Final = 1  # a segment holds a label word
_PAN: Final = 2  # a segment holds digits that may be a PAN
_TRACK: Final = 4  # a segment holds digits that may be track data or EMV TLV
_VIEW: Final = 8  # a segment holds digits in another encoding (NULs, Unicode, escapes, hex)

# Card-data pre-check on a latin-1 copy of the text where every ASCII digit is "0",
# every PAN group separator (space . + - and the % of %20) is "s" and the rest is "_":
# then a 12-digit run is b"0" * 12 and two separated 4-digit groups are b"0000s0000".
_DIGIT_SHAPES: Final = bytes(
    ord("0") if chr(b).isdigit() and b < 128 else ord("s") if chr(b) in " .+-%/_" else ord("x")
    for b in range(256)
)
_RUN12: Final = "0" * 12
_RUN24: Final = "0" * 24  # an unspaced hex-ASCII dump of 12 digits ("3431...")
_ZERO_RUN: Final = re.compile("0*")
_GROUP_TRIGGER: Final = "0000s0000"
_GROUP_TRIGGER_WIDE: Final = "0000sss0000"  # "4111 - 1111", "4111 / 1111"
_GROUP_TRIGGERS: Final = (_GROUP_TRIGGER, _GROUP_TRIGGER_WIDE)
# Spaced hex dumps: six byte pairs ("34 31 31 31 31 31", hexdump -C, od) or four
# two-byte words ("3431 3131 3131 3131", xxd) of decimal-looking hex in a row.
_HEX_TRIGGERS: Final = ("00s00s00s00s00s00", "0000s0000s0000s0000")


def _shape(s: str) -> str:
    """s in _DIGIT_SHAPES (one character per character of s). A str, not bytes: "in" and
    find() on str skip the buffer protocol, about three times faster on a line."""
    return s.encode("latin-1", "replace").translate(_DIGIT_SHAPES).decode("latin-1")


_TRACK_FOLLOWERS: Final = frozenset("=^DdEe")
_TRACK_LEADERS: Final = frozenset(";Bb")
_TLV_5A: Final = frozenset({"5A", "5a"})
_TLV_5A0A: Final = frozenset({"5A0A", "5a0a", "5A0a", "5a0A"})  # 5A of a 19-digit PAN

_AUTH_SCHEMES = (
    r"(?:Basic|Bearer|Digest|Negotiate|NTLM|Token|ApiKey|OAuth|Hawk|HMAC|SharedKey"
    r"|AWS4-HMAC-SHA256|DPoP|Mutual|SCRAM-SHA-256)[ \t]+"
)

# Authorization value (header, key=value or JSON): quoted whole, or an optional scheme
# and the credentials, with Digest-style ", name=value" parameters.
_AUTH_RE: Final = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<key>(?:proxy-)?authorization)(?P<kq>\\?[\"']?)"
    r"(?P<sep>[ \t]*[:=][ \t]*)(?!\\?[\"']?\[REDACTED:)"
    r"(?:(?P<vq>\\?\")(?P<v1>(?:[^\"\\\r\n]|\\[^\"\r\n])*)(?P=vq)"
    r"|'(?P<v2>[^'\r\n]*)'"
    r"|(?P<v3>(?:" + _AUTH_SCHEMES + r")?(?:[A-Za-z0-9_-]+=\"[^\"\r\n]*\"|[^\s\"'&,;)\]}<>]+)"
    r"(?:,[ \t]*[A-Za-z0-9_-]+=(?:\"[^\"\r\n]*\"|[^\s,\"']+))*))",
    re.ASCII,
)

_BEARER_RE: Final = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<scheme>bearer)(?P<sp>[ \t]+|%20|\+)(?!\[REDACTED:)"
    r"(?P<tok>[A-Za-z0-9\-._~+/]+=*)",
    re.ASCII,
)

_TRACK1_RE: Final = re.compile(
    r"%?[Bb](?P<pan>\d{12,19})\^(?P<name>[^^\r\n]{0,40})\^(?P<exp>\d{4})"
    r"(?:[^?\r\n\"'&<>]{0,79}\?|[^\s?\"'&<>^]*)",
    re.ASCII,
)

# Tag candidates of hex EMV TLV. 5A: PAN (n, F-padded); 57/9F6B: track 2 equivalent
# (PAN 'D' YYMM ...); 56: track 1 equivalent (ASCII 'B' = 0x42 then digits 0x3X).
_TLV_RE: Final = re.compile(
    r"(?i)(?P<tag>5A|57|9F6B|56)(?P<len>[0-9A-F]{2})(?=(?:\d{12}|423\d3\d))", re.ASCII
)
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]*", re.ASCII)

_TRACK2_RE: Final = re.compile(
    r"(?:(?P<ss>;)|(?<![0-9A-Za-z]))(?P<pan>\d{12,19})"
    r"(?:=(?P<exp>\d{4})(?P<rest>\d{0,30})\??(?!\d)"
    r"|[Dd](?P<dexp>\d{4})(?P<drest>[0-9A-Fa-f]{0,30})\??(?![0-9A-Za-z]))",
    re.ASCII,
)

# A PAN candidate: a plain run of 12-19 digits (up to 23: an escape's digits may lead
# it, see _escape_digits), or a chain of digit groups joined by separators (one
# character of space . + - / _, "%20", or " - " / " / "): three or more groups, the
# first two of 4+ digits, or two groups, the first of 6 or 8 (BIN) digits, the second of
# 6+ (dates, versions, amounts, uptimes and addresses fail here, at C speed). Shapes and separators are judged in code (_pan_sub). The pattern starts with
# its first digit (not a look-behind) so that the engine skips to digits at C speed; the
# named groups hold the rest of the match and only say which form it is.
_GAP: Final = r"(?:%20|[ ][-/][ ]|[ ._/+-])"
_GAP_RE: Final = re.compile("(" + _GAP + ")", re.ASCII)
_PAN_RE: Final = re.compile(
    r"\d(?<!\d\d)(?:(?P<plain>\d{11,22})"
    r"|(?P<grouped>\d{3,9}" + _GAP + r"\d{4,13}(?:" + _GAP + r"\d{1,13}){1,8}"
    r"|\d{5}(?:\d\d)?" + _GAP + r"\d{6,13}))(?!\d)",
    re.ASCII,
)
# The separators card numbers have always been printed with: with one of these used
# throughout a classic grouping, the issuer prefix is not checked (see _iin_ok).
_CLASSIC_SEPS: Final = frozenset({" ", ".", "+", "-", "%20"})

# Other encodings of digits (_decoded_view): NUL runs (UTF-16 read as bytes) are dropped,
# JSON "\u0034" and URL "%34" escapes and non-ASCII decimal digits (fullwidth U+FF10..,
# Arabic-Indic, Devanagari... every Unicode Nd) read as their ASCII digit.
_VIEW_TOKEN_RE: Final = re.compile(r"\x00+|\\u003([0-9])|%3([0-9])|([^\D0-9])")
_UDIGIT_RE: Final = re.compile(r"[^\D0-9]")
# Hex dumps (_hex_view): an unspaced even-length hex token, or byte pairs / two-byte
# words separated by one or two spaces (hexdump -C, od -x style, xxd).
_HEX_RUN_RE: Final = re.compile(
    r"(?<![0-9A-Za-z])(?:(?P<flat>(?:[0-9A-Fa-f]{2}){12,})"
    r"|(?P<spaced>[0-9A-Fa-f]{2}(?:[0-9A-Fa-f]{2})?(?: {1,2}[0-9A-Fa-f]{2}(?:[0-9A-Fa-f]{2})?)*))"
    r"(?![0-9A-Za-z])",
    re.ASCII,
)
_HEX_TOKEN_RE: Final = re.compile(r"[0-9A-Fa-f]+", re.ASCII)
# A dump line starts with its offset (hexdump -C "00000010  ", xxd "00000010: ", od
# "0000020 "); the hex of one dump line runs on into the next across its ASCII column.
_DUMP_LINE_RE: Final = re.compile(
    r"(?P<off>[0-9A-Fa-f]{6,8})(?::? {1,2})(?=[0-9A-Fa-f]{2})", re.ASCII
)
_DUMP_JOIN_RE: Final = re.compile(r"(?: {2}[^\n]*)?[ ]*\n[0-9A-Fa-f]{6,8}:? {1,2}", re.ASCII)

# Identifiers with a fixed length that a Luhn-valid number may collide with, recognised
# by their label: RRN (12 digits), merchant id (15), IMEI (15), IMSI (15).
_ID_LENGTHS: Final[dict[str, int]] = {
    "rrn": 12,
    "retrievalreferencenumber": 12,
    "retrievalref": 12,
    "mid": 15,
    "merchantid": 15,
    "imei": 15,
    "imsi": 15,
}
_ID_VALUE_OPENERS: Final = frozenset("=: \"'")
_ID_LABEL_RE: Final = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?P<label>rrn|mid|imei|imsi|merchant[ _.-]?id"
    r"|retrieval[ _.-]?ref(?:erence)?(?:[ _.-]?number)?)"
    r"\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?\Z",
    re.ASCII,
)

_UUID_RE: Final = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}", re.ASCII
)
_ALNUM_RUN_RIGHT: Final = re.compile(r"[0-9A-Za-z]*", re.ASCII)
_ALNUM_RUN_LEFT: Final = re.compile(r"[0-9A-Za-z]*\Z", re.ASCII)
_HASH_LENGTHS: Final = frozenset({32, 40, 56, 64, 96, 128})
_HEX_CHARS: Final = frozenset("0123456789abcdefABCDEF")


def _looks_like_timestamp(d: str) -> bool:
    """YYYYMMDDhhmm[ss[fraction]] with a year 1970-2099 and valid fields."""
    if len(d) < 12:
        return False
    year = int(d[0:4])
    month = int(d[4:6])
    day = int(d[6:8])
    hour = int(d[8:10])
    minute = int(d[10:12])
    if not (1970 <= year <= 2099 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    if hour > 23 or minute > 59:
        return False
    return not (len(d) >= 14 and int(d[12:14]) > 60)


def _group_shape_ok(lengths: list[int]) -> bool:
    """Card-number groupings: 4-4-4[-4][-x] (x 1..7 last) and 4-6-4 / 4-6-5."""
    total = sum(lengths)
    if not 12 <= total <= 19 or lengths[0] != 4:
        return False
    if len(lengths) == 3 and lengths[1] == 6 and lengths[2] in (4, 5):
        return True
    return len(lengths) >= 3 and all(n == 4 for n in lengths[1:-1]) and 1 <= lengths[-1] <= 7


def _two_group_shape_ok(lengths: list[int]) -> bool:
    """Two groups: the BIN (6 or 8 digits) then the rest (8-8 "41111111 11111111",
    6-10 "411111 1111111111")."""
    return (
        len(lengths) == 2
        and lengths[0] in (6, 8)
        and lengths[1] >= 6
        and 12 <= lengths[0] + lengths[1] <= 19
    )


def _iin_ok(digits: str) -> bool:
    """The issuer prefix (IIN) of a card network with a length it issues: Visa 4
    (13/16/19), Mastercard 51-55 and 2221-2720 (16), Maestro and others 50/56-59
    (12-19), Amex 34/37 (15), JCB 35 and Diners 30/36/38/39 (14-19), Discover, UnionPay,
    Maestro 6 (12-19), UATP 1 (15). Asked of the looser forms only (two groups, mixed or
    newer separators), where a Luhn-valid look-alike is likelier."""
    n = len(digits)
    first = digits[0]
    if first == "4":
        return n in (13, 16, 19)
    if first == "6":
        return 12 <= n <= 19
    if first == "5":
        return n == 16 if digits[1] in "12345" else 12 <= n <= 19
    if first == "3":
        if digits[1] in "47":
            return n == 15
        return digits[1] in "05689" and 14 <= n <= 19
    if first == "2":
        return n == 16 and 2221 <= int(digits[:4]) <= 2720
    return first == "1" and n == 15


# ----------------------------------------------------------------------------- the engine


class Redactor:
    """Finds and masks card data and secrets; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        pan_mask: str = "first6last4",
        secrets: Iterable[str] = (),
        allow: Iterable[str] = (),
    ) -> None:
        if pan_mask not in PAN_MASKS:
            raise ValueError(f"pan_mask must be one of {PAN_MASKS}, not {pan_mask!r}")
        self.pan_mask = pan_mask
        variants: set[str] = set()
        for raw in secrets:
            s = raw.strip()
            # A secret of 1-3 characters would mangle every text it appears in.
            if len(s) < 4:
                continue
            variants.add(s)
            variants.add(urllib.parse.quote(s, safe=""))
            variants.add(urllib.parse.quote_plus(s, safe=""))
            variants.add(s.replace("\\", "\\\\").replace('"', '\\"'))
        # A "secret" found inside a marker ("REDACTED", "secret") would grow the text on
        # every pass; longest first so a secret containing another is masked whole.
        variants = {v for v in variants if not any(v in m for m in _MARKERS)}
        self._secrets: tuple[str, ...] = tuple(sorted(variants, key=len, reverse=True))
        self._secrets_re: re.Pattern[str] | None = (
            re.compile("|".join(re.escape(s) for s in self._secrets)) if self._secrets else None
        )
        allow_literals: set[str] = set()
        allow_digits: set[str] = set()
        for raw in allow:
            a = raw.strip()
            if not a:
                continue
            allow_literals.add(a)
            digits = "".join(ch for ch in a if ch.isdigit())
            if digits and len(digits) >= 12 and not any(ch.isalpha() for ch in a):
                allow_digits.add(digits)
        self._allow_literals: tuple[str, ...] = tuple(sorted(allow_literals))
        self._allow_margin = max((len(a) for a in allow_literals), default=0)
        self._allow_digits: frozenset[str] = frozenset(allow_digits)
        # Hex dumps mask every digit of a PAN (first6last4 would leave 12 decimal-looking
        # hex characters that read as a number of their own).
        self._full_masker = self
        if pan_mask != "full":
            self._full_masker = copy.copy(self)
            self._full_masker.pan_mask = "full"

    # ------------------------------------------------------------------ public API

    def text(self, s: str, counts: Counter[str] | None = None) -> str:
        """Return s with card data and secrets masked; counts (if given) gains one per find."""
        if not s:
            return s
        if self._secrets_re is not None and any(sec in s for sec in self._secrets):
            s, n = self._secrets_re.subn(_marker("config_secret"), s)
            _bump(counts, "config_secret", n)
        if len(s) <= _SHORT:
            return self._short(s, counts)
        # Every other rule matches within one line (or a few lines of a hex dump). Find
        # the few lines that can hold a match with C-level searches, and run the regular
        # expressions on those only.
        hits = self._trigger_positions(s)
        if not hits:
            return s
        hits.sort()
        lines: list[list[int]] = []  # [lo, hi, what]
        for pos, what in hits:
            if lines and pos < lines[-1][1]:
                lines[-1][2] |= what
                continue
            lo = s.rfind("\n", 0, pos) + 1
            hi = s.find("\n", pos)
            lines.append([lo, len(s) if hi < 0 else hi, what])
        if any(what & _VIEW for _, _, what in lines):
            lines = _with_dump_lines(s, lines)  # a PAN may run on across hex dump lines
        pieces: list[str] = []
        done = 0
        for lo, hi, what in lines:
            pieces.append(s[done:lo])
            pieces.append(self._segment(s[lo:hi], counts, what))
            done = hi
        pieces.append(s[done:])
        return "".join(pieces)

    def _short(self, s: str, counts: Counter[str] | None) -> str:
        """text() for a short string (a log event field, a line): flags, then the rules."""
        low = s.lower()
        what = 0
        for word in _TRIGGER_WORDS_STR:  # str "in" beats bytes "in" on short needles
            if word in low:
                what = _WORDS
                break
        digits = _shape(s)
        run12 = _RUN12 in digits
        group = _GROUP_TRIGGER in digits
        wide = (" - " in s or " / " in s) and _GROUP_TRIGGER_WIDE in digits
        if run12 or group or wide:
            hits = self._card_hits(s, digits, run12=run12, group=group, wide=wide, hexes=False)
            for _pos, kind in hits:
                what |= kind
        if (
            _HEX_TRIGGERS[0] in digits
            or (group and _HEX_TRIGGERS[1] in digits)
            or (not s.isascii() and _UDIGIT_RE.search(s) is not None)
            or "\x00" in s
            or ("%" in s and "%3" in s)  # a one-character search first: memchr speed
            or ("\\" in s and "\\u003" in s)
        ):
            what |= _VIEW
        return self._segment(s, counts, what) if what else s

    def _trigger_positions(self, s: str) -> list[tuple[int, int]]:
        """(position, _WORDS/_PAN/_TRACK) of everything that may start a match: label words,
        and digit runs or groups that could be card data. Only str/bytes find (C speed);
        the digit shapes come from a latin-1 copy (one byte per character, so positions
        are the text's)."""
        hits: list[tuple[int, int]] = []
        raw = s.encode("latin-1", "replace")
        hits.extend((i, _WORDS) for i in _word_positions(s, raw, _TRIGGER_WORDS_STR))
        hits.extend(self._card_hits(s, raw.translate(_DIGIT_SHAPES).decode("latin-1")))
        hits.extend((i, _VIEW) for i in _view_hits(s))
        return hits

    def _card_hits(
        self,
        s: str,
        digits: str,
        *,
        run12: bool = True,
        group: bool = True,
        wide: bool = True,
        hexes: bool = True,
    ) -> list[tuple[int, int]]:
        """(position, _PAN/_TRACK/_VIEW) of digit runs and groups in s that may be card
        data; digits is s translated with _DIGIT_SHAPES. A caller that knows a shape is
        absent (run12, group, wide: the 12-digit run and group triggers) or looks for it
        itself (hexes: the hex dump triggers) says so, and it is not searched again."""
        hits: list[tuple[int, int]] = []
        i = digits.find(_RUN12) if run12 else -1
        while i >= 0:
            j = _ZERO_RUN.match(digits, i).end()  # type: ignore[union-attr]
            kind = self._run_kind(s, i, j)
            if kind:
                hits.append((i, kind))
            i = digits.find(_RUN12, j)
        if group:
            self._group_hits(s, digits, _GROUP_TRIGGER, hits)
        if wide:
            self._group_hits(s, digits, _GROUP_TRIGGER_WIDE, hits)
        if hexes:
            for needle in _HEX_TRIGGERS:
                i = digits.find(needle)
                while i >= 0:
                    hits.append((i, _VIEW))
                    nl = s.find("\n", i)  # then the next line holding one
                    i = -1 if nl < 0 else digits.find(needle, nl)
        return hits

    def _group_hits(self, s: str, digits: str, needle: str, hits: list[tuple[int, int]]) -> None:
        """Add (position, _PAN) for each digit group chain holding needle that the PAN
        rule would mask."""
        p = digits.find(needle)
        while p >= 0:
            i = p
            while i > 0 and digits[i - 1] == "0":  # back to the start of the digit run
                i -= 1
            m = _PAN_RE.match(s, i)
            if m is not None and m.group("grouped") is not None:
                if self._pan_sub(m, None) != m.group(0):
                    hits.append((i, _PAN))
                p = digits.find(needle, max(m.end(), p + 1))
            else:
                p = digits.find(needle, p + 1)

    def _run_kind(self, s: str, i: int, j: int) -> int:
        """What the digit run s[i:j] (>= 12 digits) can be part of: _TRACK (track 2 "=" or
        "D" after it, track 1 "B" before and "^" after, EMV TLV 5A(0A) before it or 56's
        ASCII-hex "^" = 5E after it, a ";" sentinel), _PAN, or 0 (nothing)."""
        after = s[j : j + 1]
        if after in _TRACK_FOLLOWERS:
            return _TRACK
        before = s[i - 1 : i]
        if before in _TRACK_LEADERS or s[i - 2 : i] in _TLV_5A or s[i - 4 : i] in _TLV_5A0A:
            return _TRACK
        if 12 <= j - i <= 19 and self._pan_ok(s[i:j], s, i, j):
            return _PAN
        k = i + _escape_digits(s, i)
        if k > i and 12 <= j - k <= 19 and self._pan_ok(s[k:j], s, k, j):
            return _PAN
        if j - i >= 24:
            return _VIEW  # may be a hex-ASCII dump ("3431313131...")
        return 0

    def _segment(self, s: str, counts: Counter[str] | None, what: int) -> str:
        """The rules (all but the configured secrets) on one or a few whole lines; what
        says which families can match (_WORDS: labels, _PAN, _TRACK: card data).

        Masking can leave digits that read as a new find ("251210114111 1111 1111 1111":
        the 12-digit run is masked, then "4111 1111 1111 1111" stands alone), so the rules
        run again, all of them, until nothing changes (at most three rounds): a second
        redaction of the result then changes nothing either."""
        for _ in range(3):
            out = self._rules(s, counts, what)
            if out == s:
                break
            s, what = out, _WORDS | _PAN | _TRACK
        return s

    def _rules(self, s: str, counts: Counter[str] | None, what: int) -> str:
        """One round of the rules of _segment."""
        if what & _WORDS:
            low = s.lower()
            if "authoriz" in low:
                s = _AUTH_RE.sub(lambda m: self._kv_sub(m, "authorization", counts), s)
            if "bearer" in low:
                s = _BEARER_RE.sub(lambda m: self._bearer_sub(m, counts), s)
        if what & _TRACK:
            if "^" in s:
                s = _TRACK1_RE.sub(lambda m: self._track1_sub(m, counts), s)
            s = self._tlv(s, counts)
            s = _TRACK2_RE.sub(lambda m: self._track2_sub(m, counts), s)
        if what & _WORDS:
            s = self._kv_pass(s, counts)
        if what & _VIEW:
            s = self._hex_view(s, counts)
        if what & (_PAN | _TRACK):
            s = _PAN_RE.sub(lambda m: self._pan_sub(m, counts), s)
        if what & _VIEW:
            s = self._decoded_view(s, counts)
        return s

    # ------------------------------------------------------------------ other encodings

    def _view_pans(self, view: str, counts: Counter[str] | None) -> list[int]:
        """Indexes of view's characters that the PAN rule masks (counting each PAN)."""
        shapes = _shape(view)
        if _RUN12 not in shapes and not any(n in shapes for n in _GROUP_TRIGGERS):
            return []
        masked = _PAN_RE.sub(lambda m: self._pan_sub(m, counts), view)
        if masked == view:
            return []
        return [k for k, (a, b) in enumerate(zip(view, masked, strict=True)) if a != b]

    def _decoded_view(self, s: str, counts: Counter[str] | None) -> str:
        """PANs written with NULs between the digits (UTF-16 text read as bytes), as JSON
        "\\u003X" or URL "%3X" escapes, or in non-ASCII decimal digits: the PAN rule runs
        on a copy where those read as ASCII digits, and each masked digit is replaced by
        "*" in s, whatever its encoding."""
        if not (
            "\x00" in s
            or "\\u003" in s
            or "%3" in s
            or (not s.isascii() and _UDIGIT_RE.search(s) is not None)
        ):
            return s
        parts: list[str] = []
        starts: list[int] = []  # index in s of each character of the view
        ends: dict[int, int] = {}  # view index -> end in s, for decoded tokens only
        done = 0
        for m in _VIEW_TOKEN_RE.finditer(s):
            a = m.start()
            if a > done:
                parts.append(s[done:a])
                starts.extend(range(done, a))
            done = m.end()
            digit = m.group(1) or m.group(2)
            if digit is None and m.group(3) is not None:
                digit = str(int(m.group(3)))
            if digit is not None:
                ends[len(starts)] = done
                parts.append(digit)
                starts.append(a)
        parts.append(s[done:])
        starts.extend(range(done, len(s)))
        view = "".join(parts)
        hits = self._view_pans(view, counts)
        if not hits:
            return s
        return _replace_spans(s, [(starts[k], ends.get(k, starts[k] + 1), "*") for k in hits])

    def _hex_view(self, s: str, counts: Counter[str] | None) -> str:
        """PANs in hex dumps of their ASCII (or UTF-16) text: "3431313131...", "34 31 31
        ...", and hexdump -C, xxd or od lines, where a PAN may run on from one line to
        the next. The hex is decoded (NUL bytes dropped), the PAN rule runs on the
        decoded text, and every byte of a PAN found becomes "**", its character in the
        dump's ASCII column "*"."""
        if _RUN24 not in _shape(s) and not (" " in s and _has_hex_trigger(s)):
            return s
        # Runs of hex, joined into blocks where a dump line runs on into the next one.
        blocks: list[list[re.Match[str]]] = []
        qualified: list[bool] = []
        prev: re.Match[str] | None = None
        for m in _HEX_RUN_RE.finditer(s):
            shapes = _shape(m.group(0))
            ok = (
                _RUN24 in shapes
                if m.group("flat") is not None
                else any(n in shapes for n in _HEX_TRIGGERS)
            )
            if (
                prev is not None
                and _DUMP_JOIN_RE.fullmatch(s, prev.end(), m.start()) is not None
                and _dump_runs_on(s, prev, m)
            ):
                blocks[-1].append(m)
                qualified[-1] = qualified[-1] or ok
            else:
                blocks.append([m])
                qualified.append(ok)
            prev = m
        chars: list[str] = []
        pairs: list[int] = []  # per decoded character: where its hex pair starts in s
        for block, ok in zip(blocks, qualified, strict=True):
            if not ok:
                continue
            for m in block:
                for tok in _HEX_TOKEN_RE.finditer(s, m.start(), m.end()):
                    for k in range(tok.start(), tok.end(), 2):
                        byte = int(s[k : k + 2], 16)
                        if byte:
                            chars.append(chr(byte))
                            pairs.append(k)
            chars.append("\n")  # blocks apart
            pairs.append(-1)
        if not chars:
            return s
        hits = self._full_masker._view_pans("".join(chars), counts)
        if not hits:
            return s
        spans = [(pairs[k], pairs[k] + 2, "**") for k in hits]
        spans.extend(_ascii_column(s, [pairs[k] for k in hits]))
        return _replace_spans(s, sorted(set(spans)))

    def obj(self, o: Any, counts: Counter[str] | None = None) -> Any:
        """Deep-redact JSON-able data: every string value; a value under a sensitive key
        (cvv, cvc, cvv2, pin, pin_block, password, passwd, secret, token, authorization,
        api_key, track1, track2 ... case-insensitive) is replaced whole."""
        return self._value(o, counts)

    def processor(
        self,
    ) -> Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]:
        """A structlog processor redacting every event dict in place.

        Place it after ``format_exc_info`` (so rendered tracebacks are redacted) and
        before the renderer. ``exc_info`` / ``stack_info`` values are left for structlog.
        """

        def redact_event(
            _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
        ) -> MutableMapping[str, Any]:
            for key in list(event_dict):
                if key in ("exc_info", "stack_info"):
                    continue
                value = event_dict[key]
                kind = sensitive_key_kind(key) if isinstance(key, str) else None
                if kind is not None and key != "event":
                    if value is not None and value != "":
                        event_dict[key] = _marker(kind)
                else:
                    event_dict[key] = self._value(value, None)
            return event_dict

        return redact_event

    # ------------------------------------------------------------------ deep values

    def _value(self, o: Any, counts: Counter[str] | None) -> Any:
        if isinstance(o, str):
            return self.text(o, counts)
        if o is None or isinstance(o, bool | float):
            return o
        if isinstance(o, int):
            if o < 10**11 and o > -(10**11):
                return o
            rendered = str(o)
            redacted = self.text(rendered, counts)
            return o if redacted == rendered else redacted
        if isinstance(o, dict):
            out: dict[Any, Any] = {}
            for k, v in o.items():
                kind = sensitive_key_kind(k) if isinstance(k, str) else None
                new_k = self.text(k, counts) if isinstance(k, str) else k
                if kind is not None and v is not None and v != "":
                    _bump(counts, kind)
                    out[new_k] = _marker(kind)
                elif isinstance(k, str) and _is_labelled_id(k, v):
                    out[new_k] = v
                else:
                    out[new_k] = self._value(v, counts)
            return out
        if isinstance(o, list):
            return [self._value(v, counts) for v in o]
        if isinstance(o, tuple):
            return tuple(self._value(v, counts) for v in o)
        if isinstance(o, bytes | bytearray):
            decoded = decode_text(bytes(o))
            redacted = self.text(decoded, counts)
            return o if redacted == decoded else redacted
        # Anything else (exceptions, paths, datetimes, objects in a log event): judged by
        # its str(), replaced by the redacted string only when that str() held data.
        try:
            rendered = str(o)
        except Exception:  # a broken __str__ must not break logging
            return o
        redacted = self.text(rendered, counts)
        return o if redacted == rendered else redacted

    # ------------------------------------------------------------------ substitutions

    def _kv_sub(self, m: re.Match[str], kind: str, counts: Counter[str] | None) -> str:
        """Replace the value of an Authorization match, keeping key, separator, quoting."""
        _bump(counts, kind)
        return m.string[m.start() : m.end("sep")] + _wrap(kind, m.group("kq"), m)

    def _kv_pass(self, s: str, counts: Counter[str] | None) -> str:
        """Labelled values: search the label only near each label word found."""
        starts = _word_positions(s, None, _KV_WORDS)
        if not starts:
            return s
        starts.sort()
        pieces: list[str] = []
        done = 0
        n = len(s)
        seen: set[int] = set()
        for p in starts:
            pos = max(done, p - 16)
            end = min(n, p + 48)
            while pos < end:
                head = _KV_HEAD_RE.search(s, pos, end)
                if head is None:
                    break
                pos = head.start() + 1
                if head.start() in seen:
                    continue
                seen.add(head.start())
                value = _KV_VALUE_RE.match(s, head.end())
                if value is None:
                    continue
                kind = _label_kind(head.group("label"))
                if not _label_value_ok(kind, value):
                    continue
                _bump(counts, kind)
                pieces.append(s[done : value.start("val")])
                pieces.append(_wrap(kind, head.group("kq"), value))
                done = pos = value.end()
        if not pieces:
            return s
        pieces.append(s[done:])
        return "".join(pieces)

    def _bearer_sub(self, m: re.Match[str], counts: Counter[str] | None) -> str:
        _bump(counts, "bearer")
        return f"{m.group('scheme')}{m.group('sp')}{_marker('bearer')}"

    def _track1_sub(self, m: re.Match[str], counts: Counter[str] | None) -> str:
        _bump(counts, "track1")
        return _marker("track1")

    def _track2_sub(self, m: re.Match[str], counts: Counter[str] | None) -> str:
        pan = m.group("pan")
        exp = m.group("exp") or m.group("dexp") or "0000"
        rest = m.group("rest") if m.group("rest") is not None else (m.group("drest") or "")
        plausible = 1 <= int(exp[2:4]) <= 12 and len(rest) >= 3
        if not (m.group("ss") or luhn_ok(pan) or plausible):
            return m.group(0)
        if pan in self._allow_digits:
            return m.group(0)
        _bump(counts, "track2")
        return _marker("track2")

    def _tlv(self, s: str, counts: Counter[str] | None) -> str:
        """Replace the values of EMV TLV elements 5A, 57, 9F6B and 56 found in hex text."""
        pieces: list[str] = []
        pos = 0
        search_at = 0
        mark = _marker("emv_tlv")
        while True:
            m = _TLV_RE.search(s, search_at)
            if m is None:
                break
            tag = m.group("tag").upper()
            length = int(m.group("len"), 16)
            vstart = m.end()
            vend = vstart + 2 * length
            value = s[vstart:vend]
            ok = (
                length > 0
                and len(value) == 2 * length
                and _HEX_RE.fullmatch(value) is not None
                and _tlv_value_ok(tag, value)
            )
            if not ok:
                search_at = m.start() + 1
                continue
            pieces.append(s[pos:vstart])
            pieces.append(mark)
            _bump(counts, "emv_tlv")
            pos = search_at = vend
        if not pieces:
            return s
        pieces.append(s[pos:])
        return "".join(pieces)

    def _pan_sub(self, m: re.Match[str], counts: Counter[str] | None) -> str:
        text = m.string
        start, end = m.span()
        plain = m.group(0) if m.group("plain") is not None else None
        if plain is not None:
            if len(plain) <= 19 and self._pan_ok(plain, text, start, end):
                _bump(counts, "pan")
                return self._mask_digits(plain)
            skip = _escape_digits(text, start)
            if (
                skip
                and 12 <= len(plain) - skip <= 19
                and self._pan_ok(plain[skip:], text, start + skip, end)
            ):
                _bump(counts, "pan")
                return plain[:skip] + self._mask_digits(plain[skip:])
            return plain
        parts = _GAP_RE.split(m.group(0))
        groups, seps = parts[0::2], parts[1::2]
        lengths = [len(g) for g in groups]
        n = len(groups)
        offsets: list[int] = []
        pos = start
        for k, g in enumerate(groups):
            offsets.append(pos)
            pos += len(g) + (len(seps[k]) if k < len(seps) else 0)
        out = list(groups)
        # Left to right, the longest card-shaped run of 2-5 groups at each group: a PAN
        # followed by a CVV or preceded by a reference number still gets masked, and so
        # does every PAN of a chain of them. A classic grouping with one classic
        # separator is judged like a plain run; any other (two groups, "/" or "_",
        # mixed separators) must also carry a card network's prefix and length.
        i = 0
        while i < n:
            for size in (5, 4, 3, 2):
                if i + size > n:
                    continue
                sub = lengths[i : i + size]
                shape = _group_shape_ok(sub)
                if not shape and not _two_group_shape_ok(sub):
                    continue
                digits = "".join(groups[i : i + size])
                window_seps = seps[i : i + size - 1]
                classic = (
                    shape
                    and window_seps[0] in _CLASSIC_SEPS
                    and window_seps.count(window_seps[0]) == len(window_seps)
                )
                if not classic and not _iin_ok(digits):
                    continue
                if not self._pan_ok(digits, text, offsets[i], offsets[i + size - 1] + sub[-1]):
                    continue
                _bump(counts, "pan")
                masked = self._mask_digits(digits)
                k = 0
                for g in range(i, i + size):
                    out[g] = masked[k : k + lengths[g]]
                    k += lengths[g]
                i += size
                break
            else:
                i += 1
        pieces = [out[0]]
        for k, sep in enumerate(seps):
            pieces.append(sep)
            pieces.append(out[k + 1])
        return "".join(pieces)

    # ------------------------------------------------------------------ PAN decisions

    def _pan_ok(self, digits: str, text: str, start: int, end: int) -> bool:
        """True when digits at text[start:end] should be masked as a PAN."""
        first = digits[0]
        if first == "0":
            return False
        if first == "1" and len(digits) != 15:
            return False  # epoch s/ms/us/ns; only UATP (15 digits) starts with 1
        if digits.startswith("89") and len(digits) >= 18:
            return False  # ICCID (SIM serial)
        if first in "12" and _looks_like_timestamp(digits):
            return False
        if not luhn_ok(digits):
            return False
        if digits in self._allow_digits:
            return False
        if text[start - 1 : start] == "+" and not text[start - 2 : start - 1].isalnum():
            return False  # E.164 phone number ("+4915...", not form-encoded "card+4111...")
        if (
            end - start == len(digits)  # a plain run: identifiers are not written grouped
            and text[start - 1 : start] in _ID_VALUE_OPENERS
            and not _amex_shaped(digits)  # 15 digits from 34/37: an Amex PAN wins
        ):
            label = _ID_LABEL_RE.search(text, max(0, start - 40), start)
            if label is not None and id_length(label.group("label")) == len(digits):
                return False
        return not self._protected(text, start, end)

    def _protected(self, text: str, start: int, end: int) -> bool:
        """Inside a UUID, a hex digest or an allow-listed identifier."""
        right = _ALNUM_RUN_RIGHT.match(text, end)
        left = _ALNUM_RUN_LEFT.search(text, max(0, start - 130), start)
        tok_start = left.start() if left else start
        tok_end = right.end() if right else end
        token = text[tok_start:tok_end]
        if (
            len(token) in _HASH_LENGTHS
            and len(token) > end - start
            and all(ch in _HEX_CHARS for ch in token)
        ):
            return True
        margin = max(36, self._allow_margin)
        lo, hi = max(0, start - margin), min(len(text), end + margin)
        window = text[lo:hi]
        if "-" in window:
            for u in _UUID_RE.finditer(window):
                if u.start() + lo <= start and end <= u.end() + lo:
                    return True
        for a in self._allow_literals:
            if a in window:
                idx = window.find(a)
                while idx != -1:
                    if idx + lo <= start and end <= idx + lo + len(a):
                        return True
                    idx = window.find(a, idx + 1)
        return False

    def _mask_digits(self, digits: str) -> str:
        if self.pan_mask == "full":
            return "*" * len(digits)
        return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


_NULLS: Final = frozenset({"null", "None", "nil", "undefined", "NULL"})


def _amex_shaped(digits: str) -> bool:
    """15 digits starting 34 or 37: read as an Amex PAN even under an IMEI/MID label."""
    return len(digits) == 15 and digits[:2] in ("34", "37")


def _view_hits(s: str) -> list[int]:
    """Positions (one per line) of what may start a PAN in another encoding: a NUL, a
    "\\u003" or "%3" escape, a non-ASCII decimal digit."""
    out: list[int] = []
    for needle in ("\x00", "\\u003", "%3"):
        if needle[0] not in s:  # a one-character search first: memchr speed
            continue
        i = s.find(needle)
        while i >= 0:
            out.append(i)
            nl = s.find("\n", i)
            i = -1 if nl < 0 else s.find(needle, nl)
    if not s.isascii():
        m = _UDIGIT_RE.search(s)
        while m is not None:
            out.append(m.start())
            nl = s.find("\n", m.start())
            m = None if nl < 0 else _UDIGIT_RE.search(s, nl)
    return out


def _dump_runs_on(s: str, prev: re.Match[str], run: re.Match[str]) -> bool:
    """Whether the hex run starts the dump line after the one prev ends, at the offset
    that follows prev's bytes (consecutive lines of one dump, not two dumps)."""
    head_prev = _DUMP_LINE_RE.match(s, s.rfind("\n", 0, prev.start()) + 1)
    head = _DUMP_LINE_RE.match(s, s.rfind("\n", 0, run.start()) + 1)
    if head_prev is None or head is None:
        return False
    if head_prev.end() != prev.start() or head.end() != run.start():
        return False
    size = sum(len(t) // 2 for t in _HEX_TOKEN_RE.findall(prev.group(0)))
    return int(head.group("off"), 16) == int(head_prev.group("off"), 16) + size


def _with_dump_lines(s: str, lines: list[list[int]]) -> list[list[int]]:
    """The [lo, hi, what] lines of text(), each hex dump line among them widened to the
    dump lines around it, overlapping ones merged."""
    out: list[list[int]] = []
    for lo, hi, what in lines:
        if what & _VIEW and _DUMP_LINE_RE.match(s, lo) is not None:
            lo, hi = _dump_lines(s, lo, hi)
        while out and lo < out[-1][1]:
            prev_lo, prev_hi, prev_what = out.pop()
            lo, hi, what = min(lo, prev_lo), max(hi, prev_hi), what | prev_what
        out.append([lo, hi, what])
    return out


def _dump_lines(s: str, lo: int, hi: int) -> tuple[int, int]:
    """The dump line s[lo:hi] widened by up to two dump lines before and after it (a PAN
    of up to 19 digits in UTF-16 spans three lines of 16 bytes)."""
    for _ in range(2):
        if lo == 0:
            break
        before = s.rfind("\n", 0, lo - 1) + 1
        if _DUMP_LINE_RE.match(s, before) is None:
            break
        lo = before
    for _ in range(2):
        if hi >= len(s):
            break
        after = s.find("\n", hi + 1)
        after = len(s) if after < 0 else after
        if _DUMP_LINE_RE.match(s, hi + 1) is None:
            break
        hi = after
    return lo, hi


def _ascii_column(s: str, pairs: list[int]) -> list[tuple[int, int, str]]:
    """Spans masking, in a dump line's ASCII column ("|4111...|" of hexdump -C, the
    text after xxd's hex), the characters of the bytes whose hex starts at pairs."""
    out: list[tuple[int, int, str]] = []
    lines: dict[int, list[int]] = {}
    for p in pairs:
        lines.setdefault(s.rfind("\n", 0, p) + 1, []).append(p)
    for lo, hits in lines.items():
        head = _DUMP_LINE_RE.match(s, lo)
        if head is None:
            continue
        hi = s.find("\n", lo)
        hi = len(s) if hi < 0 else hi
        end = hi - 1 if s[hi - 1 : hi] == "|" else hi
        first = _HEX_RUN_RE.match(s, head.end())
        if first is None:
            continue
        order = [
            k
            for tok in _HEX_TOKEN_RE.finditer(s, first.start(), first.end())
            for k in range(tok.start(), tok.end(), 2)
        ]
        column = end - len(order)
        for p in hits:
            if p in order:
                at = column + order.index(p)
                if first.end() <= at < end and s[at].isdigit():
                    out.append((at, at + 1, "*"))
    return out


def _has_hex_trigger(s: str) -> bool:
    shapes = _shape(s)
    return any(n in shapes for n in _HEX_TRIGGERS)


def _replace_spans(s: str, spans: list[tuple[int, int, str]]) -> str:
    """s with each (start, end, replacement) applied; spans do not overlap."""
    pieces: list[str] = []
    done = 0
    for a, b, rep in sorted(spans):
        pieces.append(s[done:a])
        pieces.append(rep)
        done = b
    pieces.append(s[done:])
    return "".join(pieces)


def _escape_digits(text: str, start: int) -> int:
    """How many leading digits of the run at text[start] belong to an escape before it:
    2 after "%" ("%224111..." is a URL-encoded quote, then the PAN), 4 after "\\u"
    ("\\u00224111..." in JSON), else 0."""
    if text[start - 1 : start] == "%":
        return 2
    if text[start - 2 : start] == "\\u":
        return 4
    return 0


def _is_labelled_id(key: str, value: Any) -> bool:
    """A value under an identifier key (rrn, imei, ...) with exactly that identifier's length."""
    length = id_length(key)
    if length is None or isinstance(value, bool) or not isinstance(value, str | int):
        return False
    text = str(value)
    return len(text) == length and text.isdigit() and not _amex_shaped(text)


def _wrap(kind: str, kq: str, value: re.Match[str]) -> str:
    """The marker replacing a value, quoted like the value (or like a JSON key)."""
    mark = _marker(kind)
    vq = value.group("vq")
    if vq is not None:
        return f"{vq}{mark}{vq}"
    if value.group("v2") is not None:
        return f"'{mark}'"
    if kq.endswith('"'):
        return f"{kq}{mark}{kq}"  # a bare JSON value under a JSON key: keep the JSON valid
    return mark


def _label_value_ok(kind: str, value: re.Match[str]) -> bool:
    """Whether a labelled value is one to redact."""
    v = value.group("v1")
    if v is None:
        v = value.group("v2") if value.group("v2") is not None else value.group("v3")
    if not v or (value.group("v3") is not None and v in _NULLS):
        return False  # an empty or null value reveals nothing
    if kind == "pin":
        return 4 <= len(v) <= 12 and v.isdigit()  # "pin=2" is a drawer kick pin
    if kind == "cvv" and value.group("v3") is not None:
        return v.isdigit()  # "cvv: present", "cvc=M" (a check result) carry no code
    return True


def id_length(key: str) -> int | None:
    """The digit count of a fixed-length identifier named by key (rrn, imei...), or None."""
    return _ID_LENGTHS.get(key.lower().translate(_KEY_NORMALISE))


def _label_kind(label: str) -> str:
    norm = label.lower().translate(_KEY_NORMALISE)
    kind = _KEY_KINDS.get(norm)
    if kind is not None:
        return kind
    if norm.startswith("track2"):
        return "track2"
    if norm.startswith("track1"):
        return "track1"
    return sensitive_key_kind(norm) or "secret"


def _tlv_value_ok(tag: str, value: str) -> bool:
    """The hex value of a candidate TLV element has the shape its tag demands."""
    if tag == "5A":
        digits = value.rstrip("Ff")
        return 12 <= len(digits) <= 19 and digits.isdigit()
    if tag in ("57", "9F6B"):
        pan, sep, rest = value.upper().partition("D")
        return bool(sep) and 12 <= len(pan) <= 19 and pan.isdigit() and rest[:4].isdigit()
    # 56: track 1 equivalent, ASCII: 'B' PAN '^' NAME '^' YYMM ...
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return False
    return raw[:1] == b"B" and raw[1:13].isdigit() and b"^" in raw


# ----------------------------------------------------------------------------- decoding

SNIFF_BYTES: Final = 4096  # how much of a file's start sniff_encoding() wants
_BOMS: Final = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def sniff_encoding(head: bytes) -> str:
    """The encoding of a log file from its first bytes: "utf-16-le" / "utf-16-be" by
    their byte-order mark, or without one by the NULs of ASCII text in UTF-16 (most
    odd bytes NUL and few even ones: little-endian; the reverse: big-endian); else
    "utf-8". A text must be decoded with it before redaction, or its digits are apart."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    sample = head[: len(head) - len(head) % 2]
    pairs = len(sample) // 2
    if pairs < 2:
        return "utf-8"
    even = sample[0::2].count(0)
    odd = sample[1::2].count(0)
    if odd >= 0.3 * pairs and even <= 0.05 * pairs:
        return "utf-16-le"
    if even >= 0.3 * pairs and odd <= 0.05 * pairs:
        return "utf-16-be"
    return "utf-8"


def decode_text(data: bytes, encoding: str | None = None) -> str:
    """data as text in encoding (sniffed from data when None), a byte-order mark
    dropped, undecodable bytes replaced."""
    enc = encoding or sniff_encoding(data[:SNIFF_BYTES])
    if enc != "utf-8" and len(data) % 2:
        data = data[:-1]  # half a UTF-16 code unit (a cut tail)
    text = data.decode(enc, "replace")
    return text[1:] if text.startswith("\ufeff") else text


def redactor_for(cfg: Config) -> Redactor:
    """The one Redactor a config asks for (bundles, logs and command output alike).

    Its PAN mask and secrets come from the config; the allow-list is the config's
    plus the terminal's own serial and device id, which look like numbers but are
    neither card data nor secret.
    """
    allow = [a for a in (*cfg.redaction.allow, cfg.agent.serial, cfg.agent.device_id) if a]
    return Redactor(pan_mask=cfg.redaction.pan_mask, secrets=cfg.secrets(), allow=allow)
