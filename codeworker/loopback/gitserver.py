"""A real smart-HTTP git server on loopback, for tests, the demo and benchmarks.

``git http-backend`` (CGI) behind a threaded ``http.server``, guarded by the same HTTP Basic
``x-access-token:<token>`` scheme GitHub accepts, so the worker's production HTTPS code path (libgit2
transport, auth header, chunked pushes, server-side ref rejection) is what the tests exercise. Every
push's ref updates are recorded with the server's verdict (:meth:`GitServer.ref_updates`), so a test
counts the pushes that moved a branch, not the requests.

Server-side preparation (creating repositories, committing "as someone else", reading what was
pushed) uses the git CLI on the bare repositories directly: it is test scaffolding, not the code under
test, and it must not share code paths with the pygit2 workspace it checks.
"""

from __future__ import annotations

import hmac
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import BinaryIO

from codeworker.git.auth import basic_credentials
from codeworker.loopback import pktline
from codeworker.loopback.server import LoopbackServer

_HTTP_BACKEND = (
    Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip())
    / "git-http-backend"
)

# Identity of commits the server makes itself (initial commits, "someone else moved the base").
_SERVER_IDENTITY = {
    "GIT_AUTHOR_NAME": "Git Server",
    "GIT_AUTHOR_EMAIL": "server@example.invalid",
    "GIT_COMMITTER_NAME": "Git Server",
    "GIT_COMMITTER_EMAIL": "server@example.invalid",
}

# The update hook is Python (the interpreter running the tests), so a pattern is never pasted into
# shell code. It reads one glob per line from the file next to it and refuses matching refs.
_UPDATE_HOOK = """#!{python}
import fnmatch, pathlib, sys
refname = sys.argv[1]
patterns = pathlib.Path(__file__).with_name("rejected-refs").read_text().splitlines()
for pattern in patterns:
    if pattern and fnmatch.fnmatchcase(refname, pattern):
        print(f"codeworker-test-server: pushes to {{refname}} are not allowed", file=sys.stderr)
        sys.exit(1)
"""


class GitServerError(RuntimeError):
    """A server-side git command failed while preparing or inspecting a repository."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, so tests can assert what clients sent (and did not)."""

    method: str
    path: str
    """Path and query string exactly as requested."""
    headers: dict[str, str] = field(default_factory=dict)


class Fault(StrEnum):
    """A way the remote fails one request (:meth:`GitServer.fail_next`)."""

    CLOSE = "close"
    """The connection is closed before any answer, as a server that crashed would."""
    STATUS_503 = "503"
    """An HTTP 503 answer, as a proxy in front of an overloaded server gives."""
    TRUNCATE = "truncate"
    """The request is served (a push is applied) but the answer is cut off half way, and the
    connection closed: a reset in the middle of the transfer."""
    HANG = "hang"
    """The request is read and never answered (until the server stops): a read timeout."""


@dataclass
class InjectedFault:
    fault: Fault
    path: str
    """``/<owner>/<name>.git/<service>``: ``git-upload-pack`` (fetch) or ``git-receive-pack`` (push)."""
    times: int


@dataclass(frozen=True)
class RefUpdate:
    """One ref update a push asked for (an all-zero sha: the ref did not exist, or is deleted), and
    whether the server made it."""

    ref: str
    old: str
    new: str
    accepted: bool


ZERO_SHA = "0" * 40


def _git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: bytes = b"") -> str:
    """Run a git command; raise GitServerError with its stderr when it fails."""
    full_env = {**os.environ, **_SERVER_IDENTITY, **(env or {})}
    proc = subprocess.run(["git", *args], cwd=cwd, env=full_env, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise GitServerError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def _read_chunked(stream: BinaryIO) -> bytes:
    """Decode an HTTP/1.1 chunked body; http-backend reads a plain stream, libgit2 sends chunks."""
    body = bytearray()
    while True:
        size_line = stream.readline()
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            # Trailers (if any) end with an empty line.
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += stream.read(size)
        stream.readline()  # CRLF after each chunk


class _Handler(BaseHTTPRequestHandler):
    """Authenticates, records, de-chunks, and hands each request to ``git http-backend``."""

    # Keep-alive, as GitHub does; every response therefore carries a Content-Length.
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the request list is the log, and stderr noise hides test output."""

    def _serve(self) -> None:
        git_server = self.server.owner
        git_server.record(RecordedRequest(self.command, self.path, dict(self.headers.items())))
        if not git_server.authorized(self.headers.get("Authorization")):
            self._unauthorized()
            return
        body = self._read_body()
        fault = git_server.take_fault(self.command, self.path)
        if fault is Fault.CLOSE:
            self.close_connection = True
            return
        if fault is Fault.STATUS_503:
            self._status(503, b"service unavailable\n")
            return
        if fault is Fault.HANG:
            git_server.stopping.wait()
            self.close_connection = True
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(git_server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": "x-access-token",
        }
        if encoding := self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
        if protocol := self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = protocol
        proc = subprocess.run([str(_HTTP_BACKEND)], input=body, env=env, capture_output=True)
        if self.command == "POST" and path.endswith("/git-receive-pack"):
            git_server.record_push(path, body, encoding, proc.stdout)
        self._relay_cgi(proc.stdout, truncate=fault is Fault.TRUNCATE)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _status(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """A plain-text answer that closes the connection: the request body may be unread, and
        the next request on this socket must not be confused by it."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _unauthorized(self) -> None:
        self._status(401, b"authentication required\n", {"WWW-Authenticate": 'Basic realm="git"'})

    def _relay_cgi(self, output: bytes, truncate: bool = False) -> None:
        head, sep, body = output.partition(b"\r\n\r\n")
        if not sep:
            head, _, body = output.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for raw in head.decode("latin-1").splitlines():
            name, _, value = raw.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name.strip(), value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class GitServer(LoopbackServer):
    """Bare repositories under ``root`` served over smart HTTP on 127.0.0.1, token required."""

    handler = _Handler

    def __init__(self, root: Path, token: str) -> None:
        super().__init__()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._expected = f"Basic {basic_credentials(token)}"
        self.requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._ref_updates: dict[tuple[str, str], list[RefUpdate]] = {}
        self._faults: list[InjectedFault] = []
        self.stopping = threading.Event()
        """Set when the server stops: a hanging request ends then."""

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    def fail_next(self, owner: str, name: str, fault: Fault, service: str, times: int = 1) -> None:
        """Make the next ``times`` requests of ``owner/name`` to ``service`` (``git-upload-pack``:
        fetch, ``git-receive-pack``: push) fail with ``fault``; ref advertisements are served."""
        with self._requests_lock:
            self._faults.append(InjectedFault(fault, f"/{owner}/{name}.git/{service}", times))

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if one is due (used by the handler)."""
        if method != "POST":
            return None
        with self._requests_lock:
            for injected in self._faults:
                if path.partition("?")[0] == injected.path and injected.times > 0:
                    injected.times -= 1
                    return injected.fault
        return None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, owner: str, name: str) -> str:
        """The clone URL of a repository (never carries credentials)."""
        return f"{self.base_url}{owner}/{name}.git"

    # -- used by the handler ---------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(), self._expected.encode())

    def record(self, request: RecordedRequest) -> None:
        with self._requests_lock:
            self.requests.append(request)

    def record_push(self, path: str, body: bytes, encoding: str | None, cgi_output: bytes) -> None:
        """Record the ref updates of the receive-pack request ``body`` to ``/<owner>/<name>.git``,
        each accepted or not as the response's report-status says (or, for a client that asked for
        no report, as the ref now is)."""
        owner, _, name = path.removesuffix("/git-receive-pack").strip("/").partition("/")
        name = name.removesuffix(".git")
        commands, capabilities = pktline.commands(body, encoding)
        response = cgi_output.partition(b"\r\n\r\n")[2] or cgi_output.partition(b"\n\n")[2]
        statuses = pktline.report(response, capabilities)
        updates = []
        for command in commands:
            if statuses is not None:
                accepted = statuses.get(command.ref, False)
            else:
                now = self.ref_sha(owner, name, command.ref) or ZERO_SHA
                accepted = now == command.new
            updates.append(RefUpdate(command.ref, command.old, command.new, accepted))
        with self._requests_lock:
            self._ref_updates.setdefault((owner, name), []).extend(updates)

    # -- repository preparation and inspection ---------------------------------------------------

    def repo_path(self, owner: str, name: str) -> Path:
        return self.root / owner / f"{name}.git"

    def create_repo(self, owner: str, name: str, files: dict[str, str], branch: str = "main") -> str:
        """A bare repository with one commit holding ``files`` on ``branch``; returns its clone URL."""
        path = self.repo_path(owner, name)
        if path.exists():
            raise GitServerError(f"repository {owner}/{name} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(path))
        _git("config", "http.receivepack", "true", cwd=path)
        self._commit(path, branch, files, "Initial commit", parent=None)
        return self.url(owner, name)

    def commit_on(
        self, owner: str, name: str, branch: str, files: dict[str, str | None], message: str
    ) -> str:
        """Commit directly on the server (someone else moving ``branch``); ``None`` deletes a file."""
        path = self.repo_path(owner, name)
        parent = self.ref_sha(owner, name, branch)
        return self._commit(path, branch, files, message, parent=parent)

    def read_file(self, owner: str, name: str, ref: str, path: str) -> str | None:
        repo = self.repo_path(owner, name)
        proc = subprocess.run(["git", "cat-file", "blob", f"{ref}:{path}"], cwd=repo, capture_output=True)
        return proc.stdout.decode() if proc.returncode == 0 else None

    def ref_sha(self, owner: str, name: str, ref: str) -> str | None:
        repo = self.repo_path(owner, name)
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            cwd=repo,
            capture_output=True,
            text=True,
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def ref_updates(self, owner: str, name: str) -> list[RefUpdate]:
        """Every ref update pushed to ``owner/name`` over HTTP, in the order the pushes ended."""
        with self._requests_lock:
            return list(self._ref_updates.get((owner, name), []))

    def branches(self, owner: str, name: str) -> list[str]:
        out = _git(
            "for-each-ref", "--format=%(refname:short)", "refs/heads/", cwd=self.repo_path(owner, name)
        )
        return sorted(out.split())

    def parents(self, owner: str, name: str, ref: str) -> list[str]:
        """Parents of a commit; tests use it to tell a fast-forward from a merge commit."""
        out = _git("rev-list", "--parents", "-n", "1", ref, cwd=self.repo_path(owner, name))
        return out.split()[1:]

    def reject_refs(self, owner: str, name: str, pattern: str) -> None:
        """Refuse pushes to refs matching the glob ``pattern`` (e.g. ``refs/heads/protected/*``).

        An ``update`` hook rejects per ref, as GitHub's branch protection does, so the client sees
        the ref reported as not updated while the push itself succeeds at the protocol level.
        """
        hooks = self.repo_path(owner, name) / "hooks"
        patterns = hooks / "rejected-refs"
        with patterns.open("a") as fh:
            fh.write(pattern + "\n")
        hook = hooks / "update"
        hook.write_text(_UPDATE_HOOK.format(python=sys.executable))
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def _commit(
        self, repo: Path, branch: str, files: dict[str, str | None], message: str, parent: str | None
    ) -> str:
        """Build a commit with plumbing and a private index, so the bare repository needs no checkout."""
        with tempfile.TemporaryDirectory(prefix="cw-gitserver-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent is not None:
                _git("read-tree", parent, cwd=repo, env=env)
            # --index-info works without a work tree; mode 0 removes an entry.
            lines = []
            for path, content in files.items():
                if content is None:
                    lines.append(f"0 {'0' * 40}\t{path}\n")
                    continue
                blob = _git("hash-object", "-w", "--stdin", cwd=repo, stdin=content.encode()).strip()
                lines.append(f"100644 {blob}\t{path}\n")
            _git("update-index", "--index-info", cwd=repo, env=env, stdin="".join(lines).encode())
            tree = _git("write-tree", cwd=repo, env=env).strip()
            args = ["commit-tree", tree, "-m", message]
            if parent is not None:
                args += ["-p", parent]
            sha = _git(*args, cwd=repo).strip()
            old = parent or "0" * 40
            _git("update-ref", f"refs/heads/{branch}", sha, old, cwd=repo)
            return sha
