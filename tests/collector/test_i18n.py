"""Languages and remedies on the collector (issue 15 items 5 and 10): negotiating English
or Simplified Chinese, the gettext catalogs in step with the code, a fleet's own remedies
in `[collector.remedies]`, the remedy on a real collector's bundle page, and every
operator page in the reader's language (the browser's, or the user's own setting, which
wins), with fault keys, ids and numbers as they are."""

from __future__ import annotations

import gettext
import io
import json
import re
import subprocess
import tempfile
import tokenize
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
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
from tests.collector.kit import ADMIN, ADMIN_PASSWORD, form_csrf, login
from tests.collector.test_app import DEV, Env
from tests.conftest import ROOT, posagent_argv, wait_until, write_config

ZH = "zh-Hans"
PO = LOCALE_DIR / "zh_Hans" / "LC_MESSAGES" / "posagent.po"
MO = PO.with_suffix(".mo")
CJK = re.compile(r"[\u4e00-\u9fff]")
# where the marked strings are (the Makefile's i18n target extracts the same)
SOURCES = [
    ROOT / "agent" / "bundle" / "remedies.py",
    ROOT / "agent" / "bundle" / "html.py",
    *sorted((ROOT / "collector").rglob("*.py")),
]
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


# --------------------------------------------------------------------------- the catalog's care


def test_translations_keep_every_placeholder() -> None:
    """A `{name}` the code fills in (a count, an id, a time) is in every translation."""
    for m in _po():
        if m.id:
            wanted = sorted(re.findall(r"\{[a-z_]+\}", str(m.id)))
            assert sorted(re.findall(r"\{[a-z_]+\}", str(m.string))) == wanted, m.id


_LITERAL_CALL = re.compile(r"(?<![A-Za-z0-9_])_\(['\"]")


def test_no_marked_string_hides_in_an_f_string() -> None:
    """`_("...")` inside an f-string is invisible to `pybabel extract` on Python 3.11 (an
    f-string is one token): it would never reach the catalog and stay English."""
    hidden = []
    for src in SOURCES:
        text = src.read_text(encoding="utf-8")
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            fstring = re.match(r"^[rRbBuU]*[fF]", tok.string)
            if tok.type == tokenize.STRING and fstring and _LITERAL_CALL.search(tok.string):
                hidden.append(f"{src.relative_to(ROOT)}:{tok.start[0]}")
    assert not hidden


# --------------------------------------------------------------------------- the pages


class _Texts(HTMLParser):
    """The page's own texts as a reader sees them (one string per text node): not the
    style, nor the bundle's raw data folded in <details> (their <summary> is the page's)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._style = self._details = self._summary = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._style += tag == "style"
        self._details += tag == "details"
        self._summary += tag == "summary"

    def handle_endtag(self, tag: str) -> None:
        self._style -= tag == "style"
        self._details -= tag == "details"
        self._summary -= tag == "summary"

    def handle_data(self, data: str) -> None:
        raw = self._details and not self._summary
        if not self._style and not raw and data.strip():
            self.texts.append(data.strip())


def _texts(page: str) -> list[str]:
    p = _Texts()
    p.feed(page)
    return p.texts


def _english_left(page: str) -> list[str]:
    """Texts of a Chinese page that are an English message of the catalog (its Chinese
    differs): a marked string the page forgot to translate."""
    english = {str(m.id) for m in _po() if m.id and m.string != m.id and len(str(m.id)) > 2}
    return [t for t in _texts(page) if t in english]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


ZH_BROWSER = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}


def _get(http: requests.Session, url: str, code: int = 200, **headers: str) -> str:
    r = http.get(url, headers=headers, timeout=30, allow_redirects=False)
    assert r.status_code == code, (url, r.status_code, r.text[:300])
    assert "Accept-Language" in r.headers.get("Vary", ""), url  # a cache keeps one per language
    return r.text


def _fleet_with_an_incident(env: Env) -> tuple[str, int]:
    """A paper-end bundle of DEV and the incident it opened: (bundle id, incident id)."""
    b = make_bundle(device=DEV, fault="printer.paper_end", severity="critical")
    assert env.upload(b).status_code in (200, 201)
    found = wait_until(
        lambda: env.http.get(f"{env.url}/v1/incidents", timeout=10).json()["incidents"],
        timeout_s=60,
    )
    assert found, "no incident opened"
    return b.bundle_id, int(found[0]["id"])


def test_every_page_reads_in_chinese_for_a_chinese_browser(env: Env) -> None:
    """Accept-Language zh-CN: home, incident list, incident, bundle list, bundle, device,
    admin, audit, settings, login and error pages are Simplified Chinese (`<html lang>`
    says so), with no marked string left in English; fault keys, ids and numbers as they are."""
    bid, iid = _fleet_with_an_incident(env)
    get = env.http
    expected = {
        "/": [
            "终端总览",
            "按严重程度统计的未解决事件",
            "高发故障代码",
            "最近 7 天",
            "全部未解决事件",
        ],
        "/incidents": ["筛选", "负责人", "1 个事件", "未处理", "严重", "发生中，"],
        f"/incidents/{iid}": ["导出争议材料 (.zip)", "沟通记录", "处理经过", "添加记录", "确认"],
        "/bundles": ["创建时间", "1 个证据包", "触发类型", "故障"],
        f"/bundles/{bid}": ["处理建议", "下载证据包 (.zip)", "时间线", "关于此证据包", " · 故障<"],
        f"/devices/{DEV}": ["设备 " + DEV, "没有这个设备。"][:1],
        "/admin": ["添加用户", "API 令牌", "登记设备", "归属门店", "管理员"],
        "/audit": ["审计日志", "导出（JSON Lines）", "操作人"],
        "/settings": ["页面语言", "跟随浏览器", "保存"],
    }
    for path, words in expected.items():
        page = _get(get, env.url + path, **ZH_BROWSER)
        assert "<html lang='zh-Hans'>" in page, path
        assert "posagent collector" in page  # the product's name stays
        for w in words:
            assert w in page, (path, w)
        assert not _english_left(page), (path, _english_left(page))
    # ids, fault keys, numbers and units unchanged
    home = _get(get, f"{env.url}/", **ZH_BROWSER)
    assert "printer.paper_end" in home and DEV in home
    incident = _get(get, f"{env.url}/incidents/{iid}", **ZH_BROWSER)
    assert f"#{iid} " in incident and f"{DEV} 上的 printer.paper_end" in incident
    assert f"/bundles/{bid}" in incident
    bundle = _get(get, f"{env.url}/bundles/{bid}", **ZH_BROWSER)
    assert bid in bundle and "id='fault-key'>printer.paper_end<" in bundle
    assert re.search(r"\d+ KiB", bundle) and "timeline.json" in bundle
    assert "120 条读数，来自" in bundle  # make_bundle's 120 readings, counted in Chinese
    listing = _get(get, f"{env.url}/bundles?fault=printer.paper_end", **ZH_BROWSER)
    assert "value='printer.paper_end' selected" in listing  # the filter's values stay
    # the pages of people not logged in: the login form, an unknown page
    anonymous = requests.Session()
    anonymous.headers.update(ZH_BROWSER)  # as a browser sends it with every request
    login_page = _get(anonymous, f"{env.url}/login", **ZH_BROWSER)
    assert "<html lang='zh-Hans'>" in login_page and "<h1>登录</h1>" in login_page
    assert not _english_left(login_page)
    wrong = login(anonymous, env.url, ADMIN, "not the password")
    assert wrong.status_code == 401 and "用户名或密码错误。" in wrong.text
    missing = anonymous.get(f"{env.url}/no/such/page", headers=ZH_BROWSER, timeout=10)
    assert missing.status_code == 404 and "404: 页面不存在" in missing.text
    gone = _get(get, f"{env.url}/incidents/999999", 404, **ZH_BROWSER)
    assert "没有这个事件。" in gone


def test_the_dispute_export_reads_in_the_language_of_who_asked(env: Env) -> None:
    """The export's page is in the asker's language (a support team reading Chinese hands a
    Chinese page to the merchant); incident.json, facts for machines, stays English."""
    bid, iid = _fleet_with_an_incident(env)
    r = env.http.get(f"{env.url}/v1/incidents/{iid}/export", headers=ZH_BROWSER, timeout=60)
    assert r.status_code == 200, r.text[:300]
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    page = zf.read(f"incident-{iid}/index.html").decode()
    assert "<html lang='zh-Hans'>" in page and not _english_left(page), _english_left(page)
    for w in ("沟通记录", "处理经过", "接收时的 SHA-256", "当前的签名", "本次导出"):
        assert w in page, w
    assert f"事件 #{iid}：终端 {DEV} 上的 printer.paper_end" in page and bid in page
    facts = json.loads(zf.read(f"incident-{iid}/incident.json"))
    check = facts["bundle_checks"][0]  # Env keeps no device keys: entries checked only
    assert check["signature_now"].startswith("entries verified; no device key"), check
    assert "内容已校验；collector 上没有该设备的密钥" in page
    english = env.http.get(f"{env.url}/v1/incidents/{iid}/export", timeout=60)
    page_en = zipfile.ZipFile(io.BytesIO(english.content)).read(f"incident-{iid}/index.html")
    assert b"<html lang='en'>" in page_en and not CJK.search(page_en.decode())


def test_a_refused_form_says_why_in_the_readers_language(env: Env) -> None:
    """A note or a status form refused on the page says why in the reader's language (the
    note's text kept in its form); the API answers the same refusal in English."""
    _, iid = _fleet_with_an_incident(env)
    s = _session(env)
    s.headers.update(ZH_BROWSER)
    csrf = form_csrf(_get(s, f"{env.url}/incidents/{iid}"))
    note = {"channel": "phone", "text": "已电话联系商户", "at": "yesterday", "csrf": csrf}
    r = s.post(f"{env.url}/v1/incidents/{iid}/notes", data=note, timeout=30)
    assert r.status_code == 400, r.text[:300]
    assert "时间：不是有效时间（RFC 3339 或 Unix 秒数）：&#x27;yesterday&#x27;" in r.text
    assert "已电话联系商户" in r.text  # nothing typed is lost
    r = s.post(f"{env.url}/v1/incidents/{iid}/notes", data={**note, "at": "", "text": " "})
    assert r.status_code == 400 and "记录内容为必填项" in r.text
    ack = {"status": "acknowledged", "csrf": csrf}
    url = f"{env.url}/v1/incidents/{iid}/status"
    assert s.post(url, data=ack, allow_redirects=False, timeout=30).status_code == 303
    again = s.post(url, data=ack, allow_redirects=False, timeout=30)
    assert again.status_code == 409 and f"事件 {iid} 已经是已确认状态" in again.text
    api = env.http.post(
        f"{env.url}/v1/incidents/{iid}/notes",
        json={"channel": "phone", "text": "x", "at": "yesterday"},
        headers=ZH_BROWSER,
        timeout=30,
    )
    assert api.status_code == 400
    assert api.json()["error"] == "at: not a time (RFC 3339 or epoch seconds): 'yesterday'"
    api = env.http.post(url, json={"status": "acknowledged"}, headers=ZH_BROWSER, timeout=30)
    assert api.json()["error"] == f"incident {iid} is already acknowledged"
    listing = _get(s, f"{env.url}/incidents?severity=loud", 400)
    assert "严重程度必须是以下之一：" in listing


def test_english_by_default(env: Env) -> None:
    """No Accept-Language, English or a language not spoken here: every page is English,
    without a Chinese character (the settings page names 简体中文 in itself)."""
    bid, iid = _fleet_with_an_incident(env)
    paths = ["/", "/incidents", f"/incidents/{iid}", "/bundles", f"/bundles/{bid}", "/admin"]
    paths += [f"/devices/{DEV}", "/audit"]
    for headers in ({}, {"Accept-Language": "en-US"}, {"Accept-Language": "fr, zh-TW;q=0.5"}):
        for path in paths:
            page = _get(env.http, env.url + path, **headers)
            assert "<html lang='en'>" in page and not CJK.search(page), (path, headers)
    home = _get(env.http, f"{env.url}/")
    assert "The fleet at a glance" in home and "Top fault keys" in home
    assert "<h1>Log in</h1>" in _get(requests.Session(), f"{env.url}/login")
    settings = _get(env.http, f"{env.url}/settings")
    assert "Language of the pages" in settings and "简体中文" in settings


def _session(env: Env) -> requests.Session:
    """The admin logged in with a password, as a browser is (a session cookie)."""
    s = requests.Session()
    assert login(s, env.url, ADMIN, ADMIN_PASSWORD).status_code == 303
    return s


def _choose(s: requests.Session, env: Env, language: str, code: int = 303) -> requests.Response:
    page = s.get(f"{env.url}/settings", timeout=10)
    r = s.post(
        f"{env.url}/settings",
        data={"language": language, "csrf": form_csrf(page.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == code, r.text[:300]
    return r


def test_the_users_own_language_wins_over_the_browser(env: Env) -> None:
    """A user sets the pages' language on /settings; it is kept with the account (their
    API token sees it too), wins over Accept-Language either way, '' gives the choice
    back to the browser, a language not spoken here is refused; each change is audited."""
    s = _session(env)
    page = _get(s, f"{env.url}/settings", **{"Accept-Language": "en"})
    assert "<option value='' selected>as the browser asks</option>" in page
    _choose(s, env, "zh-Hans")
    for who in (s, env.http):  # the session, and the same user's API token
        home = _get(who, f"{env.url}/", **{"Accept-Language": "en-US,en;q=0.9"})
        assert "<html lang='zh-Hans'>" in home and "终端总览" in home
    assert "<option value='zh-Hans' selected>简体中文</option>" in _get(s, f"{env.url}/settings")
    users = env.http.get(f"{env.url}/v1/users", timeout=10).json()["users"]
    assert {u["name"]: u["language"] for u in users}[ADMIN] == "zh-Hans"
    _choose(s, env, "en")
    home = _get(s, f"{env.url}/", **ZH_BROWSER)
    assert "<html lang='en'>" in home and "The fleet at a glance" in home
    _choose(s, env, "")
    assert "终端总览" in _get(s, f"{env.url}/", **ZH_BROWSER)
    assert "The fleet at a glance" in _get(s, f"{env.url}/")
    refused = _choose(s, env, "fr", 400)
    assert "unknown language &#x27;fr&#x27;" in refused.text
    audit = env.http.get(f"{env.url}/v1/audit", params={"action": "user.language"}, timeout=10)
    chosen = [e["detail"]["language"] for e in map(json.loads, audit.text.splitlines())]
    assert chosen == ["zh-Hans", "en", ""]
