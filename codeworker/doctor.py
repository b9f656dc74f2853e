"""``codeworker doctor``: whether this host, with this configuration, can run a worker.

Each check answers one :class:`Finding` (ok, warning or failed, what it saw, and the fix), so an
operator reads one line per dependency instead of a worker that refuses to start, or starts and
fails its first job. A failed check is one a worker cannot do its job without; a warning is one it
runs without at a risk the line names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import anthropic
import github
import redis
from kombu.utils.url import maybe_sanitize_url

from codeworker.config import Settings
from codeworker.coordination.connection import redis_for
from codeworker.sandbox.bubblewrap import network_problem, sandbox_problem
from codeworker.secrets.scanner import ScanError, SecretScanner

MIN_FREE_BYTES = 5 * 1024**3
"""Free space under WORKSPACE_ROOT below which the check warns (mirrors, worktrees, setup cache)."""

TIMEOUT = 10.0
"""Seconds each network check waits for an answer."""


class Verdict(StrEnum):
    OK = "ok"
    WARNING = "warning"
    FAILED = "failed"


@dataclass(frozen=True)
class Finding:
    check: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix and self.verdict is not Verdict.OK else ""
        return f"{self.verdict.value:<8} {self.check:<14} {self.detail}{fix}"


def ok(check: str, detail: str) -> Finding:
    return Finding(check, Verdict.OK, detail)


def warning(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, Verdict.WARNING, detail, fix)


def failed(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, Verdict.FAILED, detail, fix)


def redis_checks(settings: Settings) -> list[Finding]:
    """Reachable; and its configuration keeps what codeworker stores (an evicted lock or queue
    key, or a restart without persistence, loses work)."""
    client = redis_for(settings)
    try:
        return _redis_checks(client, maybe_sanitize_url(settings.redis_url))
    finally:
        client.close()


def _redis_checks(client: redis.Redis, shown: str) -> list[Finding]:
    try:
        version = client.info("server")["redis_version"]
    except redis.AuthenticationError as exc:
        return [failed("redis", f"{shown} refused the credentials: {exc}", "the password in REDIS_URL")]
    except redis.RedisError as exc:
        return [failed("redis", f"cannot reach {shown}: {exc}", "start Redis or correct REDIS_URL")]
    findings = [ok("redis", f"{shown} answers (Redis {version})")]
    try:
        config = {
            **client.config_get("maxmemory*"),
            **client.config_get("appendonly"),
            **client.config_get("save"),
        }
    except redis.ResponseError as exc:  # managed services often forbid CONFIG
        return [
            *findings,
            warning(
                "redis-config",
                f"cannot read the configuration ({exc})",
                "check eviction and persistence by hand",
            ),
        ]
    policy, limit = config.get("maxmemory-policy", ""), int(config.get("maxmemory", "0"))
    if policy == "noeviction":
        findings.append(ok("redis-memory", "maxmemory-policy noeviction"))
    elif limit:
        findings.append(
            failed(
                "redis-memory",
                f"maxmemory-policy {policy} with maxmemory {limit}: Redis may evict locks and queued jobs",
                "CONFIG SET maxmemory-policy noeviction (and in redis.conf)",
            )
        )
    else:
        findings.append(
            warning(
                "redis-memory",
                f"maxmemory-policy {policy} (no maxmemory now; a limit set later would evict locks and jobs)",
                "CONFIG SET maxmemory-policy noeviction",
            )
        )
    if config.get("appendonly") == "yes" or config.get("save"):
        findings.append(
            ok("redis-persist", f"appendonly {config.get('appendonly')}, save '{config.get('save')}'")
        )
    else:
        findings.append(
            warning(
                "redis-persist",
                "no persistence: a Redis restart loses the queue, the locks and the operation records",
                "CONFIG SET appendonly yes (and in redis.conf)",
            )
        )
    return findings


def sandbox_check(settings: Settings) -> Finding:
    problem = sandbox_problem(settings.bwrap)
    if problem is None:
        return ok("sandbox", f"bubblewrap ({shutil.which(settings.bwrap)}) builds the job sandbox")
    fix = "install bubblewrap; allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
    if settings.allow_unsandboxed:
        return warning(
            "sandbox", f"{problem}; commands run WITHOUT a sandbox (CODEWORKER_ALLOW_UNSANDBOXED)", fix
        )
    return failed("sandbox", problem, fix)


def setup_network_check(settings: Settings) -> Finding:
    if settings.setup_network != "isolated":
        return ok("setup-network", f"CODEWORKER_SETUP_NETWORK={settings.setup_network}: nothing to check")
    if sandbox_problem(settings.bwrap) is not None:
        return warning(
            "setup-network", "not checked: the sandbox itself does not work", "see the sandbox line"
        )
    problem = network_problem(settings)
    if problem is None:
        return ok(
            "setup-network", f"slirp4netns ({shutil.which(settings.slirp4netns)}) gives setup its network"
        )
    fix = "install slirp4netns and iproute2, or set CODEWORKER_SETUP_NETWORK=none"
    if settings.allow_unsandboxed:
        return warning("setup-network", f"{problem}; setup gets the HOST's network", fix)
    return failed("setup-network", problem, fix)


def scanner_check(settings: Settings) -> Finding:
    scanner = SecretScanner(settings.scanner, settings.scan_timeout)
    try:
        scanner.scan({"doctor.txt": [(1, "nothing secret here")]})
    except ScanError as exc:
        return failed("scanner", str(exc), "make scanner, or CODEWORKER_SCANNER=<path of trufflehog3>")
    return ok("scanner", f"{scanner.resolve_executable()} answers")


def git_check(settings: Settings) -> Finding:
    git = shutil.which("git")
    if git is None:
        return failed(
            "git", "git is not on PATH (the repositories' commands and the demo use it)", "install git"
        )
    version = subprocess.run([git, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return ok("git", version)


def disk_check(settings: Settings) -> Finding:
    root = settings.workspace_root
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    detail = f"{free / 1024**3:.1f} GiB free under {existing}"
    if not root.exists() and not _writable(existing):
        return failed("disk", f"{root} does not exist and {existing} is not writable", f"mkdir -p {root}")
    if root.exists() and not _writable(root):
        return failed("disk", f"{root} is not writable by this user", "chown the directory to this user")
    if free < MIN_FREE_BYTES:
        return warning("disk", detail, f"free space under {root} (mirrors and worktrees live there)")
    return ok("disk", detail)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def github_checks(settings: Settings, repository: str | None) -> list[Finding]:
    """The token is accepted (``GET /rate_limit``; a classic token's scopes from its response
    headers) and, for ``repository`` (``owner/name``), may push."""
    token = settings.github_token.get_secret_value()
    if not token:
        return [
            failed(
                "github", "GITHUB_TOKEN is not set (needed to clone, push and open PRs)", "set GITHUB_TOKEN"
            )
        ]
    client = github.Github(
        base_url=settings.github_api_url.rstrip("/"),
        auth=github.Auth.Token(token),
        timeout=int(TIMEOUT),
        retry=None,
    )
    try:
        limits = client.get_rate_limit()
    except github.BadCredentialsException:
        return [failed("github", f"{settings.github_api_url} rejected GITHUB_TOKEN (401)", "a valid token")]
    except github.GithubException as exc:
        return [failed("github", f"{settings.github_api_url} answered {exc.status}", "check GITHUB_API_URL")]
    except Exception as exc:  # requests' connection errors
        return [failed("github", f"cannot reach {settings.github_api_url}: {exc}", "check GITHUB_API_URL")]
    rate = limits.rate
    findings = [
        ok(
            "github",
            f"token accepted by {settings.github_api_url} ({rate.remaining}/{rate.limit} requests left)",
        )
    ]
    scopes = client.oauth_scopes
    if scopes is not None and not {"repo", "public_repo"} & set(scopes):
        findings.append(
            warning(
                "github-scopes",
                f"the token's scopes ({', '.join(scopes) or 'none'}) lack repo",
                "a token with repo scope",
            )
        )
    if repository is None:
        findings.append(
            warning(
                "github-push",
                "no repository given to check push access",
                "codeworker doctor --repo owner/name",
            )
        )
        return findings
    try:
        permissions = client.get_repo(repository).permissions
    except github.UnknownObjectException:
        return [
            *findings,
            failed("github-push", f"{repository} not found with this token", "grant the token access"),
        ]
    except github.GithubException as exc:
        return [
            *findings,
            failed("github-push", f"looking up {repository}: {exc.status}", "grant the token access"),
        ]
    if permissions is None or not permissions.push:
        findings.append(
            failed("github-push", f"the token cannot push to {repository}", "grant it write access")
        )
    else:
        findings.append(ok("github-push", f"the token can push to {repository}"))
    return findings


def model_check(settings: Settings) -> Finding:
    """The cheapest authenticated call of the Messages API's host: listing one model."""
    key = settings.anthropic_api_key.get_secret_value()
    if not key:
        return failed(
            "model", "ANTHROPIC_API_KEY is not set (the agent executor needs it)", "set ANTHROPIC_API_KEY"
        )
    client = anthropic.Anthropic(api_key=key, timeout=TIMEOUT, max_retries=0)
    try:
        client.models.list(limit=1)
    except anthropic.AuthenticationError:
        return failed("model", f"{client.base_url} rejected ANTHROPIC_API_KEY (401)", "a valid key")
    except anthropic.APIConnectionError as exc:
        return failed(
            "model", f"cannot reach {client.base_url}: {exc}", "check ANTHROPIC_BASE_URL and the network"
        )
    except anthropic.APIStatusError as exc:
        return failed("model", f"{client.base_url} answered {exc.status_code}", "check ANTHROPIC_BASE_URL")
    return ok("model", f"{client.base_url} accepts the key")


def webhook_check(settings: Settings) -> Finding:
    secret = settings.webhook_secret.get_secret_value()
    if not secret:
        return ok("webhook", "off: CODEWORKER_WEBHOOK_SECRET is unset, POST /webhooks/github answers 503")
    if len(secret) < 16:
        return warning("webhook", f"the secret is {len(secret)} characters", "a random secret of 32 or more")
    return ok("webhook", "the secret is set; GitHub's deliveries are verified")


def run_checks(settings: Settings, repository: str | None = None) -> list[Finding]:
    checks: list[Callable[[], Finding | list[Finding]]] = [
        lambda: redis_checks(settings),
        lambda: sandbox_check(settings),
        lambda: setup_network_check(settings),
        lambda: scanner_check(settings),
        lambda: git_check(settings),
        lambda: disk_check(settings),
        lambda: github_checks(settings, repository),
        lambda: model_check(settings),
        lambda: webhook_check(settings),
    ]
    findings: list[Finding] = []
    for check in checks:
        found = check()
        findings.extend(found if isinstance(found, list) else [found])
    return findings
