"""Secret scan of what a job is about to commit, before anything is pushed.

trufflehog3 does the matching, but it is never imported: it is GPL-2.0 and pins old libraries
(Jinja2 3.1.4, attrs 20.3.0), so it lives in its own virtualenv (``.venv-scanner``, built by
``make scanner``) and runs as a subprocess with codeworker's rule pack (``codeworker/secrets/rules.yml``).
Only the lines a job adds are scanned: they are written into a fresh temporary tree of small
numbered files, and every line the scanner reports is mapped back to its file and line number.

The scan fails closed: a missing, hung or crashing scanner, or output we cannot parse, raises
:class:`~codeworker.secrets.findings.ScanError` and the pipeline pushes nothing. Secrets are
redacted here, as soon as they are read from the scanner's output, so no full secret reaches a log
line or a job result.

Three checks live in this package rather than in the rule pack, because trufflehog3 rules cannot
express them: key files by path and placeholders (:mod:`codeworker.secrets.findings`), and long
lines (:mod:`codeworker.secrets.segments`).

trufflehog3 quirks this module works around (checked on 3.0.10):

- it reads ``.trufflehog3.yml`` from the scanned tree unless ``--config`` is given: we always
  pass our own (empty) config and our own rules file from this package;
- ``nosecret`` anywhere on a line silences it: we pass ``--ignore-nosecret``;
- it skips ``.git`` and ``.trufflehog3.yml`` silently, and files it cannot decode: the scan tree
  holds only numbered UTF-8 files we write ourselves (undecodable characters replaced), and any
  "skipping file" warning fails the scan;
- it numbers lines with ``str.splitlines``, which also breaks on more than newlines: the scan tree
  has none of those characters (:mod:`codeworker.secrets.segments`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from codeworker.sandbox.commands import with_default_signals
from codeworker.secrets.findings import ScanError, SecretFinding, blocking, is_placeholder, key_files, redact
from codeworker.secrets.segments import Segment, segments_of, write_tree

log = logging.getLogger(__name__)

SCANNER_NAME = "trufflehog3"
"""Name of the scanner's console script, in the scanner virtualenv or on PATH."""

SCANNER_VENV = Path(__file__).resolve().parents[2] / ".venv-scanner"
"""The virtualenv ``make scanner`` installs trufflehog3 into, next to the package (``<project
root>/.venv-scanner``); the sandbox hides it from commands."""

DEFAULT_SCANNER = SCANNER_VENV / "bin" / SCANNER_NAME

RULES = resources.files(__package__).joinpath("rules.yml")
"""The rule pack, inside the package (never read from the scanned repository)."""

_PROCESSES = 1
"""trufflehog3's worker pool size: one is enough for a job's diff and keeps workers lean."""

_EXIT_CLEAN = 0
_EXIT_FOUND = 2
"""trufflehog3 exits 0 without findings and 2 with some; anything else is a crash."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scanner_env() -> dict[str, str]:
    """The scanner's whole environment: no tokens, no Redis URL, nothing but what it needs.

    ``LANG`` is fixed to UTF-8 because trufflehog3 decodes files with the locale's encoding.
    """
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "LANG": "C.UTF-8",
    }


class SecretScanner:
    """Runs trufflehog3 with codeworker's rules over the lines a job adds.

    ``executable`` empty means ``.venv-scanner/bin/trufflehog3`` under the project root if it
    exists, else ``trufflehog3`` on PATH. It is looked up when scanning, not here, so a worker
    without a scanner still starts and can report the problem.
    """

    def __init__(self, executable: str = "", timeout: float = 120.0) -> None:
        self.executable = executable
        self.timeout = timeout

    def scan(self, added: Mapping[str, Sequence[tuple[int, str]]]) -> list[SecretFinding]:
        """Findings in ``added``: repo-relative path -> (1-based line number, text) of added lines.

        Raises ScanError when the scanner cannot be trusted to have looked at every line, and
        ValueError for an unusable path or line number (a caller bug).
        """
        files = {path: lines for path, lines in added.items() if lines}
        if not files:
            return []
        segments = segments_of(files)
        executable = self.resolve_executable()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="codeworker-scan-") as tmp:
            root = Path(tmp)
            tree = root / "tree"
            tree.mkdir()
            names = write_tree(tree, segments)
            config = root / "config.yml"
            config.write_text("{}\n", encoding="utf-8")
            with resources.as_file(RULES) as rules:
                command = [
                    executable,
                    "--no-history",
                    "--config",
                    str(config),
                    "--rules",
                    str(rules),
                    "--format",
                    "JSON",
                    "--ignore-nosecret",
                    "--processes",
                    str(_PROCESSES),
                    "--verbose",  # warnings on stderr, so a skipped file is seen
                    str(tree),
                ]
                returncode, stdout, stderr = self._run(command, cwd=root)
        findings = sorted(
            {*_parse(returncode, stdout, stderr, names), *key_files(files)},
            key=lambda f: (f.path, f.line, f.rule, f.redacted),
        )
        log.info(
            "secret scan of %d file(s): %d finding(s), %d blocking, %.2f s",
            len(files),
            len(findings),
            len(blocking(findings)),
            time.monotonic() - started,
        )
        return findings

    def resolve_executable(self) -> str:
        """The scanner to run, or ScanError saying how to get one."""
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

    def _run(self, command: list[str], cwd: Path) -> tuple[int, bytes, bytes]:
        """Run the scanner in its own session, so a timeout kills its pool workers too."""
        try:
            process = subprocess.Popen(
                with_default_signals(command),
                cwd=cwd,
                env=scanner_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise ScanError(f"secret scanner {command[0]} could not be started: {exc.strerror}") from exc
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_session(process)
            process.communicate()
            raise ScanError(f"secret scan timed out after {self.timeout:g} s") from None
        except BaseException:
            _kill_session(process)
            process.communicate()
            raise
        return process.returncode, stdout, stderr


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _stderr_tail(stderr: bytes) -> str:
    """The last line the scanner printed (its error), for the ScanError message."""
    lines = [line.strip() for line in _ANSI.sub("", stderr.decode("utf-8", "replace")).splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "no error output"


def _parse(returncode: int, stdout: bytes, stderr: bytes, names: Mapping[str, Segment]) -> set[SecretFinding]:
    """Findings from trufflehog3's JSON report, placeholders dropped; ScanError if the report cannot
    be trusted.

    Error messages never quote stdout: it holds the secrets in full.
    """
    if returncode not in (_EXIT_CLEAN, _EXIT_FOUND):
        raise ScanError(f"secret scanner failed with exit status {returncode}: {_stderr_tail(stderr)}")
    skipped = [
        line
        for line in _ANSI.sub("", stderr.decode("utf-8", "replace")).splitlines()
        if "skipping file" in line
    ]
    if skipped:
        raise ScanError(f"secret scanner skipped {len(skipped)} file(s): {skipped[0].strip()[:300]}")
    try:
        report = json.loads(stdout)
    except ValueError:
        raise ScanError(f"secret scanner printed {len(stdout)} bytes that are not JSON") from None
    if not isinstance(report, list):
        raise ScanError("secret scanner printed JSON that is not a list of findings")
    if (returncode == _EXIT_FOUND) != bool(report):
        raise ScanError(
            f"secret scanner exit status {returncode} disagrees with its {len(report)} finding(s)"
        )
    findings = {_finding(issue, names) for issue in report}
    return {finding for finding in findings if finding is not None}


def _finding(issue: object, names: Mapping[str, Segment]) -> SecretFinding | None:
    """One finding from one entry of the report, its secret redacted; None for a placeholder."""
    unreadable = ScanError("secret scanner printed a finding codeworker cannot read")
    if not isinstance(issue, dict) or not isinstance(issue.get("rule"), dict):
        raise unreadable
    rule, secret, path = issue["rule"], issue.get("secret"), issue.get("path")
    if not isinstance(secret, str) or not isinstance(path, str):
        raise unreadable
    segment = names.get(path)
    if segment is None:
        raise ScanError("secret scanner reported a file it was not given")
    if is_placeholder(secret):
        return None
    try:
        index = int(issue.get("line", ""))
        if not 1 <= index <= len(segment.numbers):
            raise ValueError(index)
        return SecretFinding(
            path=segment.path,
            line=segment.numbers[index - 1],
            rule=str(rule["id"]),
            severity=str(rule["severity"]).upper(),
            redacted=redact(secret),
        )
    except (KeyError, TypeError, ValueError):
        raise unreadable from None
