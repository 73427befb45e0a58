"""Screen privacy: sensitive-screen detectors, mask regions, OCR card-number masking, fail closed."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

from agent.capture.privacy import (
    ScreenResult,
    capture_screen,
    check_sensitive,
    compile_patterns,
    find_card_numbers,
    luhn_valid,
    parse_mask_regions,
    privacy_state,
    render_privacy,
)
from agent.core.config import ScreenConfig, parse_config
from agent.core.sensitive import DEFAULT_SENSITIVE_WINDOWS
from drivers.android import parse_window_focus
from drivers.roots import Roots
from drivers.screen import decode_png
from drivers.screen.ocr import OcrWord, parse_tesseract_tsv, run_tesseract
from drivers.shell import Shell
from simulator.fake_adb import FakeAdb
from tests.drivers.kit import Xvfb, known_image, tk_window, xvfb

ANDROID_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "android"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
CAT = shutil.which("cat") or "/bin/cat"


def screen_png(tmp: Path, img: Image.Image) -> list[str]:
    """A command backend argv printing img as PNG."""
    path = tmp / "screen.png"
    img.save(path)
    return [CAT, str(path)]


def cfg(**kw: object) -> ScreenConfig:
    """A ScreenConfig with test defaults."""
    base: dict[str, object] = {"backend": "command", "timeout_s": 5.0}
    base.update(kw)
    return ScreenConfig(**base)  # type: ignore[arg-type]


def run(c: ScreenConfig, target: str = "local", shell: Shell | None = None) -> ScreenResult:
    """capture_screen with an empty environment and default roots."""
    return capture_screen(c, target, shell or Shell(), Roots(), env={})


# --------------------------------------------------------------------------- PIN flag


def test_fresh_pin_flag_blocks_capture(tmp_path: Path) -> None:
    """A PIN flag file touched just now means no screenshot, with the reason."""
    flag = tmp_path / "pin.flag"
    flag.touch()
    c = cfg(command=screen_png(tmp_path, known_image(40, 30)), pin_flag_file=str(flag))
    r = run(c)
    assert r.png is None
    assert r.status == "skipped:pin entry in progress"
    assert "pin.flag" in r.detail


def test_stale_or_missing_pin_flag_allows_capture(tmp_path: Path) -> None:
    """A flag older than pin_flag_max_age_s, or none at all, does not block the screenshot."""
    flag = tmp_path / "pin.flag"
    flag.touch()
    old = time.time() - 600
    os.utime(flag, (old, old))
    c = cfg(command=screen_png(tmp_path, known_image(40, 30)), pin_flag_file=str(flag))
    assert run(c).status == "captured"
    flag.unlink()
    r = run(c)
    assert r.status == "captured"
    assert r.png is not None


def test_zero_max_age_means_any_flag_blocks(tmp_path: Path) -> None:
    """With pin_flag_max_age_s = 0 the flag's existence alone blocks capture."""
    flag = tmp_path / "pin.flag"
    flag.touch()
    os.utime(flag, (1, 1))
    c = cfg(
        command=screen_png(tmp_path, known_image(40, 30)),
        pin_flag_file=str(flag),
        pin_flag_max_age_s=0.0,
    )
    assert run(c).status == "skipped:pin entry in progress"


def test_unreadable_pin_flag_fails_closed(tmp_path: Path) -> None:
    """A flag path that cannot be checked (a file used as a directory) counts as sensitive."""
    (tmp_path / "afile").write_text("x")
    c = cfg(
        command=screen_png(tmp_path, known_image(40, 30)),
        pin_flag_file=str(tmp_path / "afile" / "pin.flag"),
    )
    r = run(c)
    assert r.png is None
    assert r.status == "skipped:pin flag unreadable"


def test_pin_entry_starting_during_grab_drops_image(tmp_path: Path) -> None:
    """A flag that appears while the screenshot is taken drops it (checked before and after)."""
    flag = tmp_path / "pin.flag"
    png = tmp_path / "s.png"
    known_image(40, 30).save(png)
    c = cfg(
        command=["sh", "-c", f'touch "{flag}"; cat "{png}"'],
        pin_flag_file=str(flag),
    )
    r = run(c)
    assert r.png is None
    assert r.status == "skipped:pin entry in progress"


# --------------------------------------------------------------------------- X11 windows


@pytest.fixture(scope="module")
def xserver() -> Iterator[Xvfb]:
    """An Xvfb server for the window-title tests."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed")
    with xvfb(320, 240) as server:
        yield server


def test_x11_pin_window_blocks_capture(xserver: Xvfb, tmp_path: Path) -> None:
    """A viewable X11 window titled "PIN entry" matching a pattern means no screenshot."""
    path = tmp_path / "pin.png"
    known_image(320, 240).save(path)
    c = ScreenConfig(backend="x11", display=xserver.display, sensitive_windows=["(?i)pin entry"])
    with tk_window(xserver.display, path, "PIN entry"):
        r = capture_screen(c, "local", Shell(), Roots(), env={})
    assert r.png is None
    assert r.status == "skipped:sensitive window"
    assert r.detail == "PIN entry"


def test_x11_other_window_is_captured(xserver: Xvfb, tmp_path: Path) -> None:
    """A window whose title matches no pattern is captured as is."""
    path = tmp_path / "sale.png"
    img = known_image(320, 240)
    img.save(path)
    c = ScreenConfig(backend="x11", display=xserver.display, sensitive_windows=["(?i)pin entry"])
    with tk_window(xserver.display, path, "Sale 42"):
        deadline = time.monotonic() + 5
        while True:
            r = capture_screen(c, "local", Shell(), Roots(), env={})
            assert r.png is not None
            got = decode_png(r.png, "t")
            if got.tobytes() == img.tobytes() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert r.status == "captured"
    assert got.tobytes() == img.tobytes()


def test_x11_detector_failure_fails_closed() -> None:
    """When the window titles cannot be read, nothing is captured and the reason says why."""
    free = next(n for n in range(900, 999) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    c = ScreenConfig(backend="x11", display=f":{free}", sensitive_windows=["PIN"])
    r = capture_screen(c, "local", Shell(), Roots(), env={})
    assert r.png is None
    assert r.status == "skipped:window check failed"
    assert "xprop" in r.detail


def test_window_patterns_without_detector_fail_closed(tmp_path: Path) -> None:
    """sensitive_windows with a backend that has no window detector (command) skips capture."""
    c = cfg(command=screen_png(tmp_path, known_image(40, 30)), sensitive_windows=["PIN"])
    r = run(c)
    assert r.status == "skipped:no window detector"


def test_bad_pattern_fails_closed(tmp_path: Path) -> None:
    """An invalid regex in sensitive_windows skips capture instead of ignoring the rule."""
    c = cfg(command=screen_png(tmp_path, known_image(40, 30)), sensitive_windows=["(unclosed"])
    assert run(c).status == "skipped:bad sensitive_windows"


# --------------------------------------------------------------------------- Android focus


@pytest.fixture
def fake_adb(tmp_path: Path) -> FakeAdb:
    """The simulator's fake adb."""
    return FakeAdb(tmp_path / "adb")


def adb(fake: FakeAdb) -> Shell:
    """A Shell on the fake adb."""
    return Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))


def test_android_pin_activity_blocks_capture(fake_adb: FakeAdb) -> None:
    """A focused activity matching a pattern (over adb) means no screenshot."""
    fake_adb.set(
        focus={"package": "com.example.pos", "activity": "com.example.pos.PinEntryActivity"}
    )
    c = ScreenConfig(backend="auto", sensitive_windows=[r"PinEntry"])
    r = capture_screen(c, "adb", adb(fake_adb), Roots(), env={})
    assert r.png is None
    assert r.status == "skipped:sensitive window"
    assert "PinEntryActivity" in r.detail


def test_android_sale_activity_is_captured(fake_adb: FakeAdb) -> None:
    """A non-matching focused activity is captured through adb exec-out."""
    c = ScreenConfig(backend="auto", sensitive_windows=[r"PinEntry"])
    r = capture_screen(c, "adb", adb(fake_adb), Roots(), env={})
    assert r.status == "captured"
    assert r.backend == "adb"
    assert r.png is not None


def test_android_real_dump_second_display(fake_adb: FakeAdb) -> None:
    """In the real Galaxy Z Flip4 dump the app on the second display is found and matched."""
    text = ANDROID_FIXTURES / "dumpsys_window_focus_galaxy_z_flip4_android12_mCurrentFocus.txt"
    fake_adb.set_output("dumpsys window", text.read_text())
    c = ScreenConfig(sensitive_windows=[r"^jp\.naver\.line\.android/"])
    v = check_sensitive(c, "adb", adb(fake_adb), Roots(), env={})
    assert v.sensitive
    assert v.reason == "sensitive window"


def test_android_all_null_focus_fails_closed(fake_adb: FakeAdb) -> None:
    """A dump whose focus lines are all null (a transition) counts as sensitive."""
    text = ANDROID_FIXTURES / "dumpsys_window_focus_android4.4.2_repeated_calls.txt"
    nulls = "".join(x for x in text.read_text().splitlines(True) if "=null" in x)
    fake_adb.set_output("dumpsys window", nulls)
    c = ScreenConfig(sensitive_windows=["PinEntry"])
    v = check_sensitive(c, "adb", adb(fake_adb), Roots(), env={})
    assert (v.sensitive, v.reason) == (True, "focus unknown")


def test_android_unreachable_device_fails_closed(fake_adb: FakeAdb) -> None:
    """A device that dropped off adb cannot be checked: no capture, reason given."""
    fake_adb.drop()
    c = ScreenConfig(sensitive_windows=["PinEntry"])
    r = capture_screen(c, "adb", adb(fake_adb), Roots(), env={})
    assert r.png is None
    assert r.status == "skipped:focus check failed"


def test_android_pin_flag_on_device(fake_adb: FakeAdb) -> None:
    """Over adb the PIN flag's age is read on the device and a fresh one blocks capture."""
    flag = "/data/local/tmp/pin.flag"
    age = f"$(( $(date +%s) - $(stat -c %Y {flag}) ))"
    fake_adb.set_output(f"if [ -e {flag} ]; then echo {age}; else echo absent; fi", "4\n")
    c = ScreenConfig(pin_flag_file=flag)
    r = capture_screen(c, "adb", adb(fake_adb), Roots(), env={})
    assert r.status == "skipped:pin entry in progress"
    assert "4 s old" in r.detail


# --------------------------------------------------------------------------- mask regions


def test_mask_regions_are_black(tmp_path: Path) -> None:
    """Configured rectangles are black in the output (clipped at the edges); the rest is kept."""
    img = Image.new("RGB", (100, 80), (255, 255, 255))
    c = cfg(command=screen_png(tmp_path, img), mask_regions=["10,10,20,15", "-5,70,20,50"])
    r = run(c)
    assert r.status == "masked"
    assert r.masked_regions == 2
    assert r.png is not None
    out = decode_png(r.png, "t")
    assert out.getpixel((10, 10)) == (0, 0, 0)
    assert out.getpixel((29, 24)) == (0, 0, 0)
    assert out.getpixel((30, 25)) == (255, 255, 255)
    assert out.getpixel((0, 79)) == (0, 0, 0)
    assert out.getpixel((14, 79)) == (0, 0, 0)
    assert out.getpixel((15, 79)) == (255, 255, 255)
    assert out.getpixel((50, 40)) == (255, 255, 255)


def test_mask_then_downscale(tmp_path: Path) -> None:
    """Masking happens at screen resolution, then max_width shrinks the image."""
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    c = cfg(command=screen_png(tmp_path, img), mask_regions=["0,0,100,100"], max_width=100)
    r = run(c)
    assert r.png is not None
    out = decode_png(r.png, "t")
    assert out.size == (100, 50)
    assert out.getpixel((10, 25)) == (0, 0, 0)
    assert out.getpixel((90, 25)) == (255, 255, 255)


def test_bad_mask_region_drops_image(tmp_path: Path) -> None:
    """A malformed region is not silently ignored: the screenshot is dropped."""
    c = cfg(command=screen_png(tmp_path, known_image(40, 30)), mask_regions=["10,10,20"])
    r = run(c)
    assert r.png is None
    assert r.status == "skipped:bad mask_regions"


def test_parse_mask_regions() -> None:
    """ "x,y,w,h" strings with spaces and negative origins parse; others raise."""
    assert [tuple(vars(r).values()) for r in parse_mask_regions([" 1, 2 ,3,4", "-5,0,1,1"])] == [
        (1, 2, 3, 4),
        (-5, 0, 1, 1),
    ]
    with pytest.raises(ValueError):
        parse_mask_regions(["1,2,-3,4"])


def test_backend_failure_is_skipped_with_reason(tmp_path: Path) -> None:
    """A failing backend gives skipped:<backend reason>, never an exception."""
    c = cfg(command=["sh", "-c", "echo 'no fb' >&2; exit 1"])
    r = run(c)
    assert r.png is None
    assert r.status == "skipped:command: sh: no fb"


def test_none_backend_is_skipped() -> None:
    """backend none is recorded as skipped:disabled."""
    assert run(ScreenConfig(backend="none")).status == "skipped:disabled"


# --------------------------------------------------------------------------- OCR


def pan_image(size: tuple[int, int] = (320, 240), font_px: int = 22) -> Image.Image:
    """A white screen with a card number line and an amount line in DejaVu Sans."""
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONT), font_px)
    d.text((10, 60), "4111 1111 1111 1111", fill=(0, 0, 0), font=font)
    d.text((10, 140), "Total 12.50 EUR", fill=(0, 0, 0), font=font)
    return img


needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract not installed"
)
needs_font = pytest.mark.skipif(not FONT.exists(), reason=f"font {FONT} not present")


@needs_tesseract
@needs_font
def test_ocr_masks_card_number(tmp_path: Path) -> None:
    """tesseract finds the PAN, its line is blacked out, the amount line is kept."""
    c = cfg(command=screen_png(tmp_path, pan_image()), ocr_mask=True)
    r = run(c)
    assert r.status == "masked"
    assert r.masked_card_numbers == 1
    assert r.png is not None
    out = decode_png(r.png, "t").convert("L")
    font = ImageFont.truetype(str(FONT), 22)
    text_box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (10, 60), "4111 1111 1111 1111", font=font
    )
    assert out.crop(text_box).getextrema() == (0, 0)
    total_band = out.crop((10, 140, 200, 165))
    assert total_band.getextrema() == (0, 255)


@needs_tesseract
@needs_font
def test_ocr_leaves_screen_without_card_number(tmp_path: Path) -> None:
    """A screen with only an amount is captured unmasked."""
    img = Image.new("RGB", (320, 240), (255, 255, 255))
    ImageDraw.Draw(img).text(
        (10, 60), "Order 1234 5678", fill=(0, 0, 0), font=ImageFont.truetype(str(FONT), 22)
    )
    r = run(cfg(command=screen_png(tmp_path, img), ocr_mask=True))
    assert r.status == "captured"
    assert r.masked_card_numbers == 0


def test_ocr_without_tesseract_drops_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With OCR masking on and no tesseract on PATH the screenshot is dropped, not sent."""
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    c = cfg(command=screen_png(tmp_path, pan_image()), ocr_mask=True)
    r = run(c)
    assert r.png is None
    assert r.status == "skipped:ocr failed"
    assert "tesseract: not found" in r.detail


def test_ocr_failure_drops_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tesseract that exits non-zero also drops the screenshot."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "tesseract"
    fake.write_text("#!/bin/sh\necho 'Error: no language data' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    r = run(cfg(command=screen_png(tmp_path, pan_image()), ocr_mask=True))
    assert r.png is None
    assert r.status == "skipped:ocr failed"
    assert "no language data" in r.detail


@needs_tesseract
@needs_font
def test_tsv_parser_on_real_tesseract_output() -> None:
    """Real tesseract TSV parses into word boxes with the PAN's digit groups on one line."""
    img = pan_image((640, 480), 44)
    from drivers.screen import encode_png

    words = parse_tesseract_tsv(run_tesseract(encode_png(img), 20.0))
    texts = [w.text for w in words]
    assert "Total" in texts
    groups = find_card_numbers(words)
    assert len(groups) == 1
    assert "".join(w.text for w in groups[0]) == "4111111111111111"


def _words(*items: tuple[str, int]) -> list[OcrWord]:
    """Words on one line at the given left x, 40 px wide and 20 px high."""
    return [OcrWord(1, 1, 1, i, x, 100, 40, 20, 90.0, t) for i, (t, x) in enumerate(items)]


def test_card_number_grouping_rules() -> None:
    """Adjacent groups join; far groups, non-Luhn and short numbers do not; separators are ok."""
    joined = _words(("4111", 0), ("1111", 50), ("1111", 100), ("1111", 150))
    assert len(find_card_numbers(joined)) == 1
    assert len(find_card_numbers(_words(("PAN:", 0), ("4111-1111-1111-1111", 50)))) == 1
    assert find_card_numbers(_words(("4111", 0), ("1111", 50), ("1111", 100), ("1112", 150))) == []
    far = _words(("4111", 0), ("1111", 50), ("1111", 100), ("1111", 400))
    assert find_card_numbers(far) == []
    assert find_card_numbers(_words(("12.50", 0), ("EUR", 50))) == []
    merged = _words(("Ref", 0), ("99" + "4111111111111111" + "77", 50))  # OCR ran words together
    assert len(find_card_numbers(merged)) == 1
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.text(max_size=12), st.integers(-50, 2000), st.integers(-50, 2000)),
        max_size=30,
    )
)
def test_card_number_search_never_crashes(items: list[tuple[str, int, int]]) -> None:
    """Any set of OCR words is searched without raising."""
    words = [OcrWord(1, 1, 1, i, x, y, 10, 10, 50.0, t) for i, (t, x, y) in enumerate(items)]
    for group in find_card_numbers(words):
        assert group


@given(st.lists(st.integers(0, 9), min_size=11, max_size=18), st.integers(2, 5))
def test_any_luhn_number_split_in_groups_is_found(body: list[int], parts: int) -> None:
    """A Luhn-valid 12-19 digit number split into adjacent groups is always found."""
    digits = "".join(map(str, body))
    check = next(str(d) for d in range(10) if luhn_valid(digits + str(d)))
    number = digits + check
    size = -(-len(number) // parts)
    chunks = [number[i : i + size] for i in range(0, len(number), size)]
    words = _words(*[(c, i * 50) for i, c in enumerate(chunks)])
    assert find_card_numbers(words)


@given(st.text())
def test_tsv_parser_never_crashes(text: str) -> None:
    """Any text parses to a list of words without raising."""
    for w in parse_tesseract_tsv(text):
        assert w.text


# --------------------------------------------------------------------------- shipped defaults


def _default_hit(text: str) -> bool:
    return any(p.search(text) for p in compile_patterns(DEFAULT_SENSITIVE_WINDOWS))


@pytest.mark.parametrize(
    "text",
    [
        "Enter PIN",
        "PIN entry",
        "PIN:",
        "Password",
        "Enter passcode",
        "Kennwort eingeben",
        "Card number",
        "Enter CVV",
        "Security code",
        "com.example.pos/com.example.pos.PinEntryActivity",
        "com.example.pos.ui.EnterPinActivity",
        "com.vendor.terminal.PinPadFragment",
        "com.example.pos.CardEntryActivity",
        "com.android.settings/com.android.settings.password.ConfirmLockPassword",
        "com.shop/com.stripe.android.paymentsheet.PaymentSheetActivity",
        "com.shop/com.stripe.android.view.AddPaymentMethodActivity",
        "com.shop/sqip.internal.CardEntryActivity",
        "com.shop/com.braintreepayments.api.DropInActivity",
    ],
)
def test_default_patterns_match_pin_password_and_card_entry(text: str) -> None:
    """The shipped list catches PIN, password and card entry titles and activities."""
    assert _default_hit(text)


@pytest.mark.parametrize(
    "text",
    [
        "Sale 42",
        "Sales screen",
        "Pinned items",
        "Spinner",
        "Shopping cart",
        "Receipt printed",
        "Card payment approved",
        "com.example.pos/com.example.pos.SaleActivity",
        "com.example.pos.PaymentActivity",
        "com.android.launcher3/com.android.launcher3.Launcher",
    ],
)
def test_default_patterns_leave_sale_screens(text: str) -> None:
    """Sale, cart and receipt screens are not sensitive by the shipped list."""
    assert not _default_hit(text)


def test_default_patterns_match_no_window_of_real_android_dumps() -> None:
    """Every window title, package and activity of the recorded real dumps (launchers, photos,
    chat, car head unit) is captured under the shipped list."""
    texts: list[str] = []
    for dump in sorted(ANDROID_FIXTURES.glob("dumpsys_window_*.txt")):
        wf = parse_window_focus(dump.read_text(errors="replace"))
        for w in (*wf.candidates, *(x for x in wf.current_focus if x)):
            texts += [t for t in (w.title, w.package or "", w.activity or "") if t]
    assert len(texts) >= 5
    assert [t for t in texts if _default_hit(t)] == []


@pytest.mark.parametrize("title", ["Enter PIN", "Password required", "Card number entry"])
def test_x11_default_patterns_block_sensitive_titles(
    xserver: Xvfb, tmp_path: Path, title: str
) -> None:
    """With sensitive_windows not set, real X11 windows titled for PIN, password or card entry
    are not captured."""
    path = tmp_path / "s.png"
    known_image(320, 240).save(path)
    c = ScreenConfig(backend="x11", display=xserver.display)
    with tk_window(xserver.display, path, title):
        r = capture_screen(c, "local", Shell(), Roots(), env={})
    assert (r.png, r.status, r.detail) == (None, "skipped:sensitive window", title)


def test_x11_explicit_empty_list_turns_matching_off(xserver: Xvfb, tmp_path: Path) -> None:
    """sensitive_windows = [] (explicit) is no pattern: a "PIN entry" window is captured."""
    path = tmp_path / "s.png"
    known_image(320, 240).save(path)
    c = parse_config(
        f'[screen]\nbackend = "x11"\ndisplay = "{xserver.display}"\nsensitive_windows = []\n'
    ).screen
    assert c.sensitive_windows == []
    with tk_window(xserver.display, path, "PIN entry"):
        r = capture_screen(c, "local", Shell(), Roots(), env={})
    assert r.status == "captured"
    state = privacy_state(c, "local", Shell(), Roots(), env={}, tesseract="")
    assert state.window_source == "off" and not state.protections
    assert any("nothing protects the screen" in w for w in state.warnings)


def test_default_patterns_without_detector_do_not_block(tmp_path: Path) -> None:
    """The shipped list on a backend with no window detector (command, fbdev) does not refuse
    every image; a configured list there still does (test above)."""
    r = run(cfg(command=screen_png(tmp_path, known_image(40, 30))))
    assert r.status == "captured"


def test_android_default_patterns_block_pin_activity(fake_adb: FakeAdb) -> None:
    """Over adb, the shipped list blocks a PinEntryActivity and captures the sale activity."""
    c = ScreenConfig(backend="auto")
    r = capture_screen(c, "adb", adb(fake_adb), Roots(), env={})
    assert r.status == "captured"
    fake_adb.set(
        focus={"package": "com.example.pos", "activity": "com.example.pos.PinEntryActivity"}
    )
    r = capture_screen(c, "adb", adb(fake_adb), Roots(), env={})
    assert r.status == "skipped:sensitive window" and r.png is None


# --------------------------------------------------------------------------- privacy state


def test_privacy_state_pin_flag_absent_present_unreadable(tmp_path: Path) -> None:
    """The PIN flag is reported absent, present (PIN entry now) or unreadable (every screenshot
    skipped, with a warning); a configured flag counts as a protection."""
    flag = tmp_path / "pin.flag"
    c = cfg(pin_flag_file=str(flag), sensitive_windows=[])
    s = privacy_state(c, "local", Shell(), Roots(), env={}, tesseract="")
    assert s.pin_flag == "absent" and s.protections == (f"PIN flag file {flag}",)
    assert [w for w in s.warnings if "PrivateTmp" not in w] == []  # tmp_path may be under /tmp
    assert not s.now.sensitive
    flag.touch()
    s = privacy_state(c, "local", Shell(), Roots(), env={}, tesseract="")
    assert s.pin_flag == "present" and s.now.sensitive and "PIN entry now" in s.pin_flag_detail
    blocked = tmp_path / "afile"
    blocked.write_text("")
    c = cfg(pin_flag_file=str(blocked / "pin.flag"), sensitive_windows=[])
    s = privacy_state(c, "local", Shell(), Roots(), env={}, tesseract="")
    assert s.pin_flag == "unreadable" and s.now.sensitive
    assert any("every screenshot is skipped" in w for w in s.warnings)


def test_privacy_state_windows_ocr_and_hidden_paths(xserver: Xvfb) -> None:
    """Default patterns with an X display count (read by xprop); OCR without tesseract warns;
    a flag under /tmp warns that the unit's PrivateTmp hides it."""
    c = ScreenConfig(backend="x11", display=xserver.display)
    s = privacy_state(c, "local", Shell(), Roots(), env={}, tesseract="")
    assert (s.window_source, s.window_detector) == ("default", "x11 window titles")
    assert s.protections == (
        f"{len(DEFAULT_SENSITIVE_WINDOWS)} sensitive-window pattern(s) (default) on x11 window titles",
    )
    c = ScreenConfig(backend="fbdev", ocr_mask=True, pin_flag_file="/tmp/pos/pin.flag")
    s = privacy_state(c, "local", Shell(), Roots(), env={}, tesseract="")
    assert s.window_detector == "" and s.window_source == "default"
    assert any("tesseract is not installed" in w for w in s.warnings)
    assert any("PrivateTmp" in w for w in s.warnings)
    s = privacy_state(c, "local", Shell(), Roots(), env={}, tesseract="/usr/bin/tesseract")
    assert "OCR card-number masking (tesseract)" in s.protections
    assert "SCREEN PRIVACY" in render_privacy(s)
