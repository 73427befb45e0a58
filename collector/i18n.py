"""The collector's languages: English and Simplified Chinese, through gettext catalogs.

- `LANGUAGES`: the tags the collector speaks. English is the source language (the
  message ids are English), so it has no catalog.
- `negotiate(accept_language, user_setting)`: the user's own setting when it names a
  language spoken here, else the best of the browser's Accept-Language (weights as in
  RFC 9110 §12.5.4; q=0 refuses), else "en". zh, zh-CN, zh-SG, zh-MY and zh-Hans (with
  any subtags) are "zh-Hans"; zh-TW, zh-HK, zh-MO and zh-Hant are Traditional Chinese,
  not spoken here, and are passed over (never shown Simplified as if it were theirs).
- `translator(lang)`: the `gettext` translations of a language from
  collector/locale/<dir>/LC_MESSAGES/posagent.mo; `NullTranslations` (English) for
  English, a language not spoken here, or a catalog that is missing or unreadable (logged
  once). A message the catalog lacks comes out in English: never an error.
- The request's language: `LANGUAGE` (a ContextVar, "en" unless set). `Negotiated`, an
  ASGI middleware around the whole app, sets it from Accept-Language for every request
  (and adds ``Vary: Accept-Language`` to every HTML answer); the read-side gate
  (`collector.app.operator_only`) sets it again once it knows the user, whose own setting
  (`collector.accounts.users.set_language`) wins over the browser. Worker threads started
  with `run_in_threadpool` / `anyio.to_thread` see it (they run in a copy of the context).
- `gettext(message)` (imported as ``_``): message in the request's language; `N_(message)`
  marks a text translated later (a table of labels, a reason passed along); `ngettext` is
  not used: Chinese has one form, and the English texts say "bundle(s)".
- `Phrased`: the base of errors a page shows (a form refused with its reason): English in
  `str(e)` for the API and the logs, `e.words()` in the reader's language.

The catalogs: posagent.po is the source people edit; posagent.mo is compiled from it and
committed, so a fresh clone or an installed wheel has it without a build step. `make
i18n` extracts the marked strings (`_`, `gettext`, `N_`) with Babel, updates the .po and
compiles the .mo; tests/collector/test_i18n.py fails when a marked string is missing from
a .po or a .mo is out of step with its .po.
"""

from __future__ import annotations

import gettext as _gettext
import struct
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Final

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.bundle.remedies import N_ as N_

log = structlog.get_logger(__name__)

DOMAIN: Final = "posagent"
LOCALE_DIR: Final = Path(__file__).resolve().parent / "locale"
DEFAULT_LANGUAGE: Final = "en"
# language tag -> the catalog's directory under locale/ (Babel's locale identifier)
LANGUAGES: Final[dict[str, str]] = {"en": "en", "zh-Hans": "zh_Hans"}

_SIMPLIFIED_REGIONS = frozenset({"cn", "sg", "my"})
_MAX_RANGES = 32  # an Accept-Language longer than this is read no further


def language_of(tag: str) -> str | None:
    """The language spoken here that a BCP 47 tag (or a POSIX-style zh_CN) asks for, or None."""
    parts = tag.strip().replace("_", "-").lower().split("-")
    if parts[0] == "en":
        return "en"
    if parts[0] != "zh":
        return None
    rest = parts[1:]
    if not rest or rest[0] == "hans" or (rest[0] in _SIMPLIFIED_REGIONS and "hant" not in rest):
        return "zh-Hans"
    return None


def negotiate(accept_language: str | None, user_setting: str | None = None) -> str:
    """The language to show: "en" or "zh-Hans" (the user's setting, else the browser's)."""
    if user_setting:
        chosen = language_of(user_setting)
        if chosen:
            return chosen
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate((accept_language or "").split(",")[:_MAX_RANGES]):
        tag, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = -1.0
        if not 0 < q <= 1:
            continue
        chosen = language_of(tag) if tag.strip() != "*" else DEFAULT_LANGUAGE
        if chosen:
            ranked.append((-q, i, chosen))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


_ENGLISH = _gettext.NullTranslations()
_cache: dict[tuple[str, Path], _gettext.NullTranslations] = {}
_lock = threading.Lock()


def translator(lang: str, locale_dir: Path = LOCALE_DIR) -> _gettext.NullTranslations:
    """The translations of lang ("en" or "zh-Hans"); English for anything else or a bad catalog."""
    if LANGUAGES.get(lang) is None or lang == DEFAULT_LANGUAGE:
        return _ENGLISH
    key = (lang, locale_dir)
    found = _cache.get(key)  # every text of a page asks: no lock once loaded
    if found is not None:
        return found
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = _load(lang, locale_dir)
        return found


def _load(lang: str, locale_dir: Path) -> _gettext.NullTranslations:
    path = locale_dir / LANGUAGES[lang] / "LC_MESSAGES" / f"{DOMAIN}.mo"
    try:
        with path.open("rb") as f:
            return _gettext.GNUTranslations(f)
    # missing, not a catalog, offsets past its end: OSError; shorter than its header:
    # struct.error; a bad header or plural formula: ValueError; text not in its charset
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        log.warning("catalog_unreadable", lang=lang, path=str(path), error=str(e))
        return _gettext.NullTranslations()


# --------------------------------------------------------------------------- per request

LANGUAGE: ContextVar[str] = ContextVar("posagent_language", default=DEFAULT_LANGUAGE)


def current_language() -> str:
    """The language of the request being answered ("en" outside a request)."""
    return LANGUAGE.get()


def gettext(message: str) -> str:
    """message in the request's language (`LANGUAGE`); as is when no catalog has it."""
    return translator(LANGUAGE.get()).gettext(message)


class Word(str):
    """A value (a status) that an error's words show as its word: `gettext` of it (marked
    `N_` where its words are listed, `collector.pages.WORDS`); the value in `str()`."""

    __slots__ = ()


class Phrased(Exception):
    """An error people read on a page: `message` is English, marked with `N_`, with
    ``{name}`` fields filled from `params` (values: ids, limits, a parser's reason). `str(e)`
    is the English (the API's answer, the logs); `e.words()` the request's language."""

    def __init__(self, message: str = "", **params: object) -> None:
        self.message, self.params = message, params
        super().__init__(message.format(**params) if params else message)

    def words(self) -> str:
        """The message in the request's language; a param that is itself `Phrased` (the
        reason of an error wrapped in another) or a `Word` in its words too."""
        if not self.params:
            return gettext(self.message)
        said = {k: _said(v) for k, v in self.params.items()}
        return gettext(self.message).format(**said)


def _said(value: object) -> object:
    if isinstance(value, Phrased):
        return value.words()
    if isinstance(value, Word):
        return gettext(str(value))
    return value


class Negotiated:
    """ASGI middleware: `LANGUAGE` from the request's Accept-Language for the whole request,
    and ``Vary: Accept-Language`` on every text/html answer (a cache keeps one per language)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = None
        for name, value in scope["headers"]:  # lower case (ASGI); a terminal sends none
            if name == b"accept-language":
                accept = value.decode("latin-1")
                break
        token = LANGUAGE.set(negotiate(accept) if accept else DEFAULT_LANGUAGE)

        async def send_with_vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                ctype = vary = b""
                for name, value in headers:
                    name = name.lower()
                    if name == b"content-type":
                        ctype = value
                    elif name == b"vary":
                        vary = value
                if ctype.startswith(b"text/html") and b"accept-language" not in vary.lower():
                    message["headers"] = [*headers, (b"vary", b"Accept-Language")]
            await send(message)

        try:
            await self.app(scope, receive, send_with_vary)
        finally:
            LANGUAGE.reset(token)
