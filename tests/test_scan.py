"""Secret scan through the real long-lived trufflehog3 process (``make scanner`` builds .venv-scanner).

Every fake secret is assembled from parts at run time, so no whole secret appears in this file
and our own repository does not trip secret scanners.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import random
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import codeworker.secrets.scanner as scanner_module
from codeworker.secrets.findings import ScanError, SecretFinding, blocking, key_file_glob
from codeworker.secrets.process import scanner_env
from codeworker.secrets.scanner import DEFAULT_SCANNER, SecretScanner
from codeworker.secrets.segments import MAX_LINE_CHARS, SEGMENT_CHARS

AWS_KEY_ID = "AKIA" + "Q3EGUZ7X" + "WB4RJ2KD"
AWS_SECRET = "wJalrXUt" + "nFEMIK7MDENGbPxRfiCY" + "zq8Hw3Lk1Tv9"
GITHUB_TOKEN = "gh" + "p_" + "x7Kq2mZ9" + "Lw4Rt8Yb3Nc6Vf1Hj5Gd0Sa2Pe7Q"
GITHUB_PAT = (
    "github"
    + "_pat_"
    + "11ABCDEFG0"
    + "abcdefghijkl_"
    + "mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef"
)
ANTHROPIC_KEY = "sk-" + "ant-" + "api03-" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lz" + "-Xc_Vb"

CLEAN_CODE = '''\
"""Settings loader."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    redis_url: str
    token: str


def load() -> Settings:
    token = os.environ["GITHUB_TOKEN"]
    return Settings(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), token=token)


HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
'''


@pytest.fixture(scope="module")
def scanner() -> SecretScanner:
    return SecretScanner()


def numbered(text: str, first: int = 1) -> list[tuple[int, str]]:
    return [(first + i, line) for i, line in enumerate(text.splitlines())]


def only(findings: list[SecretFinding], rule: str) -> SecretFinding:
    matching = [f for f in findings if f.rule == rule]
    assert len(matching) == 1, findings
    return matching[0]


def assert_not_leaked(findings: list[SecretFinding], *secrets: str) -> None:
    dumped = "".join(f.model_dump_json() for f in findings)
    for secret in secrets:
        assert secret not in dumped
        assert secret[4:] not in dumped


def test_aws_access_key_is_high_with_path_line_and_redacted(scanner: SecretScanner) -> None:
    added = {"app/config.py": numbered(f"import os\n\nAWS_ACCESS_KEY_ID = '{AWS_KEY_ID}'\n")}

    findings = scanner.scan(added)

    finding = only(findings, "aws.access-key-id")
    assert (finding.path, finding.line, finding.severity) == ("app/config.py", 3, "HIGH")
    assert finding.redacted == "AKIA…"
    assert blocking(findings) == [finding]
    assert_not_leaked(findings, AWS_KEY_ID)


def test_keyword_anchored_aws_secret_key_is_high(scanner: SecretScanner) -> None:
    findings = scanner.scan({"deploy/.env": [(1, f"aws_secret_access_key = {AWS_SECRET}")]})

    assert only(findings, "aws.secret-access-key").severity == "HIGH"
    assert_not_leaked(findings, AWS_SECRET)


def test_pkcs8_private_key_block_is_high(scanner: SecretScanner) -> None:
    body = base64.b64encode(random.Random(7).randbytes(300)).decode()
    block = ["-----BEGIN " + "PRIVATE KEY-----"]
    block += [body[i : i + 64] for i in range(0, len(body), 64)]
    block += ["-----END " + "PRIVATE KEY-----"]

    findings = scanner.scan({"certs/server.txt": numbered("\n".join(block))})

    finding = only(findings, "pem.private-key")
    assert (finding.path, finding.line, finding.severity) == ("certs/server.txt", 1, "HIGH")
    assert_not_leaked(findings, *block[1:-1])


@pytest.mark.parametrize(
    ("token", "rule"),
    [
        (GITHUB_TOKEN, "github.token"),
        (GITHUB_PAT, "github.fine-grained-token"),
        (ANTHROPIC_KEY, "anthropic.api-key"),
    ],
    ids=["github", "github-pat", "anthropic"],
)
def test_modern_tokens_are_high(scanner: SecretScanner, token: str, rule: str) -> None:
    findings = scanner.scan({"src/client.ts": [(12, f'const token = "{token}";')]})

    finding = only(findings, rule)
    assert (finding.path, finding.line, finding.severity) == ("src/client.ts", 12, "HIGH")
    assert finding.redacted == token[:4] + "…"
    assert_not_leaked(findings, token)


def test_clean_code_has_no_blocking_finding(scanner: SecretScanner) -> None:
    package = Path(scanner_module.__file__).parent  # the scanner's own modules (rules, placeholders)
    sources = {module.name: numbered(module.read_text()) for module in sorted(package.glob("*.py"))}

    findings = scanner.scan({"app/settings.py": numbered(CLEAN_CODE), **sources})

    assert blocking(findings) == []


def test_added_lines_in_the_middle_keep_their_line_numbers(scanner: SecretScanner) -> None:
    added = {
        "pkg/mod.py": [(57, "def f() -> str:"), (58, f"    return '{GITHUB_TOKEN}'"), (120, "x = 1")],
        "pkg/other.py": [
            (3, "# line with separators\u2028\x0b\x0c\x85 inside"),
            (4, f"KEY = '{AWS_KEY_ID}'"),
        ],
    }

    findings = scanner.scan(added)

    assert {(f.path, f.line, f.rule) for f in blocking(findings)} == {
        ("pkg/mod.py", 58, "github.token"),
        ("pkg/other.py", 4, "aws.access-key-id"),
    }


@pytest.mark.parametrize("annotation", ["# nosecret", "// nosecret: aws.access-key-id", "# NOSECRET"])
def test_nosecret_annotation_does_not_silence_a_finding(scanner: SecretScanner, annotation: str) -> None:
    findings = scanner.scan({"a.py": [(1, f"KEY = '{AWS_KEY_ID}'  {annotation}")]})

    assert only(findings, "aws.access-key-id").severity == "HIGH"


def test_a_placeholder_does_not_hide_a_real_token_on_the_same_line(scanner: SecretScanner) -> None:
    docs_key = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    line = f"keys = ['{docs_key}', '<your-key>', '{AWS_KEY_ID}']  # replace_me"

    findings = scanner.scan({"a.py": [(4, line)]})

    assert [(f.line, f.rule, f.redacted) for f in blocking(findings)] == [(4, "aws.access-key-id", "AKIA…")]


@pytest.mark.parametrize(
    ("path", "glob"),
    [
        ("home/.ssh/id_rsa", "id_rsa"),
        ("deploy/id_ed25519", "id_ed25519"),
        ("certs/server.pem", "*.pem"),
        ("certs/Server.KEY", "*.key"),
        ("signing/release.p12", "*.p12"),
        ("signing/release.pfx", "*.pfx"),
        (".env", ".env"),
        ("services/api/.env.production", ".env.*"),
    ],
)
def test_key_files_are_high_by_path(scanner: SecretScanner, path: str, glob: str) -> None:
    findings = scanner.scan({path: [(2, "harmless = 1"), (9, "x")]})

    finding = only(findings, "keyfile.path")
    assert (finding.path, finding.line, finding.severity, finding.redacted) == (path, 2, "HIGH", glob)


@pytest.mark.parametrize(
    "path", [".env.example", "config/.env.sample", "id_rsa.pub", "docs/keys.md", "id_rsa_tools.py", "env.py"]
)
def test_templates_and_public_keys_are_not_key_files(path: str) -> None:
    assert key_file_glob(path) is None


def test_five_megabyte_keyword_dense_line_is_scanned_within_the_timeout() -> None:
    # Unwindowed, trufflehog3 needs minutes for half a megabyte of this (it re-splits the file for
    # every match); in windows the whole line is scanned, and the token at its very end is found.
    chunk = 'aws_secret_key = "k3y" password: hunter2 token=ab12 api_key:"v4lue" AKIA sk-ant- ghp_ '
    chunk += "mongodb://u:p@ "
    size = 5_000_000
    line = (chunk * (size // len(chunk) + 1))[: size - len(GITHUB_TOKEN) - 1] + " " + GITHUB_TOKEN

    findings = SecretScanner(timeout=60).scan({"dense.txt": [(1, "x = 1"), (2, line), (3, "y = 2")]})

    assert [(f.line, f.rule) for f in blocking(findings)] == [(2, "github.token")]


def test_token_across_a_window_boundary_keeps_its_line_number(scanner: SecretScanner) -> None:
    filler = "a-b " * (MAX_LINE_CHARS // 4)
    line = filler[: MAX_LINE_CHARS - 10] + GITHUB_TOKEN + " " + filler * 3

    findings = scanner.scan({"min.js": [(41, "var a;"), (42, line), (43, f"k = '{AWS_KEY_ID}'")]})

    assert {(f.line, f.rule) for f in blocking(findings)} == {(42, "github.token"), (43, "aws.access-key-id")}


def test_large_file_split_into_segments_keeps_line_numbers(scanner: SecretScanner) -> None:
    body = [(n, f"value_{n} = compute({n}, {n + 1})") for n in range(1, 2 * SEGMENT_CHARS // 20)]
    body[-1] = (body[-1][0], f"TOKEN = '{GITHUB_TOKEN}'")

    findings = scanner.scan({"big.py": body})

    assert [(f.line, f.rule) for f in blocking(findings)] == [(body[-1][0], "github.token")]


def test_files_trufflehog3_would_skip_are_scanned(scanner: SecretScanner) -> None:
    # trufflehog3 skips files named .trufflehog3.yml silently, and would read one as its config.
    added = {
        ".trufflehog3.yml": [
            (1, "exclude:"),
            (2, "- message: all"),
            (3, "  paths: ['*']"),
            (4, GITHUB_TOKEN),
        ],
        "sub/.trufflehog3.yml": [(2, GITHUB_TOKEN)],
        "b.py": [(1, f"k = '{AWS_KEY_ID}'")],
    }

    findings = scanner.scan(added)

    assert {(f.path, f.line) for f in blocking(findings)} == {
        (".trufflehog3.yml", 4),
        ("sub/.trufflehog3.yml", 2),
        ("b.py", 1),
    }


def test_undecodable_text_is_still_scanned(scanner: SecretScanner) -> None:
    # A diff decoded with surrogateescape carries lone surrogates; trufflehog3 would skip the file.
    findings = scanner.scan({"latin1.txt": [(1, "caf\udce9"), (2, f"key={AWS_KEY_ID}")]})

    assert only(findings, "aws.access-key-id").line == 2


def test_latin1_bytes_around_a_token_do_not_hide_it(scanner: SecretScanner) -> None:
    # The workspace decodes a diff with errors="replace": latin-1 bytes become U+FFFD next to the token.
    raw = b"caf\xe9 = '" + GITHUB_TOKEN.encode() + b"'\xa0\xff"
    lines = raw.decode("utf-8", errors="replace").splitlines()

    findings = scanner.scan({"legacy.py": [(3, lines[0])]})

    assert (only(findings, "github.token").line, only(findings, "github.token").severity) == (3, "HIGH")


def test_file_with_nul_bytes_is_scanned(scanner: SecretScanner) -> None:
    # A file git calls binary (NUL bytes) is still diffed as text and scanned.
    findings = scanner.scan({"blob.bin": [(1, "\x00\x01\x02PK\x00"), (2, f"\x00{AWS_KEY_ID}\x00\x00")]})

    assert only(findings, "aws.access-key-id").line == 2


def test_nothing_added_needs_no_scanner() -> None:
    scanner = SecretScanner(executable="/nonexistent/trufflehog3")

    assert scanner.scan({}) == []
    assert scanner.scan({"deleted.py": []}) == []


def test_missing_scanner_is_a_clear_scan_error(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "trufflehog3"
    scanner = SecretScanner(executable=str(missing))  # constructing it is fine

    with pytest.raises(
        ScanError, match=r"secret scanner not found at .*/bin/trufflehog3: run `make scanner`"
    ):
        scanner.scan({"a.py": [(1, "x = 1")]})


def test_scanner_not_on_path_is_a_clear_scan_error() -> None:
    scanner = SecretScanner(executable="no-such-trufflehog3")

    with pytest.raises(ScanError, match="not found on PATH: run `make scanner`"):
        scanner.scan({"a.py": [(1, "x = 1")]})


def test_timeout_is_a_scan_error(scanner: SecretScanner) -> None:
    slow = SecretScanner(executable=scanner.resolve_executable(), timeout=0.01)

    with pytest.raises(ScanError, match=r"secret scan timed out after 0\.01 s"):
        slow.scan({"a.py": [(1, f"k = '{AWS_KEY_ID}'")]})


@pytest.mark.parametrize(
    ("executable", "message"),
    [
        ("/bin/false", "secret scanner failed with exit status 1"),
        ("/bin/echo", "bytes that are not JSON"),
    ],
)
def test_broken_scanner_is_a_scan_error(executable: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        SecretScanner(executable=executable).scan({"a.py": [(1, f"k = '{AWS_KEY_ID}'")]})


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../outside.py", "a/../../b.py", "nul\x00.py"])
def test_paths_outside_the_repository_are_refused(scanner: SecretScanner, path: str) -> None:
    with pytest.raises(ValueError, match=r"repo-relative path|relative to the repository root"):
        scanner.scan({path: [(1, "x = 1")]})


def test_scanner_runs_without_the_workers_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-" + "0123456789"
    for name in ("GITHUB_TOKEN", "ANTHROPIC_API_KEY", "REDIS_URL"):
        monkeypatch.setenv(name, canary)
    scanner = SecretScanner()

    findings = scanner.scan({"a.py": [(1, f"k = '{AWS_KEY_ID}'")]})

    assert only(findings, "aws.access-key-id").severity == "HIGH"
    # The environment the running scanner process was started with.
    environ = Path(f"/proc/{scanner.pid}/environ").read_bytes().split(b"\0")
    env = dict(entry.decode().split("=", 1) for entry in environ if entry)
    assert env == scanner_env()
    assert set(env) == {"PATH", "HOME", "LANG"}
    assert canary not in "".join(env.values())
    assert os.environ["GITHUB_TOKEN"] == canary
    scanner.close()


def test_a_trufflehog3_script_stands_for_the_python_of_its_virtualenv(tmp_path: Path) -> None:
    # What CODEWORKER_SCANNER names in the deployments (/opt/scanner/bin/trufflehog3).
    assert SecretScanner(executable=str(DEFAULT_SCANNER)).resolve_executable() == str(
        DEFAULT_SCANNER.with_name("python")
    )
    lone = tmp_path / "bin" / "trufflehog3"
    lone.parent.mkdir()
    lone.write_text("#!/bin/sh\n")
    lone.chmod(lone.stat().st_mode | stat.S_IXUSR)

    with pytest.raises(ScanError, match=r"no python beside .*/bin/trufflehog3 .*run `make scanner`"):
        SecretScanner(executable=str(lone)).scan({"a.py": [(1, "x = 1")]})


def imports(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_trufflehog3_is_imported_by_the_scanner_process_alone() -> None:
    # The licence boundary: trufflehog3 (GPL-2.0) only runs in the scanner virtualenv's process,
    # whose module may import nothing from codeworker (its dependencies are not installed there).
    package = Path(scanner_module.__file__).parents[1]
    importers = {path.name for path in package.rglob("*.py") if "trufflehog3" in imports(path)}
    driver = imports(package / "secrets" / "scand.py")

    assert importers == {"scand.py"}
    assert driver - {"trufflehog3"} <= set(sys.stdlib_module_names)


def exited(pidfd: int, timeout: float) -> bool:
    """Whether the process behind ``pidfd`` has exited, waiting for it up to ``timeout`` seconds."""
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


def test_one_scanner_process_answers_every_scan() -> None:
    scanner = SecretScanner()
    assert scanner.pid is None  # started by the first scan, not before

    first = scanner.scan({"a.py": [(1, f"k = '{AWS_KEY_ID}'")]})
    pid = scanner.pid
    second = scanner.scan({"b.py": [(7, f"t = '{GITHUB_TOKEN}'")]})

    assert pid is not None
    assert scanner.pid == pid
    assert [(f.path, f.line, f.rule) for f in blocking(first)] == [("a.py", 1, "aws.access-key-id")]
    assert [(f.path, f.line, f.rule) for f in blocking(second)] == [("b.py", 7, "github.token")]
    scanner.close()
    assert scanner.pid is None


def test_a_killed_scanner_process_is_replaced() -> None:
    scanner = SecretScanner()
    scanner.scan({"a.py": [(1, "x = 1")]})
    pid = scanner.pid
    assert pid is not None
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert exited(pidfd, 30)

        findings = scanner.scan({"a.py": [(3, f"k = '{AWS_KEY_ID}'")]})
    finally:
        os.close(pidfd)

    assert only(findings, "aws.access-key-id").line == 3
    assert scanner.pid not in (None, pid)
    scanner.close()


def test_a_hung_scanner_process_times_out_and_is_replaced() -> None:
    scanner = SecretScanner()
    scanner.scan({"a.py": [(1, "x = 1")]})
    pid = scanner.pid
    assert pid is not None
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGSTOP)  # alive, reading nothing, answering nothing
        scanner.timeout = 1.0
        started = time.monotonic()

        with pytest.raises(ScanError, match=r"secret scan timed out after 1 s"):
            scanner.scan({"a.py": [(1, f"k = '{AWS_KEY_ID}'")]})

        assert time.monotonic() - started < 10  # the timeout, not a hang
        assert exited(pidfd, 0)  # killed, not left stopped
    finally:
        os.close(pidfd)
    scanner.timeout = 120.0
    findings = scanner.scan({"a.py": [(1, f"k = '{AWS_KEY_ID}'")]})
    assert only(findings, "aws.access-key-id").severity == "HIGH"
    assert scanner.pid not in (None, pid)
    scanner.close()


def test_concurrent_scans_take_turns_on_one_process() -> None:
    scanner = SecretScanner()
    barrier = threading.Barrier(4)
    tokens = {
        f"t{n}.py": token for n, token in enumerate([AWS_KEY_ID, GITHUB_TOKEN, GITHUB_PAT, ANTHROPIC_KEY])
    }

    def scan(path: str) -> list[SecretFinding]:
        barrier.wait()
        return scanner.scan({path: [(1, "x = 1"), (2, f"k = '{tokens[path]}'")]})

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(tokens, pool.map(scan, tokens), strict=True))

    for path, findings in results.items():
        assert [(f.path, f.line) for f in blocking(findings)] == [(path, 2)]
    scanner.close()


def test_a_forked_child_gets_its_own_scanner_process() -> None:
    # Celery's prefork pool forks the process that built the scanner: the child must not talk to,
    # nor kill, the parent's scanner process.
    scanner = SecretScanner()
    scanner.scan({"a.py": [(1, "x = 1")]})
    parent_pid = scanner.pid
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report its scan through the pipe, never return into pytest
        status = 1
        try:
            found = scanner.scan({"c.py": [(5, f"k = '{AWS_KEY_ID}'")]})
            own = scanner.pid
            scanner.close()
            os.write(write_end, json.dumps([own, [(f.path, f.line) for f in blocking(found)]]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reply:
        child_pid, child_findings = json.loads(reply.read())
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert child_findings == [["c.py", 5]]
    assert child_pid not in (None, parent_pid)
    assert scanner.pid == parent_pid
    assert only(scanner.scan({"a.py": [(2, f"k = '{AWS_KEY_ID}'")]}), "aws.access-key-id").line == 2
    assert scanner.pid == parent_pid
    scanner.close()


WORKER = """
import sys
from codeworker.secrets.scanner import SecretScanner
scanner = SecretScanner()
scanner.scan({"a.py": [(1, "x = 1")]})
print(scanner.pid, flush=True)
if sys.argv[1] == "wait":
    sys.stdin.read()
"""


def test_the_scanner_process_is_stopped_when_the_worker_exits() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, "exit"], capture_output=True, text=True, check=True, timeout=60
    )

    pid = int(done.stdout)
    with pytest.raises(ProcessLookupError):  # killed and reaped before the worker exited
        os.kill(pid, 0)


def test_the_scanner_process_ends_when_the_worker_is_killed() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    pid = int(worker.stdout.readline())
    pidfd = os.pidfd_open(pid)
    try:
        worker.kill()
        worker.wait()

        assert exited(pidfd, 30)  # its input closed with the worker
    finally:
        os.close(pidfd)
        assert worker.stdin is not None
        worker.stdin.close()
        worker.stdout.close()
