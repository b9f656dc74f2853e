"""The secret scanner's long-lived process: trufflehog3's search over texts read from stdin.

This module is not part of the worker. :mod:`codeworker.secrets.process` runs it with the scanner
virtualenv's interpreter (``.venv-scanner/bin/python -I scand.py``), because trufflehog3 is GPL-2.0
and pins old libraries (Jinja2 3.1.4, attrs 20.3.0) and must never be imported into the worker.
So it imports only the standard library and trufflehog3, never codeworker, whose dependencies
that virtualenv does not have.

It loads the rule pack once and then answers scan requests, which is what makes a scan cheap: the
interpreter start and the rule compilation (about 0.2 s) are paid once per worker process, not per job.

The protocol is one JSON object per line each way; requests are answered in order:

- first request ``{"rules": "<the rules.yml text>"}``; answer ``{"ready": <number of rules>}``;
- then ``{"texts": ["...", ...]}``; answer ``{"issues": [[index, line, rule id, severity,
  secret], ...]}``, ``index`` being the text's position in the request and ``line`` trufflehog3's
  1-based line number in it;
- a request that fails is answered ``{"error": "<exception type>"}`` (never its message, which
  might quote the text); the client then discards this process.

Each text is searched exactly as the trufflehog3 command line searched a file with ``--config``
(empty), ``--rules`` and ``--ignore-nosecret``: ``search.search`` with no excludes, no context
and ``nosecret`` ignored. The command line also gathers the issues in a set, which removes no
duplicate (an issue's attrs-generated equality compares its context, which never equals), so
the issues are answered as found. The secrets are answered in full: the client redacts them as
soon as it reads them.

End of input (the worker closed the pipe or died) ends the process.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO

from trufflehog3.core import loads
from trufflehog3.models import Entropy, File, Pattern, Rule
from trufflehog3.search import search

Rules = list[Entropy | Pattern]


def load_rules(text: str) -> Rules:
    """The rule pack the client sent, as ``trufflehog3.core.load_rules`` would read it from a file."""
    rules = loads(Rule.fromargs, text)
    if not isinstance(rules, list) or not rules:
        raise ValueError("the rule pack is not a non-empty list of rules")
    return rules


def scan(texts: list[str], rules: Rules) -> list[list[Any]]:
    """Every issue in ``texts``: [index of the text, line, rule id, severity, secret]."""
    issues: list[list[Any]] = []
    for index, text in enumerate(texts):
        found = search(File(path=str(index), content=text), rules, exclude=None, ignore_nosecret=True)
        issues += [[index, int(i.line), i.rule.id, str(i.rule.severity), i.secret] for i in found]
    return issues


def answer(request: Any, rules: Rules | None) -> tuple[dict[str, Any], Rules | None]:
    """The answer to one request and the rules for the next ones."""
    if rules is None:
        if not isinstance(request, dict) or not isinstance(request.get("rules"), str):
            raise ValueError("the first request must carry the rule pack")
        rules = load_rules(request["rules"])
        return {"ready": len(rules)}, rules
    texts = request.get("texts") if isinstance(request, dict) else None
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise ValueError("a scan request must carry a list of texts")
    return {"issues": scan(texts, rules)}, rules


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until end of input."""
    rules: Rules | None = None
    while line := requests.readline():
        try:
            reply, rules = answer(json.loads(line), rules)
        except Exception as exc:  # any failure is answered; the client then discards this process
            reply = {"error": type(exc).__name__}
        replies.write(json.dumps(reply).encode("ascii") + b"\n")
        replies.flush()


def main() -> None:
    # Answers go to a private copy of stdout, and fd 1 becomes stderr: whatever a library prints
    # cannot corrupt the protocol.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
