"""What the scanner is given: the lines a job adds, cut into small segments, each line with its number.

Long lines (:data:`MAX_LINE_CHARS`) are handled here rather than in the rule pack, because
trufflehog3 rules cannot express it: trufflehog3 re-splits a whole text for every match it reports,
so a long keyword-dense line costs matches x length. Long lines are cut into overlapping windows and
files into small segments, which keeps the cost linear.

trufflehog3 numbers lines with ``str.splitlines``, which also breaks on ``\\v``, ``\\f``,
``\\x85``, ``\\u2028`` and friends: those are turned into spaces so line numbers cannot shift.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from codeworker.names import relative_path

MAX_LINE_NUMBER = 10_000_000
"""Larger line numbers are a caller bug."""

MAX_LINE_CHARS = 4_096
"""Longer lines are scanned as overlapping windows of this many characters, at the same line number."""

WINDOW_OVERLAP = 1_024
"""Characters shared by consecutive windows of a long line. No rule matches more than this (the
rule-pack tests check it), so every match lies whole inside some window."""

SEGMENT_CHARS = 16_384
"""Most characters per segment. trufflehog3 re-splits the whole text for every match it reports;
small segments keep a keyword-dense diff linear in its size."""

_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
"""Every character ``str.splitlines`` breaks on (and universal newlines would translate)."""


@dataclass
class Segment:
    """One text the scanner searches: some lines of one repository file, each with its number there."""

    path: str
    numbers: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    size: int = 0


def _numbered_lines(path: str, lines: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """A file's added lines in line order, each once, with no character that would split it."""
    by_number: dict[int, str] = {}
    for number, text in lines:
        if not 1 <= number <= MAX_LINE_NUMBER:
            raise ValueError(f"{path}: line number {number} out of range")
        text = _LINE_BREAKS.sub(" ", text)
        if by_number.setdefault(number, text) != text:
            raise ValueError(f"{path}: line {number} given twice with different text")
    return sorted(by_number.items())


def _windows(text: str) -> Iterator[str]:
    """A line as the scanner sees it: whole, or overlapping windows if longer than MAX_LINE_CHARS."""
    if len(text) <= MAX_LINE_CHARS:
        yield text
        return
    for start in range(0, len(text) - WINDOW_OVERLAP, MAX_LINE_CHARS - WINDOW_OVERLAP):
        yield text[start : start + MAX_LINE_CHARS]


def segments_of(files: Mapping[str, Sequence[tuple[int, str]]]) -> list[Segment]:
    """The added lines cut into segments of at most about SEGMENT_CHARS characters."""
    segments: list[Segment] = []
    seen: dict[str, str] = {}
    for path, lines in files.items():
        spelling = relative_path(path)
        if spelling in seen:
            raise ValueError(f"{path!r} and {seen[spelling]!r} are the same file")
        seen[spelling] = path
        segment = Segment(path)
        for number, text in _numbered_lines(path, lines):
            for piece in _windows(text):
                if segment.texts and segment.size + len(piece) > SEGMENT_CHARS:
                    segments.append(segment)
                    segment = Segment(path)
                segment.numbers.append(number)
                segment.texts.append(piece)
                segment.size += len(piece) + 1
        segments.append(segment)
    return segments
