"""Secret scan of what a job is about to commit, before anything is pushed.

trufflehog3 does the matching, but it is never imported into the worker: it is GPL-2.0 and pins old
libraries (Jinja2 3.1.4, attrs 20.3.0), so it lives in its own virtualenv (``.venv-scanner``, built
by ``make scanner``) and runs in a separate process, on the far side of a pipe, with codeworker's
rule pack (``codeworker/secrets/rules.yml``). That process is long-lived
(:mod:`codeworker.secrets.scand`, driven by :mod:`codeworker.secrets.process`): starting an
interpreter, importing trufflehog3 and compiling the rules take about 0.2 s, ten times the search of
a 200-line diff, so they are paid once per worker process and each job pays only for its own text
(``bench/secrets_scan.py``).
It is started on the first scan, replaced when it has died, killed after any scan it failed, and
killed when its :class:`SecretScanner` is collected or the worker exits.

Only the lines a job adds are scanned: they are cut into small numbered segments
(:mod:`codeworker.secrets.segments`), sent as texts, searched in memory by trufflehog3's own
``search``, and every line it reports is mapped back to its file and line number.

The scan fails closed: a missing, hung or crashing scanner, or an answer we cannot parse, raises
:class:`~codeworker.secrets.findings.ScanError` and the pipeline pushes nothing; a scan that
outlives its timeout has its process killed, and the next scan starts a new one. Secrets are
redacted here, as soon as they are read from the scanner's answer, so no full secret reaches a log
line or a job result.

Three checks live in this package rather than in the rule pack, because trufflehog3 rules cannot
express them: key files by path and placeholders (:mod:`codeworker.secrets.findings`), and long
lines (:mod:`codeworker.secrets.segments`).

trufflehog3 quirks this package works around (checked on 3.0.10):

- the rules come from this package only, sent over the pipe: no rules or config file is read from
  anywhere else, the scanned text included;
- ``nosecret`` anywhere on a line silences a finding: the search ignores it (``--ignore-nosecret``);
- it numbers lines with ``str.splitlines``, which also breaks on more than newlines: segments have
  none of those characters (:mod:`codeworker.secrets.segments`);
- it re-splits a whole text for every match it reports: segments are small;
- it skips files it cannot decode, silently: texts go over the pipe, never through a file, as
  UTF-8 with a lone surrogate (a diff decoded with surrogateescape) replaced by ``?``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from codeworker.secrets.findings import ScanError, SecretFinding, blocking, is_placeholder, key_files, redact
from codeworker.secrets.process import ScannerProcess
from codeworker.secrets.segments import Segment, segments_of

# ScanError is defined next door and imported from here by the callers.
__all__ = [
    "DEFAULT_SCANNER",
    "RULES",
    "SCANNER_NAME",
    "SCANNER_VENV",
    "ScanError",
    "SecretScanner",
]

log = logging.getLogger(__name__)

SCANNER_NAME = "trufflehog3"
"""Name of the scanner's console script, in the scanner virtualenv or on PATH."""

SCANNER_VENV = Path(__file__).resolve().parents[2] / ".venv-scanner"
"""The virtualenv ``make scanner`` installs trufflehog3 into, next to the package (``<project
root>/.venv-scanner``); the sandbox hides it from commands."""

DEFAULT_SCANNER = SCANNER_VENV / "bin" / SCANNER_NAME

RULES = resources.files(__package__).joinpath("rules.yml")
"""The rule pack, inside the package (never read from the scanned repository)."""


class SecretScanner:
    """Scans the lines a job adds with trufflehog3 and codeworker's rules, in one long-lived
    scanner process per instance (a worker process keeps one instance for all its jobs).

    ``executable`` is what runs the scanner: a ``trufflehog3`` console script stands for the
    ``python`` beside it in its virtualenv (what ``CODEWORKER_SCANNER`` names in the deployments),
    any other executable is taken as the Python interpreter that has trufflehog3. Empty means
    ``.venv-scanner/bin/trufflehog3`` under the project root if it exists, else ``trufflehog3``
    on PATH. It is looked up when scanning, not here, so a worker without a scanner still starts
    and can report the problem.

    Thread-safe: concurrent scans take turns on the one process.
    """

    def __init__(self, executable: str = "", timeout: float = 120.0) -> None:
        self.executable = executable
        self.timeout = timeout
        self._process = ScannerProcess()
        self._lock = threading.Lock()
        # Without a reference to self, so collecting the scanner (or exiting) stops its process.
        weakref.finalize(self, self._process.stop)

    @property
    def pid(self) -> int | None:
        """The id of the scanner process this scanner started and keeps, if one is running."""
        return self._process.pid

    def close(self) -> None:
        """Stop the scanner process now; the next scan starts a new one."""
        with self._lock:
            self._process.stop()

    def scan(self, added: Mapping[str, Sequence[tuple[int, str]]]) -> list[SecretFinding]:
        """Findings in ``added``: repo-relative path -> (1-based line number, text) of added lines.

        Raises ScanError when the scanner cannot be trusted to have looked at every line, and
        ValueError for an unusable path or line number (a caller bug).
        """
        files = {path: lines for path, lines in added.items() if lines}
        if not files:
            return []
        segments = segments_of(files)
        interpreter = self.resolve_executable()
        started = time.monotonic()
        texts = ["\n".join(segment.texts) for segment in segments]
        with self._lock:
            answer = self._process.request(interpreter, {"texts": texts}, _rule_pack(), self.timeout)
        findings = sorted(
            {*_parse(answer, segments), *key_files(files)},
            key=lambda f: (f.path, f.line, f.rule, f.redacted),
        )
        log.info(
            "secret scan of %d file(s): %d finding(s), %d blocking, %.3f s",
            len(files),
            len(findings),
            len(blocking(findings)),
            time.monotonic() - started,
        )
        return findings

    def resolve_executable(self) -> str:
        """The Python interpreter that runs the scanner process, or ScanError saying how to get one."""
        return _interpreter(self._locate())

    def _locate(self) -> str:
        """The configured executable (or the default one), found on disk or on PATH."""
        if self.executable:
            if os.sep in self.executable:
                if os.access(self.executable, os.X_OK) and Path(self.executable).is_file():
                    return self.executable
                raise ScanError(f"secret scanner not found at {self.executable}: run `make scanner`")
            found = shutil.which(self.executable)
            if found:
                return found
            raise ScanError(f"secret scanner {self.executable!r} not found on PATH: run `make scanner`")
        if os.access(DEFAULT_SCANNER, os.X_OK):
            return str(DEFAULT_SCANNER)
        found = shutil.which(SCANNER_NAME)
        if found:
            return found
        raise ScanError(
            f"secret scanner not found at {DEFAULT_SCANNER} nor {SCANNER_NAME} on PATH: run `make scanner`"
        )


@functools.cache
def _rule_pack() -> str:
    """The rule pack's text, read once per process; the scanner process gets it over its pipe."""
    return RULES.read_text(encoding="utf-8")


def _interpreter(executable: str) -> str:
    """The interpreter for an executable: the virtualenv's ``python`` beside a trufflehog3 script
    (pip installs both into the same ``bin``), else the executable itself."""
    path = Path(executable)
    if path.name != SCANNER_NAME:
        return executable
    python = path.with_name("python")
    if os.access(python, os.X_OK):
        return str(python)
    raise ScanError(f"no python beside {executable} (trufflehog3 outside a virtualenv): run `make scanner`")


def _parse(answer: Mapping[str, object], segments: Sequence[Segment]) -> set[SecretFinding]:
    """Findings from the scanner's answer, placeholders dropped; ScanError if it cannot be trusted.

    Error messages never quote the answer: it holds the secrets in full.
    """
    issues = answer.get("issues")
    if not isinstance(issues, list):
        raise ScanError("secret scanner answered without a list of findings")
    findings = {_finding(issue, segments) for issue in issues}
    return {finding for finding in findings if finding is not None}


def _finding(issue: object, segments: Sequence[Segment]) -> SecretFinding | None:
    """One finding from one issue of the answer, its secret redacted; None for a placeholder."""
    if not isinstance(issue, list) or len(issue) != 5:
        raise ScanError("secret scanner printed a finding codeworker cannot read")
    index, line, rule, severity, secret = issue
    if not isinstance(secret, str) or not all(isinstance(field, str) for field in (rule, severity)):
        raise ScanError("secret scanner printed a finding codeworker cannot read")
    if not isinstance(index, int) or not 0 <= index < len(segments):
        raise ScanError("secret scanner reported a text it was not given")
    if is_placeholder(secret):
        return None
    segment = segments[index]
    if not isinstance(line, int) or not 1 <= line <= len(segment.numbers):
        raise ScanError("secret scanner printed a finding codeworker cannot read")
    try:
        return SecretFinding(
            path=segment.path,
            line=segment.numbers[line - 1],
            rule=rule,
            severity=severity.upper(),
            redacted=redact(secret),
        )
    except ValueError:
        raise ScanError("secret scanner printed a finding codeworker cannot read") from None
