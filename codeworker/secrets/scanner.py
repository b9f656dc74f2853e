"""Secret scan of what a job is about to commit, before anything is pushed.

trufflehog3 does the matching, but it is never imported: it is GPL-2.0 and pins old libraries
(Jinja2 3.1.4, attrs 20.3.0), so it lives in its own virtualenv (``.venv-scanner``, built by
``make scanner``) and runs as a subprocess with codeworker's rule pack (``rules/secrets.yml``).
Only the lines a job adds are scanned: they are written into a fresh temporary tree of small
numbered files, and every line the scanner reports is mapped back to its file and line number.

The scan fails closed: a missing, hung or crashing scanner, or output we cannot parse, raises
:class:`ScanError` and the pipeline pushes nothing. Secrets are redacted here, as soon as they are
read from the scanner's output, so no full secret reaches a log line or a job result.

Three checks live here rather than in the rule pack, because trufflehog3 rules cannot express them:

- key files by path (``id_rsa``, ``*.pem``, ``*.p12``, ``.env``, ...; :data:`KEY_FILE_GLOBS`):
  trufflehog3 rules match line content only, so these are HIGH findings made here
  (rule ``keyfile.path``);
- placeholders (``AKIA...EXAMPLE``, ``xxxx``, ``<your-token>``, ``${VAR}``, ...;
  :data:`PLACEHOLDER`): one filter on every matched text is simpler and safer than a lookahead in
  each of the rules;
- long lines (:data:`MAX_LINE_CHARS`): trufflehog3 re-splits a whole file for every match it
  reports, so a long keyword-dense line costs matches x length. Long lines are cut into
  overlapping windows and files into small segments, which keeps the cost linear.

trufflehog3 quirks this module works around (checked on 3.0.10):

- it reads ``.trufflehog3.yml`` from the scanned tree unless ``--config`` is given: we always
  pass our own (empty) config and our own rules file from this package;
- ``nosecret`` anywhere on a line silences it: we pass ``--ignore-nosecret``;
- it skips ``.git`` and ``.trufflehog3.yml`` silently, and files it cannot decode: the scan tree
  holds only numbered UTF-8 files we write ourselves (undecodable characters replaced), and any
  "skipping file" warning fails the scan;
- it numbers lines with ``str.splitlines``, which also breaks on ``\\v``, ``\\f``, ``\\x85``,
  ``\\u2028`` and friends: those are turned into spaces so line numbers cannot shift.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from codeworker.names import relative_path
from codeworker.sandbox.commands import with_default_signals

log = logging.getLogger(__name__)

Severity = Literal["HIGH", "MEDIUM", "LOW"]

SCANNER_NAME = "trufflehog3"
"""Name of the scanner's console script, in the scanner virtualenv or on PATH."""

SCANNER_VENV = Path(__file__).resolve().parents[2] / ".venv-scanner"
"""The virtualenv ``make scanner`` installs trufflehog3 into, next to the package (``<project
root>/.venv-scanner``); the sandbox hides it from commands."""

DEFAULT_SCANNER = SCANNER_VENV / "bin" / SCANNER_NAME

RULES = resources.files(__package__).joinpath("rules.yml")
"""The rule pack, inside the package (never read from the scanned repository)."""

BLOCKING_SEVERITIES: frozenset[str] = frozenset({"HIGH"})
"""Findings of these severities stop the commit."""

MAX_LINE_NUMBER = 10_000_000
"""Larger line numbers are a caller bug."""

_PROCESSES = 1
"""trufflehog3's worker pool size: one is enough for a job's diff and keeps workers lean."""

_EXIT_CLEAN = 0
_EXIT_FOUND = 2
"""trufflehog3 exits 0 without findings and 2 with some; anything else is a crash."""

MAX_LINE_CHARS = 4_096
"""Longer lines are scanned as overlapping windows of this many characters, at the same line number."""

WINDOW_OVERLAP = 1_024
"""Characters shared by consecutive windows of a long line. No rule matches more than this (the
rule-pack tests check it), so every match lies whole inside some window."""

SEGMENT_CHARS = 16_384
"""Most characters per scan-tree file. trufflehog3 re-splits the whole file for every match it
reports; small files keep a keyword-dense diff linear in its size."""

KEYFILE_RULE = "keyfile.path"
"""Rule id of a HIGH finding for a file whose name says it holds a key or credentials."""

KEY_FILE_GLOBS: tuple[str, ...] = (
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "id_ecdsa_sk",
    "id_ed25519_sk",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.ppk",
    "*.jks",
    "*.keystore",
    ".env",
    ".env.*",
)
"""File names (lower-cased, matched with :func:`fnmatch.fnmatchcase`) that block a commit whatever
they hold: private keys (SSH, PEM, PKCS#12, PuTTY, Java keystores) and dotenv files."""

KEY_FILE_TEMPLATES: tuple[str, ...] = ("*.example", "*.sample", "*.template", "*.dist", "*.defaults")
"""Names that match :data:`KEY_FILE_GLOBS` but are documented templates (``.env.example``)."""

PLACEHOLDER = re.compile(
    r"EXAMPLE"  # AWS documentation keys: AKIAIOSFODNN7EXAMPLE
    r"|[xX]{4,}|\*{4,}|0{8,}|\.{3}|\u2026"  # xxxx, ****, all-zero, ellipsis
    r"|(?i:your[_\-]|[_\-]here(?![a-z0-9])|change[_\-]?me|replace[_\-]?me|placeholder|redacted)"
    r"|<[^<>]{1,80}>|\$\{[^{}]{0,80}\}|\{\{[^{}]{0,80}\}\}"  # <your key>, ${VAR}, {{ var }}
    r"|:(?i:pass|password|passwd|pwd|pw)@"  # postgres://user:pass@localhost in documentation
)
"""A matched text containing any of these is documentation or a template, not a secret, and is
dropped. Matched texts are short (one token, or a keyword and its value), so a placeholder
elsewhere on the line does not hide a real secret."""

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
    """The matched text with the secret cut off after its first characters (``AKIA…``); for a key
    file, the name pattern that matched (``*.pem``)."""


class ScanError(Exception):
    """The scan could not be run or its result cannot be trusted; nothing may be pushed."""


def redact(secret: str) -> str:
    """Keep just enough of a secret to recognise its kind (``ghp_…``), never the secret itself."""
    if len(secret) < 12:
        return "****"
    return f"{secret[:4]}…"


def is_placeholder(matched: str) -> bool:
    """Whether a matched text is a documented placeholder rather than a secret (:data:`PLACEHOLDER`)."""
    return PLACEHOLDER.search(matched) is not None


def key_file_glob(path: str) -> str | None:
    """The :data:`KEY_FILE_GLOBS` entry a repository path's file name matches, if any."""
    name = PurePosixPath(path).name.lower()
    if any(fnmatch.fnmatchcase(name, template) for template in KEY_FILE_TEMPLATES):
        return None
    return next((glob for glob in KEY_FILE_GLOBS if fnmatch.fnmatchcase(name, glob)), None)


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
        segments = _segments(files)
        executable = self.resolve_executable()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="codeworker-scan-") as tmp:
            root = Path(tmp)
            tree = root / "tree"
            tree.mkdir()
            names = _write_tree(tree, segments)
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
            {*_parse(returncode, stdout, stderr, names), *_key_files(files)},
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


@dataclass
class _Segment:
    """One scan-tree file: some lines of one repository file, each with its number in that file."""

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


def _segments(files: Mapping[str, Sequence[tuple[int, str]]]) -> list[_Segment]:
    """The added lines cut into scan-tree files of at most about SEGMENT_CHARS characters."""
    segments: list[_Segment] = []
    seen: dict[str, str] = {}
    for path, lines in files.items():
        spelling = relative_path(path)
        if spelling in seen:
            raise ValueError(f"{path!r} and {seen[spelling]!r} are the same file")
        seen[spelling] = path
        segment = _Segment(path)
        for number, text in _numbered_lines(path, lines):
            for piece in _windows(text):
                if segment.texts and segment.size + len(piece) > SEGMENT_CHARS:
                    segments.append(segment)
                    segment = _Segment(path)
                segment.numbers.append(number)
                segment.texts.append(piece)
                segment.size += len(piece) + 1
        segments.append(segment)
    return segments


def _write_tree(tree: Path, segments: Sequence[_Segment]) -> dict[str, _Segment]:
    """Write each segment as a numbered file; return scan-tree name -> segment.

    Numbered names also keep clear of the names trufflehog3 skips (``.git``, ``.trufflehog3.yml``).
    """
    names: dict[str, _Segment] = {}
    for index, segment in enumerate(segments):
        name = f"{index:06d}.txt"
        try:
            with (tree / name).open("w", encoding="utf-8", errors="replace", newline="\n") as out:
                out.write("\n".join(segment.texts))
                out.write("\n")
        except OSError as exc:
            raise ScanError(f"could not prepare {segment.path} for the secret scan: {exc.strerror}") from exc
        names[name] = segment
    return names


def _key_files(files: Mapping[str, Sequence[tuple[int, str]]]) -> list[SecretFinding]:
    """HIGH findings for files named like keys (KEY_FILE_GLOBS), at their first added line."""
    return [
        SecretFinding(
            path=path,
            line=min(number for number, _ in lines),
            rule=KEYFILE_RULE,
            severity="HIGH",
            redacted=glob,
        )
        for path, lines in files.items()
        if (glob := key_file_glob(path)) is not None
    ]


def _stderr_tail(stderr: bytes) -> str:
    """The last line the scanner printed (its error), for the ScanError message."""
    lines = [line.strip() for line in _ANSI.sub("", stderr.decode("utf-8", "replace")).splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "no error output"


def _parse(
    returncode: int, stdout: bytes, stderr: bytes, names: Mapping[str, _Segment]
) -> set[SecretFinding]:
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


def _finding(issue: object, names: Mapping[str, _Segment]) -> SecretFinding | None:
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
