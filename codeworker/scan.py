"""Secret scan of what a job is about to commit, before anything is pushed.

trufflehog3 does the matching, but it is never imported: it is GPL-2.0 and pins old libraries
(Jinja2 3.1.4, attrs 20.3.0), so it lives in its own virtualenv (``.venv-scanner``, built by
``make scanner``) and runs as a subprocess. Only the lines a job adds are scanned; they are written
into a fresh temporary tree at their own line numbers, so reported lines match the real file.

The scan fails closed: a missing, hung or crashing scanner, or output we cannot parse, raises
:class:`ScanError` and the pipeline pushes nothing. Secrets are redacted here, as soon as they are
read from the scanner's output, so no full secret reaches a log line or a job result.

trufflehog3 quirks this module works around (checked on 3.0.10):

- it reads ``.trufflehog3.yml`` from the scanned tree unless ``--config`` is given: we always
  pass our own (empty) config and our own rules file from this package;
- ``nosecret`` anywhere on a line silences it: we pass ``--ignore-nosecret``;
- it skips files named ``.trufflehog3.yml`` or under ``.git`` silently: such names are renamed in
  the scan tree and mapped back;
- it skips files it cannot decode silently: we write UTF-8 ourselves (undecodable characters
  replaced) and treat any "skipping file" warning as a failed scan;
- it numbers lines with ``str.splitlines``, which also breaks on ``\\v``, ``\\f``, ``\\x85``,
  ``\\u2028`` and friends: those are turned into spaces so line numbers cannot shift.
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
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from codeworker.commands import with_default_signals

log = logging.getLogger(__name__)

Severity = Literal["HIGH", "MEDIUM", "LOW"]

SCANNER_NAME = "trufflehog3"
"""Name of the scanner's console script, in the scanner virtualenv or on PATH."""

DEFAULT_SCANNER = Path(__file__).resolve().parent.parent / ".venv-scanner" / "bin" / SCANNER_NAME
"""Where ``make scanner`` installs trufflehog3: ``<project root>/.venv-scanner/bin/trufflehog3``."""

RULES_RESOURCE = "rules/secrets.yml"
"""The rules file, inside the codeworker package (never read from the scanned repository)."""

BLOCKING_SEVERITIES: frozenset[str] = frozenset({"HIGH"})
"""Findings of these severities stop the commit."""

MAX_LINE_NUMBER = 10_000_000
"""Larger line numbers are a caller bug; refusing them keeps the scan tree small."""

_PROCESSES = 1
"""trufflehog3's worker pool size: one is enough for a job's diff and keeps workers lean."""

_EXIT_CLEAN = 0
_EXIT_FOUND = 2
"""trufflehog3 exits 0 without findings and 2 with some; anything else is a crash."""

_SKIPPED_NAMES = frozenset({".git", ".trufflehog3.yml"})
"""Names trufflehog3 always skips, wherever they occur in a path."""

_RENAMED_SUFFIX = "~codeworker-scan"

_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
"""Every character ``str.splitlines`` breaks on (and universal newlines would translate)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class SecretFinding(BaseModel):
    """One secret in the lines a job would commit. ``redacted`` never holds the whole secret."""

    model_config = ConfigDict(frozen=True)

    path: str
    """Repository-relative path of the file."""

    line: int
    """1-based line number in the new version of the file."""

    rule: str
    """Id of the rule that matched, e.g. ``aws.access-key-id`` (see ``rules/secrets.yml``)."""

    severity: Severity
    """HIGH blocks the commit; MEDIUM and LOW are reported only."""

    redacted: str
    """The matched text with the secret cut off after its first characters (``AKIA…``)."""


class ScanError(Exception):
    """The scan could not be run or its result cannot be trusted; nothing may be pushed."""


def redact(secret: str) -> str:
    """Keep just enough of a secret to recognise its kind (``ghp_…``), never the secret itself."""
    if len(secret) < 12:
        return "****"
    return f"{secret[:4]}…"


def blocking(findings: Iterable[SecretFinding]) -> list[SecretFinding]:
    """The findings that stop the commit (severity HIGH)."""
    return [finding for finding in findings if finding.severity in BLOCKING_SEVERITIES]


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

    blocking = staticmethod(blocking)

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
        executable = self.resolve_executable()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="codeworker-scan-") as tmp:
            root = Path(tmp)
            tree = root / "tree"
            tree.mkdir()
            names = _write_tree(tree, files)
            config = root / "config.yml"
            config.write_text("{}\n", encoding="utf-8")
            with resources.as_file(resources.files("codeworker").joinpath(RULES_RESOURCE)) as rules:
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
        findings = _parse(returncode, stdout, stderr, names)
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


def _scan_name(path: str) -> PurePosixPath:
    """The path a repository file gets in the scan tree, after checking it stays inside."""
    pure = PurePosixPath(path)
    if not path or "\x00" in path or pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ValueError(f"not a repository-relative file path: {path!r}")
    return PurePosixPath(*(part + _RENAMED_SUFFIX if part in _SKIPPED_NAMES else part for part in pure.parts))


def _write_tree(tree: Path, files: Mapping[str, Sequence[tuple[int, str]]]) -> dict[str, str]:
    """Write each file's added lines at their line numbers; return scan-tree name -> repo path."""
    names: dict[str, str] = {}
    for path, lines in files.items():
        name = _scan_name(path)
        if name.as_posix() in names:
            raise ValueError(f"{path!r} and {names[name.as_posix()]!r} are the same file")
        by_number: dict[int, str] = {}
        for number, text in lines:
            if not 1 <= number <= MAX_LINE_NUMBER:
                raise ValueError(f"{path}: line number {number} out of range")
            text = _LINE_BREAKS.sub(" ", text)
            if by_number.setdefault(number, text) != text:
                raise ValueError(f"{path}: line {number} given twice with different text")
        content = [""] * max(by_number)
        for number, text in by_number.items():
            content[number - 1] = text
        target = tree.joinpath(*name.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("w", encoding="utf-8", errors="replace", newline="\n") as out:
                out.write("\n".join(content))
                out.write("\n")
        except OSError as exc:
            raise ScanError(f"could not prepare {path} for the secret scan: {exc.strerror}") from exc
        names[name.as_posix()] = path
    return names


def _stderr_tail(stderr: bytes) -> str:
    """The last line the scanner printed (its error), for the ScanError message."""
    lines = [line.strip() for line in _ANSI.sub("", stderr.decode("utf-8", "replace")).splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "no error output"


def _parse(returncode: int, stdout: bytes, stderr: bytes, names: Mapping[str, str]) -> list[SecretFinding]:
    """Findings from trufflehog3's JSON report; ScanError if the report cannot be trusted.

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
    return sorted(findings, key=lambda f: (f.path, f.line, f.rule, f.redacted))


def _finding(issue: object, names: Mapping[str, str]) -> SecretFinding:
    """One finding from one entry of the report, its secret redacted."""
    unreadable = ScanError("secret scanner printed a finding codeworker cannot read")
    if not isinstance(issue, dict) or not isinstance(issue.get("rule"), dict):
        raise unreadable
    rule, secret, path = issue["rule"], issue.get("secret"), issue.get("path")
    if not isinstance(secret, str) or not isinstance(path, str):
        raise unreadable
    if path not in names:
        raise ScanError("secret scanner reported a file it was not given")
    try:
        return SecretFinding(
            path=names[path],
            line=int(issue.get("line", "")),
            rule=str(rule["id"]),
            severity=str(rule["severity"]).upper(),
            redacted=redact(secret),
        )
    except (KeyError, TypeError, ValueError):
        raise unreadable from None
