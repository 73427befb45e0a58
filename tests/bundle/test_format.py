"""Bundle format: sealing, verification of every byte, hostile zips, extract and html."""

from __future__ import annotations

import io
import json
import stat
import time
import zipfile
from pathlib import Path

import pytest

from agent.bundle.format import (
    MANIFEST,
    BundleCorrupt,
    BundleError,
    BundleReader,
    BundleSchemaError,
    BundleSignatureError,
    BundleUnsafe,
    DeviceInfo,
    Entry,
    bundle_id_time,
    is_bundle_id,
    json_entry,
    new_bundle_id,
    seal,
    text_entry,
    verify_file,
)
from agent.bundle.html import render_html
from agent.core.redact import Redactor

KEY = b"k" * 32
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c49444154789c63f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def make_bundle(**kw: object) -> bytes:
    """A realistic bundle with text, JSON and a PNG entry."""
    entries = [
        text_entry("report.txt", "printer paper end at till 3"),
        json_entry("diagnostics/printer.json", {"link": "ok", "paper_end": True}),
        json_entry(
            "timeline.json",
            {
                "readings": [
                    {"source": "printer:r", "ts": 1.0, "ok": True, "values": {"paper_end": True}}
                ]
            },
        ),
        Entry("screenshot.png", PNG_1PX, "image/png"),
    ]
    return seal(
        device=DeviceInfo(id="T-1", site="S"),
        trigger={"kind": "fault", "key": "printer.paper_end", "severity": "critical"},
        entries=entries,
        key=KEY,
        redactor=Redactor(),
        screenshot="captured",
        **kw,  # type: ignore[arg-type]
    ).data


def rebuild(data: bytes, mutate: object) -> bytes:
    """Copy a zip entry by entry through mutate(name, bytes) -> list[(name, bytes)]."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            for name, payload in mutate(info.filename, src.read(info)):  # type: ignore[operator]
                dst.writestr(name, payload)
    return buf.getvalue()


def test_uuid7_ids_are_time_ordered() -> None:
    """Bundle ids are UUIDv7, strictly increasing and carry their creation time."""
    ids = [new_bundle_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(is_bundle_id(i) for i in ids)
    assert abs(bundle_id_time(new_bundle_id()) - time.time()) < 1.0


def test_roundtrip_verifies_and_manifest_is_first() -> None:
    """A sealed bundle verifies with its key; manifest.json is the first entry."""
    data = make_bundle()
    with BundleReader(data) as r:
        assert r.names[0] == MANIFEST
        res = r.verify(KEY)
    m = res.manifest
    assert m["schema"] == "posagent.bundle/1"
    assert m["trigger"]["key"] == "printer.paper_end"
    assert {f["name"] for f in m["files"]} == {
        "report.txt",
        "diagnostics/printer.json",
        "timeline.json",
        "screenshot.png",
    }
    assert m["redaction"]["screenshot"] == "captured"
    assert m["created_at"].endswith("Z")
    assert m["device"]["id"] == "T-1"


def test_every_byte_of_every_entry_is_covered() -> None:
    """Flipping any single byte of any entry (manifest and signature included) fails verify."""
    data = make_bundle()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    for target in names:
        size = len(zipfile.ZipFile(io.BytesIO(data)).read(target))
        for pos in sorted({0, size // 2, size - 1}):

            def flip(
                name: str, payload: bytes, target: str = target, pos: int = pos
            ) -> list[tuple[str, bytes]]:
                if name != target:
                    return [(name, payload)]
                b = bytearray(payload)
                b[pos] ^= 0x01
                return [(name, bytes(b))]

            bad = rebuild(data, flip)
            with pytest.raises(BundleError), BundleReader(bad) as r:
                r.verify(KEY)


def test_missing_and_extra_entries_fail() -> None:
    """A removed entry or an entry not in the manifest is named in the failure."""
    data = make_bundle()
    missing = rebuild(data, lambda n, p: [] if n == "timeline.json" else [(n, p)])
    with pytest.raises(BundleCorrupt, match="missing: timeline.json"):
        BundleReader(missing).verify(KEY)
    extra = rebuild(
        data, lambda n, p: [(n, p), ("evil.txt", b"x")] if n == "report.txt" else [(n, p)]
    )
    with pytest.raises(BundleCorrupt, match="not in manifest: evil.txt"):
        BundleReader(extra).verify(KEY)


def test_wrong_key_and_missing_signature_fail() -> None:
    """The HMAC is checked with the device key."""
    data = make_bundle()
    with pytest.raises(BundleSignatureError):
        BundleReader(data).verify(b"other-key")
    nosig = rebuild(data, lambda n, p: [] if n == "manifest.sig" else [(n, p)])
    with pytest.raises(BundleSignatureError, match="missing"):
        BundleReader(nosig).verify(KEY)


def test_truncated_zip_fails() -> None:
    """A zip cut short at any point is refused."""
    data = make_bundle()
    for cut in (10, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        with pytest.raises(BundleError), BundleReader(data[:cut]) as r:
            r.verify(KEY)


def test_unknown_schema_fails() -> None:
    """A manifest with another schema is refused with a clear reason."""
    data = make_bundle()

    def reschema(n: str, p: bytes) -> list[tuple[str, bytes]]:
        if n == MANIFEST:
            m = json.loads(p)
            m["schema"] = "posagent.bundle/9"
            return [(n, json.dumps(m).encode())]
        return [(n, p)]

    with pytest.raises(BundleSchemaError, match="unknown schema"):
        BundleReader(rebuild(data, reschema)).verify(None)


def _raw_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
    return buf.getvalue()


def test_hostile_names_are_refused() -> None:
    """Traversal, absolute and backslash names are refused before anything is read."""
    for name in (
        "../evil.txt",
        "a/../../evil.txt",
        "/etc/passwd",
        "C:/x.txt",
        "a\\..\\b.txt",
        "a//b",
    ):
        with pytest.raises(BundleUnsafe):
            BundleReader(_raw_zip([(MANIFEST, b"{}"), (name, b"x")]))


def test_symlink_entry_is_refused() -> None:
    """An entry whose mode says symlink is refused."""
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(BundleUnsafe, match="symbolic link"):
        BundleReader(_raw_zip([(MANIFEST, b"{}"), (info, b"/etc/passwd")]))


def test_duplicate_names_are_refused() -> None:
    """Two entries with one name are refused."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _raw_zip([(MANIFEST, b"{}"), ("a.txt", b"1"), ("a.txt", b"2")])
    with pytest.raises(BundleUnsafe, match="duplicate"):
        BundleReader(data)


def test_zip_bomb_is_refused() -> None:
    """A highly compressed huge entry is refused by ratio, and a lying size by the read limit."""
    bomb = _raw_zip([(MANIFEST, b"{}"), ("big.txt", b"\0" * (20 * 1024 * 1024))])
    with pytest.raises(BundleUnsafe, match="ratio|bomb"):
        BundleReader(bomb)
    big = _raw_zip(
        [(MANIFEST, b"{}")] + [(f"f{i}.txt", b"\0" * (30 * 1024 * 1024 // 4)) for i in range(12)]
    )
    with pytest.raises(BundleUnsafe):
        BundleReader(big)


def test_lying_declared_size_is_caught() -> None:
    """An entry that inflates past its declared size is refused while reading."""
    data = bytearray(_raw_zip([(MANIFEST, b"{}"), ("a.txt", b"A" * 5000)]))
    # Patch the central-directory uncompressed size of a.txt down to 10 bytes.
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    lh = data.find(b"PK\x03\x04", 10)
    data[lh + 22 : lh + 26] = (10).to_bytes(4, "little")
    with BundleReader(bytes(data)) as r, pytest.raises(BundleError):
        r.read("a.txt")


def test_extract_stays_inside_target(tmp_path: Path) -> None:
    """extract writes every entry below the target and nothing else."""
    data = make_bundle()
    f = tmp_path / "b.zip"
    f.write_bytes(data)
    target = tmp_path / "out"
    with BundleReader(f) as r:
        written = r.extract(target)
    assert sorted(p.relative_to(target).as_posix() for p in written) == sorted(
        [
            "manifest.json",
            "manifest.sig",
            "report.txt",
            "diagnostics/printer.json",
            "timeline.json",
            "screenshot.png",
        ]
    )
    assert {p for p in tmp_path.rglob("*") if p.is_file()} == {f, *written}


def test_extract_refuses_symlinked_dir_escape(tmp_path: Path) -> None:
    """A pre-existing symlink inside the target cannot redirect an entry outside it."""
    data = make_bundle()
    target = tmp_path / "out"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "diagnostics").symlink_to(outside)
    with BundleReader(data) as r, pytest.raises(BundleUnsafe):
        r.extract(target)
    assert list(outside.iterdir()) == []


def test_text_entries_and_trigger_are_redacted() -> None:
    """Card numbers in text, JSON entries and the trigger are masked, counts in the manifest."""
    pan = "4111111111111111"
    sealed = seal(
        device=DeviceInfo(id="T-1"),
        trigger={"kind": "manual", "note": f"card {pan} declined"},
        entries=[
            text_entry("report.txt", f"pan={pan}"),
            json_entry("diagnostics/x.json", {"msg": pan}),
        ],
        key=KEY,
        redactor=Redactor(),
    )
    assert pan.encode() not in sealed.data
    with BundleReader(sealed.data) as r:
        m = r.verify(KEY).manifest
        for n in r.names:
            assert pan.encode() not in r.read(n)
    assert m["redaction"]["counts"].get("pan", 0) >= 3


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    """The html page inlines the screenshot, draws the timeline and escapes content."""
    data = seal(
        device=DeviceInfo(id="T-<1>"),
        trigger={"kind": "manual", "note": "<script>alert(1)</script>"},
        entries=[
            Entry("screenshot.png", PNG_1PX),
            json_entry(
                "timeline.json",
                {"readings": [{"source": "power", "ts": 5, "ok": False, "values": {}}]},
            ),
        ],
        key=KEY,
        redactor=Redactor(),
    ).data
    with BundleReader(data) as r:
        page = render_html(r, r.verify(KEY).signature_checked)
    assert "data:image/png;base64," in page
    assert "<svg" in page and "<circle" in page
    assert "<script>alert" not in page
    assert 'src="http' not in page


def test_verify_file_missing_path(tmp_path: Path) -> None:
    """A missing file is a BundleError, not a traceback."""
    with pytest.raises(BundleError, match="no such file"):
        verify_file(tmp_path / "nope.zip", KEY)


def test_a_manual_trigger_longer_than_the_format_is_cut_and_still_reads() -> None:
    """A merchant's very long note is cut to the format's limit (marked), so the bundle the
    collector receives is one it accepts; the trigger reads back."""
    from agent.bundle.trigger import Trigger

    t = Trigger.manual("paper jam " * 5000, contact="x" * 900)
    back = Trigger.from_json(t.to_json())
    assert back.note.endswith(" [cut]") and len(back.note) == 10_000
    assert back.contact.endswith(" [cut]") and len(back.contact) == 500
