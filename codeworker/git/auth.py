"""The transport: libgit2's process-wide timeouts and the callbacks every network operation gets.

Why this shape:

- The token travels only as an ``Authorization`` header produced by :class:`GitAuth` for each
  network operation. It is never in a URL, a remote's config, ``.git/config``, a log line or an
  exception message; a URL that arrives with credentials in it is stored without them
  (:func:`codeworker.git.remote.clean_url`).
- pygit2's ``Remote.push`` does not raise when the server refuses a ref, so :class:`GitAuth`
  collects ``push_update_reference`` reports and the push turns them into
  :class:`~codeworker.git.errors.PushRejected`.
- A push may carry a :class:`Lease` (git's ``--force-with-lease``, which libgit2 lacks): in the
  negotiation, after the server advertised its refs on this very connection and before anything
  is sent, the remote ref must be where the pusher saw it. The server then applies the update only
  if the ref still holds that advertised value (receive-pack compares old and current under its
  ref lock), so the check and the update together are a compare-and-swap on the remote.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass

import pygit2
from pydantic import SecretStr
from pygit2.enums import Option

from codeworker.git.errors import AuthenticationFailed, PushRejected, RepositoryTooLarge

__all__ = ["GitAuth", "Lease", "SizeLimitedFetch", "basic_credentials", "set_timeouts"]

_ABSENT = pygit2.Oid(raw=bytes(20))
"""What libgit2 reports as the current value of a ref the remote does not have."""


@dataclass(frozen=True)
class Lease:
    """A push of ``ref`` is allowed only while the remote has it at ``expected`` (None: absent)."""

    ref: str
    expected: str | None


_timeouts_lock = threading.Lock()
_timeouts_set: tuple[int, int] | None = None


def set_timeouts(connect_ms: int, read_ms: int) -> None:
    """libgit2's server timeouts are process-wide; set them once (again only if they change)."""
    global _timeouts_set
    with _timeouts_lock:
        if _timeouts_set == (connect_ms, read_ms):
            return
        pygit2.option(Option.SET_SERVER_CONNECT_TIMEOUT, connect_ms)
        pygit2.option(Option.SET_SERVER_TIMEOUT, read_ms)
        _timeouts_set = (connect_ms, read_ms)


def basic_credentials(token: str) -> str:
    """The token as HTTP Basic credentials (``x-access-token:<token>``, base64), as git sends it."""
    return base64.b64encode(f"x-access-token:{token}".encode()).decode()


class GitAuth(pygit2.RemoteCallbacks):
    """Sends the token as a Basic header up front and records what the server said about each ref.

    The header is sent on the first request (``custom_headers``), so libgit2 never needs a 401
    round trip or a credential helper, and the token never needs to be part of a URL. One instance
    serves one network operation: its ``rejected`` map belongs to that push.
    """

    def __init__(self, token: SecretStr | str) -> None:
        super().__init__()
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.rejected: dict[str, str] = {}
        """Remote ref name -> the server's reason, for every ref the server refused to update."""
        self.remote_messages: list[str] = []
        """Sideband text from the server (hook output), to explain a rejection."""
        self.lease: Lease | None = None
        """Checked in the push's negotiation (see the module's docstring)."""

    def __repr__(self) -> str:
        return "GitAuth(token=SecretStr('**********'))"

    def custom_headers(self) -> list[str]:
        return [f"Authorization: Basic {basic_credentials(self._token.get_secret_value())}"]

    def credentials(self, url: str, username_from_url: str | None, allowed_types: object) -> object:
        """Only called after the server answered 401 to our header: the token is wrong or missing."""
        raise AuthenticationFailed(f"the server refused the token for {url}")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected[refname] = message

    def push_negotiation(self, updates: list[pygit2.remotes.PushUpdate]) -> None:
        lease = self.lease
        for update in updates:
            if lease is None or update.dst_refname != lease.ref:
                continue
            current = None if update.src == _ABSENT else str(update.src)
            # Already at what we push: an earlier try of this push reached the server.
            if current not in (lease.expected, str(update.dst)):
                raise PushRejected(
                    lease.ref,
                    f"the remote has it at {current or 'nothing'}, not at {lease.expected or 'nothing'} "
                    "as this attempt saw it: another attempt pushed it meanwhile",
                )

    def sideband_progress(self, string: str) -> None:
        self.remote_messages.append(string)


class SizeLimitedFetch(GitAuth):
    """Aborts a fetch once the mirror's objects plus what the fetch received pass the limit.

    An exception raised here makes libgit2 stop the transfer and delete its partial pack, and
    pygit2 re-raises it from ``fetch``: the mirror keeps only what it had before.
    """

    def __init__(self, token: SecretStr, url: str, stored: int, limit: int) -> None:
        super().__init__(token)
        self._url = url
        self._stored = stored
        self._limit = limit

    def transfer_progress(self, stats: pygit2.remotes.TransferProgress) -> None:
        size = self._stored + stats.received_bytes
        if size > self._limit:
            raise RepositoryTooLarge(self._url, "its git objects", size, self._limit)
