"""Redaction against scrubadub's credit card detector, on the same corpora.

Corpora (tests/fixtures/redaction/, the ones the unit tests use):
- hidden-format PAN corpus: every published test PAN (test_pans.tsv) written
  in every format of formats.tsv (grouped with spaces/dashes/dots/+/%20,
  slashes, underscores, mixed separators, 8-8; JSON, URL, key=value, free
  text, track 1/2, EMV TLV; hex-ASCII, hexdump -C and xxd dumps; UTF-16 NULs;
  fullwidth, Arabic-Indic and Devanagari digits; JSON and URL escapes of each digit).
  Recall = PANs whose digits no longer appear (bare, with separators, in any of
  those encodings) / PANs present;
- look-alike corpus (lookalikes.tsv): timestamps, epochs, amounts, IPs,
  IMEIs, hashes... False positives = lines altered / lines. Ours gets the
  device's allow-list (allow.txt), as the agent does; scrubadub has no
  allow-list for its credit card detector.
- throughput: the realistic log text of bench_redact (1 MiB), in 64 KiB
  entries, CPU seconds of this process (median of RUNS).
scrubadub is the redaction library installable here with a card detector
(scrubadub.Scrubber with only CreditCardDetector; replaces with {{CREDIT_CARD}}).
Run: python -m bench.peers_redact
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

RUNS = 5


def _ours(allow: list[str] | None = None) -> Callable[[str], str]:
    from agent.core.redact import Redactor

    r = Redactor(allow=allow or [])
    return r.text


def _scrubadub() -> Callable[[str], str]:
    import scrubadub
    from scrubadub.detectors import CreditCardDetector

    s = scrubadub.Scrubber(detector_list=[CreditCardDetector()])
    return s.clean


def _recall(fn: Callable[[str], str]) -> dict[str, Any]:
    from tests.core.test_redact import FORMATS, PANS, pan_survives, render

    present = masked = 0
    by_kind: Counter[str] = Counter()
    kind_total: Counter[str] = Counter()
    missed_formats: Counter[str] = Counter()
    for name, template, kind, _count in FORMATS:
        for network, pan in PANS:
            text = render(template, network, pan)
            out = fn(text)
            present += 1
            kind_total[kind] += 1
            if not pan_survives(out, pan):
                masked += 1
                by_kind[kind] += 1
            else:
                missed_formats[name] += 1
    return {
        "pans_present": present,
        "pans_masked": masked,
        "recall_pct": round(masked / present * 100, 2),
        "recall_by_kind_pct": {k: round(by_kind[k] / kind_total[k] * 100, 1) for k in kind_total},
        "formats_fully_masked": sum(1 for n, *_ in FORMATS if missed_formats[n] == 0),
        "formats": len(FORMATS),
    }


def _false_positives(fn: Callable[[str], str]) -> dict[str, Any]:
    from tests.core.test_redact import LOOKALIKES

    altered = [(cat, text) for cat, text in LOOKALIKES if fn(text) != text]
    return {
        "lookalikes": len(LOOKALIKES),
        "altered": len(altered),
        "false_positive_pct": round(len(altered) / len(LOOKALIKES) * 100, 2),
        "altered_categories": sorted({c for c, _ in altered}),
    }


def _throughput(sides: dict[str, Callable[[str], str]]) -> dict[str, float]:
    from bench.bench_redact import corpus

    text = corpus(1024 * 1024)
    size_mb = len(text.encode()) / 1e6
    chunk = 64 * 1024
    chunks = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    for fn in sides.values():
        fn(chunks[0])  # warm-up (regex compilation)
    for _ in range(RUNS):
        for name, fn in sides.items():
            c0 = time.process_time()
            for c in chunks:
                fn(c)
            cpu[name].append(time.process_time() - c0)
    return {f"{k}_mb_per_s": round(size_mb / statistics.median(v), 1) for k, v in cpu.items()}


def main() -> dict[str, Any]:
    """Recall, false positives and throughput of both sides; print and return the figures."""
    from tests.core.test_redact import ALLOW

    ours = _ours()
    peer = _scrubadub()
    figures: dict[str, Any] = {
        "runs": RUNS,
        "posagent_recall": _recall(ours),
        "scrubadub_recall": _recall(peer),
        "posagent_lookalikes": _false_positives(_ours(ALLOW)),
        "scrubadub_lookalikes": _false_positives(peer),
    }
    figures.update(_throughput({"posagent": ours, "scrubadub": peer}))
    for k, v in figures.items():
        print(f"   {k:22} {v}")
    return figures


if __name__ == "__main__":
    main()
