"""Just enough of git's pkt-line protocol for the loopback server to tell what a push did.

A receive-pack request starts with the ref update commands, ``<old> <new> <ref>\\0<capabilities>``
then ``<old> <new> <ref>`` lines up to a flush packet (``0000``), before the pack. Its response,
when the client asked for ``report-status`` (every client that cares does), says per ref ``ok
<ref>`` or ``ng <ref> <reason>``, inside side-band channel 1 when the client asked for a side band.
See git's Documentation/gitprotocol-pack.txt.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass

FLUSH = None
"""What :func:`packets` yields for a flush packet."""


@dataclass(frozen=True)
class Command:
    """One ref update a client asked for; an all-zero sha is a ref that does not exist."""

    old: str
    new: str
    ref: str


def packets(data: bytes) -> Iterator[bytes | None]:
    """The payloads of the pkt-lines at the start of ``data`` (None for a flush), up to the first
    thing that is not a pkt-line (a pack) or the end."""
    offset = 0
    while offset + 4 <= len(data):
        try:
            length = int(data[offset : offset + 4], 16)
        except ValueError:
            return
        if length in (0, 1, 2):  # flush, delim, response-end: no payload
            yield FLUSH
            offset += 4
            continue
        if length < 4 or offset + length > len(data):
            return
        yield data[offset + 4 : offset + length]
        offset += length


def commands(body: bytes, content_encoding: str | None = None) -> tuple[list[Command], set[str]]:
    """The ref update commands of a receive-pack request body and the capabilities it asked for."""
    if content_encoding and content_encoding.lower() in ("gzip", "x-gzip"):
        body = gzip.decompress(body)
    found: list[Command] = []
    capabilities: set[str] = set()
    for payload in packets(body):
        if payload is FLUSH:
            break
        line, _, caps = payload.partition(b"\0")
        if caps:
            capabilities.update(caps.decode(errors="replace").split())
        fields = line.decode(errors="replace").rstrip("\n").split(" ")
        # "shallow <sha>" and "push-cert" lines carry no ref update.
        if len(fields) == 3 and len(fields[0]) == len(fields[1]) >= 40:
            found.append(Command(*fields))
    return found, capabilities


def report(response: bytes, capabilities: set[str]) -> dict[str, bool] | None:
    """Ref -> accepted, from the report-status of a receive-pack response body; None when the
    client did not ask for one."""
    if not capabilities & {"report-status", "report-status-v2"}:
        return None
    stream = response
    if capabilities & {"side-band", "side-band-64k"}:
        # Channel 1 carries the report as pkt-lines of its own; 2 is progress, 3 a fatal error.
        stream = b"".join(p[1:] for p in packets(response) if p is not FLUSH and p[:1] == b"\x01")
    statuses: dict[str, bool] = {}
    for payload in packets(stream):
        if payload is FLUSH:
            break
        verdict, _, rest = payload.decode(errors="replace").rstrip("\n").partition(" ")
        if verdict in ("ok", "ng"):
            statuses[rest.split(" ", 1)[0]] = verdict == "ok"
    return statuses
