"""Languages and remedies on the collector (issue 15 items 5 and 10): negotiating English
or Simplified Chinese, the gettext catalogs in step with the code, a fleet's own remedies
in `[collector.remedies]`, and the remedy on a real collector's bundle page."""

from __future__ import annotations

import gettext
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bundle.remedies import CLEARED_NOTE, GENERIC, REMEDIES, Remedy
from agent.core.config import ConfigError
from agent.core.exits import EX_CONFIG
from collector.config import (
    CollectorConfig,
    RemedyOverride,
    RemedyText,
    parse_collector_config,
)
from collector.i18n import LANGUAGES, LOCALE_DIR, negotiate, translator
from collector.pages import remedy_block
from collector.remedies import remedy_for
from tests.bundle.kit import make_bundle
from tests.collector.test_app import Env
from tests.conftest import ROOT, posagent_argv, write_config

ZH = "zh-Hans"
PO = LOCALE_DIR / "zh_Hans" / "LC_MESSAGES" / "posagent.po"
MO = PO.with_suffix(".mo")
CJK = re.compile(r"[\u4e00-\u9fff]")
# where the marked strings are (the Makefile's i18n target extracts the same)
SOURCES = [ROOT / "agent" / "bundle" / "remedies.py", *sorted((ROOT / "collector").rglob("*.py"))]
KEYWORDS = {"_": None, "gettext": None, "N_": None}


# --------------------------------------------------------------------------- negotiate


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", ZH),
        ("zh", ZH),
        ("zh-Hans", ZH),
        ("zh-Hans-CN", ZH),
        ("zh-SG", ZH),
        ("ZH_cn", ZH),
        ("en-US,en;q=0.9", "en"),
        ("en;q=0.5, zh-CN;q=0.9", ZH),
        ("zh-CN;q=0.1, en", "en"),
        ("zh-TW", "en"),  # Traditional: never shown Simplified as if it were theirs
        ("zh-Hant-HK, zh-CN;q=0.5", ZH),
        ("zh-CN;q=0", "en"),  # q=0: not acceptable
        ("fr-FR, de;q=0.8", "en"),
        ("*", "en"),
        ("", "en"),
        (None, "en"),
        ("zh-CN;q=abc, ;;;, =,", "en"),
        ("fr," * 500 + "zh-CN", "en"),  # read no further than 32 ranges
    ],
)
def test_negotiate_from_the_browser(header: str | None, lang: str) -> None:
    """Accept-Language picks English or Simplified Chinese by weight; anything else is English."""
    assert negotiate(header) == lang


def test_the_users_setting_beats_the_browser() -> None:
    """A user's own setting wins when it names a language spoken here, else the header decides."""
    assert negotiate("en-US", "zh-Hans") == ZH
    assert negotiate("zh-CN", "en") == "en"
    assert negotiate("zh-CN", "klingon") == ZH
    assert negotiate("zh-CN", "") == ZH


# --------------------------------------------------------------------------- translator


def test_every_remedy_reads_in_chinese_and_english_is_the_source() -> None:
    """Each remedy text (and the page's own strings) has a Chinese translation; English
    and a language not spoken here give the English text back."""
    zh = translator(ZH)
    texts = [t for r in (*REMEDIES.values(), GENERIC) for t in (r.merchant, r.support)]
    for text in [*texts, CLEARED_NOTE, "What to do", "Merchant", "Support"]:
        assert CJK.search(zh.gettext(text)), text
        assert translator("en").gettext(text) == text
        assert translator("fr").gettext(text) == text
    assert zh.gettext("printer.paper_end") == "printer.paper_end"  # not a message: as is


def _mo(path: Path, messages: dict[str, str]) -> None:
    cat = Catalog(locale="zh_Hans", domain="posagent")
    for k, v in messages.items():
        cat.add(k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        write_mo(f, cat)


def test_a_message_missing_from_the_catalog_falls_back_to_english(tmp_path: Path) -> None:
    """A catalog that lacks an entry gives that entry in English, the others translated."""
    paper = REMEDIES["printer.paper_end"]
    _mo(tmp_path / "zh_Hans" / "LC_MESSAGES" / "posagent.mo", {paper.merchant: "请装纸。"})
    tr = translator(ZH, tmp_path)
    assert tr.gettext(paper.merchant) == "请装纸。"
    assert tr.gettext(paper.support) == paper.support


@pytest.mark.parametrize(
    "content", [None, b"", b"\x00" * 3, b"not a gettext catalog at all", b"\xde\x12\x04\x95" * 2]
)
def test_a_missing_or_broken_catalog_is_english_not_a_crash(
    tmp_path: Path, content: bytes | None
) -> None:
    """No .mo, an empty, truncated or foreign file: the language comes out in English."""
    if content is not None:
        path = tmp_path / "zh_Hans" / "LC_MESSAGES" / "posagent.mo"
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    tr = translator(ZH, tmp_path)
    assert type(tr) is gettext.NullTranslations
    assert tr.gettext("What to do") == "What to do"


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)))
)
def test_a_damaged_copy_of_the_real_catalog_never_raises(
    cut: int, flips: list[tuple[int, int]]
) -> None:
    """The real .mo cut short or with bytes changed loads or falls back: never an exception."""
    data = bytearray(MO.read_bytes()[: max(cut, 0) or None])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zh_Hans" / "LC_MESSAGES" / "posagent.mo"
        path.parent.mkdir(parents=True)
        path.write_bytes(bytes(data))
        tr = translator(ZH, Path(tmp))
        assert isinstance(tr.gettext("What to do"), str)


# --------------------------------------------------------------------------- the catalogs


def _po() -> Catalog:
    with PO.open("rb") as f:
        return read_po(f)


def test_the_po_has_every_marked_string_translated_and_nothing_else() -> None:
    """What `make i18n` would extract is exactly what the .po holds, all translated, none
    fuzzy: a new remedy or page string without its translation fails here."""
    marked = {
        msg
        for src in SOURCES
        for _, msg, _, _ in extract_from_file("python", str(src), keywords=KEYWORDS)
        if isinstance(msg, str)
    }
    assert set(REMEDIES["printer.paper_end"].__dict__.values()) <= marked
    po = _po()
    ids = {m.id for m in po if m.id}
    assert marked == ids, {"not in the .po": marked - ids, "no longer marked": ids - marked}
    for m in po:
        if m.id:
            assert m.string and not m.fuzzy, m.id


def test_the_committed_mo_is_compiled_from_the_po() -> None:
    """The .mo in the repository says what the .po says (rebuild with `make i18n`)."""
    with MO.open("rb") as f:
        mo = read_mo(f)
    assert {m.id: m.string for m in mo if m.id} == {m.id: m.string for m in _po() if m.id}
    assert set(LANGUAGES) == {"en", ZH}


def test_translations_keep_fault_keys_and_commands_as_they_are() -> None:
    """A fault key or a `command` named in an English text is named the same in Chinese."""
    for m in _po():
        if not m.id:
            continue
        for token in re.findall(r"`[^`]+`|\b[a-z]+\.[a-z_]+\b", str(m.id)):
            assert token in str(m.string), (token, m.id)


# --------------------------------------------------------------------------- remedy_for

FLEET = CollectorConfig(
    remedies={
        "printer.paper_end": RemedyOverride(
            merchant="Call the Store 12 hotline, 555-0100.",
            translations={ZH: RemedyText(merchant="请拨打 12 号店热线 555-0100。")},
        ),
        "printer.cover_open": RemedyOverride(support="Send a technician with a spare cover."),
    }
)


def test_remedy_for_translates_the_built_in_text() -> None:
    """Without a fleet override: English, or the catalog's Chinese."""
    paper = REMEDIES["printer.paper_end"]
    assert remedy_for("printer.paper_end", CollectorConfig(), "en") == paper
    zh = remedy_for("printer.paper_end", CollectorConfig(), ZH)
    assert zh == Remedy(
        "请装入新的纸卷并合上机盖。", "如果装好纸后仍反复出现，请检查缺纸传感器和纸卷规格。"
    )


def test_remedy_for_applies_the_fleets_words_per_text_and_language() -> None:
    """The fleet's text for the language, else its plain text in every language, else the
    built-in text translated; each of merchant and support on its own."""
    paper, cover = REMEDIES["printer.paper_end"], REMEDIES["printer.cover_open"]
    assert remedy_for("printer.paper_end", FLEET, "en") == Remedy(
        "Call the Store 12 hotline, 555-0100.", paper.support
    )
    zh = remedy_for("printer.paper_end", FLEET, ZH)
    assert zh.merchant == "请拨打 12 号店热线 555-0100。"
    assert zh.support == translator(ZH).gettext(paper.support) != paper.support
    zh_cover = remedy_for("printer.cover_open", FLEET, ZH)
    assert zh_cover.support == "Send a technician with a spare cover."
    assert zh_cover.merchant == translator(ZH).gettext(cover.merchant) != cover.merchant


def test_remedy_for_an_unknown_key_is_the_generic_remedy() -> None:
    """A key no table knows (a fleet-side or newer key) gets the generic remedy, translated."""
    assert remedy_for("device.checkin_missed", FLEET, "en") == GENERIC
    assert CJK.search(remedy_for("device.checkin_missed", FLEET, ZH).merchant)


# --------------------------------------------------------------------------- config


def test_the_remedies_table_of_the_config() -> None:
    """`[collector.remedies."<key>"]` with merchant, support and per-language wording."""
    cfg = parse_collector_config(
        '[collector.remedies."printer.paper_end"]\n'
        'merchant = "Call the hotline."\n'
        '[collector.remedies."printer.paper_end".translations.zh-Hans]\n'
        'merchant = "请拨打热线。"\n'
        '[collector.remedies."network.link_down".translations.zh-Hans]\n'
        'support = "检查交换机。"\n'
    )
    assert cfg.remedies["printer.paper_end"] == RemedyOverride(
        merchant="Call the hotline.", translations={ZH: RemedyText(merchant="请拨打热线。")}
    )
    assert remedy_for("network.link_down", cfg, ZH).support == "检查交换机。"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[collector.remedies."printer.paper_out"]\nmerchant = "x"\n', "unknown fault key"),
        ('[collector.remedies."printer.paper_end"]\nmerchnt = "x"\n', "unknown key"),
        ('[collector.remedies."printer.paper_end"]\nmerchant = 3\n', "expected a string"),
        ('[collector.remedies."printer.paper_end"]\n', "set merchant, support or both"),
        (
            '[collector.remedies."printer.paper_end".translations.fr]\nmerchant = "x"\n',
            "unknown language",
        ),
        (
            '[collector.remedies."printer.paper_end".translations.en]\nmerchant = "x"\n',
            "unknown language",
        ),
        (
            '[collector.remedies."printer.paper_end".translations.zh-Hans]\n',
            "set merchant, support or both",
        ),
        (
            '[collector.remedies."printer.paper_end"]\nmerchant = "' + "x" * 501 + '"\n',
            "longer than 500",
        ),
        ('[collector.remedies."printer.paper_end"]\nsupport = "a\\nb"\n', "control characters"),
    ],
)
def test_a_bad_remedies_table_is_refused_with_its_key(toml: str, message: str) -> None:
    """Unknown fault keys, fields and languages, empty, long or multi-line texts: refused."""
    with pytest.raises(ConfigError) as e:
        parse_collector_config(toml, "c.toml")
    assert message in str(e.value) and "collector.remedies" in str(e.value)


def test_serve_refuses_an_unknown_fault_key_with_exit_78(tmp_path: Path) -> None:
    """`collector serve` does not start on a remedy for a key no catalog has: one line, 78."""
    conf = write_config(
        tmp_path,
        f'[collector]\ndata_dir = "{tmp_path / "d"}"\n'
        '[collector.remedies."printer.paper_out"]\nmerchant = "Load paper."\n',
    )
    r = subprocess.run(
        posagent_argv("collector", "serve", "--config", str(conf)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == EX_CONFIG, r.stderr
    assert 'collector.remedies."printer.paper_out": unknown fault key' in r.stderr


# --------------------------------------------------------------------------- the page


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Env]:
    """A collector whose config words the cover-open remedy for its merchants."""
    e = Env(
        tmp_path,
        remedies={"printer.cover_open": RemedyOverride(merchant="Call the Store 12 hotline.")},
    )
    yield e
    e.close()


def _page(env: Env, bundle_id: str, **headers: str) -> str:
    r = env.http.get(f"{env.url}/bundles/{bundle_id}", headers=headers, timeout=30)
    assert r.status_code == 200, r.text[:500]
    assert "Accept-Language" in r.headers.get("Vary", "")
    return r.text


def _block(page: str) -> str:
    start = page.index("<section class='card' id='remedy'")
    return page[start : page.index("</section>", start)]


def test_the_bundle_page_shows_the_remedy_in_the_readers_language(fleet: Env) -> None:
    """English by default, Chinese for a zh-CN browser, English for zh-TW; the fleet's
    own wording where the config has one; an unknown key gets the generic remedy."""
    paper = make_bundle(fault="printer.paper_end")
    cover = make_bundle(fault="printer.cover_open", seed=2)
    odd = make_bundle(fault="device.checkin_missed", severity="error", seed=3)
    for b in (paper, cover, odd):
        assert fleet.upload(b).status_code in (200, 201)
    en = _block(_page(fleet, paper.bundle_id))
    assert "lang='en'" in en and "<h2>What to do</h2>" in en
    assert REMEDIES["printer.paper_end"].merchant in en
    zh = _block(_page(fleet, paper.bundle_id, **{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}))
    assert "lang='zh-Hans'" in zh and "<h2>处理建议</h2>" in zh
    assert "请装入新的纸卷并合上机盖。" in zh and "缺纸传感器" in zh
    assert "lang='en'" in _block(_page(fleet, paper.bundle_id, **{"Accept-Language": "zh-TW"}))
    zh_cover = _block(_page(fleet, cover.bundle_id, **{"Accept-Language": "zh-CN"}))
    assert "Call the Store 12 hotline." in zh_cover
    assert translator(ZH).gettext(REMEDIES["printer.cover_open"].support) in zh_cover
    generic = _block(_page(fleet, odd.bundle_id, **{"Accept-Language": "zh"}))
    assert translator(ZH).gettext(GENERIC.merchant) in generic


def test_the_remedy_block_escapes_the_fleets_words(tmp_path: Path) -> None:
    """A fleet's text is shown as text, never as markup."""
    env = Env(
        tmp_path,
        remedies={"printer.paper_end": RemedyOverride(merchant="<b>Load</b> & 'close'")},
    )
    try:
        b = make_bundle()
        assert env.upload(b).status_code in (200, 201)
        block = _block(_page(env, b.bundle_id))
        assert "&lt;b&gt;Load&lt;/b&gt; &amp; &#x27;close&#x27;" in block and "<b>" not in block
    finally:
        env.close()


def test_the_cleared_note_is_translated_on_the_page() -> None:
    """A cleared fault's block says it cleared, in the reader's language."""
    block = remedy_block(REMEDIES["printer.paper_end"], ZH, cleared=True)
    assert translator(ZH).gettext(CLEARED_NOTE) in block and CJK.search(block)
    assert block.count("<tr>") == 2
