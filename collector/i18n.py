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

The catalogs: posagent.po is the source people edit; posagent.mo is compiled from it and
committed, so a fresh clone or an installed wheel has it without a build step. `make
i18n` extracts the marked strings (`_`, `gettext`, `N_`) with Babel, updates the .po and
compiles the .mo; tests/collector/test_i18n.py fails when a marked string is missing from
a .po or a .mo is out of step with its .po.
"""

from __future__ import annotations

import gettext
import struct
import threading
from pathlib import Path
from typing import Final

import structlog

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


_ENGLISH = gettext.NullTranslations()
_cache: dict[tuple[str, Path], gettext.NullTranslations] = {}
_lock = threading.Lock()


def translator(lang: str, locale_dir: Path = LOCALE_DIR) -> gettext.NullTranslations:
    """The translations of lang ("en" or "zh-Hans"); English for anything else or a bad catalog."""
    if LANGUAGES.get(lang) is None or lang == DEFAULT_LANGUAGE:
        return _ENGLISH
    key = (lang, locale_dir)
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = _load(lang, locale_dir)
        return found


def _load(lang: str, locale_dir: Path) -> gettext.NullTranslations:
    path = locale_dir / LANGUAGES[lang] / "LC_MESSAGES" / f"{DOMAIN}.mo"
    try:
        with path.open("rb") as f:
            return gettext.GNUTranslations(f)
    # missing, not a catalog, offsets past its end: OSError; shorter than its header:
    # struct.error; a bad header or plural formula: ValueError; text not in its charset
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        log.warning("catalog_unreadable", lang=lang, path=str(path), error=str(e))
        return gettext.NullTranslations()
