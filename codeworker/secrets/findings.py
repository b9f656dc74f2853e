"""What a secret scan reports: findings (severity, redacted text), or :class:`ScanError` when the
scan cannot be trusted.

Two checks live here rather than in the rule pack, because trufflehog3 rules cannot express them:

- key files by path (``id_rsa``, ``*.pem``, ``*.p12``, ``.env``, ...; :data:`KEY_FILE_GLOBS`):
  trufflehog3 rules match line content only, so these are HIGH findings made here
  (rule ``keyfile.path``);
- placeholders (``AKIA...EXAMPLE``, ``xxxx``, ``<your-token>``, ``${VAR}``, ...;
  :data:`PLACEHOLDER`): one filter on every matched text is simpler and safer than a lookahead in
  each of the rules.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

Severity = Literal["HIGH", "MEDIUM", "LOW"]

BLOCKING_SEVERITIES: frozenset[str] = frozenset({"HIGH"})
"""Findings of these severities stop the commit."""

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


class SecretFinding(BaseModel):
    """One secret in the lines a job would commit. ``redacted`` never holds the whole secret."""

    model_config = ConfigDict(frozen=True)

    path: str
    """Repository-relative path of the file."""

    line: int
    """1-based line number in the new version of the file."""

    rule: str
    """Id of the rule that matched, e.g. ``aws.access-key-id`` (see ``codeworker/secrets/rules.yml``)."""

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


def key_files(files: Mapping[str, Sequence[tuple[int, str]]]) -> list[SecretFinding]:
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
