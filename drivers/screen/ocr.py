"""tesseract OCR: run the CLI on a PNG and parse its TSV word boxes."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.shell import ShellError, ShellTimeout, run_argv


class OcrError(Exception):
    """tesseract is missing, failed, or overran its timeout."""


@dataclass(frozen=True)
class OcrWord:
    """One recognised word with its box in image pixels."""

    block: int
    par: int
    line: int
    word: int
    left: int
    top: int
    width: int
    height: int
    conf: float
    text: str


def run_tesseract(png: bytes, timeout_s: float, binary: str = "tesseract", psm: int = 11) -> str:
    """TSV text of `tesseract stdin stdout --psm N tsv` on the given PNG."""
    argv = [binary, "stdin", "stdout", "--psm", str(psm), "tsv"]
    try:
        r = run_argv(argv, timeout_s, stdin=png)
    except ShellTimeout as e:
        raise OcrError(f"tesseract: no result within {timeout_s:g} s") from e
    except ShellError as e:
        raise OcrError(str(e)) from e
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OcrError(f"tesseract: {err[-1][:160] if err else f'exit {r.returncode}'}")
    return r.stdout.decode("utf-8", "replace")


def parse_tesseract_tsv(text: str) -> list[OcrWord]:
    """Word rows (level 5, non-empty text) of tesseract's TSV output; other rows are skipped."""
    words: list[OcrWord] = []
    for raw in text.splitlines():
        cols = raw.split("\t")
        if len(cols) != 12 or cols[0] != "5":
            continue
        try:
            nums = [int(c) for c in cols[1:10]]
            conf = float(cols[10])
        except ValueError:
            continue
        word = cols[11].strip()
        if not word or min(nums[5:9]) < 0:
            continue
        _page, block, par, line, wnum, left, top, width, height = nums
        words.append(OcrWord(block, par, line, wnum, left, top, width, height, conf, word))
    return words
