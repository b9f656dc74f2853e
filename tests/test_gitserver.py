"""The test git server itself: token auth, smart HTTP with the git CLI, de-chunking, gzip, hooks."""

from __future__ import annotations

import base64
import gzip
import http.client
import subprocess
import uuid
from pathlib import Path

import pytest

from codeworker.loopback import pktline
from codeworker.loopback.gitserver import ZERO_SHA, GitServer, RefUpdate
from tests.conftest import GITHUB_TOKEN

TOKEN = GITHUB_TOKEN


def _auth_header(token: str = TOKEN) -> str:
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


def _git(*args: str, cwd: Path | None = None, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """The git CLI as a second, independent client; the header goes in -c, never in the URL."""
    config = ["-c", f"http.extraHeader=Authorization: {_auth_header(token)}"] if token is not None else []
    return subprocess.run(
        ["git", *config, "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0", "HOME": str(cwd or Path.cwd())},
    )


@pytest.fixture()
def repo(git_server: GitServer) -> tuple[str, str, str]:
    name = f"r{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo("acme", name, {"README.md": "hello\n", "src/app.py": "print(1)\n"})
    return "acme", name, url


def test_create_repo_and_inspect(git_server: GitServer, repo: tuple[str, str, str]) -> None:
    owner, name, url = repo
    assert url == f"{git_server.base_url}{owner}/{name}.git"
    assert git_server.base_url.startswith("http://127.0.0.1:")
    assert git_server.branches(owner, name) == ["main"]
    assert git_server.read_file(owner, name, "main", "src/app.py") == "print(1)\n"
    assert git_server.read_file(owner, name, "main", "missing") is None
    assert git_server.ref_sha(owner, name, "nope") is None

    first = git_server.ref_sha(owner, name, "main")
    second = git_server.commit_on(owner, name, "main", {"README.md": None, "new.txt": "n\n"}, "move")
    assert git_server.ref_sha(owner, name, "main") == second
    assert git_server.parents(owner, name, second) == [first]
    assert git_server.read_file(owner, name, "main", "README.md") is None
    assert git_server.read_file(owner, name, "main", "new.txt") == "n\n"


def test_clone_and_push_with_git_cli(
    git_server: GitServer, repo: tuple[str, str, str], tmp_path: Path
) -> None:
    owner, name, url = repo
    clone = tmp_path / "clone"
    assert _git("clone", url, str(clone)).returncode == 0
    assert (clone / "README.md").read_text() == "hello\n"

    (clone / "README.md").write_text("changed\n")
    assert _git("commit", "-qam", "change", cwd=clone).returncode == 0
    result = _git("push", "origin", "HEAD:refs/heads/feature", cwd=clone)
    assert result.returncode == 0, result.stderr
    assert git_server.read_file(owner, name, "feature", "README.md") == "changed\n"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_requests_without_the_token_get_401(git_server: GitServer, repo: tuple[str, str, str], token) -> None:
    owner, name, _ = repo
    headers = {"Authorization": _auth_header(token)} if token is not None else {}
    conn = http.client.HTTPConnection("127.0.0.1", git_server.port, timeout=10)
    conn.request("GET", f"/{owner}/{name}.git/info/refs?service=git-upload-pack", headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="git"'


def test_git_cli_with_wrong_token_fails(repo: tuple[str, str, str], tmp_path: Path) -> None:
    _, _, url = repo
    result = _git("clone", url, str(tmp_path / "clone"), token="wrong-token")
    assert result.returncode != 0
    assert not (tmp_path / "clone" / "README.md").exists()


def test_chunked_gzip_upload_pack_request(git_server: GitServer, repo: tuple[str, str, str]) -> None:
    """A chunked, gzip-encoded POST (what libgit2 and git send for big requests) is served."""
    owner, name, _ = repo
    sha = git_server.ref_sha(owner, name, "main")
    assert sha is not None

    def pkt(line: str) -> bytes:
        return f"{len(line) + 4:04x}{line}".encode()

    body = gzip.compress(pkt(f"want {sha}\n") + b"0000" + pkt("done\n"))
    conn = http.client.HTTPConnection("127.0.0.1", git_server.port, timeout=10)
    conn.putrequest("POST", f"/{owner}/{name}.git/git-upload-pack")
    conn.putheader("Authorization", _auth_header())
    conn.putheader("Content-Type", "application/x-git-upload-pack-request")
    conn.putheader("Content-Encoding", "gzip")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    half = len(body) // 2
    for chunk in (body[:half], body[half:]):
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    assert response.status == 200
    assert payload.startswith(b"0008NAK\n")
    assert b"PACK" in payload


def test_reject_refs_refuses_matching_refs_only(
    git_server: GitServer, repo: tuple[str, str, str], tmp_path: Path
) -> None:
    owner, name, url = repo
    git_server.reject_refs(owner, name, "refs/heads/protected/*")
    clone = tmp_path / "clone"
    assert _git("clone", url, str(clone)).returncode == 0
    refused = _git("push", "origin", "HEAD:refs/heads/protected/x", cwd=clone)
    assert refused.returncode != 0
    assert "not allowed" in refused.stderr
    assert _git("push", "origin", "HEAD:refs/heads/open", cwd=clone).returncode == 0
    assert git_server.branches(owner, name) == ["main", "open"]


def test_every_request_is_recorded(git_server: GitServer, repo: tuple[str, str, str], tmp_path: Path) -> None:
    owner, name, url = repo
    before = len(git_server.requests)
    assert _git("clone", url, str(tmp_path / "clone")).returncode == 0
    mine = git_server.requests[before:]
    assert any(r.path == f"/{owner}/{name}.git/info/refs?service=git-upload-pack" for r in mine)
    assert all(
        r.headers.get("Authorization") == _auth_header() for r in mine if r.path.startswith(f"/{owner}")
    )


def test_pushed_ref_updates_are_recorded_with_their_outcome(
    git_server: GitServer, repo: tuple[str, str, str], tmp_path: Path
) -> None:
    """Per ref, not per request: one push moving two refs, one of them refused by the hook, then
    a deletion; what a test counts as "pushed once"."""
    owner, name, url = repo
    git_server.reject_refs(owner, name, "refs/heads/protected/*")
    clone = tmp_path / "clone"
    assert _git("clone", url, str(clone)).returncode == 0
    (clone / "README.md").write_text("changed\n")
    assert _git("commit", "-qam", "change", cwd=clone).returncode == 0
    new = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()

    pushed = _git("push", "origin", "HEAD:refs/heads/feature", "HEAD:refs/heads/protected/x", cwd=clone)
    assert pushed.returncode != 0  # the refused ref fails the command; the other one is made
    assert sorted(git_server.ref_updates(owner, name), key=lambda update: update.ref) == [
        RefUpdate("refs/heads/feature", ZERO_SHA, new, accepted=True),
        RefUpdate("refs/heads/protected/x", ZERO_SHA, new, accepted=False),
    ]
    assert _git("push", "origin", ":refs/heads/feature", cwd=clone).returncode == 0
    assert git_server.ref_updates(owner, name)[-1] == RefUpdate("refs/heads/feature", new, ZERO_SHA, True)
    assert git_server.branches(owner, name) == ["main"]


def test_receive_pack_commands_and_reports_are_parsed() -> None:
    """What clients other than the git CLI send: a gzip body with a shallow line; no report asked."""

    def pkt(line: bytes) -> bytes:
        return f"{len(line) + 4:04x}".encode() + line

    old, new = "1" * 40, "2" * 40
    body = gzip.compress(
        pkt(f"shallow {old}\n".encode())
        + pkt(f"{old} {new} refs/heads/a".encode() + b"\0report-status side-band-64k agent=x\n")
        + pkt(f"{ZERO_SHA} {new} refs/heads/b\n".encode())
        + b"0000PACK..."
    )
    commands, capabilities = pktline.commands(body, "gzip")
    assert commands == [
        pktline.Command(old, new, "refs/heads/a"),
        pktline.Command(ZERO_SHA, new, "refs/heads/b"),
    ]
    assert capabilities == {"report-status", "side-band-64k", "agent=x"}
    inner = (
        pkt(b"unpack ok\n") + pkt(b"ok refs/heads/a\n") + pkt(b"ng refs/heads/b hook declined\n") + b"0000"
    )
    response = pkt(b"\x02progress\n") + pkt(b"\x01" + inner) + b"0000"
    assert pktline.report(response, capabilities) == {"refs/heads/a": True, "refs/heads/b": False}
    assert pktline.report(response, {"side-band-64k"}) is None
