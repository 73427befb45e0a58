"""drivers/android.py: dropbox, crash text, logcat, `ls -l` and heartbeat parsers.

The fixtures under tests/fixtures/android/*_written.txt are written from AOSP's
output formats (no real capture of these commands was available); each says so in
its header, which the parsers skip like any line that is not theirs.
"""

from __future__ import annotations

from drivers import android
from tests.conftest import FIXTURES

A = FIXTURES / "android"


def text(name: str) -> str:
    return (A / name).read_text()


def test_dropbox_summary_android13() -> None:
    """Every entry with its time, tag, kind and size; the two of one second keep their order."""
    listing = android.parse_dumpsys_dropbox(text("dumpsys_dropbox_android13_summary_written.txt"))
    assert listing.total == 9
    assert [(e.time, e.tag, e.kind) for e in listing.entries] == [
        ("2024-05-01 08:59:58", "SYSTEM_BOOT", "text"),
        ("2024-05-01 09:00:02", "SYSTEM_LAST_KMSG", "text"),
        ("2024-05-01 09:14:37", "system_server_wtf", "text"),
        ("2024-05-01 12:00:01", "data_app_crash", "text"),
        ("2024-05-01 12:00:01", "data_app_crash", "text"),
        ("2024-05-01 12:03:44", "data_app_anr", "text"),
        ("2024-05-01 12:10:09", "SYSTEM_TOMBSTONE", "text"),
        ("2024-05-01 12:10:09", "SYSTEM_TOMBSTONE_PROTO_WITH_HEADERS", "data"),
        ("2024-05-01 12:20:00", "data_app_crash", "contents lost"),
    ]
    first = listing.entries[0]
    assert first.compressed and first.size == 181 and first.text is None
    assert [e.category for e in listing.entries] == [
        "",
        "",
        "",
        "crash",
        "crash",
        "anr",
        "crash",
        "crash",
        "crash",
    ]
    keys = [k for k, _ in listing.keyed()]
    assert keys[3:5] == [
        "2024-05-01 12:00:01 data_app_crash #0",
        "2024-05-01 12:00:01 data_app_crash #1",
    ]
    assert len(set(keys)) == len(keys)


def test_dropbox_summary_with_previews() -> None:
    """Before Android 10 each text entry has a preview line; it is kept, not taken for an entry."""
    listing = android.parse_dumpsys_dropbox(text("dumpsys_dropbox_android8_preview_written.txt"))
    assert [e.tag for e in listing.entries] == [
        "SYSTEM_BOOT",
        "data_app_crash",
        "data_app_anr",
        "system_app_strictmode",
    ]
    crash = listing.entries[1]
    assert crash.preview.startswith("Process: com.example.pos/Flags:")
    info = android.parse_crash_text(crash.preview.replace("/", "\n"))
    assert info.process == "com.example.pos"


def test_dropbox_print_two_crashes_of_one_second() -> None:
    """--print: each entry's whole text, up to the next separator; the causes come out."""
    listing = android.parse_dumpsys_dropbox(
        text("dumpsys_dropbox_print_data_app_crash_written.txt")
    )
    assert [e.tag for e in listing.entries] == ["data_app_crash", "data_app_crash"]
    a, b = (android.parse_crash_text(e.text or "") for e in listing.entries)
    assert a == android.CrashInfo(
        "com.example.pos",
        4242,
        "com.example.pos",
        "java.lang.IllegalStateException: printer queue closed",
    )
    assert b.process == "com.example.loyalty" and b.pid == 5151
    assert b.cause.startswith("java.lang.NullPointerException: Attempt to invoke")
    assert (listing.entries[0].text or "").endswith("\t... 6 more\n")


def test_dropbox_print_anr_subject() -> None:
    """An ANR's cause is its Subject header."""
    (entry,) = android.parse_dumpsys_dropbox(
        text("dumpsys_dropbox_print_data_app_anr_written.txt")
    ).entries
    info = android.parse_crash_text(entry.text or "")
    assert entry.category == "anr"
    assert info.process == "com.example.pos" and info.pid == 4242
    assert info.cause.startswith("Input dispatching timed out (5f2a1c com.example.pos/")


def test_dropbox_print_tombstone() -> None:
    """A native crash: the process from ">>> name <<<", the signal and the abort message."""
    (entry,) = android.parse_dumpsys_dropbox(
        text("dumpsys_dropbox_print_system_tombstone_written.txt")
    ).entries
    info = android.parse_crash_text(entry.text or "")
    assert info.process == "com.example.pos" and info.pid == 4343
    assert info.cause == (
        "signal 6 (SIGABRT), code -1 (SI_QUEUE), fault addr --------; "
        "abort: emv: card reader returned a short frame"
    )


def test_dropbox_empty_and_garbage() -> None:
    """No entries, a permission denial or other text: an empty listing, never an exception."""
    assert (
        android.parse_dumpsys_dropbox(
            "Drop box contents: 0 entries\n\n(No entries found.)\n"
        ).entries
        == ()
    )
    denied = "Permission Denial: Can't dump DropBoxManagerService from from pid=1, uid=2000\n"
    assert android.parse_dumpsys_dropbox(denied).entries == ()
    assert android.parse_dumpsys_dropbox("").total is None


def test_logcat_threadtime() -> None:
    """Lines with time, pid, tid, level, tag and message; buffer markers skipped."""
    lines = android.parse_logcat_threadtime(text("logcat_threadtime_pos_crash_written.txt"))
    assert len(lines) == 10
    fatal = lines[4]
    assert (fatal.time, fatal.pid, fatal.tid, fatal.level, fatal.tag) == (
        "05-01 12:00:01.010",
        4242,
        4242,
        "E",
        "AndroidRuntime",
    )
    assert fatal.message == "FATAL EXCEPTION: main"
    assert lines[1].tag == "PrintQueue" and lines[1].message.startswith("printer busy")
    assert lines[0].tag == "PosApp" and lines[0].raw.startswith("05-01 11:59:58.120")
    year = android.parse_logcat_threadtime("2024-05-01 12:00:01.010  42  43 W Tag: with year\n")
    assert year[0].time == "2024-05-01 12:00:01.010" and year[0].message == "with year"


def test_ls_l_toybox_and_toolbox() -> None:
    """Regular files with size and mtime; the total line and directories are skipped."""
    files = android.parse_ls_l(text("ls_l_data_tombstones_toybox_written.txt"))
    assert [(f.name, f.size, f.mtime) for f in files] == [
        ("tombstone_00", 80123, "2024-05-01 09:12"),
        ("tombstone_00.pb", 61002, "2024-05-01 09:12"),
        ("tombstone_01", 120334, "2024-05-01 12:10"),
        ("tombstone_01.pb", 90210, "2024-05-01 12:10"),
    ]
    old = "-rw------- system   system     123456 2013-01-01 12:00 traces.txt\n"
    assert android.parse_ls_l(old)[0].name == "traces.txt"


def test_listing_state() -> None:
    """Absent and denied are states; another failure is an error with its text."""
    assert android.listing_state(1, "", "ls: /data/anr: Permission denied\n") == ("denied", "")
    assert android.listing_state(1, "", "ls: /x: No such file or directory\n") == ("absent", "")
    assert android.listing_state(0, "total 0\n", "") == ("ok", "")
    assert android.listing_state(2, "", "ls: bad\n") == ("error", "ls: bad")


def test_heartbeat_on_the_device_clock() -> None:
    """Age is the device's now minus the file's mtime; a missing file is not an error."""
    hb = android.parse_heartbeat("/sdcard/hb", 0, "1714564800\n1714564710\n", "")
    assert hb.exists and hb.age_s == 90.0
    gone = android.parse_heartbeat(
        "/sdcard/hb", 1, "1714564800\n", "stat: '/sdcard/hb': No such file or directory\n"
    )
    assert not gone.exists and gone.age_s is None and gone.error == ""
    denied = android.parse_heartbeat(
        "/data/x", 1, "1714564800\n", "stat: '/data/x': Permission denied\n"
    )
    assert not denied.exists and "Permission denied" in denied.error
