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
7. PANs: 12-19 digits passing Luhn, plain or grouped (4-4-4-4..., 4-6-5, 4-6-4) with one
   consistent separator (space, dash, dot, ``+`` or ``%20``), not touching other digits
   (a URL escape such as ``%22`` or a JSON ``\\u0022`` before it does not count) →
   first 6 and last 4 digits kept, separators kept (``4111 11** **** 1111``), or every
   digit masked with ``pan_mask="full"``.

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

Speed: every rule matches within one line, so text() first finds the few lines that can
hold a match with C-level searches (label words in the lower-cased text; 12-digit runs
and separated 4-digit groups in a digit-shape copy, each run judged at once) and runs
the regular expressions on those lines only.
"""

from __future__ import annotations

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

# Card-data pre-check on a latin-1 copy of the text where every ASCII digit is "0",
# every PAN group separator (space . + - and the % of %20) is "s" and the rest is "_":
# then a 12-digit run is b"0" * 12 and two separated 4-digit groups are b"0000s0000".
_DIGIT_SHAPES: Final = bytes(
    ord("0") if chr(b).isdigit() and b < 128 else ord("s") if chr(b) in " .+-%" else ord("_")
    for b in range(256)
)
_RUN12: Final = b"0" * 12
_ZERO_RUN: Final = re.compile(b"0*")
_GROUP_TRIGGER: Final = b"0000s0000"
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
# it, see _escape_digits), or 4-digit groups (at least 3 groups) or
# 4-6-x groups with one consistent separator. Shapes are checked in code.
_PAN_RE: Final = re.compile(
    r"(?<!\d)(?:(?P<plain>\d{12,23})"
    r"|(?P<grouped>\d{4}(?P<sep>[ .+-]|%20)\d{4,6}(?:(?P=sep)\d{1,7})+))(?!\d)",
    re.ASCII,
)

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
        # Every other rule matches within one line. Find the few lines that can hold a
        # match with C-level searches, and run the regular expressions on those only.
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
        digits = s.encode("latin-1", "replace").translate(_DIGIT_SHAPES)
        if _RUN12 in digits or _GROUP_TRIGGER in digits:
            for _pos, kind in self._card_hits(s, digits):
                what |= kind
        return self._segment(s, counts, what) if what else s

    def _trigger_positions(self, s: str) -> list[tuple[int, int]]:
        """(position, _WORDS/_PAN/_TRACK) of everything that may start a match: label words,
        and digit runs or groups that could be card data. Only str/bytes find (C speed);
        the digit shapes come from a latin-1 copy (one byte per character, so positions
        are the text's)."""
        hits: list[tuple[int, int]] = []
        raw = s.encode("latin-1", "replace")
        hits.extend((i, _WORDS) for i in _word_positions(s, raw, _TRIGGER_WORDS_STR))
        hits.extend(self._card_hits(s, raw.translate(_DIGIT_SHAPES)))
        return hits

    def _card_hits(self, s: str, digits: bytes) -> list[tuple[int, int]]:
        """(position, _PAN/_TRACK) of digit runs and groups in s that may be card data;
        digits is s translated with _DIGIT_SHAPES."""
        hits: list[tuple[int, int]] = []
        i = digits.find(_RUN12)
        while i >= 0:
            j = _ZERO_RUN.match(digits, i).end()  # type: ignore[union-attr]
            kind = self._run_kind(s, i, j)
            if kind:
                hits.append((i, kind))
            i = digits.find(_RUN12, j)
        i = digits.find(_GROUP_TRIGGER)
        while i >= 0:
            m = _PAN_RE.match(s, i)
            if m is not None and m.group("grouped") is not None:
                if self._pan_sub(m, None) != m.group(0):
                    hits.append((i, _PAN))
                i = digits.find(_GROUP_TRIGGER, m.end())
            else:
                i = digits.find(_GROUP_TRIGGER, i + 1)
        return hits

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
        if what & (_PAN | _TRACK):
            s = _PAN_RE.sub(lambda m: self._pan_sub(m, counts), s)
        return s

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
            decoded = bytes(o).decode("utf-8", "replace")
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
        plain = m.group("plain")
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
        sep = m.group("sep")
        groups = m.group("grouped").split(sep)
        lengths = [len(g) for g in groups]
        n = len(groups)
        out: list[str] = []
        # Left to right, the longest card-shaped run of 3-5 groups at each group: a PAN
        # followed by a CVV or preceded by a reference number still gets masked, and so
        # does every PAN of a chain of them.
        i = 0
        pos = start
        while i < n:
            for size in (5, 4, 3):
                sub = lengths[i : i + size]
                if len(sub) < size or not _group_shape_ok(sub):
                    continue
                sub_end = pos + sum(sub) + (size - 1) * len(sep)
                if not self._pan_ok("".join(groups[i : i + size]), text, pos, sub_end):
                    continue
                _bump(counts, "pan")
                out.append(self._mask_grouped(groups[i : i + size], sep))
                i += size
                pos = sub_end + len(sep)
                break
            else:
                out.append(groups[i])
                pos += lengths[i] + len(sep)
                i += 1
        return sep.join(out)

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

    def _mask_grouped(self, groups: list[str], sep: str) -> str:
        masked = self._mask_digits("".join(groups))
        out: list[str] = []
        i = 0
        for g in groups:
            out.append(masked[i : i + len(g)])
            i += len(g)
        return sep.join(out)


_NULLS: Final = frozenset({"null", "None", "nil", "undefined", "NULL"})


def _amex_shaped(digits: str) -> bool:
    """15 digits starting 34 or 37: read as an Amex PAN even under an IMEI/MID label."""
    return len(digits) == 15 and digits[:2] in ("34", "37")


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


def redactor_for(cfg: Config) -> Redactor:
    """The one Redactor a config asks for (bundles, logs and command output alike).

    Its PAN mask and secrets come from the config; the allow-list is the config's
    plus the terminal's own serial and device id, which look like numbers but are
    neither card data nor secret.
    """
    allow = [a for a in (*cfg.redaction.allow, cfg.agent.serial, cfg.agent.device_id) if a]
    return Redactor(pan_mask=cfg.redaction.pan_mask, secrets=cfg.secrets(), allow=allow)
