"""Screen privacy: the one capture pipeline, failing closed.

capture_screen() is the only way the agent takes a screenshot:

1. sensitive-screen detectors (PIN flag file, the focused Android window, the
   X11 active/visible window titles) run before the grab and again after it;
   a detector that cannot decide counts as "sensitive". Window patterns are
   the shipped defaults (agent/core/sensitive.py) unless the config sets
   `sensitive_windows` (`[]`: none); the defaults apply where a window
   detector exists, a configured list with no detector refuses every image;
2. the grab (drivers.screen) with its timeout;
3. static mask regions are filled black, then, if configured, card numbers
   found by tesseract are filled black; OCR failing drops the image;
4. downscale, PNG encode. The image exists only in memory until then.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from agent.core.config import ScreenConfig
from agent.core.files import stat_regular
from agent.core.sensitive import DEFAULT_SENSITIVE_WINDOWS
from drivers.android import parse_window_focus
from drivers.roots import Roots
from drivers.screen import (
    GrabOptions,
    ScreenError,
    downscale,
    encode_png,
    grab_image,
    x11_display,
)
from drivers.screen.android import read_focus
from drivers.screen.ocr import OcrError, OcrWord, parse_tesseract_tsv, run_tesseract
from drivers.screen.x11 import window_titles
from drivers.shell import Shell, ShellError

if TYPE_CHECKING:
    from PIL import Image

log = structlog.get_logger(__name__)

PAN_MIN_DIGITS = 12
PAN_MAX_DIGITS = 19
OCR_MIN_WIDTH_PX = 1200  # smaller screens are upscaled for tesseract


@dataclass(frozen=True)
class ScreenResult:
    """What the screen stage produced; status goes into the manifest's redaction block."""

    png: bytes | None
    status: str  # "captured" | "masked" | "skipped:<reason>"
    detail: str = ""
    backend: str = ""
    masked_regions: int = 0
    masked_card_numbers: int = 0

    @property
    def captured(self) -> bool:
        """True when there is an image to write."""
        return self.png is not None


@dataclass(frozen=True)
class Verdict:
    """Outcome of the sensitive-screen detectors."""

    sensitive: bool
    reason: str = ""  # short, for skipped:<reason>
    detail: str = ""


@dataclass(frozen=True)
class Rect:
    """A mask rectangle in screen pixels."""

    x: int
    y: int
    width: int
    height: int


class PrivacyConfigError(ValueError):
    """A [screen] privacy setting that cannot be applied (the image is dropped)."""


# --------------------------------------------------------------------------- config helpers


def grab_options(cfg: ScreenConfig) -> GrabOptions:
    """The driver-side options for a [screen] section."""
    return GrabOptions(
        backend=cfg.backend,
        display=cfg.display,
        fb_device=cfg.fb_device,
        fb_pixel_format=cfg.fb_pixel_format,
        wayland_display=cfg.wayland_display,
        command=tuple(cfg.command),
        timeout_s=cfg.timeout_s,
    )


_RECT = re.compile(r"^\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")


def parse_mask_regions(specs: Sequence[str]) -> list[Rect]:
    """Rectangles from "x,y,w,h" strings; PrivacyConfigError names the first bad one."""
    out: list[Rect] = []
    for spec in specs:
        m = _RECT.match(spec)
        if not m:
            raise PrivacyConfigError(f"mask region {spec!r} is not x,y,width,height")
        x, y, w, h = (int(g) for g in m.groups())
        out.append(Rect(x, y, w, h))
    return out


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Compile sensitive_windows regexes; PrivacyConfigError names the first bad one."""
    out: list[re.Pattern[str]] = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise PrivacyConfigError(f"sensitive_windows pattern {p!r}: {e}") from e
    return out


# --------------------------------------------------------------------------- detectors


def _pin_flag_age_s(
    path: str, target: str, shell: Shell, timeout_s: float, now: float
) -> float | None:
    """Age of the PIN flag file in seconds, None when absent; raises OSError/ShellError."""
    if target == "adb":
        q = shlex.quote(path)
        age = f"$(( $(date +%s) - $(stat -c %Y {q}) ))"
        r = shell.run(f"if [ -e {q} ]; then echo {age}; else echo absent; fi", timeout_s)
        out = r.text.strip()
        if r.returncode != 0 or not re.fullmatch(r"absent|-?\d+", out):
            raise ShellError(f"flag check: unexpected reply {out[:60]!r}")
        return None if out == "absent" else float(out)
    try:
        st = stat_regular(path)  # a link or FIFO in its place is unreadable: sensitive
    except FileNotFoundError:
        return None
    return now - st.st_mtime


def check_pin_flag(
    cfg: ScreenConfig, target: str, shell: Shell, now: float | None = None
) -> Verdict:
    """Sensitive while the POS app's PIN flag file is fresh; unreadable counts as sensitive."""
    if not cfg.pin_flag_file:
        return Verdict(False)
    try:
        age = _pin_flag_age_s(cfg.pin_flag_file, target, shell, cfg.timeout_s, now or time.time())
    except (OSError, ShellError) as e:
        return Verdict(True, "pin flag unreadable", f"{cfg.pin_flag_file}: {e}")
    if age is None:
        return Verdict(False)
    if cfg.pin_flag_max_age_s == 0 or age < cfg.pin_flag_max_age_s:
        return Verdict(True, "pin entry in progress", f"{cfg.pin_flag_file} is {age:.0f} s old")
    return Verdict(False, "", f"pin flag stale ({age:.0f} s old)")


def _first_match(patterns: Iterable[re.Pattern[str]], texts: Iterable[str]) -> str | None:
    for text in texts:
        for p in patterns:
            if p.search(text):
                return text
    return None


def check_android_focus(
    patterns: Sequence[re.Pattern[str]], shell: Shell, timeout_s: float
) -> Verdict:
    """Sensitive when the focused Android window/activity matches; no focus known counts too.

    Uses the mCurrentFocus / mFocusedApp lines of every display; only when all
    are null does it fall back to the parser's choice from the window list.
    """
    try:
        text = read_focus(shell, timeout_s)
    except ScreenError as e:
        return Verdict(True, "focus check failed", str(e))
    wf = parse_window_focus(text)
    windows = [w for w in (*wf.current_focus, *wf.focused_apps) if w is not None]
    if not windows and wf.focused is not None:
        windows = [wf.focused]
    if not windows:
        return Verdict(True, "focus unknown", "dumpsys window reported no focused window")
    texts = [t for w in windows for t in (w.title, w.activity or "", w.package or "") if t]
    hit = _first_match(patterns, texts)
    if hit is not None:
        return Verdict(True, "sensitive window", hit[:120])
    return Verdict(False, "", "focus: " + ", ".join(w.title for w in windows)[:200])


def check_x11_windows(
    patterns: Sequence[re.Pattern[str]], display: str, timeout_s: float
) -> Verdict:
    """Sensitive when the active window or any viewable window has a matching title."""
    try:
        titles = window_titles(
            display, timeout_s, lambda name: _first_match(patterns, [name]) is not None
        )
    except ScreenError as e:
        return Verdict(True, "window check failed", str(e))
    if titles.active is not None and _first_match(patterns, [titles.active]) is not None:
        return Verdict(True, "sensitive window", titles.active[:120])
    if titles.viewable:
        return Verdict(True, "sensitive window", titles.viewable[0][:120])
    if titles.unknown:
        return Verdict(True, "window state unknown", titles.unknown[0][:120])
    return Verdict(False, "", f"active window: {titles.active!r}")


def check_sensitive(
    cfg: ScreenConfig,
    target: str,
    shell: Shell,
    roots: Roots,
    env: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Verdict:
    """Run every configured detector; the first that says "sensitive" (or cannot tell) wins."""
    environ = os.environ if env is None else env
    verdict = check_pin_flag(cfg, target, shell, now)
    if verdict.sensitive or not cfg.sensitive_windows:
        return verdict
    try:
        patterns = compile_patterns(cfg.sensitive_windows)
    except PrivacyConfigError as e:
        return Verdict(True, "bad sensitive_windows", str(e))
    detector = window_detector(cfg, target, environ)
    if detector == "android focus":
        android = shell if (target == "adb" or shell.mode == "android") else Shell(mode="android")
        return check_android_focus(patterns, android, cfg.timeout_s)
    if detector == "x11 window titles":
        return check_x11_windows(patterns, x11_display(grab_options(cfg), environ), cfg.timeout_s)
    if windows_are_default(cfg):
        # The shipped patterns apply where window titles can be read; a framebuffer or
        # a command grab has none to read, and refusing every screenshot there would
        # turn the default into "never capture". A configured list fails closed instead.
        return Verdict(
            False, "", f"default sensitive_windows: no window detector for {cfg.backend}"
        )
    return Verdict(
        True,
        "no window detector",
        f"sensitive_windows is set but backend {cfg.backend!r} has no window detector here",
    )


def windows_are_default(cfg: ScreenConfig) -> bool:
    """True when sensitive_windows is the shipped default list (the key was not set)."""
    return tuple(cfg.sensitive_windows) == DEFAULT_SENSITIVE_WINDOWS


def window_detector(cfg: ScreenConfig, target: str, env: Mapping[str, str]) -> str:
    """Which detector reads window names here: "android focus", "x11 window titles" or ""."""
    if target in ("android", "adb"):
        return "android focus"
    if cfg.backend in ("x11", "auto") and x11_display(grab_options(cfg), env):
        return "x11 window titles"
    return ""


# --------------------------------------------------------------------------- state


PRIVATE_PREFIXES = ("/tmp/", "/var/tmp/", "/home/", "/root/", "/run/user/")


@dataclass(frozen=True)
class PrivacyState:
    """What protects the screen right now (`posagent selftest`)."""

    backend: str
    target: str
    pin_flag: str  # "not configured" | "absent" | "present" | "stale" | "unreadable"
    pin_flag_detail: str
    window_patterns: int
    window_source: str  # "default" | "configured" | "off"
    window_detector: str  # "" when none reads window names here
    ocr_mask: bool
    tesseract: str  # path of the tesseract binary, "" when not found
    mask_regions: int
    now: Verdict  # the detectors' verdict at this moment
    protections: tuple[str, ...]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """Plain data for --json."""
        return {
            "backend": self.backend,
            "target": self.target,
            "pin_flag": self.pin_flag,
            "pin_flag_detail": self.pin_flag_detail,
            "window_patterns": self.window_patterns,
            "window_source": self.window_source,
            "window_detector": self.window_detector,
            "ocr_mask": self.ocr_mask,
            "tesseract": self.tesseract,
            "mask_regions": self.mask_regions,
            "sensitive_now": self.now.sensitive,
            "now": self.now.reason or self.now.detail,
            "protections": list(self.protections),
            "warnings": list(self.warnings),
            "protected": bool(self.protections),
        }


def _pin_flag_state(
    cfg: ScreenConfig, target: str, shell: Shell, now: float
) -> tuple[str, str, list[str]]:
    """(state, detail, warnings) of the PIN flag file."""
    path = cfg.pin_flag_file
    if not path:
        return "not configured", "", []
    warnings: list[str] = []
    if target == "local" and path.startswith(PRIVATE_PREFIXES):
        warnings.append(
            f"pin_flag_file {path} is under a path the systemd unit hides "
            "(PrivateTmp/ProtectHome): the daemon may not see the flag (README)"
        )
    try:
        age = _pin_flag_age_s(path, target, shell, cfg.timeout_s, now)
    except (OSError, ShellError) as e:
        warnings.append(f"pin flag unreadable ({e}): every screenshot is skipped")
        return "unreadable", f"{path}: {e}", warnings
    if age is None:
        parent = os.path.dirname(path)
        if target == "local" and parent and not os.path.isdir(parent):
            warnings.append(f"pin flag directory {parent} does not exist: nothing can write it")
        return "absent", f"{path}: absent (no PIN entry now)", warnings
    if cfg.pin_flag_max_age_s == 0 or age < cfg.pin_flag_max_age_s:
        return "present", f"{path}: present, {age:.0f} s old (PIN entry now)", warnings
    return "stale", f"{path}: present but {age:.0f} s old (stale: ignored)", warnings


def privacy_state(
    cfg: ScreenConfig,
    target: str,
    shell: Shell,
    roots: Roots,
    env: Mapping[str, str] | None = None,
    now: float | None = None,
    tesseract: str | None = None,
) -> PrivacyState:
    """Every screen protection, whether it can act here, and a warning when none does."""
    environ = os.environ if env is None else env
    t = time.time() if now is None else now
    protections: list[str] = []
    pin, pin_detail, warnings = _pin_flag_state(cfg, target, shell, t)
    source = "off" if not cfg.sensitive_windows else "configured"
    if cfg.sensitive_windows and windows_are_default(cfg):
        source = "default"
    detector = window_detector(cfg, target, environ)
    tess = shutil.which("tesseract") if tesseract is None else tesseract
    if cfg.backend == "none":
        protections.append("screenshots disabled (backend none)")
    if pin in ("absent", "present", "stale"):
        protections.append(f"PIN flag file {cfg.pin_flag_file}")
    elif pin == "unreadable":
        protections.append("PIN flag unreadable: every screenshot skipped")
    n = len(cfg.sensitive_windows)
    if n and detector:
        protections.append(f"{n} sensitive-window pattern(s) ({source}) on {detector}")
    elif n and source == "configured":
        protections.append("sensitive_windows without a window detector: every screenshot skipped")
        warnings.append(
            f"sensitive_windows is set but backend {cfg.backend!r} has no window detector: "
            "every screenshot is skipped"
        )
    if cfg.ocr_mask and tess:
        protections.append("OCR card-number masking (tesseract)")
    elif cfg.ocr_mask:
        protections.append("OCR masking without tesseract: every screenshot dropped")
        warnings.append(
            "ocr_mask is on but tesseract is not installed: every screenshot is dropped"
        )
    if cfg.mask_regions:
        protections.append(f"{len(cfg.mask_regions)} static mask region(s)")
    if not protections:
        warnings.append(
            "nothing protects the screen: every screenshot is kept as shown "
            "(set pin_flag_file, ocr_mask or mask_regions; window patterns need x11 or Android)"
        )
    verdict = (
        Verdict(True, "disabled")
        if cfg.backend == "none"
        else check_sensitive(cfg, target, shell, roots, environ, t)
    )
    return PrivacyState(
        backend=cfg.backend,
        target=target,
        pin_flag=pin,
        pin_flag_detail=pin_detail,
        window_patterns=n,
        window_source=source,
        window_detector=detector,
        ocr_mask=cfg.ocr_mask,
        tesseract=tess or "",
        mask_regions=len(cfg.mask_regions),
        now=verdict,
        protections=tuple(protections),
        warnings=tuple(warnings),
    )


def render_privacy(state: PrivacyState) -> str:
    """The human block of `posagent selftest`: one line per protection, then warnings."""
    windows = f"{state.window_patterns} pattern(s), {state.window_source}"
    if state.window_patterns:
        windows += (
            f", read by {state.window_detector}" if state.window_detector else ", no detector"
        )
    ocr = "off"
    if state.ocr_mask:
        ocr = f"on, tesseract {state.tesseract}" if state.tesseract else "on, tesseract MISSING"
    now = "sensitive: " + state.now.reason if state.now.sensitive else "not sensitive"
    rows = [
        ("backend", f"{state.backend} (target {state.target})"),
        ("pin flag", state.pin_flag_detail or state.pin_flag),
        ("sensitive windows", windows),
        ("ocr masking", ocr),
        ("mask regions", str(state.mask_regions)),
        ("right now", now),
        ("protected by", "; ".join(state.protections) or "NOTHING"),
    ]
    lines = ["SCREEN PRIVACY", *(f"  {k:<17} {v}" for k, v in rows)]
    lines += [f"WARNING: {w}" for w in state.warnings]
    return "\n".join(lines)


# --------------------------------------------------------------------------- masking


def apply_mask_regions(img: Image.Image, regions: Sequence[Rect]) -> int:
    """Fill each region black (clipped to the image); returns how many touched the image."""
    from PIL import ImageDraw  # lazy: Pillow runs in the screenshot child, never the daemon

    draw = ImageDraw.Draw(img)
    black = 0 if img.mode == "L" else (0, 0, 0)
    n = 0
    for r in regions:
        x0, y0 = max(r.x, 0), max(r.y, 0)
        x1, y1 = min(r.x + r.width, img.width), min(r.y + r.height, img.height)
        if x1 <= x0 or y1 <= y0:
            continue
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=black)
        n += 1
    return n


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a digit string."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_DIGIT_TOKEN = re.compile(r"^\D*(\d[\d.\-–]*\d|\d)\D*$")


def _token_digits(text: str) -> str | None:
    m = _DIGIT_TOKEN.match(text)
    return re.sub(r"\D", "", m.group(1)) if m else None


def _has_pan(digits: str) -> bool:
    n = len(digits)
    if PAN_MIN_DIGITS <= n <= PAN_MAX_DIGITS and luhn_valid(digits):
        return True
    if n > PAN_MAX_DIGITS:
        return any(
            luhn_valid(digits[i : i + k])
            for k in range(PAN_MIN_DIGITS, PAN_MAX_DIGITS + 1)
            for i in range(n - k + 1)
        )
    return False


def _visual_lines(words: Sequence[OcrWord]) -> list[list[OcrWord]]:
    """Group words whose vertical centres fall inside each other's boxes, sorted left to right."""
    lines: list[list[OcrWord]] = []
    for w in sorted(words, key=lambda w: (w.top + w.height / 2, w.left)):
        centre = w.top + w.height / 2
        for line in lines:
            ref = line[-1]
            if ref.top <= centre <= ref.top + ref.height:
                line.append(w)
                break
        else:
            lines.append([w])
    return [sorted(line, key=lambda w: w.left) for line in lines]


def find_card_numbers(words: Sequence[OcrWord]) -> list[list[OcrWord]]:
    """Word groups forming a Luhn-valid 12-19 digit number (adjacent words on one line)."""
    found: list[list[OcrWord]] = []
    for line in _visual_lines(words):
        runs: list[list[tuple[OcrWord, str]]] = []
        prev: OcrWord | None = None
        for w in line:
            digits = _token_digits(w.text)
            if digits is None:
                prev = None
                continue
            gap_ok = (
                prev is not None
                and runs
                and w.left - (prev.left + prev.width) <= 1.5 * max(w.height, prev.height)
            )
            if gap_ok:
                runs[-1].append((w, digits))
            else:
                runs.append([(w, digits)])
            prev = w
        for run in runs:
            hit: set[int] = set()
            for i in range(len(run)):
                joined = ""
                for j in range(i, len(run)):
                    joined += run[j][1]
                    if len(joined) > PAN_MAX_DIGITS and j > i:
                        break
                    if _has_pan(joined):
                        hit.update(range(i, j + 1))
                        break
            if hit:
                group = [run[k][0] for k in sorted(hit)]
                found.append(group)
    return found


def ocr_mask(img: Image.Image, timeout_s: float, tesseract: str = "tesseract") -> int:
    """Black out card numbers tesseract finds; returns how many. OcrError if OCR cannot run."""
    # lazy: Pillow runs in the screenshot child, never the daemon
    from PIL import Image as PILImage
    from PIL import ImageDraw  # lazy: Pillow runs in the screenshot child, never the daemon

    scale = 1
    if img.width < OCR_MIN_WIDTH_PX:
        scale = max(1, -(-OCR_MIN_WIDTH_PX // max(img.width, 1)))
        scale = min(scale, 4)
    ocr_img = img.convert("L")
    if scale > 1:
        ocr_img = ocr_img.resize(
            (img.width * scale, img.height * scale), PILImage.Resampling.LANCZOS
        )
    words = parse_tesseract_tsv(
        run_tesseract(encode_png(ocr_img, compress_level=1), timeout_s, tesseract)
    )
    groups = find_card_numbers(words)
    draw = ImageDraw.Draw(img)
    black = 0 if img.mode == "L" else (0, 0, 0)
    for group in groups:  # one rectangle per number: the gaps between groups are hidden too
        left = min(w.left for w in group)
        top = min(w.top for w in group)
        right = max(w.left + w.width for w in group)
        bottom = max(w.top + w.height for w in group)
        pad = max(2, (bottom - top) // scale // 5)
        box = (
            max(left // scale - pad, 0),
            max(top // scale - pad, 0),
            min(-(-right // scale) + pad, img.width - 1),
            min(-(-bottom // scale) + pad, img.height - 1),
        )
        draw.rectangle(box, fill=black)
    return len(groups)


# --------------------------------------------------------------------------- pipeline


def capture_screen(
    cfg: ScreenConfig,
    target: str,
    shell: Shell,
    roots: Roots,
    env: Mapping[str, str] | None = None,
    now: float | None = None,
) -> ScreenResult:
    """Take one screenshot under the privacy rules; never returns an unmasked sensitive image."""
    if cfg.backend == "none":
        return ScreenResult(None, "skipped:disabled", "backend is none")
    try:
        regions = parse_mask_regions(cfg.mask_regions)
    except PrivacyConfigError as e:
        return ScreenResult(None, "skipped:bad mask_regions", str(e))
    before = check_sensitive(cfg, target, shell, roots, env, now)
    if before.sensitive:
        log.info("screenshot_skipped", reason=before.reason, detail=before.detail)
        return ScreenResult(None, f"skipped:{before.reason}", before.detail)
    try:
        backend, img = grab_image(grab_options(cfg), target, shell, roots, env)
    except ScreenError as e:
        log.info("screenshot_unavailable", error=str(e))
        return ScreenResult(None, f"skipped:{e}", str(e), cfg.backend)
    after = check_sensitive(cfg, target, shell, roots, env, now)
    if after.sensitive:
        log.info("screenshot_dropped", reason=after.reason, detail=after.detail)
        return ScreenResult(None, f"skipped:{after.reason}", after.detail, backend)
    n_regions = apply_mask_regions(img, regions)
    n_pans = 0
    if cfg.ocr_mask:
        try:
            n_pans = ocr_mask(img, cfg.ocr_timeout_s)
        except OcrError as e:
            log.warning("screenshot_ocr_failed", error=str(e))
            return ScreenResult(None, "skipped:ocr failed", str(e), backend, n_regions)
    png = encode_png(downscale(img, cfg.max_width))
    masked = n_regions > 0 or n_pans > 0
    detail = f"{img.width}x{img.height} via {backend}"
    if masked:
        detail += f"; {n_regions} region(s), {n_pans} card number(s) masked"
    return ScreenResult(png, "masked" if masked else "captured", detail, backend, n_regions, n_pans)
