"""False blocks of the secret rule pack on ordinary code: the Python standard library.

    .venv/bin/python -m bench.secrets_corpus [--root DIR]

Every line of every ``*.py`` file under this interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``, without ``site-packages``) goes through the real
:class:`~codeworker.secrets.scanner.SecretScanner` in one run, as if one job had added it all. The standard
library holds no real credentials, so every HIGH finding is a false block: the goal is zero. MEDIUM
findings are counted only (they include test fixtures, hashes and long identifiers).
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codeworker.secrets.findings import SecretFinding, blocking
from codeworker.secrets.scanner import SecretScanner

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
"""Directories under the stdlib path that hold third-party or generated files, not the stdlib."""

SCAN_TIMEOUT = 3_600.0
"""Seconds for the one scanner run over the whole standard library (about 30 MB of source)."""


@dataclass(frozen=True)
class CorpusResult:
    """What one scan of a set of files found."""

    files: int
    lines: int
    findings: list[SecretFinding]

    @property
    def high(self) -> list[SecretFinding]:
        return blocking(self.findings)

    @property
    def medium(self) -> int:
        return sum(1 for finding in self.findings if finding.severity == "MEDIUM")


def stdlib_root() -> Path:
    """This interpreter's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def python_files(root: Path, top: Sequence[str] = ()) -> list[Path]:
    """Every ``*.py`` under ``root`` (or under its entries ``top``, if given), sorted, without
    EXCLUDED_DIRS."""
    starts = [root / name for name in top] if top else [root]
    found: set[Path] = set()
    for start in starts:
        candidates = [start] if start.is_file() else start.rglob("*.py")
        found.update(
            path
            for path in candidates
            if path.suffix == ".py" and not EXCLUDED_DIRS & set(path.relative_to(root).parts)
        )
    return sorted(found)


def file_lines(path: Path) -> list[tuple[int, str]]:
    """A file's lines as added lines, decoded the way the workspace decodes a diff."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [(number, line) for number, line in enumerate(text.splitlines(), start=1)]


def scan_corpus(root: Path, files: Sequence[Path], scanner: SecretScanner) -> CorpusResult:
    """Scan every line of ``files`` (paths under ``root``) in one scanner run."""
    added = {path.relative_to(root).as_posix(): file_lines(path) for path in files}
    findings = scanner.scan(added)
    return CorpusResult(
        files=len(added), lines=sum(len(lines) for lines in added.values()), findings=findings
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=stdlib_root(), help="directory to scan (*.py files)")
    args = parser.parse_args()
    files = python_files(args.root)
    started = time.monotonic()
    result = scan_corpus(args.root, files, SecretScanner(timeout=SCAN_TIMEOUT))
    elapsed = time.monotonic() - started
    print(f"root: {args.root}")
    print(f"files scanned: {result.files}, lines: {result.lines}, scan took {elapsed:.0f} s")
    print(f"HIGH findings (false blocks): {len(result.high)}")
    for finding in result.high:
        print(f"  {finding.path}:{finding.line} {finding.rule} {finding.redacted}")
    print(f"MEDIUM findings: {result.medium}")
    for rule, count in Counter(f.rule for f in result.findings if f.severity == "MEDIUM").most_common():
        print(f"  {rule}: {count}")


if __name__ == "__main__":
    main()
